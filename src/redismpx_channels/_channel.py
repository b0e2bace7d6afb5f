"""One channel that receivers of this event loop read: a bounded buffer and its waiters.

Messages come from the multiplexer's reader, which must never wait: ``arrive`` takes
one at once or applies the overflow policy (the multiplexer's policies, with the same
meaning). Notices for the ``on_disconnect``/``on_reconnect`` message types are never
dropped for a message: one makes room by dropping the oldest message, and a
disconnect notice that finds another at the end of the buffer is not repeated, so a
channel nobody reads holds at most ``capacity`` items through any number of outages.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Protocol

from redismpx_anyio import OverflowPolicy, SubscriptionClosed, SubscriptionOverflow

__all__ = ("ChannelOwner", "LocalChannel")


class ChannelOwner(Protocol):
    """The loop layer, told of what a channel loses."""

    def dropped(self, channel: LocalChannel, count: int) -> None: ...
    def overflowed(self, channel: LocalChannel, error: SubscriptionOverflow) -> None: ...


class LocalChannel:
    """Buffered items are ``(deadline, payload)``: payload is the message's bytes as
    Redis delivered them (decoded by the receiver that takes it, so each gets a dict
    of its own), or a notice's dict."""

    __slots__ = (
        "activating",
        "capacity",
        "closed",
        "down",
        "dropped",
        "error",
        "expiry",
        "groups",
        "items",
        "key",
        "name",
        "owner",
        "policy",
        "subscription",
        "waiters",
    )

    def __init__(
        self,
        name: str,
        capacity: int,
        policy: OverflowPolicy,
        expiry: float,
        owner: ChannelOwner,
    ) -> None:
        self.name = name
        self.key = name.encode()
        self.capacity = capacity
        self.policy = policy
        self.expiry = expiry
        self.owner = owner
        self.items: deque[tuple[float, bytes | dict[str, Any]]] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()
        #: group name -> when it joined (time.monotonic()), for group_expiry
        self.groups: dict[str, float] = {}
        #: Redis name -> futures waiting for Redis to confirm it
        self.activating: dict[bytes, list[asyncio.Future[None]]] = {}
        self.subscription: Any = None
        self.closed = False
        self.error: BaseException | None = None
        #: a connection carrying one of its names was lost, and none is active again yet
        self.down = False
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<LocalChannel {self.name} {len(self.items)}/{self.capacity}>"

    @property
    def full(self) -> bool:
        return len(self.items) >= self.capacity

    # ---- the reader's side: never waits, never raises

    def arrive(self, _name: bytes, data: bytes) -> None:
        items = self.items
        if len(items) >= self.capacity:
            if self.policy is OverflowPolicy.DROP_NEWEST:
                self._dropped(1)
                return
            if self.policy is OverflowPolicy.CLOSE:
                self._dropped(len(items) + 1)
                self.owner.overflowed(
                    self,
                    SubscriptionOverflow(
                        f"channel {self.name}: its buffer of {self.capacity} overflowed"
                    ),
                )
                return
            items.popleft()
            self._dropped(1)
        items.append((time.monotonic() + self.expiry, data))
        if self.waiters:
            self.wake_one()

    def notice(self, message: dict[str, Any], *, repeatable: bool = True) -> None:
        items = self.items
        if not repeatable and items and items[-1][1] == message:
            return
        if len(items) >= self.capacity:
            # The oldest *message* goes; notices stay, in order.
            for index, (_, payload) in enumerate(items):
                if type(payload) is bytes:
                    del items[index]
                    self._dropped(1)
                    break
        items.append((time.monotonic() + self.expiry, message))
        if self.waiters:
            self.wake_one()

    def _dropped(self, count: int) -> None:
        self.dropped += count
        self.owner.dropped(self, count)

    # ---- the receivers' side

    def wake_one(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def take(self, now: float) -> tuple[bytes | dict[str, Any] | None, int]:
        """The first item not expired, or None; and how many expired items went first."""
        items = self.items
        expired = 0
        while items:
            deadline, payload = items.popleft()
            if deadline >= now:
                return payload, expired
            expired += 1
        return None, expired

    def expire(self, now: float) -> int:
        """Drop the expired items at the head; how many."""
        items = self.items
        expired = 0
        while items and items[0][0] < now:
            items.popleft()
            expired += 1
        return expired

    def fail(self, error: BaseException) -> None:
        """Close the channel with an error for its receivers (one of them raises it)."""
        if self.error is None:
            self.error = error
        self.items.clear()
        self.close()

    def close(self) -> None:
        self.closed = True
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            subscription.close()
        for futures in self.activating.values():
            for future in futures:
                if not future.done():
                    future.set_exception(
                        self.error or SubscriptionClosed(f"channel {self.name} was closed")
                    )
        self.activating.clear()
        self.wake_all()
