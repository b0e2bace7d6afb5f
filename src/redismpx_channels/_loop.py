"""The layer of one event loop: its multiplexer, its channels and their groups.

Channels runs async code on more than one loop (the server's, and a new one per
``async_to_sync`` call from a thread that has none); a connection and its reader
belong to one loop, so each loop gets a :class:`LoopLayer` of its own, made at its
first use. Its multiplexer lives in a task of that loop (the multiplexer's task
group is tied to the task that entered it), which also sweeps expired messages.
The loop's end cancels that task (``asyncio.run`` and asgiref cancel what is left
before closing a loop), which closes the connections.

Each channel is one subscription of the multiplexer holding the channel's name and
its groups' names (``{prefix}__group__{group}``, as the stock layer names them):
Redis sends a group message once per connection, and the multiplexer hands it to
every member. Its callbacks run on the reader, inline, so they only append to the
channel's bounded buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any

from redismpx_anyio import RedisMPXError, ServerError, SubscriptionClosed, SubscriptionOverflow

from ._channel import LocalChannel
from ._codec import decode
from ._config import LayerConfig, MultiplexerLike
from ._telling import Counters, LossLog, logger

__all__ = ("LoopLayer",)


class _Outage:
    __slots__ = ("channels", "error", "groups", "started")

    def __init__(self, started: float, error: RedisMPXError) -> None:
        self.started = started
        self.error = error
        self.channels = 0
        self.groups: set[str] = set()


class LoopLayer:
    """Everything of the layer that belongs to one event loop."""

    def __init__(self, config: LayerConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.channels: dict[str, LocalChannel] = {}
        #: group -> names of the local channels in it
        self.members: dict[str, set[str]] = {}
        self.counters = Counters()
        self.mpx: MultiplexerLike | None = None
        self.ended = False
        self._ready: asyncio.Future[None] = loop.create_future()
        self._outage: _Outage | None = None
        self._down = 0
        self._drops = LossLog(
            "%s messages dropped: channel buffers full (%s); see the overflow option"
        )
        self._expiries = LossLog("%s messages expired unread, after `expiry` seconds (%s)")
        self._undecodable = LossLog("%s messages skipped: not a msgpack-encoded dict (%s)")
        self._unreceived = LossLog(
            "%s messages sent to channels that no process is subscribed to (%s): lost"
        )
        self._logs = (self._drops, self._expiries, self._undecodable, self._unreceived)
        self._sweep_every = max(0.05, min(1.0, config.expiry / 4))
        self._task = loop.create_task(self._run(), name="redismpx_channels event loop layer")

    def __repr__(self) -> str:
        return f"<LoopLayer {len(self.channels)} channels, {len(self.members)} groups>"

    # ---- life

    async def _run(self) -> None:
        try:
            async with self.config.new_multiplexer() as mpx:
                self.mpx = mpx
                self._ready.set_result(None)
                while True:
                    await asyncio.sleep(self._sweep_every)
                    self.sweep(time.monotonic())
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
                self._ready.exception()  # the waiters raise it; nobody need retrieve it here
            raise
        finally:
            self.ended = True
            self.mpx = None
            for channel in list(self.channels.values()):
                channel.error = SubscriptionClosed("the layer closed on this event loop")
                self.close_channel(channel)
            for log in self._logs:
                log.flush(time.monotonic())

    async def wait_ready(self) -> MultiplexerLike:
        await asyncio.shield(self._ready)
        if self.mpx is None:
            raise SubscriptionClosed("the layer closed on this event loop")
        return self.mpx

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task})

    # ---- channels

    async def open_channel(self, name: str) -> LocalChannel:
        channel = self.channels.get(name)
        if channel is not None:
            return channel
        mpx = await self.wait_ready()
        config = self.config
        channel = LocalChannel(name, config.capacity_of(name), config.overflow, config.expiry, self)
        new = mpx.new_sharded_subscription if config.sharded else mpx.new_channel_subscription
        channel.subscription = new(
            channel.arrive,
            functools.partial(self._channel_down, channel),
            functools.partial(self._channel_up, channel),
        )
        self.channels[name] = channel
        try:
            await self._activate(channel, channel.key, f"channel {name}")
        except BaseException:
            self.close_channel(channel)
            raise
        return channel

    async def _activate(self, channel: LocalChannel, key: bytes, what: str) -> None:
        """Add ``key`` to the channel's subscription; wait until Redis confirms it."""
        future: asyncio.Future[None] = self.loop.create_future()
        channel.activating.setdefault(key, []).append(future)
        channel.subscription.add(key)  # may confirm at once (another channel holds it)
        try:
            async with asyncio.timeout(self.config.redis_timeout):
                await future
        except TimeoutError:
            raise TimeoutError(
                f"Redis did not confirm the subscription of {what} within "
                f"{self.config.redis_timeout} s (redis_timeout)"
            ) from None
        finally:
            waiting = channel.activating.get(key)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del channel.activating[key]

    def close_channel(self, channel: LocalChannel) -> None:
        if self.channels.get(channel.name) is channel:
            del self.channels[channel.name]
        for group in channel.groups:
            self._forget_member(group, channel.name)
        channel.groups.clear()
        if channel.down:
            channel.down = False
            self._one_less_down()
        channel.close()

    def flush(self) -> None:
        for channel in list(self.channels.values()):
            self.close_channel(channel)

    async def receive(self, name: str) -> Any:
        while True:
            channel = self.channels.get(name)
            if channel is None:
                channel = await self.open_channel(name)
            payload, expired = channel.take(time.monotonic())
            if expired:
                self._expired(channel, expired)
            if payload is not None:
                if type(payload) is dict:
                    return dict(payload)
                message = decode(payload)  # type: ignore[arg-type]
                if message is not None:
                    return message
                self.counters.messages_undecodable += 1
                self._undecodable.add(name, 1, time.monotonic())
                continue
            if channel.error is not None:
                if self.channels.get(name) is channel:
                    del self.channels[name]
                raise channel.error
            if channel.closed:
                continue  # flushed: a channel of the same name is made again
            waiter: asyncio.Future[None] = self.loop.create_future()
            channel.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                self._receiver_left(channel, waiter)
                raise

    def _receiver_left(self, channel: LocalChannel, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            channel.waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled() and channel.items:
            channel.wake_one()  # it was woken for an item it will not take
        if not channel.closed and not channel.waiters and not channel.items:
            # A cancelled receive is how Channels tells that a consumer has ended: its
            # channel goes with it (as in the stock layer), or it would stay subscribed.
            self.close_channel(channel)

    # ---- groups

    async def group_add(self, group: str, name: str) -> None:
        channel = self.channels.get(name)
        opened = channel is None
        if channel is None:
            channel = await self.open_channel(name)
        if group in channel.groups:
            channel.groups[group] = time.monotonic()
            return
        channel.groups[group] = time.monotonic()
        self.members.setdefault(group, set()).add(name)
        try:
            await self._activate(channel, self.group_key(group).encode(), f"group {group}")
        except BaseException:
            if opened:
                self.close_channel(channel)
            else:
                self._leave(channel, group)
            raise

    def group_discard(self, group: str, name: str) -> None:
        channel = self.channels.get(name)
        if channel is not None and group in channel.groups:
            self._leave(channel, group)

    def group_key(self, group: str) -> str:
        return f"{self.config.prefix}__group__{group}"

    def _leave(self, channel: LocalChannel, group: str) -> None:
        del channel.groups[group]
        self._forget_member(group, channel.name)
        if channel.subscription is not None:
            channel.subscription.remove(self.group_key(group))

    def _forget_member(self, group: str, name: str) -> None:
        members = self.members.get(group)
        if members is not None:
            members.discard(name)
            if not members:
                del self.members[group]

    # ---- publishing

    async def publish(self, name: str, payload: bytes) -> int:
        mpx = self.mpx or await self.wait_ready()
        publish = mpx.spublish if self.config.sharded else mpx.publish
        try:
            async with asyncio.timeout(self.config.redis_timeout):
                receivers = await publish(name, payload)
        except TimeoutError:
            raise TimeoutError(
                f"no answer from Redis within {self.config.redis_timeout} s (redis_timeout); "
                "the message may or may not have been published"
            ) from None
        if not receivers:
            self.counters.sends_unreceived += 1
        return receivers

    def unreceived(self, name: str) -> None:
        self._unreceived.add(name, 1, time.monotonic())

    # ---- what the channels tell (ChannelOwner), and the multiplexer's notices

    def dropped(self, channel: LocalChannel, count: int) -> None:
        self.counters.messages_dropped += count
        self._drops.add(channel.name, count, time.monotonic())

    def overflowed(self, channel: LocalChannel, error: SubscriptionOverflow) -> None:
        logger.warning("channel %s closed: %s (overflow policy 'close')", channel.name, error)
        channel.error = error
        channel.items.clear()
        self.close_channel(channel)
        # Kept until a receive raises the error: its consumer must hear of it.
        self.channels[channel.name] = channel

    def _channel_down(self, channel: LocalChannel, error: RedisMPXError) -> None:
        if isinstance(error, ServerError):
            # Redis refused one of its names (ACLs): whoever waits for it hears why.
            logger.warning("Redis refused a name of channel %s: %s", channel.name, error)
            for futures in channel.activating.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
            return
        if channel.down or channel.closed:
            return
        channel.down = True
        self._down += 1
        if self.config.on_disconnect is not None:
            channel.notice({"type": self.config.on_disconnect}, repeatable=False)
        outage = self._outage
        if outage is None:
            outage = self._outage = _Outage(time.monotonic(), error)
            self.counters.outages += 1
            # Said once the reader has told every channel of this loss.
            self.loop.call_soon(self._say_lost, outage)
        outage.channels += 1
        outage.groups.update(channel.groups)
        self.counters.channels_interrupted += 1

    def _say_lost(self, outage: _Outage) -> None:
        logger.warning(
            "Redis Pub/Sub connection lost (%s): %d channels and %d groups of this event "
            "loop receive nothing until it is back; what is published to them meanwhile "
            "is lost",
            outage.error,
            outage.channels,
            len(outage.groups),
        )

    def _channel_up(self, channel: LocalChannel, key: bytes) -> None:
        for future in channel.activating.pop(key, ()):
            if not future.done():
                future.set_result(None)
        if channel.down:
            channel.down = False
            if self.config.on_reconnect is not None:
                channel.notice({"type": self.config.on_reconnect})
            self._one_less_down()

    def _one_less_down(self) -> None:
        self._down -= 1
        outage = self._outage
        if self._down or outage is None:
            return
        self._outage = None
        seconds = time.monotonic() - outage.started
        self.counters.outage_seconds += seconds
        logger.warning(
            "Redis Pub/Sub connection back after %.3f s: messages published during that "
            "time to %d channels and %d groups of this event loop were lost (Redis keeps "
            "no Pub/Sub backlog)",
            seconds,
            outage.channels,
            len(outage.groups),
        )

    # ---- expiry

    def _expired(self, channel: LocalChannel, count: int) -> None:
        self.counters.messages_expired += count
        self._expiries.add(channel.name, count, time.monotonic())
        if channel.groups:
            # As in Channels' own layers: a message left unread that long means the
            # consumer is gone or stuck, and its groups stop sending to it.
            logger.info(
                "channel %s leaves its %d groups: a message expired unread on it",
                channel.name,
                len(channel.groups),
            )
            for group in list(channel.groups):
                self._leave(channel, group)

    def sweep(self, now: float) -> None:
        group_expiry = self.config.group_expiry
        for channel in list(self.channels.values()):
            expired = channel.expire(now)
            if expired:
                self._expired(channel, expired)
                if not channel.waiters and not channel.items:
                    self.close_channel(channel)  # nobody reads it: it goes
                    continue
            for group, joined in list(channel.groups.items()):
                if now - joined > group_expiry:
                    self._leave(channel, group)
        for log in self._logs:
            log.flush(now)
