"""``RedisMPXChannelLayer``: the channel layer specification over Redis Pub/Sub."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any, ClassVar, final

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from redismpx_anyio import OverflowPolicy

from ._codec import encode
from ._config import check_config
from ._loop import LoopLayer
from ._telling import Counters, LayerStatistics

__all__ = ("RedisMPXChannelLayer",)


@final
class RedisMPXChannelLayer(BaseChannelLayer):  # type: ignore[misc]
    """A channel layer on Redis Pub/Sub with one redismpx multiplexer per event loop.

    In Django's settings::

        CHANNEL_LAYERS = {"default": {
            "BACKEND": "redismpx_channels.RedisMPXChannelLayer",
            "CONFIG": {"hosts": ["redis://localhost:6379/0"]},
        }}

    ``hosts``: one Redis URL (or ``(host, port)``), or with ``cluster=True`` startup
    nodes of a Redis Cluster, where every channel and group is a shard channel.
    ``capacity``/``channel_capacity``: the bound of each channel's buffer; ``overflow``
    what a full buffer does with a message from Redis (``"drop-newest"``, as a full
    channel refuses messages in Channels; ``"drop-oldest"``; ``"close"``); ``send`` to
    a full channel of this process raises ``ChannelFull``. ``expiry``: seconds a
    message may wait unread. ``on_disconnect``/``on_reconnect``: message types sent to
    each channel of this process when its Redis connection is lost and back.
    ``redis_timeout``: seconds any call waits for Redis. Other keyword options go to
    the multiplexer (``health_check_interval``, ``password``, ``ssl``, ...). See
    docs/frameworks/channels.md.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(
        self,
        hosts: object = None,
        prefix: str = "asgi",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[Any, int] | None = None,
        *,
        overflow: OverflowPolicy | str = OverflowPolicy.DROP_NEWEST,
        on_disconnect: str | None = None,
        on_reconnect: str | None = None,
        redis_timeout: float = 10.0,
        cluster: bool = False,
        sharded: bool | None = None,
        **options: Any,
    ) -> None:
        self._config = check_config(
            hosts=hosts,
            prefix=prefix,
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            overflow=overflow,
            on_disconnect=on_disconnect,
            on_reconnect=on_reconnect,
            redis_timeout=redis_timeout,
            cluster=cluster,
            sharded=sharded,
            options=options,
        )
        super().__init__(expiry=expiry, capacity=capacity)
        # BaseChannelLayer.get_capacity reads the compiled form.
        self.channel_capacity = list(self._config.channel_capacity)
        self.prefix = prefix
        self.group_expiry = group_expiry
        self._loops: dict[asyncio.AbstractEventLoop, LoopLayer] = {}
        self._ended = Counters()  # what the loops that are gone had counted
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RedisMPXChannelLayer prefix={self.prefix!r} loops={len(self._loops)}>"

    # ---- one LoopLayer per event loop

    def _layer_of_this_loop(self) -> LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._loops.get(loop)
        if layer is None or layer.ended:
            with self._lock:
                self._forget_ended()
                layer = self._loops[loop] = LoopLayer(self._config, loop)
        return layer

    def _forget_ended(self) -> None:
        for loop, layer in list(self._loops.items()):
            if layer.ended or loop.is_closed():
                del self._loops[loop]
                self._ended.add(layer.counters)

    # ---- the specification

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send a message to a channel; ``ChannelFull`` if it is a channel of this
        process whose buffer is full (a channel elsewhere cannot be seen full)."""
        self.require_valid_channel_name(channel)
        payload = encode(message)
        layer = self._layer_of_this_loop()
        for other in list(self._loops.values()):
            local = other.channels.get(channel)
            if local is not None and local.full:
                raise ChannelFull(channel)
        if not await layer.publish(channel, payload):
            layer.unreceived(channel)

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message of ``channel``, subscribing it on first use. Cancelling
        the last receive of an empty channel unsubscribes it (a consumer ended)."""
        self.require_valid_channel_name(channel, receive=True)
        message: dict[str, Any] = await self._layer_of_this_loop().receive(channel)
        return message

    async def new_channel(self, prefix: str = "specific.") -> str:
        """A new channel of this process, subscribed (Redis has confirmed it) on return."""
        name = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        self.require_valid_channel_name(name)
        await self._layer_of_this_loop().open_channel(name)
        return name

    async def group_add(self, group: str, channel: str) -> None:
        """Add a channel of this event loop to a group (the channel is made if it is
        not there yet); returns once Redis has confirmed the group's subscription."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._layer_of_this_loop().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_channel_name(channel)
        self.require_valid_group_name(group)
        layer = self._loops.get(asyncio.get_running_loop())
        if layer is not None:
            layer.group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send to every member of the group, in every process; a full member drops
        the message by its overflow policy, as the specification lets it."""
        self.require_valid_group_name(group)
        payload = encode(message)
        layer = self._layer_of_this_loop()
        await layer.publish(layer.group_key(group), payload)

    async def flush(self) -> None:
        """Drop this event loop's channels and groups (their subscriptions too)."""
        layer = self._loops.get(asyncio.get_running_loop())
        if layer is not None:
            layer.flush()

    async def close(self) -> None:
        """Close this event loop's multiplexer; the next call makes a new one."""
        layer = self._loops.get(asyncio.get_running_loop())
        if layer is not None:
            await layer.aclose()
            with self._lock:
                self._forget_ended()

    # ---- telling

    def statistics(self) -> LayerStatistics:
        """Counters summed over this layer's event loops, those gone included."""
        total = Counters()
        total.add(self._ended)
        every = list(self._loops.values())
        for layer in every:
            total.add(layer.counters)
        layers = [layer for layer in every if not layer.ended]
        return LayerStatistics(
            event_loops=len(layers),
            channels=sum(len(layer.channels) for layer in layers),
            groups=sum(len(layer.members) for layer in layers),
            outages=total.outages,
            outage_seconds=total.outage_seconds,
            channels_interrupted=total.channels_interrupted,
            messages_dropped=total.messages_dropped,
            messages_expired=total.messages_expired,
            messages_undecodable=total.messages_undecodable,
            sends_unreceived=total.sends_unreceived,
        )
