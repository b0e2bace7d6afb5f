"""Subscriptions with callbacks: channel, sharded and pattern subscriptions.

Delivery (SPEC 3.5 to 3.7): a callback subscription starts *inline*: its sync
callbacks run on the reader's path as messages are dispatched, the fastest
hand-off there is. The first time a callback turns out to be asynchronous (an
``async def``, or any callable that returns an awaitable), the subscription
switches for good to *queued*: messages and notices go to its bounded
:class:`~._delivery.DeliveryQueue` and a task of its own awaits the callbacks, in
order, so that a slow consumer holds back only itself.

Each public subscription is a thin facade over a :class:`CallbackConsumer`, the
owner of its core handle and the object the dispatcher calls.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any, final

from redismpx_core import (
    OverflowPolicy,
    RedisMPXError,
    ServerError,
    Settings,
    SubscriptionKind,
    SubscriptionOverflow,
)

from ._backend import Signal
from ._delivery import DeliveryQueue, Message, Notice, messages_of
from ._engine import Engine, Handle, is_async_callable, report

__all__ = (
    "ActivationCallback",
    "CallbackConsumer",
    "ChannelSubscription",
    "DisconnectCallback",
    "MessageCallback",
    "PatternSubscription",
    "ShardedSubscription",
    "buffer_options",
)

MessageCallback = Callable[[bytes, bytes], Any]
DisconnectCallback = Callable[[Exception], Any]
ActivationCallback = Callable[[bytes], Any]


def buffer_options(
    settings: Settings, buffer_size: int | None, overflow: OverflowPolicy | str | None
) -> tuple[int, OverflowPolicy]:
    """A subscription's buffer size and policy: its own, or the multiplexer's."""
    size = settings.buffer_size if buffer_size is None else buffer_size
    policy = settings.overflow if overflow is None else overflow
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"buffer_size must be an int, not {type(size).__name__}")
    if size < 1:
        raise ValueError(f"buffer_size must be >= 1, got {size!r}")
    try:
        return size, OverflowPolicy(policy)
    except ValueError:
        choices = ", ".join(p.value for p in OverflowPolicy)
        raise ValueError(f"overflow must be one of {choices}, got {policy!r}") from None


class _TaskQueue(DeliveryQueue):
    """A queued subscription's buffer, with the state of the task that drains it."""

    __slots__ = ("awaiting", "signal", "task_running")

    def __init__(self, size: int, policy: OverflowPolicy) -> None:
        super().__init__(size, policy)
        self.signal: Signal | None = None
        self.task_running = False
        # What a callback returned when it turned out to be async: awaited first.
        self.awaiting: tuple[str, Awaitable[object]] | None = None


def _check_callable(label: str, fn: object, *, optional: bool = False) -> None:
    if fn is None and optional:
        return
    if not callable(fn):
        raise TypeError(f"{label} must be callable, not {type(fn).__name__}")


def _is_awaitable(result: object) -> bool:
    # An async def's coroutine is recognised without a call.
    return result.__class__ is CoroutineType or (
        result is not None and inspect.isawaitable(result)
    )


