"""Networked promises: one PSUBSCRIBE on ``prefix*``; each promise awaits one channel.

The core keeps the promises (their channels and deadlines) and settles them; the
front end turns each settlement into the result or the error of an awaitable.
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from typing import Any, final

from redismpx_core import InactiveSubscription, RedisMPXError, ServerError, SubscriptionClosed

from ._backend import Signal
from ._delivery import Message
from ._engine import Engine, Handle

__all__ = ("Promise", "PromiseSubscription")


class _Outcome:
    """The owner of a promise's core handle: where the core's settlement lands."""

    __slots__ = ("error", "result", "signal")

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.result: bytes | None = None
        self.error: BaseException | None = None

    def fulfil(self, data: bytes) -> None:
        self.result = data
        self.signal.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.signal.set()


@final
class Promise:
    """The next message on one channel, within a deadline. ``await`` it for the payload.

    Raises :class:`TimeoutError` when the deadline passes first, :class:`PromiseInterrupted`
    when the connection is lost first, :class:`SubscriptionClosed` when its subscription
    (or multiplexer) closes first.
    """

    __slots__ = ("_outcome", "channel")

    def __init__(self, channel: bytes, outcome: _Outcome) -> None:
        self.channel = channel
        self._outcome = outcome

    def __repr__(self) -> str:
        outcome = self._outcome
        if not outcome.signal.is_set():
            state = "pending"
        else:
            state = "fulfilled" if outcome.error is None else type(outcome.error).__name__
        return f"<Promise {self.channel!r} {state}>"

    @property
    def done(self) -> bool:
        return self._outcome.signal.is_set()

    def __await__(self) -> Generator[Any, None, bytes]:
        return self._wait().__await__()

    async def _wait(self) -> bytes:
        outcome = self._outcome
        await outcome.signal.wait()
        if outcome.error is not None:
            # A fresh exception per await: the stored one never gets a traceback, whose
            # frames would lead back to this promise (a reference cycle that only the
            # cyclic garbage collector could free, payloads and all).
            raise _fresh(outcome.error)
        assert outcome.result is not None
        return outcome.result


def _fresh(error: BaseException) -> BaseException:
    """A copy of ``error`` with no traceback (same type, arguments and attributes)."""
    fresh = copy.copy(error)
    fresh.__traceback__ = None
    return fresh


class _PromiseFeed:
    """The owner of a promise subscription's core handle: its activation and its end."""

    __slots__ = ("active", "engine", "error", "handle")

    #: A promise subscription's messages settle its promises in the core: none reach it.
    queued = False

    def __init__(self, engine: Engine, prefix: str | bytes) -> None:
        self.engine = engine
        self.error: ServerError | None = None
        self.active: Signal = engine.backend.new_signal()
        self.handle: Handle = engine.open_promise_subscription(prefix, self)

    def deliver(self, channel: bytes, pattern: bytes | None, payloads: list[bytes]) -> None:
        raise AssertionError("a promise subscription gets no messages")

    def enqueue(self, messages: list[Message]) -> None:
        raise AssertionError("a promise subscription gets no messages")

    def activated(self, names: list[bytes]) -> None:
        self.active.set()

    def disconnected(self, error: RedisMPXError) -> None:
        if self.active.is_set():
            self.active = self.engine.backend.new_signal()

    def deactivated(self, name: bytes, error: RedisMPXError) -> None:
        self.disconnected(error)  # its one pattern: promises wait for it again

    def rejected(self, name: bytes, error: ServerError) -> None:
        # Without its pattern the subscription can never make a promise: it is over,
        # and its waiters learn why.
        self.error = error
        self.close()

    def multiplexer_closed(self) -> None:
        self.active.set()  # wait_for_activation() sees the subscription closed

    def close(self) -> None:
        self.engine.close_subscription(self.handle)
        self.active.set()


@final
class PromiseSubscription:
    """Networked promises: one PSUBSCRIBE on ``prefix*``; each promise awaits one channel."""

    __slots__ = ("_feed", "prefix")

    def __init__(self, engine: Engine, prefix: str | bytes) -> None:
        engine.check_usable()
        self._feed = _PromiseFeed(engine, prefix)
        self.prefix: bytes = self._feed.handle.prefix

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("active" if self.active else "inactive")
        return f"<PromiseSubscription {self.prefix!r} {state}>"

    @property
    def active(self) -> bool:
        return self._feed.active.is_set() and not self._feed.handle.closed

    @property
    def closed(self) -> bool:
        return self._feed.handle.closed

    def _raise_if_closed(self) -> None:
        feed = self._feed
        if feed.handle.closed:
            if feed.error is not None:
                raise feed.error  # the server refused the prefix (NOPERM...)
            raise SubscriptionClosed("the promise subscription is closed")

    async def wait_for_activation(self) -> None:
        """Wait until promises can be made (again, after a reconnect).

        Raises :class:`SubscriptionClosed` once the subscription is closed, or the
        server's error if it refused the prefix.
        """
        feed = self._feed
        while True:
            self._raise_if_closed()
            if feed.active.is_set():
                await feed.engine.backend.checkpoint()
                self._raise_if_closed()
                return
            await feed.active.wait()

    def new_promise(self, suffix: str | bytes, timeout: float) -> Promise:
        """A promise of the next message on ``prefix + suffix``; its timer starts now.

        Raises :class:`InactiveSubscription` while the subscription is not active.
        """
        self._raise_if_closed()
        feed = self._feed
        engine = feed.engine
        outcome = _Outcome(engine.backend.new_signal())
        handle = engine.new_promise(feed.handle, suffix, timeout, outcome)
        return Promise(handle.channel, outcome)

    async def wait_for_new_promise(
        self,
        suffix: str | bytes,
        timeout: float,  # noqa: ASYNC109 - the promise's lifetime, not a bound on this wait
    ) -> Promise:
        """Wait for activation, then make the promise; its timer starts once it exists."""
        while True:
            await self.wait_for_activation()
            try:
                return self.new_promise(suffix, timeout)
            except InactiveSubscription:
                continue  # lost again between the wake-up and now

    def close(self) -> None:
        """Fail every pending promise and wake every waiter with SubscriptionClosed."""
        self._feed.close()
