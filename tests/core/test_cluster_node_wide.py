"""Node-wide subscriptions of ClusterCore against an in-memory cluster: a channel or
pattern held on every master, following the masters as they change (docs/cluster.md)."""

from __future__ import annotations

import os
import pickle
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, initialize, invariant, rule

from core.fake_cluster import FakeCluster
from core.test_cluster_core import NODES, ClusterMachine, Harness, Owner, new_router
from redismpx_core import (
    MultiplexerCore,
    NodeConnectionLost,
    SubscriptionDisconnected,
    SubscriptionKind,
)
from redismpx_core._cluster import ClusterCore
from redismpx_core._slots import SLOTS
from redismpx_core._topology import Node
from server_matrix import examples

KEYSPACE = b"__keyspace@0__:*"
EXPIRED = b"__keyevent@0__:expired"


class Listener(Harness):
    """The harness, keeping the errors of disconnect notices too."""

    def __init__(self, cluster: FakeCluster, router: ClusterCore) -> None:
        super().__init__(cluster, router)
        self.lost: list[tuple[Any, Any]] = []

    def take(self, events: list[Any]) -> None:
        super().take(events)
        self.lost += [
            (e.subscriber, e.error) for e in events if isinstance(e, SubscriptionDisconnected)
        ]


def listening(
    nodes: list[Node] | None = None,
) -> tuple[FakeCluster, ClusterCore, Listener, Owner, Owner, Any, Any]:
    """A settled router with a node-wide channel subscription (EXPIRED) and a node-wide
    pattern subscription (KEYSPACE), both opened before the topology was known."""
    cluster = FakeCluster(nodes or NODES)
    router = new_router(nodes or NODES)
    net = Listener(cluster, router)
    events_owner, keys_owner = Owner("expired"), Owner("keyspace")
    events = router.open_subscription(SubscriptionKind.CHANNEL, events_owner, node_wide=True)
    keys = router.open_subscription(SubscriptionKind.PATTERN, keys_owner, node_wide=True)
    net.take(router.add(events, [EXPIRED]))
    net.take(router.add_pattern(keys, KEYSPACE))
    assert router.topology is None
    assert not router.is_active(events, EXPIRED)
    net.settle()
    return cluster, router, net, events_owner, keys_owner, events, keys


def refreshed(router: ClusterCore, net: Listener) -> None:
    """Time passes until the periodic topology query, and its answer is acted on."""
    deadline = router.next_deadline()
    assert deadline is not None
    net.now = deadline
    net.take(router.handle_timeout(net.now))
    net.settle()


def masters_of(cluster: FakeCluster) -> list[Node]:
    return [node for node in cluster.nodes if node in cluster.owners]


def each_node_heard(cluster: FakeCluster, net: Listener, owners: list[Owner]) -> None:
    """Every master publishes one notification of its own: each owner gets it once."""
    net.messages.clear()
    for node in masters_of(cluster):
        server = cluster.servers[node]
        assert server.publish(EXPIRED, str(node).encode()) == 1
        assert server.publish(b"__keyspace@0__:k", str(node).encode()) == 1
    net.settle()
    for owner in owners:
        got = sorted(payload for o, _, payload in net.messages if o is owner)
        assert got == sorted(str(n).encode() for n in masters_of(cluster)), (owner, got)


def test_a_node_wide_name_is_held_once_on_every_master() -> None:
    cluster, router, net, events_owner, keys_owner, events, keys = listening()
    assert cluster.channel_holders(EXPIRED) == NODES
    assert cluster.pattern_holders(KEYSPACE) == NODES
    # Activated once per master: each activation is one more node heard from.
    assert net.activations[events_owner, EXPIRED] == len(NODES)
    assert net.activations[keys_owner, KEYSPACE] == len(NODES)
    assert router.is_active(events, EXPIRED)
    assert router.is_active(keys, KEYSPACE)
    each_node_heard(cluster, net, [events_owner, keys_owner])
    # A PUBLISH, which the cluster relays to every node, is heard on each: node-wide
    # names are for what a node publishes to its own subscribers only.
    net.messages.clear()
    assert cluster.publish(EXPIRED, b"relayed") == len(NODES)


def test_removing_or_closing_unsubscribes_everywhere() -> None:
    cluster, router, net, _, _, events, keys = listening()
    net.take(router.add(events, [b"other"]))
    net.settle()
    router.remove(events, [EXPIRED])
    net.take(router.close_subscription(keys))
    net.settle()
    assert cluster.channel_holders(EXPIRED) == []
    assert cluster.pattern_holders(KEYSPACE) == []
    assert cluster.channel_holders(b"other") == NODES
    net.take(router.close_subscription(events))
    net.settle()
    assert cluster.channel_holders(b"other") == []


