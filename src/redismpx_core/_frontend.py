"""The public API both drivers expose, written once over a tiny loop interface.

Everything a user touches (subscriptions, promises, iterators, the multiplexer's
methods) lives here; a driver supplies only a :class:`Loop`: how to make a
one-shot signal, start a background task, read its clock, yield to its
scheduler, and wake its writer. The async code here awaits only what the driver
hands it, so it runs unchanged on asyncio, trio or anything else, and the two
drivers cannot drift apart in behaviour.

Delivery (SPEC 3.5 to 3.7): a callback subscription starts *inline*: its sync
callbacks run on the reader's path as messages are dispatched, the fastest
hand-off there is. The first time a callback turns out to be asynchronous (an
``async def``, or any callable that returns an awaitable), the subscription
switches for good to *queued*: messages go to its bounded :class:`DeliveryQueue`
and its own task awaits the callbacks, so a slow consumer holds back only itself.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Coroutine, Generator, Iterable
from types import CoroutineType
from typing import Any, Protocol, final

from ._core import ConnectionState, MultiplexerCore
from ._delivery import DeliveryQueue, Message, Notice, SubscriptionOverflow, messages_of
from ._errors import (
    InactiveSubscription,
    RedisMPXError,
    ServerError,
    SubscriptionClosed,
)
from ._events import (
    ConnectionEstablished,
    Event,
    MessagesReceived,
    NameRejected,
    NamesActivated,
    PromiseExpired,
    PromiseFailed,
    PromiseFulfilled,
    PublishCompleted,
    PublishFailed,
    SubscriptionDisconnected,
)
from ._handles import SubscriptionHandle, SubscriptionKind
from ._names import coerce_name
from ._settings import OverflowPolicy, Settings
from ._statistics import Statistics

__all__ = (
    "ChannelSubscription",
    "Loop",
    "MessageIterator",
    "MultiplexerBase",
    "PatternSubscription",
    "Promise",
    "PromiseSubscription",
    "Runner",
    "ShardedSubscription",
    "Signal",
    "log_handshake",
)

logger = logging.getLogger("redismpx")

#: An iterator hands out this many buffered messages in a row, at most, before it
#: yields to the scheduler (it always yields when its buffer is empty).
ITERATOR_CHECKPOINT_EVERY = 1024

MessageCallback = Callable[[bytes, bytes], Any]
DisconnectCallback = Callable[[Exception], Any]
ActivationCallback = Callable[[bytes], Any]


class Signal(Protocol):
    """A one-shot event: ``set()`` from sync code, ``await wait()`` from a task."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> Any: ...


class Runner(Protocol):
    """A driver's connection runner: runs a core over successive connections."""

    core: MultiplexerCore

    def wake(self) -> None: ...
    def stop(self) -> None: ...
    async def run(self) -> None: ...


class SubscriptionRouter(Protocol):
    """What subscriptions ask of the core: one :class:`MultiplexerCore`, or a router
    over several (``ClusterCore``) with the same subscription API."""

    @property
    def state(self) -> ConnectionState: ...
    def open_subscription(self, kind: SubscriptionKind, owner: Any = None) -> SubscriptionHandle: ...
    def add_pattern(self, sub: SubscriptionHandle, pattern: object) -> list[Event]: ...
    def open_promise_subscription(
        self, prefix: object, owner: Any = None
    ) -> tuple[SubscriptionHandle, list[Event]]: ...
    def new_promise(
        self, sub: SubscriptionHandle, suffix: object, timeout: float, now: float, owner: Any = None
    ) -> Any: ...
    def add(self, sub: SubscriptionHandle, names: Iterable[object]) -> list[Event]: ...
    def remove(self, sub: SubscriptionHandle, names: Iterable[object]) -> None: ...
    def clear(self, sub: SubscriptionHandle) -> None: ...
    def close_subscription(self, sub: SubscriptionHandle) -> list[Event]: ...
    def subscription_owners(self) -> list[Any]: ...
    def close(self) -> list[Event]: ...
    def statistics(self, *, messages_delivered: int, messages_dropped: int) -> Statistics: ...


class Loop(Protocol):
    """What the front end needs from a driver."""

    def new_signal(self) -> Signal: ...
    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None: ...
    def now(self) -> float: ...
    async def checkpoint(self) -> None: ...
    async def wait(self, signal: Signal, deadline: float | None) -> None:
        """Until ``signal`` is set or the clock reaches ``deadline`` (None: no deadline)."""


