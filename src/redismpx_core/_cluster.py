"""Redis Cluster routing: which node carries which names, and what moves when the cluster changes.

Theory of operation
===================

A :class:`ClusterCore` is a router over :class:`MultiplexerCore` objects, one per
connection it wants open. It has the same subscription API as a single core, so
the front end's subscriptions do not know which they talk to; the driver runs
each connection it lists in :meth:`ClusterCore.connections` exactly as it runs a
single core's, and passes what each produces back through the router
(:meth:`handle_events`, :meth:`connection_lost`), which may change the list.

Connections are keyed by ``(role, node)``:

``("subscriber", node)``
    carries names. Channel, pattern and promise subscriptions all ride the *home*
    node's (PUBLISH reaches every node of a cluster, so any node will do); they move
    to another node when the home's connection fails and a refresh shows the home
    gone or unreachable, and when a refresh shows that the home left the cluster
    (see "Whose word counts") though its connection is up. A shard name rides the
    connection of the master that owns its hash slot (or of one of its replicas, see
    "Shard names on replicas"), and no command mixes slots (the
    core batches shard names per slot). Until the topology is known, or while its
    slot has no owner, a shard name waits *unplaced*: held, not yet sent.
``("commands", node)``
    no subscriptions: PUBLISH and SPUBLISH (routed to the slot's owner), and the
    topology query. Under RESP2 a subscribed connection refuses other commands, so
    these are separate connections under RESP3 too, for one rule.

The topology (``CLUSTER SHARDS``, falling back to ``CLUSTER SLOTS`` on servers
without it) is asked on one commands connection, the *control*: at start; when a
node refuses a shard name with a redirect (``MOVED`` after a slot migration,
``ASK`` during one, ``TRYAGAIN``, ``CLUSTERDOWN``; a node that lost a slot first
unsubscribes its names on its own, and the core's attempt to subscribe them again
there is what gets the redirect); when any connection is lost, and when a subscriber
connection comes back after a loss (the node may have been failed over meanwhile: a
killed master restarted as a replica would take its names back, and serve them
second-hand, on the word of a topology asked before the cluster noticed); and every
``refresh_interval`` seconds. Refreshes are at least ``min_refresh_interval``
apart, so a cluster in flux sees a bounded rate of queries. ``MOVED`` names its
new owner, and the name goes there at once, before the refresh confirms it.

After a refresh, every shard name whose slot has a new owner is removed from the
old node's core and added to the new owner's, for the same subscriber: it is
active again (``on_activation`` fires) once the new owner confirms it, as after a
reconnect on one server. Cores left with nothing to carry are dropped, and the
driver stops their connections. If the control's connection fails, the next node
(masters of the last topology first, then the startup nodes) takes over.

Turning to another node after a failure backs off as a reconnect does: the new
node's connection, when it is a new one, is withheld from :meth:`connections`
for a delay that grows with each turn in a row (its :meth:`next_deadline` says
when), and the delays start over once any connection completes its handshake. A
cluster whose nodes all refuse connections is tried in turn at the pace of one
connection's backoff, not as fast as the loop can go.

A connection the router drops (it no longer appears in :meth:`connections`) has
its core closed: the subscription and promise events of that close come with the
router's next output, but publishes and requests still pending on it are the
driver's to fail, since their tokens are that core's and may equal another's.

Whose word counts
-----------------

A node that leaves a cluster (``CLUSTER FORGET`` on every other node, then
``CLUSTER RESET`` on it) keeps its clients' connections, but it no longer hears the
cluster's PUBLISHes: names left on it go deaf without a word. The router sees it
leave in the topology: a topology from ``CLUSTER SHARDS`` lists every member,
slot-less masters and replicas included, and a node an earlier topology listed that
the topologies have stopped listing has left, once that has held for
:data:`LEAVE_CONFIRM_SECONDS` and two answers (while a failover settles, a node asked
may leave a member out of every shard for a moment; the next query is made when the
absence can be confirmed); and only a topology that serves every slot counts, since
mid-failover a node asked may take both the old master and the new one for replicas,
and then lists neither, nor their slots. If it is the home, the home moves to the first master,
and each subscription there hears :class:`~redismpx_core.NodeLeft` (a
``ConnectionLost``: the names stopped being delivered until their next activation)
before its names are activated on the new home; its pending promises fail with
``PromiseInterrupted``. A node never listed (a startup address the cluster names
otherwise, ``localhost`` for ``127.0.0.1``) is not taken as gone; and ``CLUSTER SLOTS``
(before Redis 7) lists no slot-less node, so there a departure is seen only when the
home's connection fails.

The topology is the word of one node, the control, and the node that left is a poor
witness: after its reset it describes a cluster of its own, itself alone with no
slot, and before it, it still lists the nodes that forgot it (as failed, once they
stop answering it). A reply in which no slot is served comes from a node outside any
working cluster (a reset node, one never joined, one cut off from every master): it
is not believed, and the control turns to the next node, as after a refused query.
So the departure is heard from a node still in the cluster, which no longer lists
it. (The cost: while a cluster serves no slot at all, being formed or with every
master down, the last topology believed stands, none at start, so that the router
is not ``connected`` until one is; and the query goes round the nodes at the pace of
``min_refresh_interval``, as it does anyway while shard names wait for an owner.)

A node that carries shard names owns their slots, and is emptied of them before it
is removed (forgotten with them, they would go unserved): its names move with their
slots, as in any migration, and its connection, idle and no longer a master's, is
dropped like any other. So is a departed control's commands connection once the
control has turned.

Shard names on replicas
-----------------------

Since Redis 7 a replica serves its master's shard channels: an ``SPUBLISH`` on the
master reaches the replica's ``SSUBSCRIBE``rs too. With ``shard_subscriptions=
"replicas"`` a shard name rides a replica of its slot's master, which takes the
subscriber load off the masters; publishes still go to the master. One function,
:meth:`ClusterCore._carrier`, says where a slot's names ride: the master's healthy
replicas as the topology lists them (``CLUSTER SHARDS`` lists only those whose health
is ``online``, ``CLUSTER SLOTS`` only those not failed), the slot picking one of them
(slot modulo their number: deterministic, and a shard's slots spread over its
replicas); the master itself when it has none; and the master a ``MOVED`` named, until
the next refresh. Everything else is a move as any other: each refresh compares every
shard name's node with the carrier of its slot, so a replica that dies (once the
cluster marks it failed; until then its connection reconnects and each failure asks
again), a replica promoted by a failover (its names go to a replica of the new
master, the old one maybe) and a migrated slot all move names, removed from the old
node and added to the new, with ``on_activation`` when the new node confirms. A
replica that refuses a name (``MOVED``: it does not think its master owns the slot)
is a redirect as from a master.

Names and placements
--------------------

The router keeps each name once: a user's handle maps every name it holds to the
node it rides on, for a shard name its slot's owner (``None`` while unplaced), for
channel, pattern and promise names ``None`` (they ride the home, whichever it is).
Below it, a user handle has a handle of its own in each node core it has names on,
its *placement* there; the node cores keep their names, the router does not copy
them. Placements are indexed both ways, by subscription and by node, so that a
change looks only at the (subscription, node) pairs it touches: closing one
subscription among thousands costs what its own names cost, not a scan of all.
A placement off the home is closed as soon as it has no names left (the home's
stay, as the home connection does: names come and go there).

Node-wide subscriptions
-----------------------

A channel or pattern subscription opened ``node_wide`` is held on *every master* of
the topology, not on the home: what a node publishes only to its own subscribers
(``__keyspace@0__:*`` and ``__keyevent@0__:*`` notifications) is heard from each. Its
names are kept once, in the user's handle, with ``None`` as their node (they ride every
master); where they are subscribed is the subscription's placements, one per master,
and nothing else: each refresh compares them with the topology's masters, places every
name on a master without a placement (a new master, or a replica promoted by a
failover) and closes the placements on nodes that are no longer masters. Until the
topology is known the names wait, held, not yet sent. A move of the home leaves them
alone.

Each placement is an ordinary handle in its node's core, so the notices are per node:
a master's core tells ``NamesActivated`` when that master confirms the names (so a name
is activated once per master, and again on a new master), and ``SubscriptionDisconnected``
when that master's connection is lost, with a :class:`NodeConnectionLost` naming it.
A name is active (:meth:`ClusterCore.is_active`) when every master has confirmed it.

A name a node refuses for good (``NOPERM`` under ACLs: any refusal that is not a
redirect) has left the node's handle; it leaves the user's too, as on one server,
and the refusal goes on to the front end. A later ``add`` then subscribes it again,
and no move (of its slot, or of the home) carries it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Final, Generic, Literal

from ._backoff import Backoff
from ._core import MultiplexerCore
from ._errors import (
    InactiveSubscription,
    NodeConnectionLost,
    NodeLeft,
    PromiseInterrupted,
    ProtocolError,
    ServerError,
    SubscriptionClosed,
)
from ._events import (
    CommandCompleted,
    CommandFailed,
    ConnectionEstablished,
    Event,
    NameRejected,
    P,
    PromiseFailed,
    PublishFailed,
    S,
    SubscriptionDisconnected,
)
from ._handles import (
    PromiseHandle,
    SubscriptionHandle,
    SubscriptionKind,
    new_promise_subscription,
    pattern_to_add,
)
from ._lifecycle import ConnectionState
from ._names import coerce_name, coerce_names
from ._policy import CLUSTER_NODE, REDIRECT_CODES
from ._slots import SLOTS, key_slot
from ._statistics import Statistics
from ._topology import Node, Topology, parse_cluster_shards, parse_cluster_slots

__all__ = ("SHARD_SUBSCRIPTIONS", "ClusterCore", "ConnectionKey", "Role", "ShardSubscriptions")

Role = Literal["subscriber", "commands"]
ShardSubscriptions = Literal["masters", "replicas"]
#: The values of ``shard_subscriptions``, the default first.
SHARD_SUBSCRIPTIONS: Final[tuple[ShardSubscriptions, ...]] = ("masters", "replicas")
ConnectionKey = tuple[Role, Node]

#: Seconds between periodic topology refreshes, by default.
REFRESH_INTERVAL: Final = 30.0
#: Seconds at least between two topology queries, by default.
MIN_REFRESH_INTERVAL: Final = 0.1
#: Topologies in a row that must still name a node that gave up a slot (it
#: unsubscribed the slot's names itself) before the router believes them: a node asked
#: just after a failover may not have heard of it, and the old master, now a replica,
#: would take the names back and serve them second-hand.
DISTRUST_REFRESHES: Final = 10
#: Seconds a member must stay missing from the topologies (asked at least twice in
#: that time) before the router takes it as gone: while a failover settles, the node
#: asked may list a member under no shard for a moment (a replica whose master it no
#: longer takes for one), and a home moved on that word would be moved for nothing.
LEAVE_CONFIRM_SECONDS: Final = 2.0


class ClusterCore(Generic[S, P]):
    """Routes subscriptions and publishes over one core per cluster node connection."""

    def __init__(
        self,
        startup: Sequence[Node],
        *,
        random: Callable[[], float],
        refresh_interval: float = REFRESH_INTERVAL,
        min_refresh_interval: float = MIN_REFRESH_INTERVAL,
        tls: bool = False,
        shard_subscriptions: ShardSubscriptions = "masters",
        **core_options: Any,
    ) -> None:
        if not startup:
            raise ValueError("a cluster needs at least one startup node")
        if not all(isinstance(node, Node) for node in startup):
            raise TypeError("startup nodes must be Node objects")
        for label, value in (
            ("refresh_interval", refresh_interval),
            ("min_refresh_interval", min_refresh_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
        if not isinstance(shard_subscriptions, str):
            raise TypeError(
                f"shard_subscriptions must be a str, got {type(shard_subscriptions).__name__}"
            )
        if shard_subscriptions not in SHARD_SUBSCRIPTIONS:
            raise ValueError(
                f"shard_subscriptions must be one of {', '.join(map(repr, SHARD_SUBSCRIPTIONS))}, "
                f"got {shard_subscriptions!r}"
            )
        #: Where shard names ride: their slot's master, or one of its replicas.
        self.shard_subscriptions: ShardSubscriptions = shard_subscriptions
        self._startup = tuple(dict.fromkeys(startup))
        self._known: dict[Node, None] = dict.fromkeys(self._startup)
        # Nodes a believed topology listed as members (see "Whose word counts").
        self._listed: set[Node] = set()
        #: Members missing from the latest topologies: since when, in how many.
        self._missing: dict[Node, tuple[float, int]] = {}
        self._random = random
        self._core_options = core_options
        # Fail now, not when the first node is contacted, if an option is wrong.
        MultiplexerCore(random=random, policy=CLUSTER_NODE, **core_options)
        self.refresh_interval = float(refresh_interval)
        self.min_refresh_interval = float(min_refresh_interval)
        # Nodes are reached over TLS: a node's address is its TLS port.
        self.tls = tls

        self.topology: Topology | None = None
        self._subscribers: dict[Node, MultiplexerCore[S, P]] = {}
        self._commanders: dict[Node, MultiplexerCore[S, P]] = {}
        self._home = self._startup[0]
        self._subscribers[self._home] = self._new_core()  # the home connection is always up
        # Every open user handle, with its placements (its handles in the node cores).
        self._placements: dict[SubscriptionHandle[S, P], dict[Node, SubscriptionHandle[S, P]]] = {}
        # The same placements by node: the user handles each node core has a handle for.
        self._carried: dict[Node, dict[SubscriptionHandle[S, P], None]] = {}
        # The node-wide subscriptions: held on every master (see "Node-wide subscriptions").
        self._node_wide: dict[SubscriptionHandle[S, P], None] = {}
        # Events name owners: the user handle an owner's event is about.
        self._by_owner: dict[S, SubscriptionHandle[S, P]] = {}
        self._closed = False

        self._control = self._startup[0]
        # Slot owners learnt from MOVED replies since the last refresh.
        self._redirects: dict[int, Node] = {}
        # Slots whose owner unsubscribed their names itself: slot -> (that node, the
        # refresh count then). See DISTRUST_REFRESHES.
        self._given_up: dict[int, tuple[Node, int]] = {}
        # Events of cores closed on the router's own initiative, for the next output.
        self._held: list[Event[S, P]] = []
        # New connections withheld until then, after a turn from a failed node.
        self._not_before: dict[ConnectionKey, float] = {}
        # Nodes whose subscriber connection was lost and is not back yet. See
        # handle_events: the node that comes back may no longer be what it was.
        self._reconnecting: set[Node] = set()
        self._turns = Backoff(
            base=core_options.get("backoff_base", 0.1),
            cap=core_options.get("backoff_cap", 10.0),
            random=random,
        )
        self._use_cluster_slots = False
        self._refresh_wanted = True
        self._refresh_token: int | None = None
        self._refresh_not_before = 0.0
        self._next_periodic: float | None = None
        self.refreshes = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._subscribers)} nodes"
        return f"<ClusterCore {state} home={self._home}>"

    # ------------------------------------------------------------------ connections

    def connections(self) -> dict[ConnectionKey, MultiplexerCore[S, P]]:
        """Every connection the driver should keep open now, and the core it runs (a
        connection withheld after a turn from a failed node is not listed yet)."""
        wanted: dict[ConnectionKey, MultiplexerCore[S, P]] = {}
        for node, core in self._subscribers.items():
            wanted["subscriber", node] = core
        for node, core in self._commanders.items():
            wanted["commands", node] = core
        for key in self._not_before:
            wanted.pop(key, None)
        return wanted

    def _subscriber(self, node: Node) -> MultiplexerCore[S, P]:
        core = self._subscribers.get(node)
        if core is None:
            core = self._subscribers[node] = self._new_core()
        return core

    def _commander(self, node: Node) -> MultiplexerCore[S, P]:
        core = self._commanders.get(node)
        if core is None:
            core = self._commanders[node] = self._new_core()
        return core

    def _new_core(self) -> MultiplexerCore[S, P]:
        return MultiplexerCore(random=self._random, policy=CLUSTER_NODE, **self._core_options)

    @property
    def home(self) -> Node:
        """The node whose connection carries channel, pattern and promise subscriptions."""
        return self._home

    @property
    def connected(self) -> bool:
        """The topology is known and the home connection is up."""
        home = self._subscribers.get(self._home)
        return (
            self.topology is not None and home is not None and home.state is ConnectionState.READY
        )

    @property
    def holds_events(self) -> bool:
        """True if events of cores it closed wait for the next output (any input takes them)."""
        return bool(self._held)

    @property
    def state(self) -> ConnectionState:
        """READY when :attr:`connected`, as a single core's state reads."""
        if self._closed:
            return ConnectionState.CLOSED
        return ConnectionState.READY if self.connected else ConnectionState.DISCONNECTED

    # ------------------------------------------------------------------ subscriptions

    def open_subscription(
        self, kind: SubscriptionKind, owner: S, *, node_wide: bool = False
    ) -> SubscriptionHandle[S, P]:
        """A new, empty channel, pattern or shard subscription; a ``node_wide`` channel
        or pattern one is held on every master (see "Node-wide subscriptions")."""
        self._check_open()
        if node_wide and kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.PATTERN):
            raise ValueError(
                f"a node-wide subscription is a channel or pattern one, not {kind.value}"
            )
        if kind is SubscriptionKind.PROMISE:
            raise ValueError("use open_promise_subscription() for promise subscriptions")
        handle: SubscriptionHandle[S, P] = SubscriptionHandle(kind, owner)
        self._placements[handle] = {}
        self._by_owner[owner] = handle
        if node_wide:
            self._node_wide[handle] = None
        elif kind is SubscriptionKind.CHANNEL:
            self._node_handle(handle, self._home)  # so that the home connection opens
        return handle

    def open_pattern_subscription(
        self, pattern: object, owner: S
    ) -> tuple[SubscriptionHandle[S, P], list[Event[S, P]]]:
        name = coerce_name(pattern, "pattern")
        handle = self.open_subscription(SubscriptionKind.PATTERN, owner)
        return handle, self.add_pattern(handle, name)

    def add_pattern(self, sub: SubscriptionHandle[S, P], pattern: object) -> list[Event[S, P]]:
        self._check_sub(sub)
        name = pattern_to_add(sub, pattern)
        sub.names[name] = None
        if sub in self._node_wide:
            return self._add_everywhere(sub, [name])
        return self._subscriber(self._home).add_pattern(self._node_handle(sub, self._home), name)

    def open_promise_subscription(
        self, prefix: object, owner: S
    ) -> tuple[SubscriptionHandle[S, P], list[Event[S, P]]]:
        handle: SubscriptionHandle[S, P] = new_promise_subscription(prefix, owner)
        self._check_open()
        self._placements[handle] = {}
        self._by_owner[owner] = handle
        events = self._place_promises(handle, self._home)
        handle.names[handle.pattern] = None
        return handle, events

    def _place_promises(self, handle: SubscriptionHandle[S, P], node: Node) -> list[Event[S, P]]:
        node_handle, events = self._subscriber(node).open_promise_subscription(
            handle.prefix, handle.owner
        )
        self._place(handle, node, node_handle)
        return events

    def add(self, sub: SubscriptionHandle[S, P], names: Iterable[object]) -> list[Event[S, P]]:
        """Add names to a channel or shard subscription (activations of names already active)."""
        self._check_sub(sub)
        if sub.kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.SHARD):
            raise TypeError(f"a {sub.kind.value} subscription has a fixed name")
        new = [name for name in coerce_names(names, "channel") if name not in sub.names]
        if sub in self._node_wide:
            sub.names.update(dict.fromkeys(new))
            return self._add_everywhere(sub, new)
        if sub.kind is SubscriptionKind.CHANNEL:
            events = self._subscriber(self._home).add(self._node_handle(sub, self._home), new)
            sub.names.update(dict.fromkeys(new))
            return events
        placed = {name: self._carrier(key_slot(name)) for name in new}
        sub.names.update(placed)
        events = []
        for node, group in _by_node(placed).items():
            if node is None:
                self._refresh_wanted = True  # the owner is unknown: ask
            else:
                events += self._subscriber(node).add(self._node_handle(sub, node), group)
        return events

    def _add_everywhere(
        self, sub: SubscriptionHandle[S, P], names: list[bytes]
    ) -> list[Event[S, P]]:
        """Subscribe a node-wide subscription's ``names`` on every master (on none while
        the topology is unknown: the next refresh places them)."""
        events: list[Event[S, P]] = []
        if names:
            for node in self._masters():
                events += self._add_on(sub, node, names)
        return events

    def _add_on(
        self, sub: SubscriptionHandle[S, P], node: Node, names: list[bytes]
    ) -> list[Event[S, P]]:
        if sub.kind is SubscriptionKind.PATTERN:
            return self._subscriber(node).add_pattern(self._node_handle(sub, node), names[0])
        return self._subscriber(node).add(self._node_handle(sub, node), names)

    def _masters(self) -> tuple[Node, ...]:
        return self.topology.masters if self.topology is not None else ()

    def remove(self, sub: SubscriptionHandle[S, P], names: Iterable[object]) -> None:
        """Remove names from a channel or shard subscription (names it lacks are ignored)."""
        self._check_sub(sub)
        if sub.kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.SHARD):
            raise TypeError(f"a {sub.kind.value} subscription has a fixed name")
        self._remove(sub, coerce_names(names, "channel"))

    def clear(self, sub: SubscriptionHandle[S, P]) -> None:
        self._check_sub(sub)
        if sub.kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.SHARD):
            raise TypeError(f"a {sub.kind.value} subscription has a fixed name: close it")
        self._remove(sub, list(sub.names))

    def _remove(self, sub: SubscriptionHandle[S, P], names: Iterable[bytes]) -> None:
        held = {name: sub.names.pop(name) for name in names if name in sub.names}
        if not held:
            return
        placement = self._placements[sub]
        if sub in self._node_wide:
            groups: dict[Node | None, list[bytes]] = {node: list(held) for node in placement}
        elif sub.kind is SubscriptionKind.CHANNEL:
            groups = {self._home: list(held)}
        else:
            groups = _by_node(held)
        for node, group in groups.items():
            if node is not None:
                self._subscribers[node].remove(placement[node], group)
                self._release(sub, node)

    def close_subscription(self, sub: SubscriptionHandle[S, P]) -> list[Event[S, P]]:
        """Close a subscription: drop its names, fail its promises. Closing twice is fine."""
        if sub.closed:
            return []
        events: list[Event[S, P]] = []
        for node, node_handle in self._placements.pop(sub).items():
            events += self._subscribers[node].close_subscription(node_handle)
            self._uncarry(sub, node)
        self._node_wide.pop(sub, None)
        del self._by_owner[sub.owner]
        sub.names.clear()
        sub.closed = True
        sub.release_owner()
        return events

    def new_promise(
        self, sub: SubscriptionHandle[S, P], suffix: object, timeout: float, now: float, owner: P
    ) -> PromiseHandle[S, P]:
        """A promise on ``prefix + suffix`` (see :meth:`MultiplexerCore.new_promise`)."""
        if sub.kind is not SubscriptionKind.PROMISE:
            raise TypeError("new_promise() needs a promise subscription")
        self._check_sub(sub)
        node_handle = self._placements[sub].get(self._home)
        if node_handle is None:
            raise InactiveSubscription("the promise subscription is not active")
        return self._subscribers[self._home].new_promise(node_handle, suffix, timeout, now, owner)

    def subscription_owners(self) -> list[S]:
        return list(self._by_owner)

    def is_active(self, sub: SubscriptionHandle[S, P], name: bytes) -> bool:
        if name not in sub.names:
            return False
        if sub in self._node_wide:
            # Active once every master has confirmed it.
            placements = self._placements[sub]
            masters = self._masters()
            return bool(masters) and all(
                node in placements and self._subscribers[node].is_active(placements[node], name)
                for node in masters
            )
        node = sub.names[name] if sub.kind is SubscriptionKind.SHARD else self._home
        if node is None:
            return False
        node_handle = self._placements[sub].get(node)
        return node_handle is not None and self._subscribers[node].is_active(node_handle, name)

    # ------------------------------------------------------------------ placements

    def _node_handle(self, sub: SubscriptionHandle[S, P], node: Node) -> SubscriptionHandle[S, P]:
        """``sub``'s placement on ``node``, opened there if it has none yet."""
        node_handle = self._placements[sub].get(node)
        if node_handle is None:
            node_handle = self._subscriber(node).open_subscription(sub.kind, sub.owner)
            self._place(sub, node, node_handle)
        return node_handle

    def _place(
        self, sub: SubscriptionHandle[S, P], node: Node, node_handle: SubscriptionHandle[S, P]
    ) -> None:
        self._placements[sub][node] = node_handle
        self._carried.setdefault(node, {})[sub] = None

    def _release(self, sub: SubscriptionHandle[S, P], node: Node) -> None:
        """Names left ``sub``'s placement on ``node``: close it if none are left (off the home).

        It may be closed already: a refused batch leaves the node's handle all at once,
        and the router hears of its names one event at a time.
        """
        node_handle = self._placements[sub].get(node)
        if node_handle is not None and not node_handle.names and node != self._home:
            self._held += self._unplace(sub, node)

    def _unplace(self, sub: SubscriptionHandle[S, P], node: Node) -> list[Event[S, P]]:
        """Close ``sub``'s placement on ``node`` (its promises fail)."""
        events = self._subscribers[node].close_subscription(self._placements[sub].pop(node))
        self._uncarry(sub, node)
        return events

    def _unplace_left(
        self, sub: SubscriptionHandle[S, P], node: Node, left: NodeLeft
    ) -> list[Event[S, P]]:
        """:meth:`_unplace` from a node that left the cluster: the subscription hears
        of it as of a loss, and its promises fail as a loss fails them."""
        events: list[Event[S, P]] = []
        placement = self._placements[sub][node]
        if placement.names and not placement.told:
            events.append(SubscriptionDisconnected(sub.owner, left))
        interrupted = PromiseInterrupted(str(left))
        for event in self._unplace(sub, node):
            if isinstance(event, PromiseFailed):
                event = replace(event, error=interrupted)
            events.append(event)
        return events

    def _uncarry(self, sub: SubscriptionHandle[S, P], node: Node) -> None:
        """``sub``'s placement on ``node`` is closed: drop the node's core if idle now."""
        carried = self._carried[node]
        del carried[sub]
        if not carried:
            del self._carried[node]
            self._drop_if_idle(node)

    def _drop_if_idle(self, node: Node) -> None:
        """Close the subscriber core of a node that carries nothing and owns no slot (a
        master's stays, names come and go; and the home's, always up)."""
        if (
            node == self._home
            or node in self._carried
            or node not in self._subscribers
            or (self.topology is not None and node in self.topology.masters)
        ):
            return
        self._reconnecting.discard(node)
        self._close_core(self._subscribers.pop(node))

    def _close_core(self, core: MultiplexerCore[S, P]) -> None:
        """Drop a node's core. Its replies pending are the driver's to fail (see the
        module docstring); the rest is told with the next output."""
        self._held += [
            event for event in core.close() if not isinstance(event, PublishFailed | CommandFailed)
        ]

    def _owner(self, slot: int) -> Node | None:
        """Where the slot's names go now; None while unknown (the names wait)."""
        node = self._redirects.get(slot)
        if node is not None or self.topology is None:
            return node
        node = self.topology.owner(slot)
        given_up = self._given_up.get(slot)
        if given_up is not None and given_up[0] == node:
            if self.refreshes - given_up[1] < DISTRUST_REFRESHES:
                self._refresh_wanted = True
                return None
            del self._given_up[slot]  # it still says so: the slot did come back
        return node

    def _carrier(self, slot: int) -> Node | None:
        """The node whose subscriber connection carries the slot's shard names: the
        placement rule (see "Shard names on replicas"). None while the owner is unknown."""
        owner = self._owner(slot)
        if (
            owner is None
            or self.shard_subscriptions == "masters"
            or slot in self._redirects
            or self.topology is None
        ):
            return owner
        replicas = self.topology.replicas.get(owner, ())
        return replicas[slot % len(replicas)] if replicas else owner

    def _check_open(self) -> None:
        if self._closed:
            raise SubscriptionClosed("the multiplexer is closed")

    def _check_sub(self, sub: SubscriptionHandle[S, P]) -> None:
        if sub.closed:
            raise SubscriptionClosed("the subscription is closed")

    # ------------------------------------------------------------------ publishing

    def publish_target(self, channel: bytes, *, sharded: bool) -> ConnectionKey | None:
        """The commands connection to publish ``channel`` on, if it is ready now.

        ``None`` means "not yet" (the topology or the connection is still coming):
        the caller waits for the next change and asks again. The connection is
        opened as a side effect.
        """
        self._check_open()
        if sharded:
            if self.topology is None:
                return None
            node = self._owner(key_slot(channel))
            if node is None:
                self._refresh_wanted = True
                return None
        else:
            node = self._control
        core = self._commander(node)
        return ("commands", node) if core.state is ConnectionState.READY else None

    def moved(self, error: ServerError, key: ConnectionKey) -> None:
        """A publish was redirected: take the hint, and ask for the topology."""
        self._refresh_wanted = True
        target = _redirect_target(error, key[1])
        slot = _redirect_slot(error)
        if target is not None and slot is not None and error.code == "MOVED":
            self._redirects[slot] = target

    # ------------------------------------------------------------------ inputs

    def handle_events(
        self, key: ConnectionKey, events: list[Event[S, P]], now: float
    ) -> list[Event[S, P]]:
        """Events of one node's core: the router's own are taken, the rest returned."""
        role, node = key
        out: list[Event[S, P]] = []
        for event in events:
            if type(event) is ConnectionEstablished:
                self._turns.reset()  # a node answers: turning needs no delay again
                if role == "subscriber" and node in self._reconnecting:
                    # Back after a loss, it may have been failed over meanwhile (a
                    # master killed and restarted comes back as a replica, which takes
                    # its master's shard names again) while the last topology, asked
                    # before the cluster noticed, still names it: ask again.
                    self._reconnecting.discard(node)
                    self._refresh_wanted = True
            elif isinstance(event, NameRejected):
                if role == "subscriber" and self._rejected(event, node):
                    continue
            elif isinstance(event, SubscriptionDisconnected):
                sub = self._by_owner.get(event.subscriber)
                if sub is not None and sub in self._node_wide:
                    event = SubscriptionDisconnected(
                        event.subscriber, NodeConnectionLost(node, event.error)
                    )
            elif (
                isinstance(event, CommandCompleted | CommandFailed)
                and role == "commands"
                and event.token == self._refresh_token
                and node == self._control
            ):
                out += self._topology_reply(event, node, now)
                continue
            out.append(event)
        self._pump(now)
        return self._take_held(out)

    def _take_held(self, events: list[Event[S, P]]) -> list[Event[S, P]]:
        if self._held:
            events += self._held
            self._held = []
        return events

    def connection_lost(self, key: ConnectionKey, now: float) -> list[Event[S, P]]:
        """A node's connection failed or could not be made (after its core heard of it).

        The topology is asked again, and the router turns from the node: the control
        query moves to the next node, and so do the home's subscriptions.
        """
        role, node = key
        events: list[Event[S, P]] = []
        if self._closed:
            return events
        self._refresh_wanted = True
        if role == "subscriber":
            self._reconnecting.add(node)
        if role == "commands" and node == self._control:
            self._refresh_token = None
            self._control = self._next_candidate(node)
            self._hold_back(("commands", self._control), self._commanders, now)
            if self._control != node and (
                self.topology is None or node not in self.topology.masters
            ):
                self._close_core(self._commanders.pop(node))  # no publish goes there
        if role == "subscriber" and node == self._home:
            new = self._next_candidate(node)
            self._hold_back(("subscriber", new), self._subscribers, now)
            events += self._move_home(new)
        self._pump(now)
        return self._take_held(events)

    def _hold_back(
        self, key: ConnectionKey, cores: dict[Node, MultiplexerCore[S, P]], now: float
    ) -> None:
        """A turn to ``key`` after a failure: a new connection there waits its backoff
        delay (one already running is left alone; its own backoff paces it)."""
        if key[1] not in cores and key not in self._not_before:
            self._not_before[key] = now + self._turns.next_delay()

    def _release_due(self, now: float) -> None:
        if self._not_before:
            for key in [k for k, when in self._not_before.items() if when <= now]:
                del self._not_before[key]

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` has work: a throttled or periodic refresh, or a
        withheld connection to let go.

        A wanted query has a deadline only while it could go out then: once the control
        connection exists and is not ready, the query waits for its handshake (which
        :meth:`handle_events` hears), not for a time; a deadline in the past would have
        the driver's timer call again and again for nothing.
        """
        if self._closed:
            return None
        deadline = self._next_periodic
        if self._refresh_wanted and self._refresh_token is None:
            control = self._commanders.get(self._control)
            if control is None or control.state is ConnectionState.READY:
                deadline = self._refresh_not_before
        if self._not_before:
            withheld = min(self._not_before.values())
            deadline = withheld if deadline is None else min(deadline, withheld)
        return deadline

    def handle_timeout(self, now: float) -> list[Event[S, P]]:
        if self._closed:
            return []
        if self._next_periodic is not None and now >= self._next_periodic:
            self._refresh_wanted = True
            self._next_periodic = None
        self._pump(now)
        return self._take_held([])

    # ------------------------------------------------------------------ topology

    def _pump(self, now: float) -> None:
        """Let go of withheld connections now due; send the topology query if one is
        wanted, allowed and possible now."""
        self._release_due(now)
        if (
            self._closed
            or not self._refresh_wanted
            or self._refresh_token is not None
            or now < self._refresh_not_before
        ):
            return
        core = self._commander(self._control)
        if core.state is not ConnectionState.READY:
            return  # handle_events runs this again on its ConnectionEstablished
        query = (b"CLUSTER", b"SLOTS") if self._use_cluster_slots else (b"CLUSTER", b"SHARDS")
        self._refresh_token = core.request(*query)
        self._refresh_wanted = False

    def _topology_reply(
        self, event: CommandCompleted | CommandFailed, node: Node, now: float
    ) -> list[Event[S, P]]:
        self._refresh_token = None
        self._refresh_not_before = now + self.min_refresh_interval
        self._next_periodic = now + self.refresh_interval
        if isinstance(event, CommandFailed):
            if (
                isinstance(event.error, ServerError)
                and not self._use_cluster_slots
                and "unknown subcommand" in str(event.error).lower()
            ):
                self._use_cluster_slots = True  # a server older than Redis 7
            else:
                self._control = self._next_candidate(node)
            self._refresh_wanted = True
            return []
        try:
            if self._use_cluster_slots:
                topology = parse_cluster_slots(event.reply, node)
            else:
                topology = parse_cluster_shards(event.reply, node, tls=self.tls)
        except ProtocolError:
            self._control = self._next_candidate(node)
            self._refresh_wanted = True
            return []
        if not topology.ranges:
            # A node outside any working cluster: not believed (see "Whose word
            # counts"); the next node is asked.
            self._control = self._next_candidate(node)
            self._refresh_wanted = True
            return []
        self.refreshes += 1
        return self._apply(topology, now)

    def _next_candidate(self, node: Node) -> Node:
        """The node after ``node`` among those known: the topology's masters and replicas,
        then every node seen before (a node that left may come back) and the startup nodes."""
        current = list(self.topology.nodes) if self.topology is not None else []
        candidates = list(dict.fromkeys([*current, *self._known]))
        position = candidates.index(node) if node in candidates else -1
        return candidates[(position + 1) % len(candidates)]

    def _apply(self, topology: Topology, now: float) -> list[Event[S, P]]:
        """Move every shard name whose slot changed owner, and the home's names if its
        node left the cluster; drop what is left idle."""
        self.topology = topology
        left = self._left(topology, now)
        for node in left:
            self._known.pop(node, None)
        self._known.update(dict.fromkeys(topology.nodes))
        self._redirects.clear()
        for slot, (gave_up, _) in list(self._given_up.items()):
            if topology.owner(slot) != gave_up:
                del self._given_up[slot]  # the cluster has moved on
        events: list[Event[S, P]] = []
        for sub in [s for s in self._placements if s.kind is SubscriptionKind.SHARD]:
            moves: dict[tuple[Node | None, Node | None], list[bytes]] = {}
            for name, node in sub.names.items():
                owner = self._carrier(key_slot(name))
                if owner is None:
                    self._refresh_wanted = True  # some slot has no owner yet: look again
                if owner != node:
                    moves.setdefault((node, owner), []).append(name)
            for (old, new), names in moves.items():
                events += self._move(sub, old, new, names)
        home = self._subscribers.get(self._home)
        if self._home in left:
            error = NodeLeft(f"cluster node {self._home} left the cluster", self._home)
            events += self._move_home(topology.masters[0], error)  # (a topology believed has one)
        elif self._home not in topology.nodes and (
            home is None or home.state is not ConnectionState.READY
        ):
            events += self._move_home(topology.masters[0] if topology.masters else self._home)
        events += self._follow_masters(topology.masters)
        for node in [n for n in self._commanders if n != self._control]:
            if node not in topology.masters:
                self._close_core(self._commanders.pop(node))
        for node in list(self._subscribers):
            self._drop_if_idle(node)  # the masters changed
        return events

    def _left(self, topology: Topology, now: float) -> tuple[Node, ...]:
        """The members an earlier topology listed that the topologies have not listed
        since, for :data:`LEAVE_CONFIRM_SECONDS` and at least two answers: they left the
        cluster. None when ``topology`` does not list members (CLUSTER SLOTS)."""
        if topology.members is None:
            return ()
        members = set(topology.members)
        if sum(last - first + 1 for first, last, _ in topology.ranges) != SLOTS:
            # A view in flux, not evidence: mid-failover, a node may take both the old
            # master and the new one for replicas, and then lists neither, nor their
            # slots. A node leaves a cluster that serves every slot.
            self._listed |= members
            return ()
        left: list[Node] = []
        for node in self._listed - members:
            since, answers = self._missing.get(node, (now, 0))
            if answers >= 1 and now - since >= LEAVE_CONFIRM_SECONDS:
                del self._missing[node]
                left.append(node)
            else:
                self._missing[node] = (since, answers + 1)
        for node in members:
            self._missing.pop(node, None)
        self._listed = members | self._missing.keys()
        if self._missing:
            # Ask again when the first absence can be confirmed, not a whole
            # refresh_interval later.
            due = min(since for since, _ in self._missing.values()) + LEAVE_CONFIRM_SECONDS
            if self._next_periodic is None or due < self._next_periodic:
                self._next_periodic = due
        return tuple(left)

    def _follow_masters(self, masters: tuple[Node, ...]) -> list[Event[S, P]]:
        """Every node-wide subscription on exactly ``masters``: placed on a master that
        lacks it, closed on a node that is no longer one."""
        events: list[Event[S, P]] = []
        for sub in self._node_wide:
            placements = self._placements[sub]
            for node in [n for n in placements if n not in masters]:
                events += self._unplace(sub, node)
            if sub.names:
                for node in masters:
                    if node not in placements:
                        events += self._add_on(sub, node, list(sub.names))
        return events

    def _move(
        self,
        sub: SubscriptionHandle[S, P],
        old: Node | None,
        new: Node | None,
        names: list[bytes],
    ) -> list[Event[S, P]]:
        events: list[Event[S, P]] = []
        if old is not None:
            self._subscribers[old].remove(self._placements[sub][old], names)
            self._release(sub, old)
        if new is not None:
            events += self._subscriber(new).add(self._node_handle(sub, new), names)
        sub.names.update(dict.fromkeys(names, new))
        return events

    def _rejected(self, event: NameRejected[S], node: Node) -> bool:
        """``node``'s core dropped a name it was refused. True if the router takes the
        event (a redirect: the name is placed again); False if it is the subscriber's to
        hear (the name leaves the user's handle too)."""
        sub = self._by_owner.get(event.subscriber)
        name = event.name
        if sub is None:
            return False
        # Only a name the store places on ``node`` is the router's to act on.
        if sub in self._node_wide:
            # Refused on one master, refused on all (one ACL): the name leaves the
            # handle and every placement, and the subscriber hears it once.
            if name not in sub.names or node not in self._placements[sub]:
                return True
            self._remove(sub, [name])
            return False
        if sub.kind is SubscriptionKind.SHARD:
            if sub.names.get(name) != node:
                return False
            if event.error.code in REDIRECT_CODES:
                self._reroute(sub, name, node, event.error)
                return True
        elif node != self._home or name not in sub.names:
            return False
        # Refused for good: kept here, a later add would send nothing and a move would
        # subscribe it again elsewhere (see "Names and placements").
        del sub.names[name]
        self._release(sub, node)
        return False

    def _reroute(
        self, sub: SubscriptionHandle[S, P], name: bytes, node: Node, error: ServerError
    ) -> None:
        """``node`` redirected a shard name: place it again, where the redirect says if
        it says, or once the next refresh does."""
        self._refresh_wanted = True
        sub.names[name] = None
        self._release(sub, node)
        target = _redirect_target(error, node) if error.code == "MOVED" else None
        slot = _redirect_slot(error)
        if target is None and error.code == "MOVED":
            # The node unsubscribed the name itself: it gave up the slot.
            self._given_up[key_slot(name)] = (node, self.refreshes)
        if target is not None and target != node and slot is not None:
            self._redirects[slot] = target
            self._held += self._subscriber(target).add(self._node_handle(sub, target), [name])
            sub.names[name] = target

    def _move_home(self, new: Node, left: NodeLeft | None = None) -> list[Event[S, P]]:
        """Channel, pattern and promise subscriptions go to ``new``'s connection.

        ``left`` says the old home left the cluster with its connection up: its core
        tells nothing of a loss, so each subscription is told here (once, as for a
        loss), and its promises fail as interrupted."""
        old = self._home
        if new == old:
            return []
        self._home = new
        self._subscriber(new)  # the home connection is always up
        events: list[Event[S, P]] = []
        for sub in list(self._carried.get(old, ())):
            if sub in self._node_wide:
                continue  # it rides every master, whichever is home
            if sub.kind is SubscriptionKind.SHARD:
                self._release(sub, old)  # its names ride their slot's owner, not the home
                continue
            # Its promises already failed with the connection, or fail now.
            if left is None:
                events += self._unplace(sub, old)
            else:
                events += self._unplace_left(sub, old, left)
            if sub.kind is SubscriptionKind.PROMISE:
                if sub.names:  # (not if its pattern was refused)
                    events += self._place_promises(sub, new)
            elif sub.kind is SubscriptionKind.PATTERN:
                if sub.names:
                    events += self._subscriber(new).add_pattern(
                        self._node_handle(sub, new), next(iter(sub.names))
                    )
            else:
                events += self._subscriber(new).add(self._node_handle(sub, new), list(sub.names))
        self._drop_if_idle(old)
        return events

    # ------------------------------------------------------------------ the whole

    def close(self) -> list[Event[S, P]]:
        """Close every subscription and connection; every promise fails."""
        if self._closed:
            return []
        events: list[Event[S, P]] = []
        for core in [*self._subscribers.values(), *self._commanders.values()]:
            events += core.close()
        for sub in self._placements:
            sub.closed = True
            sub.release_owner()
        self._placements.clear()
        self._carried.clear()
        self._node_wide.clear()
        self._by_owner.clear()
        self._closed = True
        return events

    def statistics(self, *, messages_delivered: int, messages_dropped: int) -> Statistics:
        """The counters of every node's connections, added up (see docs/cluster.md)."""
        parts = [
            core.statistics(messages_delivered=0, messages_dropped=0)
            for core in [*self._subscribers.values(), *self._commanders.values()]
        ]
        return Statistics(
            connected=self.connected,
            connections_made=sum(p.connections_made for p in parts),
            connections_lost=sum(p.connections_lost for p in parts),
            reconnect_attempts=max((p.reconnect_attempts for p in parts), default=0),
            subscriptions=len(self._placements),
            active_channels=sum(p.active_channels for p in parts),
            active_patterns=sum(p.active_patterns for p in parts),
            active_shard_channels=sum(p.active_shard_channels for p in parts),
            messages_received=sum(p.messages_received for p in parts),
            messages_delivered=messages_delivered,
            messages_dropped=messages_dropped,
            promises_pending=sum(p.promises_pending for p in parts),
        )


def _by_node(placed: dict[bytes, Node | None]) -> dict[Node | None, list[bytes]]:
    """Names grouped by the node each rides on."""
    groups: dict[Node | None, list[bytes]] = {}
    for name, node in placed.items():
        groups.setdefault(node, []).append(name)
    return groups


def _redirect_slot(error: ServerError) -> int | None:
    """The slot of ``MOVED 3999 127.0.0.1:6381`` (or ASK), if the reply says it."""
    parts = str(error).split()
    if len(parts) >= 3 and parts[1].isdigit():
        return int(parts[1])
    return None


def _redirect_target(error: ServerError, asked: Node) -> Node | None:
    """The node of ``MOVED 3999 127.0.0.1:6381``; an empty host means the node asked."""
    parts = str(error).split()
    if len(parts) < 3:
        return None
    host, _, port = parts[2].rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    host = host.strip("[]") or asked.host
    return replace(asked, host=host, port=int(port)) if host != "?" else None
