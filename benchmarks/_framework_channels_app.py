"""The Channels app that benchmarks/framework_channels.py serves with uvicorn, in a process
of its own (Django's settings are process-global).

Environment: ``BENCH_BACKEND`` (``ours`` or ``stock``), ``BENCH_REDIS`` (URL),
``BENCH_CAPACITY`` and ``BENCH_EXPIRY`` (our layer's channel capacity and expiry).
Every WebSocket joins group ``bench`` and receives each ``bench.message`` of it as a
text frame.
"""

from __future__ import annotations

import os
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

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard("bench", self.channel_name)

    async def bench_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


application = BenchConsumer.as_asgi()
