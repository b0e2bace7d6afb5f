"""python-socketio client managers over a redismpx multiplexer.

python-socketio's ``AsyncPubSubManager`` does the Socket.IO side: it turns ``emit``,
room changes, disconnects and acknowledgement callbacks into dicts, publishes them with
``_publish``, and dispatches what ``_listen`` yields. A back end supplies those two
methods. The ones here put them on a multiplexer:

* ``_publish`` encodes the dict with the manager's JSON module (as the stock
  ``AsyncRedisManager`` does, so both can share a channel), stamps it with a sequence
  number, and publishes it, waiting at most ``publish_timeout`` for Redis;
* ``_listen`` iterates over the channel's messages, which the multiplexer reads into a
  bounded buffer and resubscribes after every reconnect, and yields the decoded dicts.

A second, callback subscription on the same channel (the multiplexer subscribes the
name once) hears of every loss and re-activation, for the log lines of
:mod:`._report`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar, Final

import anyio
from socketio.async_pubsub_manager import AsyncPubSubManager

from redismpx_anyio import (
    ClusterMultiplexer,
    ConnectionLost,
    MessageIterator,
    Multiplexer,
    OverflowPolicy,
    ServerError,
    SubscriptionClosed,
)

from ._owner import AnyMultiplexer, MultiplexerOwner
from ._report import DEFAULT_LOGGER, Report
from ._sequence import SEQUENCE_KEY, SequenceTracker
from ._statistics import ManagerStatistics

__all__ = ("ClusterMultiplexerManager", "MultiplexerManager")

#: Seconds an event may wait for Redis before it counts as not published.
DEFAULT_PUBLISH_TIMEOUT: Final = 5.0


def _ignore(channel: bytes, data: bytes) -> None:
    """The watching subscription's messages: the iterator delivers them."""


def _check_channel(channel: object) -> str:
    if not isinstance(channel, str):
        raise TypeError(f"channel must be a str, not {type(channel).__name__}")
    if not channel:
        raise ValueError("channel must not be empty")
    return channel


def _check_timeout(publish_timeout: object) -> float | None:
    if publish_timeout is None:
        return None
    if isinstance(publish_timeout, bool) or not isinstance(publish_timeout, int | float):
        raise TypeError(
            f"publish_timeout must be a number of seconds or None, "
            f"not {type(publish_timeout).__name__}"
        )
    if not math.isfinite(publish_timeout) or publish_timeout <= 0:
        raise ValueError(f"publish_timeout must be > 0 and finite, got {publish_timeout!r}")
    return float(publish_timeout)


def _check_options(options: dict[str, Any]) -> None:
    if "redis_options" in options:
        raise TypeError(
            "unexpected option 'redis_options' (AsyncRedisManager's, for redis-py): give "
            "the multiplexer's options as keywords, e.g. health_check_interval=10"
        )


