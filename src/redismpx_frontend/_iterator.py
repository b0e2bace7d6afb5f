"""``async with mpx.subscribe(...) as it: async for msg in it``: messages as an iterator.

``mpx.subscribe(...)`` only checks its arguments; the names are subscribed when the
block is entered (an iterator never entered holds nothing), and entering waits
until Redis has confirmed every name, so that nothing published afterwards is
missed. The buffer is bounded like a callback subscription's. The iteration ends
with an error when it can no longer deliver everything it was asked for: the
buffer overflowed under the ``close`` policy (:class:`SubscriptionOverflow`),
Redis refused one of its names (the server's error; at once while entering, or on
a resubscription after a reconnect), or the multiplexer closed
(:class:`SubscriptionClosed`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import final

from redismpx_core import (
    OverflowPolicy,
    RedisMPXError,
    ServerError,
    SubscriptionClosed,
    SubscriptionKind,
    SubscriptionOverflow,
)
from redismpx_core._names import coerce_name, coerce_names

from ._backend import Signal
from ._consumers import buffer_options
from ._delivery import DeliveryQueue, Message
from ._engine import Engine, Handle

__all__ = ("ITERATOR_CHECKPOINT_EVERY", "MessageIterator")

#: An iterator hands out this many buffered messages in a row, at most, before it
#: yields to the scheduler (it always yields when its buffer is empty).
ITERATOR_CHECKPOINT_EVERY = 1024


class IteratorFeed:
    """The owner of an entered iterator's core handle: the dispatcher's side of it."""

    __slots__ = (
        "engine",
        "error",
        "handle",
        "items",
        "names",
        "node_wide",
        "queue",
        "signal",
        "waiting",
    )

    #: The dispatcher hands an iterator every run as shared Message objects.
    queued = True

    def __init__(
        self,
        engine: Engine,
        kind: SubscriptionKind,
        names: list[bytes],
        size: int,
        policy: OverflowPolicy,
        node_wide: bool = False,
    ) -> None:
        self.engine = engine
        self.node_wide = node_wide
        self.queue = DeliveryQueue(size, policy)
        self.signal: Signal = engine.backend.new_signal()
        self.error: RedisMPXError | None = None
        self.handle: Handle = engine.router.open_subscription(kind, self, node_wide=node_wide)
        # The queue's items and the handle's names, for the hot path (neither is ever
        # replaced, only changed in place).
        self.items = self.queue.items
        self.names = self.handle.names
        # Names not confirmed yet: entering waits until there are none.
        self.waiting = set(names)
        if kind is SubscriptionKind.PATTERN:
            engine.add_pattern(self.handle, names[0])
        else:
            engine.add(self.handle, names)

    # ---- the dispatcher's calls (the Subscriber protocol)

    def deliver(self, channel: bytes, pattern: bytes | None, payloads: list[bytes]) -> None:
        raise AssertionError("an iterator is always queued")

    def enqueue(self, messages: list[Message]) -> None:
        queue = self.queue
        before = queue.dropped
        accepted = queue.push(messages)
        if not accepted:
            queue.discard_messages()  # closed at once: never handed over, so dropped
            self.engine.dropped += queue.dropped - before
            self.end(SubscriptionOverflow(f"the iterator's buffer of {queue.bound} overflowed"))
        else:
            self.engine.dropped += queue.dropped - before
        self.signal.set()

    def activated(self, names: list[bytes]) -> None:
        waiting = self.waiting
        if waiting:
            if self.node_wide:
                # One node confirmed them: entering waits for every master.
                is_active = self.engine.router.is_active
                names = [name for name in names if is_active(self.handle, name)]
            waiting.difference_update(names)
            if not waiting:
                self.signal.set()

    def disconnected(self, error: RedisMPXError) -> None:
        """Iteration carries on after a reconnect; nothing to do."""

    def deactivated(self, name: bytes, error: RedisMPXError) -> None:
        """Iteration carries on until the name is active again; nothing to do."""

    def rejected(self, name: bytes, error: ServerError) -> None:
        # The iterator can no longer deliver what it was asked for: it ends, and the
        # refusal reaches its reader (SPEC 3.12), whether it is entering or iterating.
        self.end(error)

    def multiplexer_closed(self) -> None:
        self.end(SubscriptionClosed("the multiplexer was closed"))

    def end(self, error: RedisMPXError) -> None:
        if self.error is None:
            self.error = error
        self.engine.close_subscription(self.handle)
        self.signal.set()

    def renew_signal(self) -> None:
        self.signal = self.engine.backend.new_signal()


@final
class MessageIterator:
    """``async with mpx.subscribe(...) as it: async for msg in it``: messages as Message.

    Entering subscribes and waits until Redis has confirmed every name; it raises the
    server's error if a name was refused. See the module docstring for how an
    iteration ends.
    """

    __slots__ = (
        "_closed",
        "_counter",
        "_engine",
        "_feed",
        "_kind",
        "_names",
        "_node_wide",
        "_policy",
        "_size",
    )

    def __init__(
        self,
        engine: Engine,
        kind: SubscriptionKind,
        names: Iterable[object],
        buffer_size: int | None,
        overflow: OverflowPolicy | str | None,
        *,
        node_wide: bool = False,
    ) -> None:
        self._size, self._policy = buffer_options(engine.settings, buffer_size, overflow)
        self._node_wide = node_wide
        if kind is SubscriptionKind.PATTERN:
            patterns = list(names)
            self._names = [coerce_name(patterns[0], "pattern")] if patterns else []
        else:
            self._names = coerce_names(names, "channel")
        if not self._names:
            raise ValueError("subscribe() needs at least one name")
        engine.check_usable()
        self._engine = engine
        self._kind = kind
        self._feed: IteratorFeed | None = None
        self._closed = False
        self._counter = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("entered" if self._feed else "not entered")
        return f"<MessageIterator {self._kind.value} {state}>"

    async def __aenter__(self) -> MessageIterator:
        if self._closed:
            raise SubscriptionClosed("the iterator is closed")
        if self._feed is not None:
            raise RuntimeError("an iterator is entered once")
        engine = self._engine
        engine.check_usable()
        feed = self._feed = IteratorFeed(
            engine, self._kind, self._names, self._size, self._policy, self._node_wide
        )
        try:
            await engine.backend.checkpoint()
            while feed.waiting and feed.error is None:
                await feed.signal.wait()
                feed.renew_signal()
            if feed.error is not None:
                raise feed.error
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self._engine.backend.checkpoint()

    @property
    def dropped(self) -> int:
        """Messages this iterator lost to its full buffer."""
        return 0 if self._feed is None else self._feed.queue.dropped

    @property
    def closed(self) -> bool:
        return self._closed or (self._feed is not None and self._feed.handle.closed)

    def __aiter__(self) -> MessageIterator:
        return self

    async def __anext__(self) -> Message:
        feed = self._feed
        if feed is None:
            raise RuntimeError("enter the iterator first: `async with mpx.subscribe(...) as it`")
        # The hot path: a buffered message of a held name, no checkpoint due. (An
        # iterator's queue holds messages only.)
        items = feed.items
        if items and self._counter < ITERATOR_CHECKPOINT_EVERY - 1:
            # DeliveryQueue.pop's rules, taken by hand (see there): no notices here.
            item = items[0]
            if (item[2] or item[0]) in feed.names:  # type: ignore[index]
                items.popleft()
                self._counter += 1
                self._engine.delivered += 1
                return item  # type: ignore[return-value]
        return await self._next_slowly(feed)

    async def _next_slowly(self, feed: IteratorFeed) -> Message:
        queue = feed.queue
        while True:
            if queue.items:
                self._counter += 1
                if self._counter >= ITERATOR_CHECKPOINT_EVERY:
                    # Before taking the message: a cancellation here loses nothing.
                    self._counter = 0
                    await self._engine.backend.checkpoint()
                item = queue.pop(feed.handle.names)
                if item is not None:
                    self._engine.delivered += 1
                    return item  # type: ignore[return-value]
                continue
            if feed.handle.closed:
                if feed.error is not None:
                    raise feed.error
                raise StopAsyncIteration
            self._counter = 0
            await feed.signal.wait()
            feed.renew_signal()

    def close(self) -> None:
        """Stop receiving; the iteration ends."""
        self._closed = True
        feed = self._feed
        if feed is not None:
            self._engine.close_subscription(feed.handle)
            feed.signal.set()
