"""Where a core's connection sits: on a server of its own, or on one node of a Redis Cluster.

The two differ only in what the server may do to shard channels unasked, and in
who owns a shard channel's slot:

* A **stand-alone** server never moves a slot. A shard channel it unsubscribes of
  its own accord is subscribed again on the same connection, and its holders are
  told first (messages published in between are lost, as in an outage). A redirect
  (MOVED, ASK, ...) means the server is not what we took it for: the connection is
  dropped, as for any connection-level error.
* A **cluster node** loses a slot when it migrates or fails over. It then
  unsubscribes the slot's names itself, with frames that look like the
  confirmations of our own SUNSUBSCRIBE, and refuses ours with MOVED. So each of
  our SUNSUBSCRIBE commands is followed by a PING (the *fence*) that bounds what
  may still belong to it; a name it unsubscribes is handed back (``NameRejected``
  with code MOVED) to the router, which knows where the slot went (this node may
  now be a replica, which would take the name and serve it second-hand); and a
  SUBSCRIBE-family command refused with a redirect hands its names back the same
  way rather than dropping the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from ._errors import ConnectionLost, ServerError
from ._state import CONFIRMATIONS, RESUBSCRIBING, UNSUBSCRIBING, Command, NameKind, Reply

if TYPE_CHECKING:
    from ._events import Event, P, S
    from ._replies import Expected
    from ._table import NameRecord, NameTable

__all__ = ("CLUSTER_NODE", "REDIRECT_CODES", "STAND_ALONE", "NodePolicy")

#: Error codes by which a Redis Cluster node says "not here (now)" to a shard name.
REDIRECT_CODES: Final = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})

#: States in which a cluster node's own sunsubscribe may arrive before the reply to ours.
_MAY_CROSS: Final = frozenset({UNSUBSCRIBING, RESUBSCRIBING})


class NodePolicy(Protocol):
    """How a core treats what a server may do to its shard channels unasked."""

    def fences(self, kind: NameKind, command: Command) -> bool:
        """True if a PING must follow this command (see the module docstring)."""
        ...

    def server_unsubscribed(
        self, table: NameTable[S, P], record: NameRecord[S, P], events: list[Event[S, P]]
    ) -> None:
        """The server unsubscribed an ACTIVE shard channel of its own accord."""
        ...

    def accepts_crossing(self, record: NameRecord[S, P]) -> bool:
        """True if the server's own sunsubscribe of ``record`` may cross ours."""
        ...

    def redirected(
        self,
        table: NameTable[S, P],
        expected: Expected[S, P],
        error: ServerError,
        events: list[Event[S, P]],
    ) -> bool:
        """A SUBSCRIBE-family command was refused; true if this policy dealt with it."""
        ...


class StandAlonePolicy:
    """A server of its own (or one picked by the sentinels)."""

    def fences(self, kind: NameKind, command: Command) -> bool:
        return False

    def server_unsubscribed(
        self, table: NameTable[S, P], record: NameRecord[S, P], events: list[Event[S, P]]
    ) -> None:
        name = record.name.decode("utf-8", "replace")
        error = ConnectionLost(
            f"the server unsubscribed shard channel {name!r}; subscribing it again"
        )
        table.tell_holders(record, error, events)
        table.server_unsubscribed(record, events)  # wanted still: subscribed again, here

    def accepts_crossing(self, record: NameRecord[S, P]) -> bool:
        return False

    def redirected(
        self,
        table: NameTable[S, P],
        expected: Expected[S, P],
        error: ServerError,
        events: list[Event[S, P]],
    ) -> bool:
        return False


class ClusterNodePolicy:
    """One node of a Redis Cluster, behind a router that places names on nodes."""

    def fences(self, kind: NameKind, command: Command) -> bool:
        return kind is NameKind.SHARD and command is Command.UNSUBSCRIBE

    def server_unsubscribed(
        self, table: NameTable[S, P], record: NameRecord[S, P], events: list[Event[S, P]]
    ) -> None:
        # The router gets it back to place it on the slot's owner, where it is activated
        # again: a move, not a loss (see docs/cluster.md), so its holders are not told.
        moved = ServerError("MOVED: the server unsubscribed the name", code="MOVED")
        table.drop_holders(record, moved, events)
        table.server_unsubscribed(record, events)

    def accepts_crossing(self, record: NameRecord[S, P]) -> bool:
        # The server's own, crossing our SUNSUBSCRIBE: the reply to ours settles the name.
        return record.state in _MAY_CROSS

    def redirected(
        self,
        table: NameTable[S, P],
        expected: Expected[S, P],
        error: ServerError,
        events: list[Event[S, P]],
    ) -> bool:
        """The node does not serve these shard names' slot (any more, or yet).

        A refused SSUBSCRIBE hands the names back to their holders' router, which
        places them again once it knows the slot's owner; a refused SUNSUBSCRIBE means
        the node no longer has them, which is what it was meant to achieve. Batches
        never mix slots, so the whole command shares one fate.
        """
        if expected.kind is not NameKind.SHARD or error.code not in REDIRECT_CODES:
            return False
        if expected.command is Command.SUBSCRIBE:
            if expected.index:
                return False  # some names confirmed, then refused: not a slot's fate
            for record in expected.records:
                table.drop_refused(record, error, events)
            return True
        confirmed = CONFIRMATIONS[Reply.UNSUBSCRIBE_CONFIRMED]
        for record in expected.records[expected.index :]:
            table.enter(record, confirmed[record.state], events)
        return True


STAND_ALONE: Final[NodePolicy] = StandAlonePolicy()
CLUSTER_NODE: Final[NodePolicy] = ClusterNodePolicy()