class _MultiplexerManagerBase(AsyncPubSubManager):  # type: ignore[misc]
    """What both managers share; they differ in the multiplexer and the kind of channel."""

    name = "redismpx"
    #: Shard channel (SSUBSCRIBE/SPUBLISH) or plain channel.
    _sharded: ClassVar[bool] = False

    def __init__(
        self,
        factory: Callable[[], AnyMultiplexer],
        channel: str,
        write_only: bool,
        logger: logging.Logger | None,
        json: Any,
        publish_timeout: float | None,
    ) -> None:
        channel = _check_channel(channel)
        timeout = _check_timeout(publish_timeout)
        owner = MultiplexerOwner(factory)
        settings = owner.settings
        if settings.overflow is OverflowPolicy.CLOSE:
            raise ValueError(
                "overflow='close' would end the manager's subscription for good: use "
                "'drop-oldest' (the default) or 'drop-newest'"
            )
        super().__init__(channel=channel, write_only=write_only, logger=logger, json=json)
        self._owner = owner
        self._publish_timeout = timeout
        self._channel_name = channel.encode()
        self._sequences = SequenceTracker()
        self._next_number = 1
        self._report = Report(
            logger if logger is not None else logging.getLogger(DEFAULT_LOGGER),
            channel,
            f"{settings.buffer_size} events, policy {OverflowPolicy(settings.overflow).value}",
        )

    # ---- public

    def statistics(self) -> ManagerStatistics:
        """A snapshot of what this manager counted: see :class:`ManagerStatistics`."""
        return self._report.statistics()

    async def close(self) -> None:
        """Stop listening and close the multiplexer. Idempotent; an ``emit`` afterwards
        raises ``RuntimeError``. Give it to the ASGI app's shutdown, e.g.
        ``socketio.ASGIApp(sio, on_shutdown=manager.close)``."""
        listener = getattr(self, "thread", None)  # the base class's listening task
        if isinstance(listener, asyncio.Task) and not listener.done():
            listener.cancel()
            await asyncio.wait({listener})
        await self._owner.close()

    # ---- AsyncPubSubManager's two methods

    async def _publish(self, data: dict[str, Any]) -> int | None:
        # Encoded before anything else, so that an event JSON cannot carry fails here,
        # with the JSON module's error, and consumes no sequence number.
        number = self._next_number
        encoded = self.json.dumps({**data, SEQUENCE_KEY: number})
        payload = encoded.encode() if isinstance(encoded, str) else encoded
        self._next_number = number + 1
        mpx = await self._owner.multiplexer()
        report = self._report
        if report.publishing_down and not mpx.connected:
            # An earlier event already waited out this outage: do not hold up the
            # caller again until the connection is back.
            report.publish_failed(None)
            return None
        try:
            with anyio.fail_after(self._publish_timeout):
                receivers = await self._send(mpx, payload)
        except (TimeoutError, ConnectionLost, ServerError, SubscriptionClosed) as exc:
            report.publish_failed(exc)
            return None
        report.published()
        return receivers

    async def _listen(self) -> AsyncIterator[dict[str, Any]]:
        mpx = await self._owner.multiplexer()
        report = self._report
        watch = self._watch(mpx)
        try:
            async with self._subscribe(mpx) as messages:
                seen_dropped = 0
                async for message in messages:
                    dropped = messages.dropped
                    if dropped != seen_dropped:
                        report.dropped(dropped - seen_dropped)
                        seen_dropped = dropped
                    event = self._decode(message.data)
                    if event is not None:
                        report.events_received += 1
                        yield event
        except SubscriptionClosed:
            return  # the multiplexer closed: the manager, or its event loop, is ending
        finally:
            watch.close()
            report.subscribed = False

    # ---- helpers

    def _decode(self, payload: bytes) -> dict[str, Any] | None:
        """The event in ``payload``, or ``None`` (counted and logged) if there is none."""
        report = self._report
        try:
            event = self.json.loads(payload)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
            report.malformed("not JSON")
            return None
        if not isinstance(event, dict) or not isinstance(event.get("method"), str):
            report.malformed("not an object with a 'method'")
            return None
        publisher = event.get("host_id")
        number = event.get(SEQUENCE_KEY)
        if (
            type(number) is int
            and isinstance(publisher, str)
            and publisher != self.host_id  # our own events come back: no news there
        ):
            gap = self._sequences.observe(publisher, number)
            if gap is not None:
                report.missed(publisher, *gap)
        return event

    def _watch(self, mpx: AnyMultiplexer) -> Any:
        report = self._report
        if self._sharded:
            watch: Any = mpx.new_sharded_subscription(_ignore, report.lost, report.activated)
        else:
            watch = mpx.new_channel_subscription(_ignore, report.lost, report.activated)
        watch.add(self._channel_name)
        return watch

    def _subscribe(self, mpx: AnyMultiplexer) -> MessageIterator:
        if self._sharded:
            return mpx.ssubscribe(self._channel_name)
        return mpx.subscribe(self._channel_name)

    async def _send(self, mpx: AnyMultiplexer, payload: bytes) -> int:
        if self._sharded:
            return await mpx.spublish(self._channel_name, payload)
        return await mpx.publish(self._channel_name, payload)


class MultiplexerManager(_MultiplexerManagerBase):
    """A client manager for ``socketio.AsyncServer`` over one Redis server, in place of
    ``socketio.AsyncRedisManager``::

        mgr = redismpx_socketio.MultiplexerManager("redis://localhost:6379/0")
        sio = socketio.AsyncServer(async_mode="asgi", client_manager=mgr)

    It resubscribes after every reconnect, keeps what it reads in a bounded buffer, and
    logs (on the ``redismpx_socketio`` logger, or ``logger``) every loss and every
    return, with what was lost. ``channel``, ``write_only``, ``logger`` and ``json``
    are ``AsyncRedisManager``'s; ``publish_timeout`` is how long an event may wait for
    Redis before it counts as not published (``None``: no limit); any other keyword is
    a ``Multiplexer`` option (``buffer_size``, ``overflow``, ``health_check_interval``,
    ...). Events go over the channel as the stock manager's do, so both can share it.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        channel: str = "socketio",
        write_only: bool = False,
        logger: logging.Logger | None = None,
        json: Any = None,
        *,
        publish_timeout: float | None = DEFAULT_PUBLISH_TIMEOUT,
        **options: Any,
    ) -> None:
        _check_options(options)

        def factory() -> AnyMultiplexer:
            return Multiplexer(url, **options)

        super().__init__(factory, channel, write_only, logger, json, publish_timeout)


class ClusterMultiplexerManager(_MultiplexerManagerBase):
    """A client manager over a Redis Cluster: the channel is one shard channel
    (SSUBSCRIBE/SPUBLISH, Redis 7+), on the master owning its slot, and it follows the
    slot when it moves::

        mgr = redismpx_socketio.ClusterMultiplexerManager(["redis://10.0.0.1:7000"])

    ``startup_urls`` are any few nodes of the cluster; ``refresh_interval`` and the other
    keywords are ``ClusterMultiplexer``'s; the rest is :class:`MultiplexerManager`'s.
    """

    name = "redismpx-cluster"
    _sharded = True

    def __init__(
        self,
        startup_urls: str | Sequence[str] = "redis://localhost:6379/0",
        channel: str = "socketio",
        write_only: bool = False,
        logger: logging.Logger | None = None,
        json: Any = None,
        *,
        publish_timeout: float | None = DEFAULT_PUBLISH_TIMEOUT,
        **options: Any,
    ) -> None:
        _check_options(options)

        def factory() -> AnyMultiplexer:
            return ClusterMultiplexer(startup_urls, **options)

        super().__init__(factory, channel, write_only, logger, json, publish_timeout)
