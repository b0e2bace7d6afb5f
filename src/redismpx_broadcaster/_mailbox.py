"""A bounded hand-off between one producer that must never wait and one asyncio consumer.

Both hand-offs of the adapter are one of these: the back end's (the multiplexer's
reader puts, ``next_published`` takes) and each subscriber's (the broadcast's
listener puts, the subscriber's ``get`` takes). ``put`` never blocks: a producer
that waited for one slow consumer would hold back every other one, which is how
the stock back end grows without bound instead. When the box is full the
multiplexer's own overflow policy decides, and every message lost is counted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from redismpx_anyio import OverflowPolicy

__all__ = ("Mailbox", "overflow_options")

T = TypeVar("T")


def overflow_options(
    buffer_size: object, overflow: object, what: str
) -> tuple[int, OverflowPolicy]:
    """Check a buffer's size and policy as the multiplexer checks its own."""
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int):
        raise TypeError(f"{what} must be an int, not {type(buffer_size).__name__}")
    if buffer_size < 1:
        raise ValueError(f"{what} must be >= 1, got {buffer_size!r}")
    if not isinstance(overflow, str):
        raise TypeError(f"overflow must be a str or OverflowPolicy, not {type(overflow).__name__}")
    try:
        return buffer_size, OverflowPolicy(overflow)
    except ValueError:
        choices = ", ".join(p.value for p in OverflowPolicy)
        raise ValueError(f"overflow must be one of {choices}, got {overflow!r}") from None


class Mailbox(Generic[T]):
    """At most ``bound`` items; ``put`` never waits, ``get`` waits for one.

    ``closing`` makes the error that ``get`` raises once the box is closed and
    empty; under the ``close`` policy an overflow closes the box at once with the
    error ``overflowed`` makes, and what it held counts as dropped (it will never
    be handed over). ``on_first_drop`` is called once, at the first loss, so that
    the owner can say so without a log line per message.
    """

    __slots__ = (
        "_closing",
        "_error",
        "_items",
        "_on_first_drop",
        "_overflowed",
        "_waiter",
        "bound",
        "closed",
        "dropped",
        "policy",
    )

    def __init__(
        self,
        bound: int,
        policy: OverflowPolicy,
        *,
        closing: Callable[[], BaseException],
        overflowed: Callable[[int], BaseException],
        on_first_drop: Callable[[Mailbox[T]], None] | None = None,
    ) -> None:
        self._items: deque[T] = deque()
        self.bound = bound
        self.policy = policy
        self.dropped = 0
        self.closed = False
        self._closing = closing
        self._overflowed = overflowed
        self._on_first_drop = on_first_drop
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Take ``item`` or drop something; False once the box is closed."""
        if self.closed:
            return False
        items = self._items
        if len(items) >= self.bound:
            policy = self.policy
            if policy is OverflowPolicy.DROP_OLDEST:
                items.popleft()
                self._count_drops(1)
            elif policy is OverflowPolicy.DROP_NEWEST:
                self._count_drops(1)
                return True
            else:
                lost = len(items) + 1
                items.clear()
                self._count_drops(lost)
                self.close(self._overflowed(self.bound))
                return False
        items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    async def get(self) -> T:
        """The oldest item; once closed and empty, the closing error."""
        items = self._items
        while not items:
            if self.closed:
                raise self._error if self._error is not None else self._closing()
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        return items.popleft()

    def get_nowait(self) -> T | None:
        """The oldest item, or None if there is none."""
        return self._items.popleft() if self._items else None

    def close(self, error: BaseException | None = None) -> None:
        """No more puts; ``get`` drains what is left, then raises (``error`` if given)."""
        if self.closed:
            return
        self.closed = True
        self._error = error
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _count_drops(self, count: int) -> None:
        first = self.dropped == 0
        self.dropped += count
        if first and self._on_first_drop is not None:
            self._on_first_drop(self)
