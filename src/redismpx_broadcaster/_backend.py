"""``RedisMPXBackend``: broadcaster's back end interface over one redismpx multiplexer.

One channel subscription of the multiplexer holds every channel the broadcast
asks for. Its ``on_message`` runs inline on the multiplexer's reader and only puts
``(channel, data)`` into the hand-off (a :class:`Mailbox`, bounded, never
waiting); ``next_published`` takes from it. ``subscribe`` returns once Redis has
confirmed the channel, so a message published after it is received. The
multiplexer reconnects and subscribes again by itself; this back end follows its
notices to say what an outage lost (:mod:`._outage`).

The multiplexer is entered in a task of its own, not in the caller's: broadcaster
calls ``connect`` and ``disconnect`` from whatever tasks its user does, and the
multiplexer's task group must be left by the task that entered it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any, final

from broadcaster import BroadcastBackend, Event

from redismpx_anyio import (
    ChannelSubscription,
    ClusterMultiplexer,
    Multiplexer,
    OverflowPolicy,
    ShardedSubscription,
    Statistics,
    SubscriptionClosed,
)

from ._mailbox import Mailbox, overflow_options
from ._outage import Outage, OutageTracker, logger
from ._values import check_channel, encode_message

__all__ = ("RedisMPXBackend",)

AnyMultiplexer = Multiplexer | ClusterMultiplexer
DisconnectHook = Callable[[Exception], Any]
ReconnectHook = Callable[[Outage], Any]


class _Confirmation:
    """Redis' answer to a SUBSCRIBE, awaited by every ``subscribe`` of that channel."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.error: Exception | None = None

    def settle(self, error: Exception | None = None) -> None:
        self.error = error
        self.done.set()