class CallbackConsumer:
    """Delivery to one callback subscription: inline, or through its queue and task."""

    # Few slots: every subscription has one, and most are idle (docs/benchmarks.md).
    __slots__ = ("_on_activation", "_on_disconnect", "_on_message", "engine", "handle", "queue")

    #: False while callbacks run inline. The first async one makes the object a
    #: :class:`_QueuedConsumer` for good, whose ``queued`` is True: a class attribute,
    #: read by the dispatcher for every subscription of every run, and held by none.
    queued: bool = False

    def __init__(
        self,
        engine: Engine,
        kind: SubscriptionKind,
        on_message: MessageCallback,
        on_disconnect: DisconnectCallback | None,
        on_activation: ActivationCallback | None,
        buffer_size: int | None,
        overflow: OverflowPolicy | str | None,
        *,
        node_wide: bool = False,
    ) -> None:
        _check_callable("on_message", on_message)
        _check_callable("on_disconnect", on_disconnect, optional=True)
        _check_callable("on_activation", on_activation, optional=True)
        size, policy = buffer_options(engine.settings, buffer_size, overflow)
        engine.check_usable()
        self.engine = engine
        self._on_message = on_message
        self._on_disconnect = on_disconnect
        self._on_activation = on_activation
        queued = is_async_callable(on_message)
        if queued:
            self.__class__ = _QueuedConsumer
        # A subscription whose callbacks are all sync never needs a buffer, and an empty
        # one would be most of an idle subscription's memory: it is made when needed,
        # with the multiplexer's settings, unless the subscription has its own.
        own = buffer_size is not None or overflow is not None
        self.queue = _TaskQueue(size, policy) if queued or own else None
        self.handle: Handle = engine.router.open_subscription(kind, self, node_wide=node_wide)

    # ---- the dispatcher's calls (the Subscriber protocol): never block, never raise

    def deliver(self, channel: bytes, pattern: bytes | None, payloads: list[bytes]) -> None:
        """Run the sync callback on each message, inline (only while not queued)."""
        names = self.handle.names
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
                report("on_message", exc)
                continue
            if result is not None and inspect.isawaitable(result):
                self._switch_to_queued("on_message", result)
                if delivered < len(payloads):
                    self.enqueue(messages_of(channel, pattern, payloads[delivered:]))
                break
        self.engine.delivered += delivered

    def enqueue(self, messages: list[Message]) -> None:
        queue = self._ensure_queue()
        before = queue.dropped
        already_overflowed = queue.overflowed
        accepted = queue.push(messages)
        self.engine.dropped += queue.dropped - before
        if accepted:
            self._wake()
        elif not already_overflowed:
            # Later runs of the same read still name this subscription: the close (and
            # its one notice) happened at the first overflow.
            self._overflowed()

    def activated(self, names: list[bytes]) -> None:
        callback = self._on_activation
        if callback is None:
            return
        if self.queued:
            self._told(self._ensure_queue().push_activated(names))
            return
        for index, name in enumerate(names):
            if self._call_inline("on_activation", callback, name):
                if index + 1 < len(names):  # the rest waits behind the awaitable
                    self._told(self._ensure_queue().push_activated(names[index + 1 :]))
                return

    def disconnected(self, error: RedisMPXError) -> None:
        callback = self._on_disconnect
        if self.queued:
            queue = self._ensure_queue()
            if callback is not None:
                self._told(queue.push_disconnected(error))
            else:
                queue.drop_activations()  # superseded all the same
            return
        if callback is not None:
            self._call_inline("on_disconnect", callback, error)

    def deactivated(self, name: bytes, error: RedisMPXError) -> None:
        self._stopped(name, error)

    def rejected(self, name: bytes, error: ServerError) -> None:
        # The name is gone from this subscription; its holder hears why through
        # on_disconnect, the one error callback a subscription has.
        self._stopped(name, error)

    def _stopped(self, name: bytes, error: RedisMPXError) -> None:
        """``name`` alone stopped: only its queued activations are superseded."""
        callback = self._on_disconnect
        if self.queued:
            queue = self._ensure_queue()
            if callback is not None:
                self._told(queue.push_stopped(name, error))
            else:
                queue.drop_activations(name)
            return
        if callback is not None:
            self._call_inline("on_disconnect", callback, error)

    def multiplexer_closed(self) -> None:
        queue = self.queue
        if queue is not None and queue.signal is not None:
            queue.signal.set()  # its task sees the handle closed, and ends

    def close(self) -> None:
        self.engine.close_subscription(self.handle)
        self.multiplexer_closed()

    # ---- inline and queued delivery

    def _call_inline(self, label: str, callback: Callable[[Any], Any], value: object) -> bool:
        """Call a notice callback inline; True if it returned an awaitable (now queued)."""
        try:
            result = callback(value)
        except Exception as exc:
            report(label, exc)
            return False
        if result is not None and inspect.isawaitable(result):
            self._switch_to_queued(label, result)
            return True
        return False

    def _switch_to_queued(self, label: str, awaitable: Awaitable[object]) -> None:
        """A callback turned out to be async: from now on everything goes through the
        queue, and the subscription's task first awaits what that call returned."""
        self.__class__ = _QueuedConsumer
        self._ensure_queue().awaiting = (label, awaitable)
        self._wake()

    def _ensure_queue(self) -> _TaskQueue:
        queue = self.queue
        if queue is None:  # (not `or`: an empty queue is falsy)
            queue = self.queue = _TaskQueue(*buffer_options(self.engine.settings, None, None))
        return queue

    def _told(self, accepted: bool) -> None:
        """After a notice was pushed: wake the task, or close on a ``close`` overflow."""
        if accepted:
            self._wake()
            return
        queue = self.queue
        assert queue is not None
        if not self.handle.closed:  # (the first overflow closed it)
            self._overflowed()

    def _overflowed(self) -> None:
        queue = self.queue
        assert queue is not None  # only a queue overflows
        error = SubscriptionOverflow(
            f"the subscription's buffer of {queue.bound} items overflowed"
        )
        # Closed at once: what it had buffered will never be handed over, so it counts
        # as dropped too (delivered + dropped = received, whatever the timing).
        before = queue.dropped
        queue.discard_messages()
        self.engine.dropped += queue.dropped - before
        self.engine.close_subscription(self.handle)
        if self._on_disconnect is not None:
            queue.push_final(error)
        self._wake()

    def _wake(self) -> None:
        queue = self.queue
        assert queue is not None  # only a queued subscription has a task
        if queue.signal is not None:
            queue.signal.set()
        if not queue.task_running:
            queue.task_running = True
            self.engine.spawn(self._drain)

    async def _drain(self) -> None:
        """The subscription's own task: await its callbacks, in order, one at a time."""
        engine = self.engine
        handle = self.handle
        names = handle.names
        on_message = self._on_message
        queue = self.queue
        assert queue is not None  # made before the task is spawned
        items = queue.items
        try:
            if queue.awaiting is not None:
                label, awaitable = queue.awaiting
                queue.awaiting = None
                await _await_reported(label, awaitable)
            while True:
                # One item at a time: what waits for a stuck callback stays in the queue,
                # inside its bound, and a name removed meanwhile is filtered at hand-off.
                if not items:
                    if handle.closed:
                        return
                    signal = queue.signal = engine.backend.new_signal()
                    await signal.wait()
                    continue
                # DeliveryQueue.pop's rules, taken by hand: the hot path of every async
                # callback (see DeliveryQueue.pop).
                item = items.popleft()
                if item.__class__ is Notice:
                    queue.notice_taken()
                    await self._run_notice(item)
                    continue
                channel, payload, pattern = item  # type: ignore[misc]
                if (pattern or channel) not in names:
                    continue  # removed since: nothing more of it (SPEC 3.5)
                engine.delivered += 1
                try:
                    result = on_message(channel, payload)
                    # _is_awaitable, inlined for the same reason.
                    if result.__class__ is CoroutineType or (
                        result is not None and inspect.isawaitable(result)
                    ):
                        await result
                except Exception as exc:
                    report("on_message", exc)
        finally:
            queue.task_running = False

    async def _run_notice(self, notice: Notice) -> None:
        on_disconnect, on_activation = self._on_disconnect, self._on_activation
        if on_disconnect is not None:
            if notice.error is not None:
                await _run_callback("on_disconnect", on_disconnect, notice.error)
            if notice.named:
                for error in list(notice.named.values()):
                    await _run_callback("on_disconnect", on_disconnect, error)
        if notice.names and on_activation is not None:
            for name in notice.names:
                await _run_callback("on_activation", on_activation, name)