def is_async_callable(fn: object) -> bool:
    """True for async functions and for objects whose ``__call__`` is one."""
    call = getattr(fn, "__call__", None)  # noqa: B004 - the method itself, not callable()
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _check_callable(label: str, fn: object, *, optional: bool = False) -> None:
    if fn is None and optional:
        return
    if not callable(fn):
        raise TypeError(f"{label} must be callable, not {type(fn).__name__}")


def _report(label: str, exc: BaseException) -> None:
    """A user callback raised: log it on the ``redismpx`` logger, affect nothing else."""
    logger.error("redismpx: %s raised %s", label, type(exc).__name__, exc_info=exc)


def log_handshake(role: str, target: str, core: MultiplexerCore) -> None:
    """A connection completed its handshake (its ConnectionEstablished, dispatched
    before the activations it brings): one INFO line, with how many names it now
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


def _buffer_options(
    mpx: MultiplexerBase, buffer_size: int | None, overflow: OverflowPolicy | str | None
) -> tuple[int, OverflowPolicy]:
    size = mpx.settings.buffer_size if buffer_size is None else buffer_size
    policy = mpx.settings.overflow if overflow is None else overflow
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"buffer_size must be an int, not {type(size).__name__}")
    if size < 1:
        raise ValueError(f"buffer_size must be >= 1, got {size!r}")
    try:
        return size, OverflowPolicy(policy)
    except ValueError:
        choices = ", ".join(p.value for p in OverflowPolicy)
        raise ValueError(f"overflow must be one of {choices}, got {policy!r}") from None


class _Consumer:
    """Delivery to one subscription: inline callbacks, or a queue and a task of its own."""

    __slots__ = (
        "_buffer_size",
        "_handle",
        "_mpx",
        "_on_activation",
        "_on_disconnect",
        "_on_message",
        "_overflow",
        "_queue",
        "_queued",
        "_signal",
        "_task_running",
    )

    def __init__(
        self,
        mpx: MultiplexerBase,
        kind: SubscriptionKind,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None,
        on_activation: ActivationCallback | None,
        buffer_size: int | None,
        overflow: OverflowPolicy | str | None,
    ) -> None:
        _check_callable("on_message", on_message)
        _check_callable("on_disconnect", on_disconnect, optional=True)
        _check_callable("on_activation", on_activation, optional=True)
        size, policy = _buffer_options(mpx, buffer_size, overflow)
        mpx._check_usable()
        self._mpx = mpx
        self._on_message = on_message
        self._on_disconnect = on_disconnect
        self._on_activation = on_activation
        self._buffer_size = size
        self._overflow = policy
        self._queued = is_async_callable(on_message)
        # A subscription whose callbacks are all sync never needs a buffer; an empty
        # one would be most of an idle subscription's memory.
        self._queue = DeliveryQueue(size, policy) if self._queued else None
        self._signal: Signal | None = None
        self._task_running = False
        self._handle: SubscriptionHandle = mpx._core.open_subscription(kind, owner=self)

    # ---- called by the dispatcher, on the reader's path: never block, never raise

    def _deliver(self, channel: bytes, pattern: bytes | None, payloads: list[bytes]) -> None:
        """Run the sync callback on each message, inline (the dispatcher calls this only
        while ``_queued`` is false; otherwise it calls ``_enqueue``)."""
        names = self._handle.names
        name = channel if pattern is None else pattern
        callback = self._on_message
        delivered = 0
        for payload in payloads:
            if name not in names:  # a callback removed it: nothing more of it (SPEC 3.5)
                break
            delivered += 1
            try:
                result = callback(channel, payload)
            except Exception as exc:
                _report("on_message", exc)
                continue
            if result is not None and inspect.isawaitable(result):
                self._queued = True
                self._push_notice(Notice("await", result))
                if delivered < len(payloads):
                    self._enqueue(messages_of(channel, pattern, payloads[delivered:]))
                break
        self._mpx._delivered += delivered

    def _activated(self, name: bytes) -> None:
        self._notify("activated", self._on_activation, name)

    def _disconnected(self, error: RedisMPXError) -> None:
        self._notify("disconnected", self._on_disconnect, error)

    def _rejected(self, name: bytes, error: ServerError) -> None:
        # The name is gone from this subscription; its holder hears why through
        # on_disconnect, the one error callback a subscription has.
        self._notify("disconnected", self._on_disconnect, error)

    def _notify(self, kind: str, callback: Callable[[Any], Any] | None, value: Any) -> None:
        if callback is None:
            return
        if self._queued:
            self._push_notice(Notice(kind, value))
            return
        try:
            result = callback(value)
        except Exception as exc:
            _report(f"on_{'activation' if kind == 'activated' else 'disconnect'}", exc)
            return
        if result is not None and inspect.isawaitable(result):
            self._queued = True
            self._push_notice(Notice("await", result))

    def _ensure_queue(self) -> DeliveryQueue:
        queue = self._queue
        if queue is None:  # (not `or`: an empty queue is falsy)
            queue = self._queue = DeliveryQueue(self._buffer_size, self._overflow)
        return queue

    def _enqueue(self, messages: list[Message]) -> None:
        queue = self._ensure_queue()
        before = queue.dropped
        already_overflowed = queue.overflowed
        accepted = queue.push(messages)
        self._mpx._dropped += queue.dropped - before
        if not accepted:
            # Later runs of the same socket read still name this subscription: the
            # close (and its one notice) happened at the first overflow.
            if not already_overflowed:
                self._overflowed()
            return
        self._wake()

    def _push_notice(self, notice: Notice) -> None:
        self._ensure_queue().push_notice(notice)
        self._wake()

    def _overflowed(self) -> None:
        queue = self._queue
        assert queue is not None  # only a queue overflows
        error = SubscriptionOverflow(
            f"the subscription's buffer of {queue.bound} messages overflowed"
        )
        # Closed at once: what it had buffered will never be handed over, so it counts
        # as dropped too (delivered + dropped = received, whatever the timing).
        before = queue.dropped
        queue.discard_messages()
        self._mpx._dropped += queue.dropped - before
        self._mpx._dispatch(self._mpx._core.close_subscription(self._handle))
        self._mpx._wake_writer()
        if self._on_disconnect is not None:
            queue.push_notice(Notice("disconnected", error))
        self._wake()

    def _wake(self) -> None:
        if self._signal is not None:
            self._signal.set()
        if not self._task_running:
            self._task_running = True
            self._mpx._loop.spawn(self._drain)

    async def _drain(self) -> None:
        """The subscription's own task: await its callbacks, in order, one at a time."""
        mpx = self._mpx
        handle = self._handle
        names = handle.names
        on_message = self._on_message
        queue = self._queue
        assert queue is not None  # made before the task is spawned
        # DeliveryQueue.take_one, inlined: this is the hot path of every async callback.
        items = queue._items
        try:
            while True:
                # One item at a time: what waits for a stuck callback stays in the queue,
                # inside its bound, and a name removed meanwhile is filtered at hand-off.
                if not items:
                    if handle.closed:
                        return
                    signal = self._signal = mpx._loop.new_signal()
                    await signal.wait()
                    continue
                item = items.popleft()
                if item.__class__ is Notice:
                    queue._notices -= 1
                    await self._run_notice(item)
                    continue
                channel, payload, pattern = item  # type: ignore[misc]
                if (pattern or channel) not in names:  # names are never empty
                    continue
                mpx._delivered += 1
                try:
                    result = on_message(channel, payload)
                    # An async def's coroutine is recognised without a call.
                    if result.__class__ is CoroutineType or (
                        result is not None and inspect.isawaitable(result)
                    ):
                        await result
                except Exception as exc:
                    _report("on_message", exc)
        finally:
            self._task_running = False

    async def _run_notice(self, notice: Notice) -> None:
        label = "on_message"
        callback: Callable[[Any], Any] | None
        try:
            if notice.kind == "await":
                await notice.value
                return
            if notice.kind == "activated":
                label, callback = "on_activation", self._on_activation
            else:
                label, callback = "on_disconnect", self._on_disconnect
            if callback is None:
                return
            result = callback(notice.value)
            if result is not None and inspect.isawaitable(result):
                await result
        except Exception as exc:
            _report(label, exc)

    def _multiplexer_closed(self) -> None:
        if self._signal is not None:
            self._signal.set()

    @property
    def closed(self) -> bool:
        """True once the subscription (or its multiplexer) is closed."""
        return self._handle.closed

    @property
    def dropped(self) -> int:
        """Messages this subscription lost to its full buffer."""
        return 0 if self._queue is None else self._queue.dropped

    def close(self) -> None:
        """Stop receiving; closing twice is fine."""
        self._mpx._dispatch(self._mpx._core.close_subscription(self._handle))
        self._mpx._wake_writer()
        if self._signal is not None:
            self._signal.set()