@final
class RedisMPXBackend(BroadcastBackend):
    """A back end on one multiplexer: ``Broadcast(backend=RedisMPXBackend(url))``.

    ``url`` and ``options`` are the multiplexer's (docs/configuration.md); a mistake
    in them raises here. ``buffer_size`` and ``overflow`` bound the hand-off between
    the multiplexer and the broadcast's listener (``"drop-oldest"`` or
    ``"drop-newest"``: there is one hand-off for every subscriber, so ``"close"``
    would stop them all). ``sharded`` uses SSUBSCRIBE/SPUBLISH (Redis 7+).
    ``startup_timeout`` bounds how long ``connect`` waits for the first connection
    (None: no bound). ``on_disconnect(error)`` is called when the connection is lost,
    ``on_reconnect(outage)`` once every channel is confirmed again; either may be
    ``async``.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        buffer_size: int = 10_000,
        overflow: OverflowPolicy | str = OverflowPolicy.DROP_OLDEST,
        sharded: bool = False,
        startup_timeout: float | None = 10.0,
        on_disconnect: DisconnectHook | None = None,
        on_reconnect: ReconnectHook | None = None,
        **options: Any,
    ) -> None:
        # BroadcastBackend.__init__ only raises NotImplementedError: not called.
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        Multiplexer(url, **options)  # the URL and the options are checked now, not at connect
        self._setup(
            lambda: Multiplexer(url, **options),
            buffer_size,
            overflow,
            sharded,
            startup_timeout,
            on_disconnect,
            on_reconnect,
        )

    @classmethod
    def cluster(
        cls,
        startup_urls: str | Sequence[str],
        *,
        buffer_size: int = 10_000,
        overflow: OverflowPolicy | str = OverflowPolicy.DROP_OLDEST,
        sharded: bool = False,
        startup_timeout: float | None = 10.0,
        on_disconnect: DisconnectHook | None = None,
        on_reconnect: ReconnectHook | None = None,
        **options: Any,
    ) -> RedisMPXBackend:
        """The same back end on a :class:`ClusterMultiplexer` (docs/cluster.md).

        With ``sharded=True`` each channel is a shard channel served by the master
        owning its slot; otherwise channels ride one node and PUBLISH reaches every
        node over the cluster bus.
        """
        ClusterMultiplexer(startup_urls, **options)
        backend = cls.__new__(cls)
        backend._setup(
            lambda: ClusterMultiplexer(startup_urls, **options),
            buffer_size,
            overflow,
            sharded,
            startup_timeout,
            on_disconnect,
            on_reconnect,
        )
        return backend

    def _setup(
        self,
        make: Callable[[], AnyMultiplexer],
        buffer_size: int,
        overflow: OverflowPolicy | str,
        sharded: bool,
        startup_timeout: float | None,
        on_disconnect: DisconnectHook | None,
        on_reconnect: ReconnectHook | None,
    ) -> None:
        size, policy = overflow_options(buffer_size, overflow, "buffer_size")
        if policy is OverflowPolicy.CLOSE:
            raise ValueError(
                "the back end's hand-off serves every subscriber: overflow='close' would "
                "stop them all; bound each subscriber with redismpx_broadcaster.Broadcast"
            )
        if not isinstance(sharded, bool):
            raise TypeError(f"sharded must be a bool, not {type(sharded).__name__}")
        if startup_timeout is not None:
            if isinstance(startup_timeout, bool) or not isinstance(startup_timeout, int | float):
                kind = type(startup_timeout).__name__
                raise TypeError(f"startup_timeout must be a number or None, not {kind}")
            if not startup_timeout > 0:
                raise ValueError(f"startup_timeout must be > 0, got {startup_timeout!r}")
        for label, hook in (("on_disconnect", on_disconnect), ("on_reconnect", on_reconnect)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{label} must be callable, not {type(hook).__name__}")
        self._make = make
        self._buffer_size = size
        self._policy = policy
        self._sharded = sharded
        self._startup_timeout = startup_timeout
        self._on_disconnect_hook = on_disconnect
        self._on_reconnect_hook = on_reconnect
        self._runner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._mpx: AnyMultiplexer | None = None
        self._sub: ChannelSubscription | ShardedSubscription | None = None
        self._handoff: Mailbox[tuple[bytes, bytes]] | None = None
        self._held: set[str] = set()
        self._active: set[str] = set()
        self._confirmations: dict[str, _Confirmation] = {}
        self._outage = OutageTracker()
        self._hook_tasks: set[asyncio.Task[Any]] = set()
        self._dropped_before = 0
        self.undecodable = 0

    def __repr__(self) -> str:
        state = "connected" if self._sub is not None else "not connected"
        return f"<RedisMPXBackend {self._mpx or self._make()!r} {state}>"

    # ---- broadcaster's interface

    async def connect(self) -> None:
        """Start the multiplexer; wait up to ``startup_timeout`` for its connection."""
        if self._runner is not None:
            raise RuntimeError("the back end is connected already; disconnect() first")
        mpx = self._make()
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._handoff = Mailbox(
            self._buffer_size,
            self._policy,
            closing=lambda: RuntimeError("the back end is disconnected"),
            overflowed=lambda bound: AssertionError("unreachable: no close policy here"),
            on_first_drop=self._first_drop,
        )
        self._runner = asyncio.create_task(self._run(mpx, started), name="redismpx.broadcaster")
        try:
            await asyncio.shield(started)
            if self._startup_timeout is not None:
                async with asyncio.timeout(self._startup_timeout):
                    await mpx.wait_connected()
        except TimeoutError:
            await self.disconnect()
            raise TimeoutError(
                f"no connection to Redis within {self._startup_timeout} s "
                f"({mpx!r}; the 'redismpx' logger says why)"
            ) from None
        except BaseException:
            await self.disconnect()
            raise

    async def _run(self, mpx: AnyMultiplexer, started: asyncio.Future[None]) -> None:
        try:
            async with mpx:
                new = (
                    mpx.new_sharded_subscription if self._sharded else mpx.new_channel_subscription
                )
                self._sub = new(self._on_message, self._on_disconnect, self._on_activation)
                self._mpx = mpx
                started.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
                return  # connect() raises it
            raise
        finally:
            self._sub = None

    async def disconnect(self) -> None:
        """Close the multiplexer (its connections and subscriptions); twice is fine."""
        runner = self._runner
        if runner is None:
            return
        self._runner = None
        self._stop.set()
        try:
            await runner
        finally:
            handoff = self._handoff
            if handoff is not None:
                handoff.close()
                if handoff.dropped:
                    logger.warning(
                        "redismpx.broadcaster: the back end dropped %d message(s) in all "
                        "(its hand-off of %d was full)",
                        handoff.dropped,
                        handoff.bound,
                    )
                self._dropped_before += handoff.dropped
            for confirmation in self._confirmations.values():
                confirmation.settle(SubscriptionClosed("the back end was disconnected"))
            self._confirmations.clear()
            self._held.clear()
            self._active.clear()
            self._outage = OutageTracker()

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel``; returns once Redis has confirmed it.

        While Redis is unreachable it waits for the reconnection (bound it with
        ``asyncio.timeout``). A channel Redis refuses raises its ``ServerError``.
        """
        check_channel(channel)
        sub = self._subscription()
        if channel in self._active:
            return
        confirmation = self._confirmations.get(channel)
        if confirmation is None:
            confirmation = self._confirmations[channel] = _Confirmation()
            self._held.add(channel)
            sub.add(channel)
        await confirmation.done.wait()
        if confirmation.error is not None:
            raise confirmation.error

    async def unsubscribe(self, channel: str) -> None:
        """Let ``channel`` go: none of its messages is taken from Redis after this."""
        check_channel(channel)
        sub = self._subscription()
        self._held.discard(channel)
        self._active.discard(channel)
        confirmation = self._confirmations.pop(channel, None)
        if confirmation is not None:
            confirmation.settle(SubscriptionClosed("unsubscribed before Redis confirmed it"))
        sub.remove(channel)
        self._report(self._outage.released(channel))

    async def publish(self, channel: str, message: Any) -> None:
        """PUBLISH (SPUBLISH when sharded) ``message``: ``str``, bytes, int or float.

        Waits for a connection while Redis is unreachable, like the multiplexer's
        ``publish``; bound it with ``asyncio.timeout``.
        """
        check_channel(channel)
        data = encode_message(message)
        mpx = self._mpx
        if mpx is None or self._sub is None:
            raise RuntimeError("the back end is not connected: call connect() first")
        if self._sharded:
            await mpx.spublish(channel, data)
        else:
            await mpx.publish(channel, data)

    async def next_published(self) -> Event:
        """The next message of a subscribed channel, as broadcaster's ``Event``."""
        handoff = self._handoff
        if handoff is None:
            raise RuntimeError("the back end is not connected: call connect() first")
        while True:
            channel, data = await handoff.get()
            try:
                message = data.decode("utf-8")
            except UnicodeDecodeError:
                # An Event carries text; the stock back end's listener dies on such a
                # message (and every subscriber with it): this one skips it and counts.
                self.undecodable += 1
                if self.undecodable == 1:
                    logger.warning(
                        "redismpx.broadcaster: skipped a message that is not UTF-8 text "
                        "(counted in backend.undecodable)"
                    )
                continue
            return Event(channel.decode("utf-8"), message)

    # ---- what the adapter adds

    @property
    def dropped(self) -> int:
        """Messages lost to a full hand-off, over every connect of this back end."""
        handoff = self._handoff
        live = 0 if handoff is None or handoff.closed else handoff.dropped
        return self._dropped_before + live

    @property
    def channels(self) -> frozenset[str]:
        """The channels subscribed now (confirmed or on their way)."""
        return frozenset(self._held)

    def statistics(self) -> Statistics:
        """The multiplexer's counters (docs/statistics.md)."""
        if self._mpx is None:
            raise RuntimeError("the back end was never connected")
        return self._mpx.statistics()

    def _subscription(self) -> ChannelSubscription | ShardedSubscription:
        sub = self._sub
        if sub is None or self._runner is None:
            raise RuntimeError("the back end is not connected: call connect() first")
        return sub

    # ---- the multiplexer's callbacks: inline on its reader, never blocking

    def _on_message(self, channel: bytes, data: bytes) -> None:
        handoff = self._handoff
        if handoff is not None:
            handoff.put((channel, data))

    def _on_activation(self, name: bytes) -> None:
        channel = name.decode("utf-8")
        if channel not in self._held:
            return
        self._active.add(channel)
        confirmation = self._confirmations.pop(channel, None)
        if confirmation is not None:
            confirmation.settle()
        self._report(self._outage.confirmed(channel))

    def _on_disconnect(self, error: Exception) -> None:
        sub = self._sub
        names = sub.names if sub is not None else frozenset()
        refused = [c for c in self._held if c.encode("utf-8") not in names]
        if refused:
            # Redis refused these names (ACLs): only they are gone, the connection is fine.
            for channel in refused:
                self._held.discard(channel)
                self._active.discard(channel)
                confirmation = self._confirmations.pop(channel, None)
                if confirmation is not None:
                    confirmation.settle(error)
                self._report(self._outage.released(channel))
            logger.warning(
                "redismpx.broadcaster: Redis refused %d channel(s): %s", len(refused), error
            )
            return
        self._active.clear()
        self._outage.lost(error, self._held)
        self._call_hook("on_disconnect", self._on_disconnect_hook, error)

    def _report(self, outage: Outage | None) -> None:
        if outage is not None:
            self._call_hook("on_reconnect", self._on_reconnect_hook, outage)

    def _call_hook(self, label: str, hook: Callable[[Any], Any] | None, value: object) -> None:
        if hook is None:
            return
        try:
            result = hook(value)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._hook_tasks.add(task)
                task.add_done_callback(self._hook_done)
        except Exception:
            logger.exception("redismpx.broadcaster: %s raised", label)

    def _hook_done(self, task: asyncio.Task[Any]) -> None:
        self._hook_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("redismpx.broadcaster: a hook raised", exc_info=task.exception())

    def _first_drop(self, handoff: Mailbox[tuple[bytes, bytes]]) -> None:
        logger.warning(
            "redismpx.broadcaster: the back end's hand-off of %d messages is full (the "
            "broadcast's listener does not keep up); policy %s, drops counted in "
            "backend.dropped",
            handoff.bound,
            handoff.policy.value,
        )
