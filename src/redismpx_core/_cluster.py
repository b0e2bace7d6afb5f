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
    gone or unreachable. A shard name rides the connection of the master that owns
    its hash slot, and no command mixes slots (the core batches shard names per
    slot). Until the topology is known, or while its slot has no owner, a shard name
    waits *unplaced*: held, not yet sent.
``("commands", node)``
    no subscriptions: PUBLISH and SPUBLISH (routed to the slot's owner), and the
    topology query. Under RESP2 a subscribed connection refuses other commands, so
    these are separate connections under RESP3 too, for one rule.

The topology (``CLUSTER SHARDS``, falling back to ``CLUSTER SLOTS`` on servers
without it) is asked on one commands connection, the *control*: at start; when a
node refuses a shard name with a redirect (``MOVED`` after a slot migration,
``ASK`` during one, ``TRYAGAIN``, ``CLUSTERDOWN``; a node that lost a slot first
unsubscribes its names on its own, and the core's attempt to subscribe them again
there is what gets the redirect); when any connection is lost; and every
``refresh_interval`` seconds. Refreshes are at least ``min_refresh_interval``
apart, so a cluster in flux sees a bounded rate of queries. ``MOVED`` names its
new owner, and the name goes there at once, before the refresh confirms it.

After a refresh, every shard name whose slot has a new owner is removed from the
old node's core and added to the new owner's, for the same subscriber: it is
active again (``on_activation`` fires) once the new owner confirms it, as after a
reconnect on one server. Cores left with nothing to carry are dropped, and the
driver stops their connections. If the control's connection fails, the next node
(masters of the last topology first, then the startup nodes) takes over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Final, Literal

from ._core import REDIRECT_CODES, ConnectionState, MultiplexerCore
from ._errors import InactiveSubscription, ProtocolError, ServerError, SubscriptionClosed
from ._events import (
    CommandCompleted,
    CommandFailed,
    Event,
    NameRejected,
)
from ._handles import (
    PromiseHandle,
    SubscriptionHandle,
    SubscriptionKind,
    new_promise_subscription,
    pattern_to_add,
)
from ._names import coerce_name, coerce_names
from ._slots import key_slot
from ._statistics import Statistics
from ._topology import Node, Topology, parse_cluster_shards, parse_cluster_slots

__all__ = ("ClusterCore", "ConnectionKey", "Role")

Role = Literal["subscriber", "commands"]
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


class ClusterCore:
    """Routes subscriptions and publishes over one core per cluster node connection."""

    def __init__(
        self,
        startup: Sequence[Node],
        *,
        random: Callable[[], float],
        refresh_interval: float = REFRESH_INTERVAL,
        min_refresh_interval: float = MIN_REFRESH_INTERVAL,
        tls: bool = False,
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
        self._startup = tuple(dict.fromkeys(startup))
        self._known: dict[Node, None] = dict.fromkeys(self._startup)
        self._random = random
        self._core_options = core_options
        # Fail now, not when the first node is contacted, if an option is wrong.
        MultiplexerCore(random=random, cluster=True, **core_options)
        self.refresh_interval = float(refresh_interval)
        self.min_refresh_interval = float(min_refresh_interval)
        # Nodes are reached over TLS: a node's address is its TLS port.
        self.tls = tls

        self.topology: Topology | None = None
        self._subscribers: dict[Node, MultiplexerCore] = {}
        self._commanders: dict[Node, MultiplexerCore] = {}
        self._home = self._startup[0]
        self._subscribers[self._home] = self._new_core()  # the home connection is always up
        # Each user handle's handles in the node cores it has names on.
        self._placements: dict[SubscriptionHandle, dict[Node, SubscriptionHandle]] = {}
        # Shard handles only: where each name rides (None: unplaced).
        self._homes: dict[SubscriptionHandle, dict[bytes, Node | None]] = {}
        self._by_owner: dict[Any, SubscriptionHandle] = {}
        self._closed = False

        self._control = self._startup[0]
        # Slot owners learnt from MOVED replies since the last refresh.
        self._redirects: dict[int, Node] = {}
        # Slots whose owner unsubscribed their names itself: slot -> (that node, the
        # refresh count then). See DISTRUST_REFRESHES.
        self._given_up: dict[int, tuple[Node, int]] = {}
        # Events of cores closed on the router's own initiative, for the next output.
        self._held: list[Event] = []
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

    def connections(self) -> dict[ConnectionKey, MultiplexerCore]:
        """Every connection the driver should keep open now, and the core it runs."""
        wanted: dict[ConnectionKey, MultiplexerCore] = {}
        for node, core in self._subscribers.items():
            wanted["subscriber", node] = core
        for node, core in self._commanders.items():
            wanted["commands", node] = core
        return wanted

    def _subscriber(self, node: Node) -> MultiplexerCore:
        core = self._subscribers.get(node)
        if core is None:
            core = self._subscribers[node] = self._new_core()
        return core

    def _commander(self, node: Node) -> MultiplexerCore:
        core = self._commanders.get(node)
        if core is None:
            core = self._commanders[node] = self._new_core()
        return core

    def _new_core(self) -> MultiplexerCore:
        return MultiplexerCore(random=self._random, cluster=True, **self._core_options)

    @property
    def home(self) -> Node:
        """The node whose connection carries channel, pattern and promise subscriptions."""
        return self._home

    @property
    def connected(self) -> bool:
        """The topology is known and the home connection is up."""
        home = self._subscribers.get(self._home)
        return (
            self.topology is not None
            and home is not None
            and home.state is ConnectionState.READY
        )

    @property
    def closed(self) -> bool:
        return self._closed

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

    def open_subscription(self, kind: SubscriptionKind, owner: Any) -> SubscriptionHandle:
        """A new, empty channel, pattern or shard subscription."""
        self._check_open()
        if kind is SubscriptionKind.PROMISE:
            raise ValueError("use open_promise_subscription() for promise subscriptions")
        handle = SubscriptionHandle(kind, owner)
        self._placements[handle] = {}
        self._by_owner[handle.owner] = handle
        if kind is SubscriptionKind.SHARD:
            self._homes[handle] = {}
        elif kind is SubscriptionKind.CHANNEL:
            self._node_handle(handle, self._home)  # so that the home connection opens
        return handle

    def open_pattern_subscription(
        self, pattern: object, owner: Any
    ) -> tuple[SubscriptionHandle, list[Event]]:
        name = coerce_name(pattern, "pattern")
        handle = self.open_subscription(SubscriptionKind.PATTERN, owner)
        return handle, self.add_pattern(handle, name)

    def add_pattern(self, sub: SubscriptionHandle, pattern: object) -> list[Event]:
        self._check_sub(sub)
        name = pattern_to_add(sub, pattern)
        events = self._home_core().add_pattern(self._node_handle(sub, self._home), name)
        sub.names[name] = None
        return events

    def open_promise_subscription(
        self, prefix: object, owner: Any
    ) -> tuple[SubscriptionHandle, list[Event]]:
        handle = new_promise_subscription(prefix, owner)
        self._check_open()
        self._placements[handle] = {}
        self._by_owner[handle.owner] = handle
        events = self._place_promises(handle, self._home)
        handle.names[handle.pattern] = None
        return handle, events

    def _place_promises(self, handle: SubscriptionHandle, node: Node) -> list[Event]:
        node_handle, events = self._subscriber(node).open_promise_subscription(
            handle.prefix, handle.owner
        )
        self._placements[handle][node] = node_handle
        return events

    def add(self, sub: SubscriptionHandle, names: Iterable[object]) -> list[Event]:
        """Add names to a channel or shard subscription (activations of names already active)."""
        self._check_sub(sub)
        if sub.kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.SHARD):
            raise TypeError(f"a {sub.kind.value} subscription has a fixed name")
        new = [name for name in coerce_names(names, "channel") if name not in sub.names]
        if sub.kind is SubscriptionKind.CHANNEL:
            events = self._home_core().add(self._node_handle(sub, self._home), new)
            sub.names.update(dict.fromkeys(new))
            return events
        homes = self._homes[sub]
        events = []
        for node, group in self._by_owner_node(new).items():
            if node is None:
                self._refresh_wanted = True  # the owner is unknown: ask
            else:
                events += self._subscriber(node).add(self._node_handle(sub, node), group)
            homes.update(dict.fromkeys(group, node))
        sub.names.update(dict.fromkeys(new))
        return events

    def remove(self, sub: SubscriptionHandle, names: Iterable[object]) -> None:
        """Remove names from a channel or shard subscription (names it lacks are ignored)."""
        self._check_sub(sub)
        if sub.kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.SHARD):
            raise TypeError(f"a {sub.kind.value} subscription has a fixed name")
        self._remove(sub, coerce_names(names, "channel"))

    def clear(self, sub: SubscriptionHandle) -> None:
        self._check_sub(sub)
        if sub.kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.SHARD):
            raise TypeError(f"a {sub.kind.value} subscription has a fixed name: close it")
        self._remove(sub, list(sub.names))

    def _remove(self, sub: SubscriptionHandle, names: Iterable[bytes]) -> None:
        held = [name for name in dict.fromkeys(names) if name in sub.names]
        if sub.kind is SubscriptionKind.CHANNEL:
            placement = self._placements[sub].get(self._home)
            if placement is not None:
                self._subscribers[self._home].remove(placement, held)
        else:
            homes = self._homes[sub]
            by_node: dict[Node | None, list[bytes]] = {}
            for name in held:
                by_node.setdefault(homes.pop(name), []).append(name)
            for node, group in by_node.items():
                if node is not None:
                    self._subscribers[node].remove(self._placements[sub][node], group)
        for name in held:
            del sub.names[name]
        self._drop_idle_cores()

    def close_subscription(self, sub: SubscriptionHandle) -> list[Event]:
        """Close a subscription: drop its names, fail its promises. Closing twice is fine."""
        if sub.closed:
            return []
        events: list[Event] = []
        for node, node_handle in self._placements.pop(sub, {}).items():
            events += self._subscribers[node].close_subscription(node_handle)
        self._homes.pop(sub, None)
        self._by_owner.pop(sub.owner, None)
        sub.names.clear()
        sub.closed = True
        sub.release_owner()
        self._drop_idle_cores()
        return events

    def new_promise(
        self, sub: SubscriptionHandle, suffix: object, timeout: float, now: float, owner: Any
    ) -> PromiseHandle:
        """A promise on ``prefix + suffix`` (see :meth:`MultiplexerCore.new_promise`)."""
        if sub.kind is not SubscriptionKind.PROMISE:
            raise TypeError("new_promise() needs a promise subscription")
        self._check_sub(sub)
        node_handle = self._placements[sub].get(self._home)
        if node_handle is None:
            raise InactiveSubscription("the promise subscription is not active")
        return self._subscribers[self._home].new_promise(node_handle, suffix, timeout, now, owner)

    def subscription_owners(self) -> list[Any]:
        return [sub.owner for sub in self._placements]

    def is_active(self, sub: SubscriptionHandle, name: bytes) -> bool:
        if name not in sub.names:
            return False
        node = self._homes[sub].get(name) if sub.kind is SubscriptionKind.SHARD else self._home
        if node is None:
            return False
        node_handle = self._placements[sub].get(node)
        return node_handle is not None and self._subscribers[node].is_active(node_handle, name)

    def _node_handle(self, sub: SubscriptionHandle, node: Node) -> SubscriptionHandle:
        placement = self._placements[sub]
        node_handle = placement.get(node)
        if node_handle is None:
            node_handle = self._subscriber(node).open_subscription(sub.kind, sub.owner)
            placement[node] = node_handle
        return node_handle

    def _home_core(self) -> MultiplexerCore:
        return self._subscriber(self._home)

    def _by_owner_node(self, names: Iterable[bytes]) -> dict[Node | None, list[bytes]]:
        groups: dict[Node | None, list[bytes]] = {}
        for name in names:
            groups.setdefault(self._owner(key_slot(name)), []).append(name)
        return groups

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

    def _check_open(self) -> None:
        if self._closed:
            raise SubscriptionClosed("the multiplexer is closed")

    def _check_sub(self, sub: SubscriptionHandle) -> None:
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

    def handle_events(self, key: ConnectionKey, events: list[Event], now: float) -> list[Event]:
        """Events of one node's core: the router's own are taken, the rest returned."""
        role, node = key
        out: list[Event] = []
        for event in events:
            cls = event.__class__
            if cls is NameRejected and role == "subscriber":
                if self._rerouted(event, node):  # type: ignore[arg-type]
                    continue
            elif (
                (cls is CommandCompleted or cls is CommandFailed)
                and role == "commands"
                and event.token == self._refresh_token  # type: ignore[union-attr]
                and node == self._control
            ):
                out += self._topology_reply(event, node, now)  # type: ignore[arg-type]
                continue
            out.append(event)
        self._pump(now)
        return self._take_held(out)

    def _take_held(self, events: list[Event]) -> list[Event]:
        if self._held:
            events += self._held
            self._held = []
        return events

    def connection_lost(self, key: ConnectionKey, now: float) -> list[Event]:
        """A node's connection failed or could not be made (after its core heard of it).

        The topology is asked again, and the router turns from the node: the control
        query moves to the next node, and so do the home's subscriptions.
        """
        role, node = key
        events: list[Event] = []
        if self._closed:
            return events
        self._refresh_wanted = True
        if role == "commands" and node == self._control:
            self._refresh_token = None
            self._control = self._next_candidate(node)
        if role == "subscriber" and node == self._home:
            events += self._move_home(self._next_candidate(node))
        self._pump(now)
        return self._take_held(events)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` has work: a throttled or periodic refresh."""
        if self._closed:
            return None
        if self._refresh_wanted and self._refresh_token is None:
            return self._refresh_not_before
        return self._next_periodic

    def handle_timeout(self, now: float) -> list[Event]:
        if self._closed:
            return []
        if self._next_periodic is not None and now >= self._next_periodic:
            self._refresh_wanted = True
            self._next_periodic = None
        self._pump(now)
        return self._take_held([])

    # ------------------------------------------------------------------ topology

    def _pump(self, now: float) -> None:
        """Send the topology query if one is wanted, allowed and possible now."""
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
    ) -> list[Event]:
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
        self.refreshes += 1
        return self._apply(topology)

    def _next_candidate(self, node: Node) -> Node:
        """The node after ``node`` among those known: the topology's masters and replicas,
        then every node seen before (a node that left may come back) and the startup nodes."""
        current = list(self.topology.nodes) if self.topology is not None else []
        candidates = list(dict.fromkeys([*current, *self._known]))
        position = candidates.index(node) if node in candidates else -1
        return candidates[(position + 1) % len(candidates)]

    def _apply(self, topology: Topology) -> list[Event]:
        """Move every shard name whose slot changed owner; drop what is left idle."""
        self.topology = topology
        self._known.update(dict.fromkeys(topology.nodes))
        self._redirects.clear()
        for slot, (gave_up, _) in list(self._given_up.items()):
            if topology.owner(slot) != gave_up:
                del self._given_up[slot]  # the cluster has moved on
        events: list[Event] = []
        for sub, homes in self._homes.items():
            moves: dict[tuple[Node | None, Node | None], list[bytes]] = {}
            for name, node in homes.items():
                owner = self._owner(key_slot(name))
                if owner != node:
                    moves.setdefault((node, owner), []).append(name)
            for (old, new), names in moves.items():
                events += self._move(sub, old, new, names)
        home = self._subscribers.get(self._home)
        if self._home not in topology.nodes and (
            home is None or home.state is not ConnectionState.READY
        ):
            events += self._move_home(topology.masters[0] if topology.masters else self._home)
        if any(node is None for homes in self._homes.values() for node in homes.values()):
            self._refresh_wanted = True  # some slot has no owner yet: look again
        for node in [n for n in self._commanders if n != self._control]:
            if node not in topology.masters:
                self._held += self._commanders.pop(node).close()
        self._drop_idle_cores()
        return events

    def _move(
        self, sub: SubscriptionHandle, old: Node | None, new: Node | None, names: list[bytes]
    ) -> list[Event]:
        placement = self._placements[sub]
        if old is not None and old in placement:
            self._subscribers[old].remove(placement[old], names)
        events: list[Event] = []
        if new is not None:
            events = self._subscriber(new).add(self._node_handle(sub, new), names)
        self._homes[sub].update(dict.fromkeys(names, new))
        return events

    def _rerouted(self, event: NameRejected, node: Node) -> bool:
        """A node redirected a shard name: place it again. False if not ours to take."""
        if event.error.code not in REDIRECT_CODES:
            return False
        sub = self._by_owner.get(event.subscriber)
        if sub is None or sub.kind is not SubscriptionKind.SHARD or event.name not in sub.names:
            return False
        self._refresh_wanted = True
        homes = self._homes[sub]
        homes[event.name] = None
        target = _redirect_target(event.error, node) if event.error.code == "MOVED" else None
        slot = _redirect_slot(event.error)
        if target is None and event.error.code == "MOVED":
            # The node unsubscribed the name itself: it gave up the slot.
            self._given_up[key_slot(event.name)] = (node, self.refreshes)
        if target is not None and target != node and slot is not None:
            self._redirects[slot] = target
            self._held += self._subscriber(target).add(
                self._node_handle(sub, target), [event.name]
            )
            homes[event.name] = target
        return True

    def _move_home(self, new: Node) -> list[Event]:
        """Channel, pattern and promise subscriptions go to ``new``'s connection."""
        old = self._home
        if new == old:
            return []
        self._home = new
        events: list[Event] = []
        for sub, placement in self._placements.items():
            if sub.kind is SubscriptionKind.SHARD:
                continue
            node_handle = placement.pop(old, None)
            if node_handle is not None:
                # Its promises already failed with the connection, or fail now.
                events += self._subscribers[old].close_subscription(node_handle)
            if sub.kind is SubscriptionKind.PROMISE:
                events += self._place_promises(sub, new)
            elif sub.kind is SubscriptionKind.PATTERN:
                if sub.names:
                    events += self._subscriber(new).add_pattern(
                        self._node_handle(sub, new), next(iter(sub.names))
                    )
            else:
                events += self._subscriber(new).add(self._node_handle(sub, new), list(sub.names))
        self._subscriber(new)  # the home connection is always up
        self._drop_idle_cores()
        return events

    def _drop_idle_cores(self) -> None:
        """Close node handles with no names left, and the connections of nodes that
        carry nothing and own no slot (a master's stays: names come and go)."""
        masters = self.topology.masters if self.topology is not None else ()
        for node in [n for n in self._subscribers if n != self._home]:
            core = self._subscribers[node]
            for placement in self._placements.values():
                handle = placement.get(node)
                if handle is not None and not handle.names:
                    self._held += core.close_subscription(handle)
                    del placement[node]
            if node not in masters and not any(
                node in placement for placement in self._placements.values()
            ):
                self._held += self._subscribers.pop(node).close()

    # ------------------------------------------------------------------ the whole

    def close(self) -> list[Event]:
        """Close every subscription and connection; every promise fails."""
        if self._closed:
            return []
        events: list[Event] = []
        for core in [*self._subscribers.values(), *self._commanders.values()]:
            events += core.close()
        for sub in self._placements:
            sub.closed = True
            sub.release_owner()
        self._placements.clear()
        self._homes.clear()
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

