"""What a multiplexer's subscriptions share: the router, the connections, the dispatcher.

The :class:`Engine` is the multiplexer's inside. Its subscriptions call it for
every change (it makes the change in the core, dispatches what the change
produced and wakes the connections' writers), and its connections hand it the
events of every read, which it dispatches to their owners.

Owners are the core's view of the front end: each subscription opens its core
handle with an internal owner object (:class:`Subscriber`), and each promise with
a :class:`PromiseOwner`; the core hands them back in its events, and the
dispatcher calls the methods declared here. Nothing else crosses the line.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from redismpx_core import (
    ConnectionState,
    Event,
    MessagesReceived,
    MultiplexerCore,
    NameDeactivated,
    NameRejected,
    NamesActivated,
    PromiseExpired,
    PromiseFailed,
    PromiseFulfilled,
    PromiseHandle,
    RedisMPXError,
    ServerError,
    Settings,
    Statistics,
    SubscriptionClosed,
    SubscriptionDisconnected,
    SubscriptionHandle,
    SubscriptionKind,
)

from ._backend import Backend, TaskGroup
from ._delivery import Message, messages_of

if TYPE_CHECKING:
    from ._connections import Connections

__all__ = (
    "Core",
    "Engine",
    "Events",
    "Handle",
    "PromiseOwner",
    "Router",
    "Subscriber",
    "is_async_callable",
    "report",
)

logger = logging.getLogger("redismpx")


class Subscriber(Protocol):
    """What the dispatcher calls on a subscription's owner, on the reader's path: each
    call returns at once and never raises."""

    #: True when messages go to :meth:`enqueue` (built once for every queued owner of
    #: a fan-out), False when they go to :meth:`deliver` (inline callbacks).
    queued: bool

    def deliver(self, channel: bytes, pattern: bytes | None, payloads: list[bytes]) -> None: ...
    def enqueue(self, messages: list[Message]) -> None: ...
    def activated(self, names: list[bytes]) -> None:
        """One batch of names became active (``names`` is the core's: do not keep it)."""
        ...

    def disconnected(self, error: RedisMPXError) -> None:
        """The connection under every name of the subscription was lost."""
        ...

    def deactivated(self, name: bytes, error: RedisMPXError) -> None:
        """``name`` alone stopped being active (the server unsubscribed it); the
        subscription keeps it, and it is activated again."""
        ...

    def rejected(self, name: bytes, error: ServerError) -> None:
        """Redis refused ``name``; the core dropped it from the subscription."""
        ...

    def multiplexer_closed(self) -> None:
        """The multiplexer closed (the core closed the handle): wake whoever waits."""
        ...


class PromiseOwner(Protocol):
    def fulfil(self, data: bytes) -> None: ...
    def fail(self, error: BaseException) -> None: ...


Events: TypeAlias = list[Event[Subscriber, PromiseOwner]]
Handle: TypeAlias = SubscriptionHandle[Subscriber, PromiseOwner]
Core: TypeAlias = "MultiplexerCore[Subscriber, PromiseOwner]"


class Router(Protocol):
    """What subscriptions ask of the core: one :class:`MultiplexerCore`, or a
    :class:`ClusterCore` routing over several, with the same subscription API."""

    @property
    def state(self) -> ConnectionState: ...
    def open_subscription(
        self, kind: SubscriptionKind, owner: Subscriber, *, node_wide: bool = False
    ) -> Handle: ...
    def is_active(self, sub: Handle, name: bytes) -> bool: ...
    def add_pattern(self, sub: Handle, pattern: object) -> Events: ...
    def open_promise_subscription(
        self, prefix: object, owner: Subscriber
    ) -> tuple[Handle, Events]: ...
    def new_promise(
        self, sub: Handle, suffix: object, timeout: float, now: float, owner: PromiseOwner
    ) -> PromiseHandle[Subscriber, PromiseOwner]: ...
    def add(self, sub: Handle, names: Iterable[object]) -> Events: ...
    def remove(self, sub: Handle, names: Iterable[object]) -> None: ...
    def clear(self, sub: Handle) -> None: ...
    def close_subscription(self, sub: Handle) -> Events: ...
    def subscription_owners(self) -> list[Subscriber]: ...
    def close(self) -> Events: ...
    def statistics(self, *, messages_delivered: int, messages_dropped: int) -> Statistics: ...


def is_async_callable(fn: object) -> bool:
    """True for async functions and for objects whose ``__call__`` is one."""
    call = getattr(fn, "__call__", None)  # noqa: B004 - the method itself, not callable()
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def report(label: str, exc: BaseException) -> None:
    """A user callback raised: log it on the ``redismpx`` logger, affect nothing else."""
    logger.error("redismpx: %s raised %s", label, type(exc).__name__, exc_info=exc)


class Engine:
    """A multiplexer's shared inside (see the module docstring)."""

    __slots__ = (
        "_tasks",
        "backend",
        "closed",
        "connections",
        "delivered",
        "dropped",
        "router",
        "settings",
        "started",
    )

    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        connections: Callable[[Engine], Connections],
    ) -> None:
        self.backend = backend
        self.settings = settings
        #: The strategy: one server, or a cluster (see _connections.py). It makes the router.
        self.connections = connections(self)
        self.router: Router = self.connections.router
        self._tasks: TaskGroup | None = None
        self.started = False
        self.closed = False
        #: Messages handed to a callback or an iterator, and lost to full buffers.
        self.delivered = 0
        self.dropped = 0

    def new_core(self, **options: Any) -> Core:
        core: Core = MultiplexerCore(
            random=self.backend.random, **self.settings.core_options(), **options
        )
        return core

    # ---- lifecycle

    def start(self, tasks: TaskGroup) -> None:
        self._tasks = tasks
        self.started = True
        self.connections.start()

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``fn`` in the multiplexer's task group (until it ends, or the multiplexer does)."""
        assert self._tasks is not None, "spawn() before start()"
        self._tasks.start_soon(fn)

    def close(self) -> None:
        """Fail everything pending; the caller's task group then ends every task."""
        if self.closed:
            return
        self.closed = True
        owners = self.router.subscription_owners()
        # Stop the connections first, so that no reader feeds a closed core; then close
        # the cores (failing what is pending) and wake whoever waits.
        self.connections.stop()
        self.connections.close()
        for owner in owners:
            owner.multiplexer_closed()

    def check_usable(self) -> None:
        if self.closed:
            raise SubscriptionClosed("the multiplexer is closed")
        if not self.started:
            raise RuntimeError("use the multiplexer inside `async with` first")

    # ---- changes made by subscriptions

    def add(self, handle: Handle, names: Iterable[object]) -> None:
        self.dispatch(self.router.add(handle, names))
        self.connections.changed()

    def add_pattern(self, handle: Handle, pattern: object) -> None:
        self.dispatch(self.router.add_pattern(handle, pattern))
        self.connections.changed()

    def remove(self, handle: Handle, names: Iterable[object]) -> None:
        self.router.remove(handle, names)
        self.connections.changed()

    def clear(self, handle: Handle) -> None:
        self.router.clear(handle)
        self.connections.changed()

    def open_promise_subscription(self, prefix: object, owner: Subscriber) -> Handle:
        handle, events = self.router.open_promise_subscription(prefix, owner)
        self.dispatch(events)
        self.connections.changed()
        return handle

    def new_promise(
        self, handle: Handle, suffix: object, timeout: float, owner: PromiseOwner
    ) -> PromiseHandle[Subscriber, PromiseOwner]:
        promise = self.router.new_promise(handle, suffix, timeout, self.backend.now(), owner)
        self.connections.changed()  # a new deadline for the timer
        return promise

    def close_subscription(self, handle: Handle) -> None:
        self.dispatch(self.router.close_subscription(handle))
        self.connections.changed()

    # ---- dispatch: the reader's path

    def dispatch(
        self, events: Events, replies: Callable[[Event[Any, Any]], None] | None = None
    ) -> None:
        """Hand every event to its owner, in order; the rest (handshakes, replies to
        publishes) to ``replies``, the connection's own."""
        for event in events:
            if type(event) is MessagesReceived:
                channel, pattern, payloads = event.channel, event.pattern, event.payloads
                messages = None  # built at most once, shared by every queue of the run
                for owner in event.subscribers:
                    if owner.queued:
                        if messages is None:
                            messages = messages_of(channel, pattern, payloads)
                        owner.enqueue(messages)
                    else:
                        owner.deliver(channel, pattern, payloads)
            elif type(event) is NamesActivated:
                event.subscriber.activated(event.names)
            elif type(event) is SubscriptionDisconnected:
                event.subscriber.disconnected(event.error)
            elif type(event) is NameDeactivated:
                event.subscriber.deactivated(event.name, event.error)
            elif type(event) is NameRejected:
                event.subscriber.rejected(event.name, event.error)
            elif type(event) is PromiseFulfilled:
                event.promise.fulfil(event.data)
            elif type(event) is PromiseExpired:
                event.promise.fail(TimeoutError("the promise expired"))
            elif type(event) is PromiseFailed:
                event.promise.fail(event.error)
            elif replies is not None:
                replies(event)

    def statistics(self) -> Statistics:
        return self.router.statistics(
            messages_delivered=self.delivered, messages_dropped=self.dropped
        )