class _NamedConsumer(_Consumer):
    """A subscription whose names change: channels and shard channels."""

    __slots__ = ()

    @property
    def names(self) -> frozenset[bytes]:
        """The names this subscription holds now (active or on their way)."""
        return frozenset(self._handle.names)

    def add(self, *names: str | bytes) -> None:
        """Hold these names; each becomes active when Redis confirms it."""
        mpx = self._mpx
        mpx._dispatch(mpx._core.add(self._handle, names))
        mpx._wake_writer()

    def remove(self, *names: str | bytes) -> None:
        """Let these names go: no message of theirs reaches this subscription after this."""
        self._mpx._core.remove(self._handle, names)
        self._mpx._wake_writer()

    def clear(self) -> None:
        """Let every name go."""
        self._mpx._core.clear(self._handle)
        self._mpx._wake_writer()


@final
class ChannelSubscription(_NamedConsumer):
    """Channels added and removed at will (SUBSCRIBE / UNSUBSCRIBE)."""

    __slots__ = ()


@final
class ShardedSubscription(_NamedConsumer):
    """Shard channels added and removed at will (SSUBSCRIBE / SUNSUBSCRIBE, Redis 7+)."""

    __slots__ = ()


@final
class PatternSubscription(_Consumer):
    """One pattern for the life of the subscription (PSUBSCRIBE / PUNSUBSCRIBE)."""

    __slots__ = ("pattern",)

    def __init__(
        self,
        mpx: MultiplexerBase,
        pattern: bytes,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None,
        on_activation: ActivationCallback | None,
        buffer_size: int | None,
        overflow: OverflowPolicy | str | None,
    ) -> None:
        super().__init__(
            mpx,
            SubscriptionKind.PATTERN,
            on_message,
            on_disconnect,
            on_activation,
            buffer_size,
            overflow,
        )
        self.pattern = pattern
        mpx._dispatch(mpx._core.add_pattern(self._handle, pattern))
        mpx._wake_writer()