def test_a_failover_moves_the_name_to_the_new_master() -> None:
    """A failover that loses no connection is seen at the next topology query."""
    cluster, router, net, events_owner, keys_owner, events, _ = listening()
    old, heir = NODES[2], NODES[1]
    cluster.failover(old, heir)
    refreshed(router, net)
    assert cluster.channel_holders(EXPIRED) == [NODES[0], heir]
    assert ("subscriber", old) not in router.connections()
    assert net.lost == []  # no connection was lost
    each_node_heard(cluster, net, [events_owner, keys_owner])
    assert router.is_active(events, EXPIRED)


def test_a_dead_master_is_told_by_name_and_its_heir_gets_the_names() -> None:
    """The home dies: the node-wide names stay on the other masters, and the loss is told
    once per subscription, naming the node."""
    cluster, router, net, events_owner, keys_owner, events, _ = listening()
    dead = router.home
    promoted = Node("10.0.0.4", 7004)  # its replica, so to speak: no slot until now
    cluster.add_node(promoted)
    before = list(cluster.owners)
    cluster.kill(dead)
    cluster.owners = [
        promoted if was == dead else now for was, now in zip(before, cluster.owners, strict=True)
    ]
    net.settle()
    assert router.home != dead
    assert sorted(owner.label for owner, _ in net.lost) == ["expired", "keyspace"]
    for _, error in net.lost:
        assert isinstance(error, NodeConnectionLost)
        assert error.node == dead
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.node) == (NodeConnectionLost, str(error), dead)
        assert str(dead) in str(error)
    assert cluster.channel_holders(EXPIRED) == [NODES[1], NODES[2], promoted]
    assert cluster.pattern_holders(KEYSPACE) == [NODES[1], NODES[2], promoted]
    assert router.is_active(events, EXPIRED)
    each_node_heard(cluster, net, [events_owner, keys_owner])


def test_a_master_added_is_subscribed_and_one_removed_is_dropped() -> None:
    cluster, router, net, events_owner, keys_owner, _, keys = listening()
    new = Node("10.0.0.4", 7004)
    cluster.add_node(new)
    refreshed(router, net)
    assert cluster.channel_holders(EXPIRED) == NODES  # not a master yet: no slot
    cluster.move_slot(0, new)
    refreshed(router, net)
    assert cluster.channel_holders(EXPIRED) == [*NODES, new]
    assert cluster.pattern_holders(KEYSPACE) == [*NODES, new]
    assert net.activations[keys_owner, KEYSPACE] == len(NODES) + 1
    each_node_heard(cluster, net, [events_owner, keys_owner])
    # NODES[2] gives all its slots to the new master, and leaves the masters.
    for slot in range(SLOTS):
        if cluster.owners[slot] == NODES[2]:
            cluster.owners[slot] = new
    refreshed(router, net)
    assert cluster.channel_holders(EXPIRED) == [NODES[0], NODES[1], new]
    assert ("subscriber", NODES[2]) not in router.connections()
    assert set(router._placements[keys]) == {NODES[0], NODES[1], new}
    each_node_heard(cluster, net, [events_owner, keys_owner])


def test_a_refused_node_wide_name_is_told_once() -> None:
    cluster = FakeCluster(NODES)
    router = new_router(NODES)
    net = Listener(cluster, router)
    owner = Owner("x")
    handle = router.open_subscription(SubscriptionKind.CHANNEL, owner, node_wide=True)
    cluster.deny(b"secret")
    net.take(router.add(handle, [b"secret", EXPIRED]))
    net.settle()
    assert net.rejections == [(owner, b"secret")]
    assert list(handle.names) == [EXPIRED]
    assert cluster.channel_holders(b"secret") == []
    assert cluster.channel_holders(EXPIRED) == NODES
    cluster.allow(b"secret")
    net.take(router.add(handle, [b"secret"]))
    net.settle()
    assert cluster.channel_holders(b"secret") == NODES


def test_the_home_move_leaves_node_wide_names_alone() -> None:
    cluster, router, net, _, _, _events, _ = listening()
    plain = router.open_subscription(SubscriptionKind.CHANNEL, Owner("plain"))
    net.take(router.add(plain, [b"news"]))
    net.settle()
    first = router.home
    cluster.kill(first)
    net.settle()
    assert cluster.channel_holders(b"news") == [router.home]
    assert sorted(cluster.channel_holders(EXPIRED), key=str) == sorted(masters_of(cluster), key=str)


