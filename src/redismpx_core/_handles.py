"""The handles a driver holds: subscriptions and promises, as the core sees them.

They carry state only; every change goes through the core (:class:`MultiplexerCore`
or :class:`ClusterCore`), which owns the invariants between handles and names.
A handle's ``owner`` is the driver's object for it, handed back in events; the core
lets go of it (``release_owner``) once nothing can be reported to it any more, so
that no reference cycle between the two outlives a close.
"""

from __future__ import annotations

from typing import Any, Generic

from ._events import P, S
from ._names import coerce_name, escape_glob
from ._state import IdentityEnum, NameKind

__all__ = (
    "PromiseHandle",
    "SubscriptionHandle",
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


class SubscriptionHandle(Generic[S, P]):
    """One logical subscription: the names it holds and, for promises, its promises.

    ``names`` holds the names the subscription holds, in the order they came (wanted,
    whether or not Redis has confirmed them yet): a driver checks it before handing
    over a message that was queued earlier, so that nothing of a removed name gets
    through. (A cluster router keeps, as each name's value, the node it rides on;
    a single core keeps ``None``.)
    """

    __slots__ = ("closed", "kind", "names", "owner", "pattern", "prefix", "promises", "told")

    def __init__(self, kind: SubscriptionKind, owner: S) -> None:
        self.kind = kind
        self.owner = owner
        self.names: dict[bytes, Any] = {}
        self.closed = False
        # True once on_disconnect was reported for the current outage; reset when a
        # connection completes its handshake.
        self.told = False
        self.prefix = b""
        self.pattern = b""
        # Pending promises by channel, or None: only a promise subscription ever has
        # any, and an idle subscription should not pay for an empty dict.
        self.promises: dict[bytes, list[PromiseHandle[S, P]]] | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.names)} names"
        return f"<SubscriptionHandle {self.kind.value} {state}>"

    def release_owner(self) -> None:
        """Closed: nothing more is reported to the owner (reading it now is a bug)."""
        del self.owner


class PromiseHandle(Generic[S, P]):
    """A single expected message on ``channel``, due by ``deadline``."""

    __slots__ = ("channel", "deadline", "owner", "settled", "subscription")

    def __init__(
        self, subscription: SubscriptionHandle[S, P], channel: bytes, deadline: float, owner: P
    ) -> None:
        self.subscription = subscription
        self.channel = channel
        self.deadline = deadline
        self.owner = owner
        self.settled = False

    def __repr__(self) -> str:
        state = "settled" if self.settled else f"due {self.deadline:.3f}"
        return f"<PromiseHandle {self.channel!r} {state}>"

    def settle(self) -> None:
        """Fulfilled, expired or failed: its event is made; it lets go of the owner (and
        whatever the owner holds, such as a payload) while its timer entry waits."""
        self.settled = True
        del self.owner


def new_promise_subscription(prefix: object, owner: S) -> SubscriptionHandle[S, Any]:
    """A promise subscription's handle: its pattern is ``prefix`` (escaped) then ``*``."""
    raw = coerce_name(prefix, "prefix")
    sub: SubscriptionHandle[S, Any] = SubscriptionHandle(SubscriptionKind.PROMISE, owner)
    sub.prefix = raw
    sub.pattern = escape_glob(raw) + b"*"
    return sub


def pattern_to_add(sub: SubscriptionHandle[Any, Any], pattern: object) -> bytes:
    """``pattern``, checked as the one pattern an empty pattern subscription may take."""
    if sub.kind is not SubscriptionKind.PATTERN:
        raise TypeError(f"add_pattern() needs a pattern subscription, not {sub.kind.value}")
    name = coerce_name(pattern, "pattern")
    if sub.names:
        raise ValueError("a pattern subscription holds exactly one pattern")
    return name
