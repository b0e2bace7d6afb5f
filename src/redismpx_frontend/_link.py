"""One connection to one server: its core, the runner that drives it, its readiness,
and the publishes waiting for their replies.

A multiplexer on one server has one link (two under RESP2, where a subscribed
connection cannot publish); a cluster multiplexer has one per node connection the
router wants. A link is ready once its handshake completed (the core's
``ConnectionEstablished``) and until the connection is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

from redismpx_core import (
    ConnectionEstablished,
    ConnectionLost,
    ConnectionState,
    Event,
    PublishCompleted,
    PublishFailed,
    ServerError,
    Settings,
    SubscriptionClosed,
)

from ._backend import Signal, Stream
from ._connect import open_stream
from ._engine import Core, Engine, Events
from ._runner import ConnectionRunner

__all__ = ("Link", "LinkDropped")

logger = logging.getLogger("redismpx")


class LinkDropped(ConnectionLost):
    """A publish waited for a link that a cluster router then dropped, before it was
    sent: the caller looks for the connection to send it on again."""


class _PublishWaiter:
    __slots__ = ("error", "receivers", "signal")

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.receivers = 0
        self.error: ServerError | ConnectionLost | SubscriptionClosed | None = None


class Link:
    """One connection to one server (see the module docstring).

    ``on_events`` takes the events of every input (by default: dispatch them, and
    take the link's own replies with :meth:`take_reply`); ``on_lost`` hears of every
    loss, after the core. ``connect`` opens each connection (by default: as
    ``settings`` say, with :func:`open_stream`).
    """

    __slots__ = (
        "_dropped",
        "_engine",
        "_ready",
        "_role",
        "_target",
        "_waiters",
        "core",
        "runner",
    )

    def __init__(
        self,
        engine: Engine,
        core: Core,
        settings: Settings,
        role: str,
        *,
        on_events: Callable[[Link, Events], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        connect: Callable[[], Awaitable[Stream]] | None = None,
    ) -> None:
        self._engine = engine
        self.core = core
        self._role = role
        self._target = settings.redacted_url()
        self._ready = engine.backend.new_signal()
        self._waiters: dict[int, _PublishWaiter] = {}
        self._dropped = False
        self.runner = ConnectionRunner(
            engine.backend,
            core,
            connect or partial(open_stream, engine.backend, settings),
            partial(on_events or Link._dispatch, self),
            partial(self._lost, on_lost),
            role=role,
            target=self._target,
        )

    def __repr__(self) -> str:
        return f"<Link {self._role} {self._target} {self.core.state.value}>"

    def start(self) -> None:
        self._engine.spawn(self.runner.run)

    def stop(self) -> None:
        self.runner.stop()

    def drop(self) -> None:
        """A cluster router no longer wants this connection (it closed the core): stop
        it. A publish waiting for it to be ready raises :class:`LinkDropped`, and one
        already sent fails with ``ConnectionLost`` (it may have been delivered, and is
        not sent twice); the closed core's own failures are not told (see ClusterCore)."""
        self.runner.stop()
        self._dropped = True
        self._fail_waiters(ConnectionLost(f"the connection to {self._target} was dropped"))
        self._ready.set()

    def wake(self) -> None:
        self.runner.wake()

    @property
    def ready(self) -> bool:
        return self.core.state is ConnectionState.READY

    # ---- input

    def _dispatch(self, events: Events) -> None:
        self._engine.dispatch(events, self.take_reply)

    def take_reply(self, event: Event[object, object]) -> None:
        """An event for the connection rather than a subscription: the handshake's end, a
        publish's reply."""
        if type(event) is ConnectionEstablished:
            log_handshake(self._role, self._target, self.core)
            self._ready.set()
        elif type(event) is PublishCompleted:
            waiter = self._waiters.pop(event.token, None)
            if waiter is not None:  # (None: its caller gave up, cancelled)
                waiter.receivers = event.receivers
                waiter.signal.set()
        elif type(event) is PublishFailed:
            waiter = self._waiters.pop(event.token, None)
            if waiter is not None:
                waiter.error = event.error
                waiter.signal.set()

    def _lost(self, then: Callable[[], None] | None) -> None:
        if self._ready.is_set() and not self._engine.closed:
            self._ready = self._engine.backend.new_signal()
        if then is not None:
            then()

    # ---- waiting

    async def wait_ready(self) -> None:
        """Until the handshake completes (at once if it has); raises ``SubscriptionClosed``
        once the multiplexer is closed."""
        while True:
            ready = self._ready
            await ready.wait()
            if self._engine.closed:
                raise SubscriptionClosed("the multiplexer is closed")
            if self._dropped:
                raise LinkDropped(f"the connection to {self._target} was dropped")
            if ready is self._ready:
                return

    async def publish(self, channel: bytes, data: bytes, *, sharded: bool) -> int:
        """PUBLISH (or SPUBLISH) once ready; the number of receivers."""
        while True:
            await self.wait_ready()
            if self.ready:
                break
        token = self.core.publish(channel, data, sharded=sharded)
        waiter = _PublishWaiter(self._engine.backend.new_signal())
        self._waiters[token] = waiter
        self.wake()
        try:
            await waiter.signal.wait()
        finally:
            self._waiters.pop(token, None)
        if waiter.error is not None:
            raise waiter.error
        return waiter.receivers

    def close(self) -> None:
        """The multiplexer closed: wake every waiter (the core already failed its replies)."""
        self._fail_waiters(SubscriptionClosed("the multiplexer was closed"))
        self._ready.set()

    def _fail_waiters(self, error: ConnectionLost | SubscriptionClosed) -> None:
        for waiter in self._waiters.values():
            waiter.error = error
            waiter.signal.set()
        self._waiters.clear()


def log_handshake(role: str, target: str, core: Core) -> None:
    """A connection completed its handshake: one INFO line, with how many names it now
    (re)subscribes. Counts only, never a name or a payload; ``target`` is the redacted
    URL (no password)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    counts = core.wanted_counts()
    names = ""
    if any(counts):
        verb = "resubscribing" if core.connections_made > 1 else "subscribing"
        words = ("channel", "pattern", "shard channel")
        listed = [f"{n} {w}{'' if n == 1 else 's'}" for n, w in zip(counts, words, strict=True)]
        names = f"; {verb} {', '.join(listed)}"
    logger.info(
        "redismpx %s handshake completed with %s (RESP%d)%s",
        role,
        target,
        core.protocol,
        names,
    )
