"""The handles a driver holds: subscriptions and promises, as the core sees them.

They carry state only; every change goes through :class:`MultiplexerCore`, which
owns the invariants between handles and name records.
"""

from __future__ import annotations

from typing import Any

from ._names import coerce_name, escape_glob
from ._state import IdentityEnum, NameKind

__all__ = (
    "Promise",
    "Subscription",
    "SubscriptionKind",
    "new_promise_subscription",
    "pattern_to_add",
)


class SubscriptionKind(IdentityEnum):
    CHANNEL = "channel"
    PATTERN = "pattern"
    SHARD = "shard"
    PROMISE = "promise"

    @property
    def name_kind(self) -> NameKind:
        """The Redis name space this kind of subscription takes names from."""
        return _NAME_KINDS[self]


_NAME_KINDS = {
    SubscriptionKind.CHANNEL: NameKind.CHANNEL,
    SubscriptionKind.PATTERN: NameKind.PATTERN,
    SubscriptionKind.SHARD: NameKind.SHARD,
    SubscriptionKind.PROMISE: NameKind.PATTERN,
}


class Subscription:
    """One logical subscription: the names it holds and, for promises, its promises.

    ``names`` is the ordered set of names the subscription holds (wanted, whether
    or not Redis has confirmed them yet). A driver checks it before handing over a
    message that was queued earlier, so that nothing of a removed name gets through.
    """

    __slots__ = ("closed", "kind", "names", "owner", "pattern", "prefix", "promises", "told")

    def __init__(self, kind: SubscriptionKind, owner: Any) -> None:
        self.kind = kind
        self.owner: Any = self if owner is None else owner
        self.names: dict[bytes, None] = {}
        self.closed = False
        # True once on_disconnect was reported for the current outage; reset when a
        # connection completes its handshake.
        self.told = False
        self.prefix = b""
        self.pattern = b""
        # Pending promises by channel, or None: only a promise subscription ever has
        # any, and an idle subscription should not pay for an empty dict.
        self.promises: dict[bytes, list[Promise]] | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.names)} names"
        return f"<Subscription {self.kind.value} {state}>"


class Promise:
    """A single expected message on ``channel``, due by ``deadline``."""

    __slots__ = ("channel", "deadline", "owner", "settled", "subscription")

    def __init__(
        self, subscription: Subscription, channel: bytes, deadline: float, owner: Any
    ) -> None:
        self.subscription = subscription
        self.channel = channel
        self.deadline = deadline
        self.owner: Any = self if owner is None else owner
        self.settled = False

    def __repr__(self) -> str:
        state = "settled" if self.settled else f"due {self.deadline:.3f}"
        return f"<Promise {self.channel!r} {state}>"


def new_promise_subscription(prefix: object, owner: Any) -> Subscription:
    """A promise subscription's handle: its pattern is ``prefix`` (escaped) then ``*``."""
    raw = coerce_name(prefix, "prefix")
    sub = Subscription(SubscriptionKind.PROMISE, owner)
    sub.prefix = raw
    sub.pattern = escape_glob(raw) + b"*"
    return sub


def pattern_to_add(sub: Subscription, pattern: object) -> bytes:
    """``pattern``, checked as the one pattern an empty pattern subscription may take."""
    if sub.kind is not SubscriptionKind.PATTERN:
        raise TypeError(f"add_pattern() needs a pattern subscription, not {sub.kind.value}")
    name = coerce_name(pattern, "pattern")
    if sub.names:
        raise ValueError("a pattern subscription holds exactly one pattern")
    return name
