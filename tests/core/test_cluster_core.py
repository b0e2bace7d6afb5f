"""ClusterCore against an in-memory cluster: routing and topology decisions, property-tested.

A small harness plays the driver: it opens a fake connection for every connection
the router wants, moves bytes both ways until nothing moves, reports losses and
refused connections, and advances the clock to the router's deadlines. Hypothesis
then mixes subscription changes with the cluster's own changes (slot migrations,
dead and revived nodes, a node that leaves the cluster, dropped connections, names
refused with NOPERM) and checks, once things settle, that every name held is
subscribed exactly once in the cluster (a shard name on the owner of its slot, a
channel on the home), is active, and gets what is published to it; and after every
step, that the names the router holds are those the subscriber holds, and that the
node cores below agree with it.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from core.fake_cluster import FakeCluster
from core.fake_redis import FakeConnection
from redismpx_core import (
    CommandFailed,
    ConnectionLost,
    ConnectionState,
    InactiveSubscription,
    MessagesReceived,
    NameDeactivated,
    NameRejected,
    NamesActivated,
    NodeLeft,
    PromiseFailed,
    PromiseInterrupted,
    PublishFailed,
    SubscriptionClosed,
    SubscriptionKind,
)
from redismpx_core._cluster import LEAVE_CONFIRM_SECONDS, ClusterCore, ConnectionKey
from redismpx_core._slots import key_slot
from redismpx_core._topology import Node
from server_matrix import examples
from work_counted import calls_made

NODES = [Node("10.0.0.1", 7001), Node("10.0.0.2", 7002), Node("10.0.0.3", 7003)]
POOL = [b"a", b"b", b"c", b"d", b"e", b"f", b"{t}1", b"{t}2", b"user:{42}", b"x" * 40]


class Owner:
    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"<Owner {self.label}>"


class Harness:
    """Plays the driver for a ClusterCore over a FakeCluster."""

    def __init__(self, cluster: FakeCluster, router: ClusterCore) -> None:
        self.cluster = cluster
        self.router = router
        self.conns: dict[ConnectionKey, FakeConnection] = {}
        self.cores: dict[ConnectionKey, Any] = {}  # the core each connection was made for
        self.now = 0.0
        self.activations: Counter[tuple[Any, bytes]] = Counter()
        self.messages: list[tuple[Any, bytes, bytes]] = []
        self.disconnects: Counter[Any] = Counter()
        self.disconnect_errors: list[tuple[Any, Exception]] = []
        self.failed_promises: list[tuple[Any, Exception]] = []
        self.deactivations: Counter[tuple[Any, bytes]] = Counter()
        # Refusals that reached the subscriber (NOPERM), as the front end is told of them.
        self.rejections: list[tuple[Any, bytes]] = []
        self.on_rejected: Callable[[Any, bytes], None] | None = None

    def take(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, NamesActivated):
                for name in event.names:
                    self.activations[event.subscriber, name] += 1
            elif isinstance(event, MessagesReceived):
                for owner in event.subscribers:
                    for payload in event.payloads:
                        self.messages.append((owner, event.channel, payload))
            elif isinstance(event, NameRejected):
                if event.error.code != "NOPERM":  # a redirect is the router's to take
                    raise AssertionError(f"a refusal other than NOPERM reached us: {event}")
                self.rejections.append((event.subscriber, event.name))
                if self.on_rejected is not None:
                    self.on_rejected(event.subscriber, event.name)
            elif isinstance(event, NameDeactivated):
                self.deactivations[event.subscriber, event.name] += 1
            elif event.__class__.__name__ == "SubscriptionDisconnected":
                self.disconnects[event.subscriber] += 1
                self.disconnect_errors.append((event.subscriber, event.error))
            elif isinstance(event, PromiseFailed):
                self.failed_promises.append((event.promise, event.error))

    def lose(self, key: ConnectionKey, error: str) -> None:
        core = self.router.connections()[key]
        self.take(
            self.router.handle_events(key, core.connection_lost(ConnectionLost(error)), self.now)
        )
        self.take(self.router.connection_lost(key, self.now))

    def settle(self, horizon: float = 5.0) -> None:
        """Run until nothing moves and no deadline is due within ``horizon`` seconds."""
        attempted: set[ConnectionKey] = set()
        for _ in range(500):
            if not self._step(attempted):
                deadline = self.router.next_deadline()
                if deadline is None or deadline > self.now + horizon:
                    return
                self.now = max(self.now, deadline)
                attempted.clear()  # a new moment: refused connections may be tried again
                self.take(self.router.handle_timeout(self.now))
        raise AssertionError("the cluster router never settled")

    def _step(self, attempted: set[ConnectionKey]) -> bool:
        moved = False
        wanted = self.router.connections()
        for key in [k for k in self.conns if wanted.get(k) is not self.cores[k]]:
            # Not wanted any more, or wanted anew with another core: as a driver does,
            # close the old connection (the server then forgets its subscriptions).
            self.conns.pop(key).close()
        for key, core in wanted.items():
            if key not in self.router.connections():
                continue  # an earlier step in this loop dropped it
            conn = self.conns.get(key)
            if conn is not None and conn.closed and not conn.pending():
                del self.conns[key]
                self.lose(key, "closed by the server")
                moved = True
                continue
            if conn is None:
                if key in attempted or core.state is not ConnectionState.DISCONNECTED:
                    continue
                attempted.add(key)
                conn = self.cluster.connect(key[1])
                if conn is None:
                    self.lose(key, "connection refused")
                    moved = True
                    continue
                self.conns[key] = conn
                self.cores[key] = core
                self.take(self.router.handle_events(key, core.connection_made(self.now), self.now))
                moved = True
            data = core.data_to_send()
            if data and not conn.closed:
                conn.feed(data)
                moved = True
            out = conn.take()
            if out:
                self.take(
                    self.router.handle_events(key, core.receive_data(out, self.now), self.now)
                )
                moved = True
        return moved


def new_router(nodes: list[Node] | None = None) -> ClusterCore:
    return ClusterCore(
        nodes or NODES[:1], random=lambda: 0.5, health_check_interval=None, backoff_base=0.01
    )


class ClusterMachine(RuleBasedStateMachine):
    subs = Bundle("subs")

    @initialize()
    def start(self) -> None:
        self.cluster = FakeCluster(NODES)
        self.router = new_router()
        self.net = Harness(self.cluster, self.router)
        self.model: dict[Any, tuple[Any, set[bytes]]] = {}  # owner -> (handle, names)
        self.refused: dict[Any, set[bytes]] = {}  # owner -> names refused since
        self.net.on_rejected = self.rejected
        self.count = 0
        self.net.settle()

    def rejected(self, owner: Owner, name: bytes) -> None:
        """A name refused (NOPERM) leaves the subscriber, as on one server."""
        _, held = self.model[owner]
        assert name in held, (owner, name)
        held.discard(name)
        self.refused.setdefault(owner, set()).add(name)

    @rule(target=subs, kind=st.sampled_from([SubscriptionKind.SHARD, SubscriptionKind.CHANNEL]))
    def open_subscription(self, kind: SubscriptionKind) -> Owner:
        self.count += 1
        owner = Owner(f"s{self.count}")
        handle = self.router.open_subscription(kind, owner)
        self.model[owner] = (handle, set())
        return owner

    @rule(owner=subs, names=st.lists(st.sampled_from(POOL), max_size=5))
    def add(self, owner: Owner, names: list[bytes]) -> None:
        if owner not in self.model:
            return
        handle, held = self.model[owner]
        self.net.take(self.router.add(handle, names))
        held.update(names)

    @rule(owner=subs, names=st.lists(st.sampled_from(POOL), max_size=5))
    def remove(self, owner: Owner, names: list[bytes]) -> None:
        if owner not in self.model:
            return
        handle, held = self.model[owner]
        self.router.remove(handle, names)
        held.difference_update(names)

    @rule(owner=subs)
    def close(self, owner: Owner) -> None:
        if owner not in self.model:
            return
        handle, _ = self.model.pop(owner)
        self.net.take(self.router.close_subscription(handle))
        with pytest.raises(SubscriptionClosed):
            self.router.add(handle, [b"a"])

    @rule(name=st.sampled_from(POOL))
    def deny(self, name: bytes) -> None:
        """ACLs refuse ``name`` from now on (when next subscribed: added, moved, resubscribed)."""
        self.cluster.deny(name)

    @rule(owner=subs, name=st.sampled_from(POOL))
    def refuse(self, owner: Owner, name: bytes) -> None:
        """ACLs refuse ``name``, which is then added: refused at once, unless the node
        already has it subscribed (for another subscription, or since earlier)."""
        if owner not in self.model:
            return
        self.cluster.deny(name)
        handle, held = self.model[owner]
        self.net.take(self.router.add(handle, [name]))
        held.add(name)
        self.net.settle()

    @rule(name=st.sampled_from(POOL))
    def allow(self, name: bytes) -> None:
        self.cluster.allow(name)

    def refused_owners(self) -> list[Owner]:
        return [o for o in self.model if self.refused.get(o, set()) - self.model[o][1]]

    @precondition(lambda self: self.refused_owners())
    @rule(data=st.data())
    def add_refused_names_again(self, data: st.DataObject) -> None:
        """Once allowed, a refused name can be added again, and is subscribed again."""
        owner = data.draw(st.sampled_from(self.refused_owners()))
        handle, held = self.model[owner]
        names = sorted(self.refused.pop(owner) - held)
        for name in names:
            self.cluster.allow(name)
        self.net.take(self.router.add(handle, names))
        held.update(names)
        self.net.settle()
        for name in names:
            assert self.router.is_active(handle, name), (owner, name)

    @rule(name=st.sampled_from(POOL), node=st.sampled_from(NODES))
    def migrate(self, name: bytes, node: Node) -> None:
        if node not in self.cluster.down and node not in self.cluster.removed:
            self.cluster.move_slot(key_slot(name), node)

    @precondition(lambda self: len(self.cluster.down | self.cluster.removed) < len(NODES) - 1)
    @rule(node=st.sampled_from(NODES))
    def kill(self, node: Node) -> None:
        self.cluster.kill(node)

    @precondition(lambda self: not self.cluster.down and not self.cluster.removed)
    @rule(node=st.sampled_from(NODES))
    def leave(self, node: Node) -> None:
        """The node is emptied of its slots, then leaves the cluster with its connections
        up (forgotten by the others, then reset): the next periodic refresh sees it gone,
        and nothing of ours stays there."""
        self.cluster.empty(node, next(n for n in NODES if n != node))
        self.net.settle()
        self.cluster.remove(node)
        deadline = self.router.next_deadline()  # the periodic refresh
        assert deadline is not None
        self.net.now = deadline
        self.net.take(self.router.handle_timeout(self.net.now))
        self.net.settle()
        assert self.router.home != node
        assert all(key[1] != node for key in self.router.connections())

    @rule(node=st.sampled_from(NODES))
    def revive(self, node: Node) -> None:
        self.cluster.revive(node)

    @rule(data=st.data())
    def drop_a_connection(self, data: st.DataObject) -> None:
        if self.net.conns:
            key = data.draw(st.sampled_from(sorted(self.net.conns, key=str)))
            self.net.conns[key].close()

    @rule()
    def settle(self) -> None:
        self.net.settle()

    @invariant()
    def names_match(self) -> None:
        for handle, held in self.model.values():
            assert set(handle.names) == held

    @invariant()
    def the_store_and_the_node_cores_agree(self) -> None:
        """Each name held rides the node the router's store says, in that node's core,
        and a node core holds no name the store does not place there."""
        router = self.router
        home = router.home
        for handle, _ in self.model.values():
            placements = router._placements[handle]
            for name, node in handle.names.items():
                if handle.kind is SubscriptionKind.CHANNEL:
                    assert node is None, (handle, name, node)
                    node = home
                if node is not None:
                    assert name in placements[node].names, (handle, name, node)
            for node, node_handle in placements.items():
                assert not node_handle.closed
                assert handle in router._carried[node]
                assert node == home or node_handle.names, "an idle placement off the home"
                for name in node_handle.names:
                    rides = handle.names[name] if handle.kind is SubscriptionKind.SHARD else home
                    assert rides == node, (handle, name, node, rides)
        masters = router.topology.masters if router.topology is not None else ()
        for node, carried in router._carried.items():
            assert all(node in router._placements[sub] for sub in carried)
        for role, node in router.connections():
            if role == "subscriber":
                assert node == home or node in masters or node in router._carried, node

    def teardown(self) -> None:
        if not hasattr(self, "router"):
            return
        # Once settled: every name held is subscribed once, on its owner (a channel on
        # the home), and active.
        self.net.settle()
        kinds = (
            (SubscriptionKind.SHARD, self.cluster.shard_holders, self.cluster.spublish),
            (SubscriptionKind.CHANNEL, self.cluster.channel_holders, self.cluster.publish),
        )
        for kind, holders_of, _ in kinds:
            wanted = self.wanted(kind)
            for name in POOL:
                holders = holders_of(name)
                if name not in wanted:
                    assert holders == [], (name, holders)
                elif kind is SubscriptionKind.SHARD:
                    assert holders == [self.cluster.owner(name)], (name, holders)
                else:
                    assert holders == [self.router.home], (name, holders)
        for owner, (handle, held) in self.model.items():
            for name in held:
                assert self.router.is_active(handle, name), (owner, name)
                assert self.net.activations[owner, name] >= 1
        # And each gets what is published to it, once.
        for kind, _, publish in kinds:
            for name in sorted(self.wanted(kind)):
                self.net.messages.clear()
                assert publish(name, b"payload") == 1
                self.net.settle()
                got = sorted(owner.label for owner, channel, _ in self.net.messages)
                expected = sorted(
                    o.label
                    for o, (handle, held) in self.model.items()
                    if handle.kind is kind and name in held
                )
                assert got == expected, (name, got, expected)

    def wanted(self, kind: SubscriptionKind) -> set[bytes]:
        return {name for h, held in self.model.values() if h.kind is kind for name in held}


TestClusterRouting = ClusterMachine.TestCase
TestClusterRouting.settings = settings(
    max_examples=int(os.environ.get("CLUSTER_EXAMPLES", "0")) or examples(150),
    stateful_step_count=30,
    deadline=None,
)


def test_names_follow_a_migrated_slot() -> None:
    cluster = FakeCluster(NODES)
    router = new_router()
    net = Harness(cluster, router)
    owner = Owner("one")
    handle = router.open_subscription(SubscriptionKind.SHARD, owner)
    net.take(router.add(handle, [b"a", b"b", b"{t}1"]))
    net.settle()
    assert all(router.is_active(handle, n) for n in (b"a", b"b", b"{t}1"))
    source = cluster.owner(b"a")
    destination = next(n for n in NODES if n != source)
    cluster.move_slot(key_slot(b"a"), destination)
    net.settle()
    assert cluster.shard_holders(b"a") == [destination]
    assert net.activations[owner, b"a"] == 2  # activated anew on its new owner
    assert router.is_active(handle, b"a")
    assert net.disconnects[owner] == 0  # no connection was lost
    # nor is a move told as one: the new owner's activation says it all (docs/cluster.md)
    assert net.deactivations[owner, b"a"] == 0


def test_topology_is_asked_once_at_start_and_throttled() -> None:
    cluster = FakeCluster(NODES)
    router = new_router()
    net = Harness(cluster, router)
    net.settle()
    assert cluster.shards_queries == 1
    assert router.topology is not None
    assert router.topology.masters == tuple(NODES)
    # Many redirects at once cause one more query, not one each.
    handle = router.open_subscription(SubscriptionKind.SHARD, Owner("x"))
    net.take(router.add(handle, POOL))
    net.settle()
    for name in POOL:
        cluster.move_slot(key_slot(name), NODES[2])
    net.settle()
    assert cluster.shards_queries <= 3
    assert all(cluster.shard_holders(n) == [NODES[2]] for n in POOL)


def test_a_dead_startup_node_is_skipped() -> None:
    cluster = FakeCluster(NODES)
    cluster.down.add(NODES[0])
    router = new_router(NODES)
    net = Harness(cluster, router)
    channels = router.open_subscription(SubscriptionKind.CHANNEL, Owner("channels"))
    net.take(router.add(channels, [b"news"]))
    net.settle()
    assert router.connected
    assert router.home != NODES[0]
    assert cluster.publish(b"news", b"hi") == 1


def test_turning_from_node_to_node_backs_off_when_every_node_refuses() -> None:
    cluster = FakeCluster(NODES)
    router = new_router(NODES)
    cluster.down.update(NODES)  # every node refuses connections
    net = Harness(cluster, router)
    channels = router.open_subscription(SubscriptionKind.CHANNEL, Owner("channels"))
    net.take(router.add(channels, [b"news"]))
    home = router.home
    net.lose(("subscriber", home), "connection refused")
    turned_to = router.home
    assert turned_to != home
    # The new home's connection waits its delay: not listed, and the deadline says when.
    assert ("subscriber", turned_to) not in router.connections()
    deadline = router.next_deadline()
    assert deadline is not None
    assert deadline > net.now
    net.take(router.handle_timeout(deadline))
    assert ("subscriber", turned_to) in router.connections()
    # Every turn in a row waits longer (the backoff doubles, capped).
    delays = []
    for _ in range(4):
        net.now = router.next_deadline() or net.now
        net.take(router.handle_timeout(net.now))
        net.lose(("subscriber", router.home), "connection refused")
        withheld = router.next_deadline()
        assert withheld is not None
        delays.append(withheld - net.now)
    assert delays == sorted(delays)
    assert delays[-1] > delays[0]


def test_a_turn_after_a_node_answered_again_starts_the_delays_over() -> None:
    cluster = FakeCluster(NODES)
    router = new_router(NODES)
    net = Harness(cluster, router)
    channels = router.open_subscription(SubscriptionKind.CHANNEL, Owner("channels"))
    net.take(router.add(channels, [b"news"]))
    net.settle()
    cluster.kill(router.home)
    net.settle()  # turned, after a delay, and the new home answered
    assert router.connected
    first = router.home
    cluster.kill(first)
    net.lose(("subscriber", first), "killed")
    withheld = router.next_deadline()
    assert withheld is not None
    # The first delay of a series: random() * base, as one connection's first backoff.
    assert withheld - net.now == pytest.approx(0.5 * 0.01)


def test_publishes_pending_on_a_dropped_connection_are_not_told_by_the_router() -> None:
    """Their tokens are the dropped core's, and may equal another core's: the driver,
    which knows where each publish went, fails them."""
    cluster = FakeCluster(NODES)
    router = new_router(NODES)
    net = Harness(cluster, router)
    net.settle()
    topology = router.topology
    assert topology is not None
    victim = NODES[2]
    name = next(n for n in POOL if topology.owner(key_slot(n)) == victim)
    assert router.publish_target(name, sharded=True) is None  # opens it
    net.settle()
    key: ConnectionKey = ("commands", victim)
    assert router.publish_target(name, sharded=True) == key
    router.connections()[key].publish(name, b"x", sharded=True)  # pending, never sent
    cluster.failover(victim, NODES[0])
    # The periodic refresh, answered on the control connection alone.
    (control,) = [k for k in router.connections() if k[0] == "commands" and k != key]
    net.now = router.next_deadline() or net.now
    net.take(router.handle_timeout(net.now))
    core, conn = router.connections()[control], net.conns[control]
    conn.feed(core.data_to_send())
    events = router.handle_events(control, core.receive_data(conn.take(), net.now), net.now)
    assert key not in router.connections()
    assert not [e for e in events if isinstance(e, PublishFailed | CommandFailed)]


def test_home_moves_when_its_node_dies() -> None:
    cluster = FakeCluster(NODES)
    router = new_router(NODES)
    net = Harness(cluster, router)
    owner = Owner("channels")
    channels = router.open_subscription(SubscriptionKind.CHANNEL, owner)
    net.take(router.add(channels, [b"news"]))
    net.settle()
    first = router.home
    cluster.kill(first)
    net.settle()
    assert router.home != first
    assert net.disconnects[owner] == 1
    assert net.activations[owner, b"news"] == 2
    assert cluster.publish(b"news", b"hi") == 1


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ClusterCore([], random=lambda: 0.5)
    with pytest.raises(TypeError, match="Node"):
        ClusterCore([("h", 1)], random=lambda: 0.5)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="refresh_interval"):
        ClusterCore(NODES, random=lambda: 0.5, refresh_interval=0)
    with pytest.raises(ValueError, match="protocol"):
        ClusterCore(NODES, random=lambda: 0.5, protocol=4)


def test_the_topology_is_asked_again_periodically() -> None:
    cluster = FakeCluster(NODES)
    router = ClusterCore(
        NODES[:1], random=lambda: 0.5, health_check_interval=None, refresh_interval=2.0
    )
    net = Harness(cluster, router)
    net.settle(horizon=1.0)
    assert cluster.shards_queries == 1
    assert router.next_deadline() == net.now + 2.0
    # A slot none of our names is in moves: nothing tells us, until the next refresh,
    # after which a publish goes straight to the new owner.
    slot = key_slot(b"c")
    destination = next(n for n in NODES if n != cluster.owners[slot])
    cluster.move_slot(slot, destination)
    net.settle(horizon=1.0)
    assert router.topology is not None
    assert router.topology.owner(slot) != destination
    net.now = router.next_deadline()  # type: ignore[assignment]
    net.take(router.handle_timeout(net.now))
    net.settle(horizon=1.0)
    assert cluster.shards_queries == 2
    assert router.topology.owner(slot) == destination
    assert router.publish_target(b"c", sharded=True) in (None, ("commands", destination))
    assert ("commands", destination) in router.connections()


def test_a_stale_topology_does_not_send_names_back_to_a_demoted_master() -> None:
    """After a failover the old master unsubscribes its names, and the node we ask for
    the topology may not have heard of the failover yet. The old master, now a
    replica, would take the names back: the router waits for a topology that agrees."""
    cluster = FakeCluster(NODES)
    router = new_router()  # asks NODES[0] for the topology
    net = Harness(cluster, router)
    old, new = NODES[2], NODES[1]
    names = [n for n in POOL if cluster.owner(n) == old][:2]
    assert names
    handle = router.open_subscription(SubscriptionKind.SHARD, Owner("x"))
    net.take(router.add(handle, names))
    net.settle()
    cluster.failover(old, new, stale=(NODES[0],))
    net.settle(horizon=0.05)
    for _ in range(3):  # a few stale answers, not yet enough to believe them
        net.now = router.next_deadline()  # type: ignore[assignment]
        net.take(router.handle_timeout(net.now))
        net.settle(horizon=0.05)
    assert cluster.shards_queries == 4
    assert all(cluster.shard_holders(n) == [] for n in names)
    assert not any(router.is_active(handle, n) for n in names)
    cluster.views.clear()  # the news reaches the node we ask
    net.settle()
    assert all(cluster.shard_holders(n) == [new] for n in names)
    assert all(router.is_active(handle, n) for n in names)


def test_names_leave_a_dead_master_that_comes_back_as_a_replica() -> None:
    """A master dies, and the node we ask for the topology has not heard yet: the names
    wait for the dead master's connection. The cluster fails over, the node we ask
    learns of it, and the old master comes back as the new one's replica before any
    refused reconnection asks the topology again: the reconnection takes the names
    (a replica serves its master's shard channels), and without another query they
    would stay there, off the owner (found by chaos.py --cluster, on Valkey 9.1). A
    reconnection after a loss is a reason to ask: they move to the new master."""
    cluster = FakeCluster(NODES)
    router = new_router()  # asks NODES[0] for the topology
    net = Harness(cluster, router)
    old, new = NODES[2], NODES[1]
    names = [n for n in POOL if cluster.owner(n) == old][:2]
    assert names
    owner = Owner("x")
    handle = router.open_subscription(SubscriptionKind.SHARD, owner)
    net.take(router.add(handle, names))
    net.settle()
    cluster.views[NODES[0]] = list(cluster.owners)  # it has not heard of what follows
    cluster.down.add(old)
    for conn in list(cluster.servers[old].connections):
        conn.close()
    net.settle(horizon=0.05)  # the loss, a refused reconnection: a (stale) query is due
    # The query goes out and is answered before the next attempt on the old master.
    net.now = router.next_deadline()  # type: ignore[assignment]
    net.take(router.handle_timeout(net.now))
    while net._step({("subscriber", old)}):
        pass
    assert router.topology is not None
    assert all(router.topology.owner(key_slot(n)) == old for n in names)
    assert not any(router.is_active(handle, n) for n in names)
    assert router.next_deadline() == net.now + router.refresh_interval  # nothing due
    queries = cluster.shards_queries
    cluster.failover(old, new)
    cluster.views.clear()
    cluster.revive(old)
    net.settle()  # the reconnection: the names go to the old master, now a replica
    assert cluster.shards_queries > queries
    assert all(cluster.shard_holders(n) == [new] for n in names)
    assert all(router.is_active(handle, n) for n in names)
    assert net.disconnects[owner] == 1  # the one loss


# ---------------------------------------------------------------- refused names


def refused_at_start(
    label: str, kind: SubscriptionKind, denied: bytes, names: list[bytes]
) -> tuple[FakeCluster, ClusterCore, Harness, Owner, Any]:
    """A subscription that added ``names`` while the cluster denied ``denied``, settled."""
    cluster = FakeCluster(NODES)
    router = new_router()
    net = Harness(cluster, router)
    owner = Owner(label)
    handle = router.open_subscription(kind, owner)
    cluster.deny(denied)
    net.take(router.add(handle, names))
    net.settle()
    return cluster, router, net, owner, handle


def test_a_refused_shard_name_leaves_the_subscription_and_can_come_back() -> None:
    cluster, router, net, owner, handle = refused_at_start(
        "one", SubscriptionKind.SHARD, b"a", [b"a", b"b"]
    )
    assert net.rejections == [(owner, b"a")]  # the front end is told, as before
    assert list(handle.names) == [b"b"]
    assert not router.is_active(handle, b"a")
    assert cluster.shard_holders(b"a") == []
    # Allowed again, it can be added again: it is subscribed on its slot's owner.
    cluster.allow(b"a")
    net.take(router.add(handle, [b"a"]))
    net.settle()
    assert router.is_active(handle, b"a")
    assert cluster.shard_holders(b"a") == [cluster.owner(b"a")]
    assert net.activations[owner, b"a"] == 1


def test_a_refused_shard_name_does_not_follow_its_slot() -> None:
    cluster, router, net, owner, handle = refused_at_start(
        "one", SubscriptionKind.SHARD, b"a", [b"a"]
    )
    assert net.rejections == [(owner, b"a")]
    cluster.allow(b"a")
    destination = next(n for n in NODES if n != cluster.owner(b"a"))
    cluster.move_slot(key_slot(b"a"), destination)
    net.now = router.next_deadline()  # type: ignore[assignment]
    net.take(router.handle_timeout(net.now))  # the periodic refresh sees the move
    net.settle()
    assert router.topology is not None
    assert router.topology.owner(key_slot(b"a")) == destination
    assert cluster.shard_holders(b"a") == []
    assert b"a" not in handle.names


def test_a_refused_channel_name_leaves_the_subscription_and_can_come_back() -> None:
    cluster, router, net, owner, handle = refused_at_start(
        "channels", SubscriptionKind.CHANNEL, b"news", [b"news", b"sport"]
    )
    assert net.rejections == [(owner, b"news")]
    assert list(handle.names) == [b"sport"]
    assert cluster.channel_holders(b"news") == []
    cluster.allow(b"news")
    net.take(router.add(handle, [b"news"]))
    net.settle()
    assert router.is_active(handle, b"news")
    assert cluster.channel_holders(b"news") == [router.home]


def test_a_refused_pattern_can_be_given_again() -> None:
    cluster = FakeCluster(NODES)
    router = new_router()
    net = Harness(cluster, router)
    owner = Owner("pattern")
    cluster.deny(b"news.*")
    handle, events = router.open_pattern_subscription(b"news.*", owner)
    net.take(events)
    net.settle()
    assert net.rejections == [(owner, b"news.*")]
    assert not handle.names  # empty again: it may take a pattern
    cluster.allow(b"news.*")
    net.take(router.add_pattern(handle, b"news.*"))
    net.settle()
    assert router.is_active(handle, b"news.*")
    assert cluster.pattern_holders(b"news.*") == [router.home]


def test_a_home_move_does_not_carry_refused_names() -> None:
    cluster = FakeCluster(NODES)
    router = new_router(NODES)
    net = Harness(cluster, router)
    channel_owner, promise_owner = Owner("channels"), Owner("promises")
    channels = router.open_subscription(SubscriptionKind.CHANNEL, channel_owner)
    cluster.deny(b"news")
    cluster.deny(b"reply:*")
    net.take(router.add(channels, [b"news", b"sport"]))
    promises, events = router.open_promise_subscription(b"reply:", promise_owner)
    net.take(events)
    net.settle()
    assert sorted(net.rejections, key=repr) == sorted(
        [(channel_owner, b"news"), (promise_owner, b"reply:*")], key=repr
    )
    cluster.allow(b"news")
    cluster.allow(b"reply:*")
    first = router.home
    cluster.kill(first)
    net.settle()
    assert router.home != first
    assert cluster.channel_holders(b"sport") == [router.home]
    assert cluster.channel_holders(b"news") == []
    assert cluster.pattern_holders(b"reply:*") == []
    assert list(channels.names) == [b"sport"]
    assert not promises.names
    with pytest.raises(InactiveSubscription):
        router.new_promise(promises, b"1", 1.0, net.now, Owner("promise"))


def test_a_member_missing_from_one_answer_is_not_taken_as_gone() -> None:
    """While a failover settles, the node asked may list a member under no shard for a
    moment: a home missing from one topology, and listed again before
    LEAVE_CONFIRM_SECONDS have passed, keeps its names, and nobody is told anything."""
    cluster = FakeCluster(NODES)
    router = ClusterCore(
        NODES, random=lambda: 0.5, health_check_interval=None, refresh_interval=2.0
    )
    net = Harness(cluster, router)
    owner = Owner("c")
    channels = router.open_subscription(SubscriptionKind.CHANNEL, owner)
    net.take(router.add(channels, [b"news"]))
    net.settle(horizon=1.0)
    home = router.home
    cluster.empty(home, NODES[1])
    net.settle(horizon=1.0)
    cluster.remove(home)  # the other nodes leave it out of their answers...
    net.now = router.next_deadline()  # type: ignore[assignment]  # the periodic refresh
    net.take(router.handle_timeout(net.now))
    net.settle(horizon=1.0)
    assert router.home == home
    cluster.removed.discard(home)  # ...and list it again at the next one
    for _ in range(3):  # the confirming query, and the periodic ones after it
        net.now = router.next_deadline()  # type: ignore[assignment]
        net.take(router.handle_timeout(net.now))
        net.settle(horizon=1.0)
    assert net.now > LEAVE_CONFIRM_SECONDS + 2.0
    assert router.home == home
    assert net.disconnects[owner] == 0
    assert net.activations[owner, b"news"] == 1
    assert cluster.publish(b"news", b"heard") == 1


def test_a_member_missing_with_its_slots_is_not_taken_as_gone() -> None:
    """Mid-failover a node asked may take both the old master and the new one for
    replicas, and then lists neither, nor their slots: a topology that leaves slots
    unserved is not evidence of a departure, however long it lasts."""
    cluster = FakeCluster(NODES)
    router = ClusterCore(
        NODES, random=lambda: 0.5, health_check_interval=None, refresh_interval=2.0
    )
    net = Harness(cluster, router)
    owner = Owner("c")
    channels = router.open_subscription(SubscriptionKind.CHANNEL, owner)
    net.take(router.add(channels, [b"news"]))
    net.settle(horizon=1.0)
    home = router.home
    assert home in cluster.owners
    cluster.removed.add(home)  # left out of every answer, with the slots it serves
    for _ in range(4):  # well past LEAVE_CONFIRM_SECONDS, a query every refresh
        net.now = router.next_deadline()  # type: ignore[assignment]
        net.take(router.handle_timeout(net.now))
        net.settle(horizon=1.0)
    assert net.now > LEAVE_CONFIRM_SECONDS + 4.0
    assert router.home == home
    assert net.disconnects[owner] == 0
    cluster.removed.discard(home)
    assert cluster.publish(b"news", b"heard") == 1


def test_the_home_leaves_the_cluster_with_its_connection_up() -> None:
    """The home (and control) is emptied of its slots, then forgotten by the others and
    reset: its connection stays up but no PUBLISH reaches it. The periodic refresh asks
    it, and it describes a cluster of its own (itself, no slot), which is not believed;
    the next node's topology no longer lists it, and the channel, pattern and promise
    subscriptions move, each told NodeLeft once and activated again."""
    cluster = FakeCluster(NODES)
    router = ClusterCore(
        NODES, random=lambda: 0.5, health_check_interval=None, refresh_interval=2.0
    )
    net = Harness(cluster, router)
    channel_owner, pattern_owner, promise_owner = Owner("c"), Owner("p"), Owner("r")
    channels = router.open_subscription(SubscriptionKind.CHANNEL, channel_owner)
    net.take(router.add(channels, [b"news"]))
    _, events = router.open_pattern_subscription(b"news.*", pattern_owner)
    net.take(events)
    promises, events = router.open_promise_subscription(b"reply:", promise_owner)
    net.take(events)
    shard_owner = Owner("s")
    shards = router.open_subscription(SubscriptionKind.SHARD, shard_owner)
    net.take(router.add(shards, POOL))
    net.settle(horizon=1.0)
    home = router.home
    assert home == NODES[0]
    pending = Owner("pending")
    router.new_promise(promises, b"1", 60.0, net.now, pending)
    cluster.empty(home, NODES[1])
    net.settle(horizon=1.0)  # its shard names follow their slots
    assert router.home == home
    assert net.disconnects[channel_owner] == 0
    cluster.remove(home)
    assert cluster.publish(b"news", b"lost") == 0  # the home no longer hears the cluster
    queries = cluster.shards_queries
    net.now = router.next_deadline()  # type: ignore[assignment]  # the periodic refresh
    net.take(router.handle_timeout(net.now))
    net.settle(horizon=1.0)
    assert cluster.shards_queries >= queries + 2  # the home's word, then another node's
    assert router.home == home  # one answer without it: not yet taken as gone
    asked = net.now
    net.now = router.next_deadline()  # type: ignore[assignment]  # asked again to confirm
    assert net.now - asked <= LEAVE_CONFIRM_SECONDS + router.min_refresh_interval
    net.take(router.handle_timeout(net.now))
    net.settle(horizon=1.0)
    assert router.home != home
    assert router.topology is not None
    assert router.topology.masters == tuple(NODES[1:])
    for owner in (channel_owner, pattern_owner, promise_owner):
        [error] = [e for o, e in net.disconnect_errors if o is owner]
        assert isinstance(error, NodeLeft)
        assert isinstance(error, ConnectionLost)
        assert error.node == home
        assert str(home) in str(error)
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.node) == (NodeLeft, str(error), home)
    assert net.disconnects[shard_owner] == 0
    assert net.activations[channel_owner, b"news"] == 2
    assert net.activations[pattern_owner, b"news.*"] == 2
    assert net.activations[promise_owner, b"reply:*"] == 2
    [(promise, error)] = net.failed_promises
    assert promise is pending
    assert isinstance(error, PromiseInterrupted)
    assert cluster.channel_holders(b"news") == [router.home]
    assert cluster.pattern_holders(b"news.*") == [router.home]
    assert cluster.pattern_holders(b"reply:*") == [router.home]
    assert cluster.publish(b"news", b"heard") == 1
    # Nothing stays open on the node that left: no subscriber, no commands connection.
    assert all(node != home for _, node in router.connections())
    assert all(router.is_active(shards, name) for name in POOL)
    assert all(cluster.shard_holders(name) == [cluster.owner(name)] for name in POOL)


def test_a_node_that_knows_no_cluster_is_not_believed() -> None:
    """A reset node answers CLUSTER SHARDS with a cluster of its own, itself alone and no
    slot: believing it would drop every master. The control turns to the next node."""
    cluster = FakeCluster(NODES)
    cluster.empty(NODES[0], NODES[1])
    cluster.remove(NODES[0])
    router = new_router(NODES)  # asks NODES[0] first
    net = Harness(cluster, router)
    channels = router.open_subscription(SubscriptionKind.CHANNEL, Owner("c"))
    net.take(router.add(channels, [b"news"]))
    net.settle(horizon=1.0)
    assert cluster.shards_queries == 2
    assert router.topology is not None
    assert router.topology.masters == tuple(NODES[1:])
    assert router.connected
    # Never listed by a topology, the startup node is not known to have left: the home
    # stays (its connection is up), as for a startup address the cluster names otherwise.
    assert router.home == NODES[0]


def test_a_node_without_slots_that_leaves_is_let_go() -> None:
    """A node that is not the home leaves: nothing moves, no one is told, and no
    connection to it stays open."""
    cluster = FakeCluster(NODES)
    router = new_router(NODES)
    net = Harness(cluster, router)
    owner = Owner("s")
    shards = router.open_subscription(SubscriptionKind.SHARD, owner)
    net.take(router.add(shards, POOL))
    net.settle(horizon=1.0)
    leaving = NODES[2]
    assert ("subscriber", leaving) in router.connections()
    cluster.empty(leaving, NODES[1])
    net.settle(horizon=1.0)
    cluster.remove(leaving)
    net.now = router.next_deadline()  # type: ignore[assignment]
    net.take(router.handle_timeout(net.now))
    net.settle(horizon=1.0)
    assert all(node != leaving for _, node in router.connections())
    assert net.disconnects[owner] == 0
    assert all(cluster.shard_holders(name) == [cluster.owner(name)] for name in POOL)


# ---------------------------------------------------------------- the cost of a change


def routed(kind: SubscriptionKind, count: int) -> tuple[ClusterCore, list[Any]]:
    """A settled router over three nodes, each with a subscriber connection (a shard
    subscription holds a name on each), and ``count`` subscriptions of one name each."""
    cluster = FakeCluster(NODES)
    router = new_router()
    net = Harness(cluster, router)
    spread = router.open_subscription(SubscriptionKind.SHARD, Owner("spread"))
    names = {cluster.owner(f"spread:{i}".encode()): f"spread:{i}".encode() for i in range(30)}
    assert len(names) == len(NODES)
    net.take(router.add(spread, names.values()))
    handles = []
    for index in range(count):
        handle = router.open_subscription(kind, Owner(f"s{index}"))
        net.take(router.add(handle, [f"name:{index}".encode()]))
        handles.append(handle)
    net.settle()
    assert {node for role, node in router.connections() if role == "subscriber"} == set(NODES)
    return router, handles


@pytest.mark.parametrize("kind", [SubscriptionKind.CHANNEL, SubscriptionKind.SHARD])
def test_closing_or_removing_costs_the_same_among_few_or_many(kind: SubscriptionKind) -> None:
    """Closing one subscription, or removing one name, looks at what changes only: not at
    every subscription the router holds (which made closing them all quadratic)."""
    work: dict[int, tuple[int, int]] = {}
    for count in (10, 200):
        router, handles = routed(kind, count)
        assert all(router.is_active(h, next(iter(h.names))) for h in handles)
        close = calls_made(lambda: router.close_subscription(handles[0]))  # noqa: B023
        remove = calls_made(lambda: router.remove(handles[1], [b"name:1"]))  # noqa: B023
        work[count] = close, remove
    assert work[200][0] <= work[10][0], work
    assert work[200][1] <= work[10][1], work


def test_no_deadline_is_due_while_the_control_connection_comes_up() -> None:
    """A wanted topology query waits for the control connection's handshake, which an
    event announces, not for a time: a deadline in the past there had the front end's
    timer call handle_timeout in a loop, on the CPU, until the connection came up (for
    the whole outage, when it did not)."""
    cluster = FakeCluster(NODES)
    router = new_router()
    assert router.next_deadline() == 0.0  # nothing open yet: handle_timeout opens it
    router.handle_timeout(0.0)
    control = router.connections()["commands", NODES[0]]
    assert control.state is ConnectionState.DISCONNECTED
    assert router.next_deadline() is None
    net = Harness(cluster, router)
    net.settle()  # the handshake completes, the query goes out, its reply comes back
    assert cluster.shards_queries == 1
    assert router.next_deadline() == router.refresh_interval + net.now
