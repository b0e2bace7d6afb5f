"""Events: what the core tells its driver, each a fact in the past tense.

Subscriptions and promises appear in events as their *owner*: the object the
driver passed when it created them (the core's own handle when it passed none),
so that a driver dispatches without a lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._errors import ConnectionLost, RedisMPXError, ServerError

__all__ = (
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


@dataclass(frozen=True, slots=True)
class MessagesReceived:
    """Pub/Sub messages arrived for the subscriptions in ``subscribers``.

    One event covers a run of consecutive messages on one ``channel`` (and, for a
    pattern subscription, one ``pattern``; ``None`` otherwise), in the order Redis
    sent them: ``payloads`` holds their data. Fan-out costs the core nothing per
    subscriber: ``subscribers`` is a tuple the core reuses until the name's holders
    change. Runs keep the per-message cost of the core near that of parsing alone;
    see docs/core.md for the measurements. ``payloads`` is the core's list: read it,
    do not change it.
    """

    subscribers: tuple[Any, ...]
    channel: bytes
    pattern: bytes | None
    payloads: list[bytes]


@dataclass(frozen=True, slots=True)
class ConnectionEstablished:
    """The handshake completed: the connection is ready and resubscription is under way."""


@dataclass(frozen=True, slots=True)
class NamesActivated:
    """``names`` became active for ``subscriber``: Redis confirmed them (or they already were).

    One event covers a run of consecutive activations for one subscriber, in order:
    a batch of confirmations (a SUBSCRIBE of 1,024 names, say, or a resubscription
    after a reconnect) makes one event per subscriber rather than one per name.
    ``names`` is the core's list: read it, do not change it.
    """

    subscriber: Any
    names: list[bytes]


@dataclass(frozen=True, slots=True)
class NameRejected:
    """Redis refused ``name`` (NOPERM, for one); it was dropped from ``subscriber``."""

    subscriber: Any
    name: bytes
    error: ServerError


@dataclass(frozen=True, slots=True)
class SubscriptionDisconnected:
    """The connection that ``subscriber``'s names rode on was lost (once per loss)."""

    subscriber: Any
    error: RedisMPXError


@dataclass(frozen=True, slots=True)
class PromiseFulfilled:
    """A message arrived on the promise's channel."""

    promise: Any
    data: bytes


@dataclass(frozen=True, slots=True)
class PromiseExpired:
    """The promise's deadline passed first; awaiting it raises ``TimeoutError``."""

    promise: Any


@dataclass(frozen=True, slots=True)
class PromiseFailed:
    """The promise can no longer be fulfilled.

    ``error`` is a :class:`PromiseInterrupted` after a connection loss, or a
    :class:`SubscriptionClosed` when its subscription or the multiplexer closed.
    """

    promise: Any
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


Event = (
    MessagesReceived
    | ConnectionEstablished
    | NamesActivated
    | NameRejected
    | SubscriptionDisconnected
    | PromiseFulfilled
    | PromiseExpired
    | PromiseFailed
    | PublishCompleted
    | PublishFailed
    | CommandCompleted
    | CommandFailed
)