@pytest.mark.parametrize("kind", [SubscriptionKind.SHARD, SubscriptionKind.PROMISE])
def test_only_channel_and_pattern_subscriptions_are_node_wide(kind: SubscriptionKind) -> None:
    core: MultiplexerCore[Any, Any] = MultiplexerCore(random=lambda: 0.5)
    for opener in (new_router().open_subscription, core.open_subscription):
        with pytest.raises(ValueError, match="channel or pattern"):
            opener(kind, Owner("x"), node_wide=True)


def test_one_server_is_every_node() -> None:
    """On a single core a node-wide subscription is an ordinary one."""
    core: MultiplexerCore[Any, Any] = MultiplexerCore(random=lambda: 0.5)
    handle = core.open_subscription(SubscriptionKind.CHANNEL, Owner("x"), node_wide=True)
    assert handle.kind is SubscriptionKind.CHANNEL
    core.add(handle, [EXPIRED])
    core.connection_made(0.0)
    assert b"SUBSCRIBE" in core.data_to_send().upper()


# ---------------------------------------------------------------- property-tested

WIDE_POOL = [EXPIRED, b"__keyevent@0__:set", b"__keyevent@0__:del"]


class NodeWideMachine(ClusterMachine):
    """The cluster router's state machine with node-wide subscriptions beside the others:
    after every step each one is placed on exactly the masters of the router's topology,
    with all its names; once settled (and after a periodic refresh, which is how a
    master that changed without a lost connection is seen), on the cluster's masters,
    active, and each master's own messages reach it once."""

    wide = Bundle("wide")

    @initialize()
    def start(self) -> None:
        self.wide_model: dict[Any, tuple[Any, set[bytes]]] = {}
        super().start()

    @rule(target=wide)
    def open_node_wide(self) -> Owner:
        self.count += 1
        owner = Owner(f"w{self.count}")
        handle = self.router.open_subscription(SubscriptionKind.CHANNEL, owner, node_wide=True)
        self.wide_model[owner] = (handle, set())
        return owner

    @rule(owner=wide, names=st.lists(st.sampled_from(WIDE_POOL), max_size=3))
    def add_node_wide(self, owner: Owner, names: list[bytes]) -> None:
        if owner in self.wide_model:
            handle, held = self.wide_model[owner]
            self.net.take(self.router.add(handle, names))
            held.update(names)

    @rule(owner=wide, names=st.lists(st.sampled_from(WIDE_POOL), max_size=3))
    def remove_node_wide(self, owner: Owner, names: list[bytes]) -> None:
        if owner in self.wide_model:
            handle, held = self.wide_model[owner]
            self.router.remove(handle, names)
            held.difference_update(names)

    @rule(owner=wide)
    def close_node_wide(self, owner: Owner) -> None:
        if owner in self.wide_model:
            handle, _ = self.wide_model.pop(owner)
            self.net.take(self.router.close_subscription(handle))

    @rule()
    def periodic_refresh(self) -> None:
        refreshed(self.router, self.net)

    @invariant()
    def node_wide_names_are_on_every_master_of_the_topology(self) -> None:
        router = self.router
        masters = set(router.topology.masters) if router.topology is not None else set()
        for handle, held in self.wide_model.values():
            assert set(handle.names) == held
            assert all(node is None for node in handle.names.values())
            placements = router._placements[handle]
            assert set(placements) <= masters, (handle, set(placements), masters)
            if held:
                assert set(placements) == masters, (handle, set(placements), masters)
            for node, node_handle in placements.items():
                assert set(node_handle.names) == held, (handle, node)
                assert handle in router._carried[node]

    def teardown(self) -> None:
        if not hasattr(self, "router"):
            return
        super().teardown()
        refreshed(self.router, self.net)
        masters = sorted(masters_of(self.cluster), key=str)
        for name in WIDE_POOL:
            holders = sorted(self.cluster.channel_holders(name), key=str)
            wanted = any(name in held for _, held in self.wide_model.values())
            assert holders == (masters if wanted else []), (name, holders, masters)
        for owner, (handle, held) in self.wide_model.items():
            for name in held:
                assert self.router.is_active(handle, name), (owner, name)
        for name in WIDE_POOL:
            self.net.messages.clear()
            for node in masters:
                self.cluster.servers[node].publish(name, str(node).encode())
            self.net.settle()
            for owner, (_, held) in self.wide_model.items():
                got = sorted(p for o, _, p in self.net.messages if o is owner)
                expected = sorted(str(n).encode() for n in masters) if name in held else []
                assert got == expected, (owner, name, got)


TestNodeWideRouting = NodeWideMachine.TestCase
TestNodeWideRouting.settings = settings(
    max_examples=int(os.environ.get("CLUSTER_EXAMPLES", "0")) or examples(30),
    stateful_step_count=30,
    deadline=None,
)