class _QueuedConsumer(CallbackConsumer):
    """A callback subscription whose callbacks are awaited by a task of its own."""

    __slots__ = ()
    queued = True


async def _run_callback(label: str, callback: Callable[[Any], Any], value: object) -> None:
    """``callback(value)``, awaited if what it returns is awaitable; what it raises is
    logged (SPEC 3.7)."""
    try:
        result = callback(value)
        if _is_awaitable(result):
            await result
    except Exception as exc:
        report(label, exc)


async def _await_reported(label: str, awaitable: Awaitable[object]) -> None:
    try:
        await awaitable
    except Exception as exc:
        report(label, exc)


class _CallbackSubscription:
    """What every callback subscription offers."""

    __slots__ = ("_consumer",)

    def __init__(self, consumer: CallbackConsumer) -> None:
        self._consumer = consumer

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._consumer.handle!r}>"

    @property
    def closed(self) -> bool:
        """True once the subscription (or its multiplexer) is closed."""
        return self._consumer.handle.closed

    @property
    def dropped(self) -> int:
        """Messages this subscription lost to its full buffer."""
        queue = self._consumer.queue
        return 0 if queue is None else queue.dropped

    def close(self) -> None:
        """Stop receiving; closing twice is fine."""
        self._consumer.close()


class _NamedSubscription(_CallbackSubscription):
    """A subscription whose names change: channels and shard channels."""

    __slots__ = ()

    @property
    def names(self) -> frozenset[bytes]:
        """The names this subscription holds now (active or on their way)."""
        return frozenset(self._consumer.handle.names)

    def add(self, *names: str | bytes) -> None:
        """Hold these names; each becomes active when Redis confirms it."""
        consumer = self._consumer
        consumer.engine.add(consumer.handle, names)

    def remove(self, *names: str | bytes) -> None:
        """Let these names go: no message of theirs reaches this subscription after this."""
        consumer = self._consumer
        consumer.engine.remove(consumer.handle, names)

    def clear(self) -> None:
        """Let every name go."""
        consumer = self._consumer
        consumer.engine.clear(consumer.handle)


@final
class ChannelSubscription(_NamedSubscription):
    """Channels added and removed at will (SUBSCRIBE / UNSUBSCRIBE)."""

    __slots__ = ()


@final
class ShardedSubscription(_NamedSubscription):
    """Shard channels added and removed at will (SSUBSCRIBE / SUNSUBSCRIBE, Redis 7+)."""

    __slots__ = ()


@final
class PatternSubscription(_CallbackSubscription):
    """One pattern for the life of the subscription (PSUBSCRIBE / PUNSUBSCRIBE)."""

    __slots__ = ("pattern",)

    def __init__(self, consumer: CallbackConsumer, pattern: bytes) -> None:
        super().__init__(consumer)
        self.pattern = pattern
        consumer.engine.add_pattern(consumer.handle, pattern)
