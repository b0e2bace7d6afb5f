"""Events: what the core tells its driver, each a fact in the past tense.

Subscriptions and promises appear in events as their *owner*: the object the
driver passed when it opened the subscription or made the promise, so that a
driver dispatches without a lookup. The core never calls an owner; it only hands
it back. Events are generic in the two owner types (:data:`S` for subscriptions,
:data:`P` for promises), and so are the cores that make them: a driver that opens
every subscription with a ``Consumer`` owner gets ``NamesActivated[Consumer]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from ._errors import ConnectionLost, RedisMPXError, ServerError

__all__ = (
    "P",
    "S",
    "CommandCompleted",
    "CommandFailed",
    "ConnectionEstablished",
    "Event",
    "MessagesReceived",
    "NamesActivated",
    "NameRejected",
    "PromiseExpired",
    "PromiseFailed",
    "PromiseFulfilled",
    "PublishCompleted",
    "PublishFailed",
    "SubscriptionDisconnected",
)


#: The owner of a subscription: what the driver passed to open it.
S = TypeVar("S")
#: The owner of a promise: what the driver passed to make it.
P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class MessagesReceived(Generic[S]):
    """Pub/Sub messages arrived for the subscriptions in ``subscribers``.

    One event covers a run of consecutive messages on one ``channel`` (and, for a
    pattern subscription, one ``pattern``; ``None`` otherwise), in the order Redis
    sent them: ``payloads`` holds their data. Fan-out costs the core nothing per
    subscriber: ``subscribers`` is a tuple the core reuses until the name's holders
    change. Runs keep the per-message cost of the core near that of parsing alone;
    see docs/core.md for the measurements. ``payloads`` is the core's list: read it,
    do not change it.
    """

    subscribers: tuple[S, ...]
    channel: bytes
    pattern: bytes | None
    payloads: list[bytes]


@dataclass(frozen=True, slots=True)
class ConnectionEstablished:
    """The handshake completed: the connection is ready and resubscription is under way."""


@dataclass(frozen=True, slots=True)
class NamesActivated(Generic[S]):
    """``names`` became active for ``subscriber``: Redis confirmed them (or they already were).

    One event covers a run of consecutive activations for one subscriber, in order:
    a batch of confirmations (a SUBSCRIBE of 1,024 names, say, or a resubscription
    after a reconnect) makes one event per subscriber rather than one per name.
    ``names`` is the core's list: read it, do not change it.
    """

    subscriber: S
    names: list[bytes]


@dataclass(frozen=True, slots=True)
class NameRejected(Generic[S]):
    """Redis refused ``name`` (NOPERM, for one); it was dropped from ``subscriber``."""

    subscriber: S
    name: bytes
    error: ServerError


@dataclass(frozen=True, slots=True)
class NameDeactivated(Generic[S]):
    """``name`` stopped being active for ``subscriber`` while the connection stays up:
    a stand-alone server unsubscribed it of its own accord. The subscription keeps it,
    and it is subscribed and activated again; messages in between are lost, as in an
    outage. (A cluster node's core hands such a name to its router instead.)"""

    subscriber: S
    name: bytes
    error: RedisMPXError


@dataclass(frozen=True, slots=True)
class SubscriptionDisconnected(Generic[S]):
    """The connection that ``subscriber``'s names rode on was lost (once per outage)."""

    subscriber: S
    error: RedisMPXError


@dataclass(frozen=True, slots=True)
class PromiseFulfilled(Generic[P]):
    """A message arrived on the promise's channel."""

    promise: P
    data: bytes


@dataclass(frozen=True, slots=True)
class PromiseExpired(Generic[P]):
    """The promise's deadline passed first; awaiting it raises ``TimeoutError``."""

    promise: P


@dataclass(frozen=True, slots=True)
class PromiseFailed(Generic[P]):
    """The promise can no longer be fulfilled.

    ``error`` is a :class:`PromiseInterrupted` after a connection loss, or a
    :class:`SubscriptionClosed` when its subscription or the multiplexer closed.
    """

    promise: P
    error: RedisMPXError


@dataclass(frozen=True, slots=True)
class PublishCompleted:
    """Redis answered a PUBLISH sent on this connection with its number of receivers."""

    token: int
    receivers: int


@dataclass(frozen=True, slots=True)
class PublishFailed:
    """A PUBLISH got an error reply, or its connection was lost before the reply."""

    token: int
    error: ServerError | ConnectionLost


@dataclass(frozen=True, slots=True)
class CommandCompleted:
    """Redis answered a command queued with ``request()``; ``reply`` is as parsed."""

    token: int
    reply: Any


@dataclass(frozen=True, slots=True)
class CommandFailed:
    """A ``request()`` got an error reply, or its connection was lost before the reply."""

    token: int
    error: ServerError | ConnectionLost


#: Any event of a core whose subscriptions are owned by ``S`` and promises by ``P``.
Event: TypeAlias = (
    MessagesReceived[S]
    | ConnectionEstablished
    | NamesActivated[S]
    | NameRejected[S]
    | NameDeactivated[S]
    | SubscriptionDisconnected[S]
    | PromiseFulfilled[P]
    | PromiseExpired[P]
    | PromiseFailed[P]
    | PublishCompleted
    | PublishFailed
    | CommandCompleted
    | CommandFailed
)
