"""ClusterCore against an in-memory cluster: routing and topology decisions, property-tested.

A small harness plays the driver: it opens a fake connection for every connection
the router wants, moves bytes both ways until nothing moves, reports losses and
refused connections, and advances the clock to the router's deadlines. Hypothesis
then mixes subscription changes with the cluster's own changes (slot migrations,
dead and revived nodes, dropped connections) and checks, once things settle, that
every shard name held is subscribed exactly once in the cluster, on the owner of
its slot, is active, and gets what is published to it.
"""

from __future__ import annotations

import os
from collections import Counter
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
    ConnectionLost,
    ConnectionState,
    MessagesReceived,
    NameRejected,
    NamesActivated,
    SubscriptionClosed,
    SubscriptionKind,
)
from redismpx_core._cluster import ClusterCore, ConnectionKey
from redismpx_core._slots import key_slot
from redismpx_core._topology import Node

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
                raise AssertionError(f"a redirect reached the subscriber: {event}")
            elif event.__class__.__name__ == "SubscriptionDisconnected":
                self.disconnects[event.subscriber] += 1

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
        self.count = 0
        self.net.settle()

    @rule(target=subs)
    def open_subscription(self) -> Owner:
        self.count += 1
        owner = Owner(f"s{self.count}")
        handle = self.router.open_subscription(SubscriptionKind.SHARD, owner)
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

    @rule(name=st.sampled_from(POOL), node=st.sampled_from(NODES))
    def migrate(self, name: bytes, node: Node) -> None:
        if node not in self.cluster.down:
            self.cluster.move_slot(key_slot(name), node)

    @precondition(lambda self: len(self.cluster.down) < len(NODES) - 1)
    @rule(node=st.sampled_from(NODES))
    def kill(self, node: Node) -> None:
        self.cluster.kill(node)

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

    def teardown(self) -> None:
        if not hasattr(self, "router"):
            return
        # Once settled: every name held is subscribed once, on its owner, and active.
        self.net.settle()
        wanted = set().union(*(held for _, held in self.model.values()))
        for name in POOL:
            holders = self.cluster.shard_holders(name)
            if name in wanted:
                assert holders == [self.cluster.owner(name)], (name, holders)
            else:
                assert holders == [], (name, holders)
        for owner, (handle, held) in self.model.items():
            for name in held:
                assert self.router.is_active(handle, name), (owner, name)
                assert self.net.activations[owner, name] >= 1
        # And each gets what is published to it, once.
        for name in sorted(wanted):
            self.net.messages.clear()
            assert self.cluster.spublish(name, b"payload") == 1
            self.net.settle()
            got = sorted(owner.label for owner, channel, _ in self.net.messages)
            expected = sorted(o.label for o, (_, held) in self.model.items() if name in held)
            assert got == expected, (name, got, expected)


TestClusterRouting = ClusterMachine.TestCase
TestClusterRouting.settings = settings(
    max_examples=int(os.environ.get("CLUSTER_EXAMPLES", "150")),
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