# ------------------------------------------------------------------ promises


@final
class Promise:
    """The next message on one channel, within a deadline. ``await`` it for the payload.

    Raises :class:`TimeoutError` when the deadline passes first, :class:`PromiseInterrupted`
    when the connection is lost first, :class:`SubscriptionClosed` when its subscription
    (or multiplexer) closes first.
    """

    __slots__ = ("_error", "_result", "_signal", "channel")

    def __init__(self, channel: bytes, signal: Signal) -> None:
        self.channel = channel
        self._signal = signal
        self._result: bytes | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        if not self._signal.is_set():
            state = "pending"
        else:
            state = "fulfilled" if self._error is None else type(self._error).__name__
        return f"<Promise {self.channel!r} {state}>"

    @property
    def done(self) -> bool:
        return self._signal.is_set()

    def _settle(self, result: bytes | None, error: BaseException | None) -> None:
        self._result = result
        self._error = error
        self._signal.set()

    def __await__(self) -> Generator[Any, None, bytes]:
        return self._wait().__await__()

    async def _wait(self) -> bytes:
        await self._signal.wait()
        if self._error is not None:
            # A fresh exception per await: the stored one never gets a traceback, whose
            # frames would lead back to this promise (a reference cycle that only the
            # cyclic garbage collector could free, payloads and all).
            raise _fresh(self._error)
        assert self._result is not None
        return self._result


def _fresh(error: BaseException) -> BaseException:
    """A copy of ``error`` with no traceback (same type, arguments and attributes)."""
    fresh = copy.copy(error)
    fresh.__traceback__ = None
    return fresh


