"""Per-name subscription state: every transition lives here, as data.

Theory of operation
===================

Users change what they *want* (a reference count per name: how many
subscriptions hold it); the server changes what *is* (whether the connection is
subscribed to the name). The core keeps one record per name it has ever had to
act on, and each record is in one :class:`NameState`. The state says what the
server has confirmed and which commands are in flight for that name:

    IDLE           not subscribed, nothing in flight (the record is dropped)
    SUBSCRIBING    SUBSCRIBE sent, not yet confirmed
    ACTIVE         confirmed; nothing in flight
    UNSUBSCRIBING  UNSUBSCRIBE sent, not yet confirmed
    CANCELLING     SUBSCRIBE then UNSUBSCRIBE in flight (removed before confirmed)
    RESUBSCRIBING  UNSUBSCRIBE then SUBSCRIBE in flight (re-added while leaving)

Redis answers a connection's commands in order, one confirmation per name, so
each confirmation moves exactly one record one step (:data:`CONFIRMATIONS`).
At most two commands are ever in flight for a name: a change of mind while two
are in flight waits for the next confirmation, which re-runs the flush decision.

The *flush decision* (:data:`FLUSH_ACTIONS`) runs when the driver asks for bytes
to write: for every record touched since the last write it compares the wish
with the state and sends SUBSCRIBE, UNSUBSCRIBE or nothing. Because it runs at
write time, an add and a remove of the same name between two writes cancel out
and never reach the wire, and all the names that need the same command travel
together in one command.

Messages are delivered only in ACTIVE. A subscription holding the name is
*activated* when the record enters ACTIVE while wanted, or at once when it
takes a name that already is ACTIVE; so in ACTIVE every holder is activated,
and outside it none is. A record leaves ACTIVE under its holders' feet in
three ways, and each tells them, so that a holder sees activation, then the
reason, then activation again, never two activations in a row:

* a connection loss (:data:`ON_CONNECTION_LOST`) sends every record to IDLE
  (the server forgot us): each subscription holding a name hears of it once
  per outage (SubscriptionDisconnected), and wanted names are subscribed again
  on the next connection;
* a refusal of its SUBSCRIBE (:data:`REJECTIONS`, NOPERM under ACLs, say)
  drops the name from its holders, each told why (NameRejected);
* a server-initiated unsubscribe (:data:`ON_SERVER_UNSUBSCRIBE`: Redis Cluster
  unsubscribes a shard channel itself when its slot moves) sends the record to
  IDLE. A cluster node's core hands the name back to its router (NameRejected,
  code MOVED), which moves it to the slot's new owner (a move is told by the
  activation there alone: see docs/cluster.md); a stand-alone core tells each
  holder (NameDeactivated: messages in between are lost) and subscribes the
  name again.

Confirmations that match no record's state, or that arrive out of order, mean
we no longer understand the server: that is a protocol error, and the
connection is dropped and rebuilt rather than guessed at.

The tables below are applied by :mod:`._table`, whose ``enter`` is the one
place a record changes state.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = (
    "CONFIRMATIONS",
    "FLUSH_ACTIONS",
    "REJECTIONS",
    "Command",
    "IdentityEnum",
    "NameKind",
    "NameState",
    "Reply",
)


class IdentityEnum(enum.Enum):
    """An Enum hashed by identity, as its members compare.

    ``Enum.__hash__`` is Python code (it hashes the member's name); these members
    key the transition tables and the records, looked up once or more per name and
    per confirmation, where identity hashing (C) is several times cheaper.
    """

    __hash__ = object.__hash__


class NameKind(IdentityEnum):
    """The three name spaces of Redis Pub/Sub, each with its own command family."""

    CHANNEL = "channel"
    PATTERN = "pattern"
    SHARD = "shard"


class NameState(IdentityEnum):
    IDLE = "idle"
    SUBSCRIBING = "subscribing"
    ACTIVE = "active"
    UNSUBSCRIBING = "unsubscribing"
    CANCELLING = "cancelling"
    RESUBSCRIBING = "resubscribing"


class Command(IdentityEnum):
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"


class Reply(IdentityEnum):
    SUBSCRIBE_CONFIRMED = "subscribe confirmed"
    UNSUBSCRIBE_CONFIRMED = "unsubscribe confirmed"


IDLE: Final = NameState.IDLE
SUBSCRIBING: Final = NameState.SUBSCRIBING
ACTIVE: Final = NameState.ACTIVE
UNSUBSCRIBING: Final = NameState.UNSUBSCRIBING
CANCELLING: Final = NameState.CANCELLING
RESUBSCRIBING: Final = NameState.RESUBSCRIBING

# The two-key tables are nested, outer key first, so that a loop over many names
# looks up the inner table once and then one state per name.

#: wanted -> state -> (command to send, next state). States not listed send nothing.
FLUSH_ACTIONS: Final[dict[bool, dict[NameState, tuple[Command, NameState]]]] = {
    True: {
        IDLE: (Command.SUBSCRIBE, SUBSCRIBING),
        UNSUBSCRIBING: (Command.SUBSCRIBE, RESUBSCRIBING),
    },
    False: {
        ACTIVE: (Command.UNSUBSCRIBE, UNSUBSCRIBING),
        SUBSCRIBING: (Command.UNSUBSCRIBE, CANCELLING),
    },
}

#: confirmation -> state -> next state. A state not listed is a protocol error.
CONFIRMATIONS: Final[dict[Reply, dict[NameState, NameState]]] = {
    Reply.SUBSCRIBE_CONFIRMED: {
        SUBSCRIBING: ACTIVE,
        CANCELLING: UNSUBSCRIBING,
    },
    Reply.UNSUBSCRIBE_CONFIRMED: {
        UNSUBSCRIBING: IDLE,
        RESUBSCRIBING: SUBSCRIBING,
    },
}

#: state -> next state when the SUBSCRIBE in flight is refused with an error reply
#: (NOPERM under ACLs, for one). The name is dropped from its holders.
REJECTIONS: Final[dict[NameState, NameState]] = {
    SUBSCRIBING: IDLE,
    CANCELLING: UNSUBSCRIBING,
}

#: state -> next state when the connection is lost: IDLE from every state, as the
#: server forgot the connection's subscriptions and every command in flight.
ON_CONNECTION_LOST: Final[dict[NameState, NameState]] = {state: IDLE for state in NameState}

#: A server-initiated unsubscribe (Redis Cluster, after a slot migration, sends
#: SUNSUBSCRIBE on its own) is accepted only from ACTIVE.
ON_SERVER_UNSUBSCRIBE: Final[dict[NameState, NameState]] = {ACTIVE: IDLE}
