"""The Channels app that benchmarks/framework_channels.py serves with uvicorn, in a process
of its own (Django's settings are process-global).

    python benchmarks/_framework_channels_app.py PORT

Environment: ``BENCH_BACKEND`` (``ours`` or ``stock``), ``BENCH_REDIS`` (URL),
``BENCH_CAPACITY`` and ``BENCH_EXPIRY`` (our layer's channel capacity and expiry).
Every WebSocket joins group ``bench``, then gets the text frame ``subscribed`` (the
notice that benchmarks/_ws_swarm.py waits for: the join is done), then each
``bench.message`` of the group as a text frame of its ``text``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import django
from django.conf import settings

_CONFIG: dict[str, Any] = {"hosts": [os.environ["BENCH_REDIS"]]}
if os.environ["BENCH_BACKEND"] == "ours":
    _BACKEND = "redismpx_channels.RedisMPXChannelLayer"
    _CONFIG["capacity"] = int(os.environ["BENCH_CAPACITY"])
    _CONFIG["expiry"] = int(os.environ["BENCH_EXPIRY"])
else:
    _BACKEND = "channels_redis.pubsub.RedisPubSubChannelLayer"

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark-only",
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={"default": {"BACKEND": _BACKEND, "CONFIG": _CONFIG}},
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402


class BenchConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        await self.channel_layer.group_add("bench", self.channel_name)
        await self.accept()
        await self.send(text_data="subscribed")

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard("bench", self.channel_name)

    async def bench_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


application = BenchConsumer.as_asgi()


def main(port: int) -> None:
    import uvicorn

    sys.path.append(os.path.join(os.path.dirname(__file__), "_peers"))
    from common import raise_file_limit

    raise_file_limit(65536)
    uvicorn.run(
        application,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        # No pings: the swarm's clients count bytes and answer nothing.
        ws_ping_interval=None,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