@final
class PromiseSubscription:
    """Networked promises: one PSUBSCRIBE on ``prefix*``; each promise awaits one channel."""

    __slots__ = ("_active", "_error", "_handle", "_mpx", "prefix")

    def __init__(self, mpx: MultiplexerBase, prefix: str | bytes) -> None:
        mpx._check_usable()
        self._mpx = mpx
        self._error: RedisMPXError | None = None
        self._active = mpx._loop.new_signal()
        handle, events = mpx._core.open_promise_subscription(prefix, owner=self)
        self._handle = handle
        self.prefix: bytes = handle.prefix
        mpx._dispatch(events)
        mpx._wake_writer()

    @property
    def active(self) -> bool:
        return self._active.is_set() and not self._handle.closed

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def _activated(self, name: bytes) -> None:
        self._active.set()

    def _disconnected(self, error: RedisMPXError) -> None:
        if self._active.is_set():
            self._active = self._mpx._loop.new_signal()

    def _rejected(self, name: bytes, error: ServerError) -> None:
        # Without its pattern the subscription can never make a promise: it is over,
        # and its waiters learn why.
        self._error = error
        self.close()

    def _multiplexer_closed(self) -> None:
        self._active.set()  # wait_for_activation() sees the subscription closed

    def _raise_if_closed(self) -> None:
        if self._handle.closed:
            if self._error is not None:
                raise self._error  # the server refused the prefix (NOPERM...)
            raise SubscriptionClosed("the promise subscription is closed")

    async def wait_for_activation(self) -> None:
        """Wait until promises can be made (again, after a reconnect).

        Raises :class:`SubscriptionClosed` once the subscription is closed, or the
        server's error if it refused the prefix.
        """
        while True:
            self._raise_if_closed()
            if self._active.is_set():
                await self._mpx._loop.checkpoint()
                self._raise_if_closed()
                return
            await self._active.wait()

    def new_promise(self, suffix: str | bytes, timeout: float) -> Promise:
        """A promise of the next message on ``prefix + suffix``; its timer starts now.

        Raises :class:`InactiveSubscription` while the subscription is not active.
        """
        mpx = self._mpx
        self._raise_if_closed()
        promise = Promise(b"", mpx._loop.new_signal())
        handle = mpx._core.new_promise(self._handle, suffix, timeout, mpx._loop.now(), promise)
        promise.channel = handle.channel
        mpx._wake_writer()  # a new deadline for the timer
        return promise

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
        mpx = self._mpx
        mpx._dispatch(mpx._core.close_subscription(self._handle))
        mpx._wake_writer()
        self._active.set()


# ------------------------------------------------------------------ iterators


@final
class MessageIterator:
    """``async with mpx.subscribe(...) as it: async for msg in it``: messages as Message.

    Entering waits until Redis has confirmed every name (so that nothing published
    afterwards is missed) and raises the server's error if one was refused. The
    buffer is bounded like a callback subscription's; under the ``close`` policy an
    overflow ends the iteration with :class:`SubscriptionOverflow`.
    """

    __slots__ = ("_counter", "_error", "_handle", "_mpx", "_names", "_queue", "_signal", "_waiting")

    def __init__(
        self,
        mpx: MultiplexerBase,
        kind: SubscriptionKind,
        names: Iterable[object],
        buffer_size: int | None,
        overflow: OverflowPolicy | str | None,
    ) -> None:
        size, policy = _buffer_options(mpx, buffer_size, overflow)
        mpx._check_usable()
        self._mpx = mpx
        self._queue = DeliveryQueue(size, policy)
        self._signal = mpx._loop.new_signal()
        self._error: RedisMPXError | None = None
        self._counter = 0
        self._handle = mpx._core.open_subscription(kind, owner=self)
        names = list(names)
        if not names:
            mpx._core.close_subscription(self._handle)
            raise ValueError("subscribe() needs at least one name")
        try:
            events = (
                mpx._core.add_pattern(self._handle, names[0])
                if kind is SubscriptionKind.PATTERN
                else mpx._core.add(self._handle, names)
            )
        except Exception:
            mpx._core.close_subscription(self._handle)
            raise
        self._waiting: set[bytes] = set(self._handle.names)
        mpx._dispatch(events)
        mpx._wake_writer()

    async def __aenter__(self) -> MessageIterator:
        try:
            await self._mpx._loop.checkpoint()
            while self._waiting and self._error is None:
                await self._signal.wait()
                self._signal = self._mpx._loop.new_signal()
            if self._error is not None:
                raise self._error
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self._mpx._loop.checkpoint()

    #: The dispatcher hands an iterator every run as shared Message objects.
    _queued = True

    def _enqueue(self, messages: list[Message]) -> None:
        queue = self._queue
        before = queue.dropped
        accepted = queue.push(messages)
        if not accepted:
            queue.discard_messages()  # closed at once: never handed over, so dropped
            self._mpx._dropped += queue.dropped - before
            self._end(SubscriptionOverflow(f"the iterator's buffer of {queue.bound} overflowed"))
        else:
            self._mpx._dropped += queue.dropped - before
        self._signal.set()

    def _activated(self, name: bytes) -> None:
        if self._waiting:
            self._waiting.discard(name)
            if not self._waiting:
                self._signal.set()

    def _disconnected(self, error: RedisMPXError) -> None:
        """Iteration carries on after a reconnect; nothing to do."""

    def _rejected(self, name: bytes, error: ServerError) -> None:
        if self._waiting:
            self._error = error
        self._waiting.discard(name)
        self._signal.set()

    @property
    def dropped(self) -> int:
        """Messages this iterator lost to its full buffer."""
        return self._queue.dropped

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def _multiplexer_closed(self) -> None:
        self._end(SubscriptionClosed("the multiplexer was closed"))

    def _end(self, error: RedisMPXError) -> None:
        if self._error is None:
            self._error = error
        self._mpx._dispatch(self._mpx._core.close_subscription(self._handle))
        self._mpx._wake_writer()
        self._signal.set()

    def __aiter__(self) -> MessageIterator:
        return self

    async def __anext__(self) -> Message:
        # The hot path: a buffered message of a held name, no checkpoint due. (An
        # iterator's queue holds no notices; names are never empty.)
        items = self._queue._items
        if items and self._counter < ITERATOR_CHECKPOINT_EVERY - 1:
            item = items[0]
            if (item[2] or item[0]) in self._handle.names:  # type: ignore[index]
                items.popleft()
                self._counter += 1
                self._mpx._delivered += 1
                return item  # type: ignore[return-value]
        return await self._next_slowly()

    async def _next_slowly(self) -> Message:
        queue = self._queue
        while True:
            if queue._items:
                self._counter += 1
                if self._counter >= ITERATOR_CHECKPOINT_EVERY:
                    # Before taking the message: a cancellation here loses nothing.
                    self._counter = 0
                    await self._mpx._loop.checkpoint()
                item = queue.take_one(self._handle.names)
                if item is not None and item.__class__ is not Notice:  # no notices here
                    self._mpx._delivered += 1
                    return item  # type: ignore[return-value]  # already a Message
                continue
            if self._handle.closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._counter = 0
            await self._signal.wait()
            self._signal = self._mpx._loop.new_signal()

    def close(self) -> None:
        """Stop receiving; the iteration ends."""
        self._mpx._dispatch(self._mpx._core.close_subscription(self._handle))
        self._mpx._wake_writer()
        self._signal.set()


