"""A Channels chat app for the end-to-end test, served by uvicorn in a process of its own.

Django's settings are process-global, so the app never runs inside the test process:
``python -m uvicorn chatapp:application`` (with this directory as the working directory)
configures them from the environment:

    CHATAPP_BACKEND   "ours" (redismpx_channels) or "stock" (channels_redis.pubsub)
    CHATAPP_REDIS     the Redis URL

``ws://.../room/<name>/``: the consumer joins group ``<name>``; text it receives goes to
the whole group; the layer's disconnect/reconnect notices reach the client as
``layer:<type>``.
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.conf import settings

BACKENDS = {
    "ours": "redismpx_channels.RedisMPXChannelLayer",
    "stock": "channels_redis.pubsub.RedisPubSubChannelLayer",
}

settings.configure(
    DEBUG=False,
    SECRET_KEY="chatapp-test-only",
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": BACKENDS[os.environ["CHATAPP_BACKEND"]],
            "CONFIG": {
                "hosts": [os.environ["CHATAPP_REDIS"]],
                "on_disconnect": "redis.disconnect",
                "on_reconnect": "redis.reconnect",
            },
        }
    },
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class ChatConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(self.room, {"type": "chat.message", "text": text_data})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])

    async def redis_disconnect(self, event: dict[str, Any]) -> None:
        await self.send(text_data="layer:redis.disconnect")

    async def redis_reconnect(self, event: dict[str, Any]) -> None:
        await self.send(text_data="layer:redis.reconnect")


application = URLRouter([path("room/<str:room>/", ChatConsumer.as_asgi())])