# ------------------------------------------------------------------ the multiplexer


class _PublishWaiter:
    __slots__ = ("error", "receivers", "signal")

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.receivers = 0
        self.error: RedisMPXError | None = None


class MultiplexerBase:
    """Everything a Multiplexer does that does not depend on the I/O library.

    A driver subclass owns the task group, the connections and the :class:`Loop`,
    and calls :meth:`_start` once it can run tasks and :meth:`_close` when done; it
    names its connection runner class in ``_runner_type``.
    """

    def __init__(self, url: str = "redis://localhost:6379/0", **options: Any) -> None:
        self.settings = Settings.from_url(url, **options)
        self._core: SubscriptionRouter = self._new_router()
        self._publisher_core: MultiplexerCore | None = None
        self._loop: Loop = _NoLoop()
        self._started = False
        self._closed = False
        self._delivered = 0
        self._dropped = 0
        self._publishes: dict[tuple[object, int], _PublishWaiter] = {}
        self._ready: Signal | None = None
        self._publisher_ready: Signal | None = None
        self._runner: Runner | None = None
        self._publisher: Runner | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._core.state.value
        return f"<{type(self).__name__} {self.settings.redacted_url()} {state}>"

    def _new_core(self) -> MultiplexerCore:
        return MultiplexerCore(random=self._random, **self.settings.core_options())

    def _new_router(self) -> SubscriptionRouter:
        """The core subscriptions talk to: here one core, on one connection."""
        return self._new_core()

    def _single_core(self) -> MultiplexerCore:
        assert isinstance(self._core, MultiplexerCore)
        return self._core

    @staticmethod
    def _random() -> float:
        raise NotImplementedError  # drivers pass their own source of jitter

    # ---- driver hooks

    #: The driver's connection runner class (its socket and task plumbing), called as
    #: ``(core, settings, dispatch, on_lost, role)``.
    _runner_type: Callable[..., Runner]

    def _new_runner(
        self,
        core: MultiplexerCore,
        dispatch: Callable[[list[Event]], None],
        on_lost: Callable[[], None],
        role: str,
    ) -> Runner:
        return self._runner_type(core, self.settings, dispatch, on_lost, role)

    def _start(self, loop: Loop) -> None:
        """The driver can run tasks now: start the subscription connection."""
        self._loop = loop
        self._started = True
        self._ready = loop.new_signal()
        self._runner = self._new_runner(
            self._single_core(), self._dispatch, self._connection_lost, "subscriber"
        )
        loop.spawn(self._runner.run)

    def _close(self) -> None:
        """Fail everything pending; the driver then cancels its tasks and closes sockets."""
        if self._closed:
            return
        self._closed = True
        owners = self._core.subscription_owners()
        self._dispatch(self._core.close())
        for owner in owners:
            owner._multiplexer_closed()
        if self._publisher_core is not None:
            self._dispatch_publisher(self._publisher_core.close())
        for waiter in self._publishes.values():
            waiter.error = SubscriptionClosed("the multiplexer was closed")
            waiter.signal.set()
        self._publishes.clear()
        if self._ready is not None:
            self._ready.set()
        if self._publisher_ready is not None:
            self._publisher_ready.set()

    def _wake_writer(self) -> None:
        if self._runner is not None:
            self._runner.wake()

    def _wake_publisher(self) -> None:
        if self._publisher is not None:
            self._publisher.wake()

    def _start_publisher(self) -> None:
        """Under RESP2: a second connection, opened on the first publish()."""
        assert self._publisher_core is not None
        self._publisher = self._new_runner(
            self._publisher_core,
            self._dispatch_publisher,
            self._publisher_connection_lost,
            "publisher",
        )
        self._loop.spawn(self._publisher.run)

    def _connection_lost(self) -> None:
        """The subscription connection went down (called by the driver's runner)."""
        if self._ready is not None and self._ready.is_set() and not self._closed:
            self._ready = self._loop.new_signal()

    def _publisher_connection_lost(self) -> None:
        if (
            self._publisher_ready is not None
            and self._publisher_ready.is_set()
            and not self._closed
        ):
            self._publisher_ready = self._loop.new_signal()

    def _check_usable(self) -> None:
        if self._closed:
            raise SubscriptionClosed("the multiplexer is closed")
        if not self._started:
            raise RuntimeError(f"use the {type(self).__name__} inside `async with` first")

    # ---- dispatch: the reader's path

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            cls = event.__class__
            if cls is MessagesReceived:
                channel, pattern, payloads = event.channel, event.pattern, event.payloads  # type: ignore[union-attr]
                messages = None  # built at most once, shared by every queue of the run
                for owner in event.subscribers:  # type: ignore[union-attr]
                    if owner._queued:
                        if messages is None:
                            messages = messages_of(channel, pattern, payloads)
                        owner._enqueue(messages)
                    else:
                        owner._deliver(channel, pattern, payloads)
            elif cls is NamesActivated:
                activated = event.subscriber._activated  # type: ignore[union-attr]
                for name in event.names:  # type: ignore[union-attr]
                    activated(name)
            elif cls is SubscriptionDisconnected:
                event.subscriber._disconnected(event.error)  # type: ignore[union-attr]
            elif cls is NameRejected:
                event.subscriber._rejected(event.name, event.error)  # type: ignore[union-attr]
            elif cls is PromiseFulfilled:
                event.promise._settle(event.data, None)  # type: ignore[union-attr]
            elif cls is PromiseExpired:
                event.promise._settle(None, TimeoutError("the promise expired"))  # type: ignore[union-attr]
            elif cls is PromiseFailed:
                event.promise._settle(None, event.error)  # type: ignore[union-attr]
            elif cls is ConnectionEstablished:
                log_handshake("subscriber", self.settings.redacted_url(), self._single_core())
                if self._ready is not None:
                    self._ready.set()
            else:
                self._publish_reply(0, event)

    def _dispatch_publisher(self, events: list[Event]) -> None:
        for event in events:
            if event.__class__ is ConnectionEstablished:
                assert self._publisher_core is not None
                log_handshake("publisher", self.settings.redacted_url(), self._publisher_core)
                if self._publisher_ready is not None:
                    self._publisher_ready.set()
            else:
                self._publish_reply(1, event)

    def _publish_reply(self, connection: object, event: Event) -> None:
        if isinstance(event, PublishCompleted | PublishFailed):
            waiter = self._publishes.pop((connection, event.token), None)
            if waiter is None:
                return  # its caller gave up (cancelled)
            if isinstance(event, PublishCompleted):
                waiter.receivers = event.receivers
            else:
                waiter.error = event.error
            waiter.signal.set()

    # ---- public API

    def new_channel_subscription(
        self,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None = None,
        on_activation: ActivationCallback | None = None,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> ChannelSubscription:
        """A subscription to channels added and removed with ``add``/``remove``."""
        return ChannelSubscription(
            self,
            SubscriptionKind.CHANNEL,
            on_message,
            on_disconnect,
            on_activation,
            buffer_size,
            overflow,
        )

    def new_sharded_subscription(
        self,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None = None,
        on_activation: ActivationCallback | None = None,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> ShardedSubscription:
        """A subscription to shard channels (SSUBSCRIBE, Redis 7+)."""
        return ShardedSubscription(
            self,
            SubscriptionKind.SHARD,
            on_message,
            on_disconnect,
            on_activation,
            buffer_size,
            overflow,
        )

    def new_pattern_subscription(
        self,
        pattern: str | bytes,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None = None,
        on_activation: ActivationCallback | None = None,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> PatternSubscription:
        """A subscription to one glob-style pattern; ``on_message`` gets the concrete channel."""
        name = coerce_name(pattern, "pattern")
        return PatternSubscription(
            self, name, on_message, on_disconnect, on_activation, buffer_size, overflow
        )

    def new_promise_subscription(self, prefix: str | bytes) -> PromiseSubscription:
        """Networked promises on channels that start with ``prefix``."""
        return PromiseSubscription(self, prefix)

    def subscribe(
        self,
        *channels: str | bytes,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> MessageIterator:
        """``async with mpx.subscribe("a", "b") as it: async for msg in it: ...``"""
        return MessageIterator(self, SubscriptionKind.CHANNEL, channels, buffer_size, overflow)

    def psubscribe(
        self,
        pattern: str | bytes,
        *,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> MessageIterator:
        """``async with mpx.psubscribe("news:*") as it: ...``; ``msg.pattern`` is set."""
        return MessageIterator(self, SubscriptionKind.PATTERN, [pattern], buffer_size, overflow)

    def ssubscribe(
        self,
        *channels: str | bytes,
        buffer_size: int | None = None,
        overflow: OverflowPolicy | str | None = None,
    ) -> MessageIterator:
        """``async with mpx.ssubscribe("user:{42}") as it: ...`` (Redis 7+)."""
        return MessageIterator(self, SubscriptionKind.SHARD, channels, buffer_size, overflow)

    async def wait_connected(self) -> None:
        """Wait until the subscription connection is up (handshake done)."""
        self._check_usable()
        while True:
            ready = self._ready
            assert ready is not None
            await ready.wait()
            if self._closed:
                raise SubscriptionClosed("the multiplexer is closed")
            if ready is self._ready:
                return

    async def publish(self, channel: str | bytes, data: bytes) -> int:
        """PUBLISH ``data`` on ``channel``; returns the number of receivers.

        Under RESP3 it shares the subscription connection; under RESP2 (where Redis
        refuses PUBLISH on a subscribed connection) it uses a second connection,
        opened on first use. Waits for a connection; raises :class:`ConnectionLost`
        if the connection drops before Redis answers (the message may or may not
        have been published), :class:`ServerError` if Redis refuses it.
        """
        return await self._publish(channel, data, sharded=False)

    async def spublish(self, channel: str | bytes, data: bytes) -> int:
        """SPUBLISH (Redis 7+): like :meth:`publish`, for shard channels."""
        return await self._publish(channel, data, sharded=True)

    async def _publish(self, channel: str | bytes, data: bytes, *, sharded: bool) -> int:
        name = coerce_name(channel, "channel")
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        self._check_usable()
        shared = self.settings.protocol == 3
        if not shared and self._publisher_core is None:
            self._publisher_core = self._new_core()
            self._publisher_ready = self._loop.new_signal()
            self._start_publisher()
        while True:
            ready = self._ready if shared else self._publisher_ready
            assert ready is not None
            await ready.wait()
            if self._closed:
                raise SubscriptionClosed("the multiplexer is closed")
            core = self._single_core() if shared else self._publisher_core
            assert core is not None
            if core.state is ConnectionState.READY:
                break
        token = core.publish(name, data, sharded=sharded)
        waiter = _PublishWaiter(self._loop.new_signal())
        key = (0 if shared else 1, token)
        self._publishes[key] = waiter
        if shared:
            self._wake_writer()
        else:
            self._wake_publisher()
        try:
            await waiter.signal.wait()
        finally:
            self._publishes.pop(key, None)
        if waiter.error is not None:
            raise waiter.error
        return waiter.receivers

    def statistics(self) -> Statistics:
        """A frozen snapshot of this multiplexer's counters."""
        return self._core.statistics(
            messages_delivered=self._delivered, messages_dropped=self._dropped
        )

    @property
    def connected(self) -> bool:
        return self._core.state is ConnectionState.READY


class _NoLoop:
    """The loop before the driver starts: every use is a programming error."""

    @staticmethod
    def _refuse() -> RuntimeError:
        return RuntimeError("use the Multiplexer inside `async with` first")

    def new_signal(self) -> Signal:
        raise self._refuse()

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        raise self._refuse()

    def now(self) -> float:
        raise self._refuse()

    async def checkpoint(self) -> None:
        raise self._refuse()

    async def wait(self, signal: Signal, deadline: float | None) -> None:
        raise self._refuse()
