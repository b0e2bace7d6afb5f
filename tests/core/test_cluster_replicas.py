"""Shard names on replicas (``shard_subscriptions="replicas"``) against an in-memory
cluster: placed on a replica of their slot's master, on the master when it has none,
and moved when a replica dies, a master fails over or a slot migrates (docs/cluster.md)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from core.fake_cluster import FakeCluster
from core.test_cluster_core import NODES, POOL, ClusterMachine, Harness, Owner
from redismpx_core import SubscriptionKind
from redismpx_core._cluster import ClusterCore
from redismpx_core._slots import key_slot
from redismpx_core._topology import Node
from server_matrix import examples

NAMES = POOL + [b"n%d" % i for i in range(12)]
# Two replicas for the first master, one for the second, none for the third.
REPLICAS = {
    NODES[0]: [Node("10.0.1.1", 7101), Node("10.0.1.2", 7102)],
    NODES[1]: [Node("10.0.2.1", 7201)],
}
ALL_REPLICAS = [replica for replicas in REPLICAS.values() for replica in replicas]


def replicated(
    shard_subscriptions: str = "replicas",
) -> tuple[FakeCluster, ClusterCore, Harness, Owner, Any]:
    """A settled router whose shard subscription holds every name of NAMES."""
    cluster = FakeCluster(NODES)
    for master, replicas in REPLICAS.items():
        for replica in replicas:
            cluster.add_replica(master, replica)
    router = ClusterCore(
        NODES[:1],
        random=lambda: 0.5,
        health_check_interval=None,
        backoff_base=0.01,
        shard_subscriptions=shard_subscriptions,  # type: ignore[arg-type]
    )
    net = Harness(cluster, router)
    owner = Owner("shards")
    handle = router.open_subscription(SubscriptionKind.SHARD, owner)
    net.take(router.add(handle, NAMES))
    net.settle()
    assert all(router.is_active(handle, name) for name in NAMES)
    return cluster, router, net, owner, handle


def carrier(cluster: FakeCluster, name: bytes) -> Node:
    """Where the name is expected: a replica of its owner picked by slot, else the owner."""
    owner = cluster.owner(name)
    replicas = cluster.replicas.get(owner, [])
    live = [r for r in replicas if r not in cluster.down]
    return live[key_slot(name) % len(live)] if live else owner


def delivered_once(cluster: FakeCluster, net: Harness, owner: Owner, tag: bytes) -> None:
    """Every name of NAMES gets one SPUBLISH, received once."""
    before = len(net.messages)
    for name in NAMES:
        cluster.spublish(name, tag)
    net.settle()
    got = sorted(channel for who, channel, data in net.messages[before:] if who is owner)
    assert got == sorted(NAMES)


def test_names_ride_a_replica_of_their_master_or_the_master_without_one() -> None:
    cluster, _, net, owner, _ = replicated()
    spread: set[Node] = set()
    for name in NAMES:
        holders = cluster.shard_holders(name)
        assert holders == [carrier(cluster, name)]
        master = cluster.owner(name)
        if master in REPLICAS:
            assert holders[0] in REPLICAS[master]  # off the master
            spread.add(holders[0])
        else:
            assert holders == [master]  # no replica: the master
    assert len(spread & set(REPLICAS[NODES[0]])) == 2  # slots spread over both replicas
    delivered_once(cluster, net, owner, b"first")


def test_the_default_is_the_masters() -> None:
    cluster, *_ = replicated("masters")
    assert all(cluster.shard_holders(name) == [cluster.owner(name)] for name in NAMES)


def test_a_lost_replica_gives_its_names_to_another_replica_or_the_master() -> None:
    cluster, router, net, owner, handle = replicated()
    for lost in [REPLICAS[NODES[0]][0], REPLICAS[NODES[1]][0]]:
        moving = [name for name in NAMES if cluster.shard_holders(name) == [lost]]
        assert moving
        cluster.kill(lost)
        for conn in list(cluster.servers[lost].connections):
            conn.close()
        net.settle()
        for name in moving:
            assert cluster.shard_holders(name) == [carrier(cluster, name)] != [lost]
            assert net.activations[owner, name] == 2  # activated again where it went
        assert all(router.is_active(handle, name) for name in NAMES)
        delivered_once(cluster, net, owner, b"after " + str(lost).encode())
    # the second master, with no replica left, carries its names itself
    assert all(
        cluster.shard_holders(n) == [NODES[1]] for n in NAMES if cluster.owner(n) == NODES[1]
    )


def test_a_failover_moves_names_to_a_replica_of_the_new_master() -> None:
    cluster, router, net, owner, handle = replicated()
    promoted = REPLICAS[NODES[1]][0]
    names = [name for name in NAMES if cluster.owner(name) == NODES[1]]
    assert names
    old = cluster.promote(promoted)
    net.settle()
    for name in names:
        assert cluster.owner(name) == promoted
        assert cluster.shard_holders(name) == [old]  # the demoted master, now a replica
    assert all(router.is_active(handle, name) for name in NAMES)
    assert net.disconnects[owner] == 0
    delivered_once(cluster, net, owner, b"after failover")


def test_a_migrated_slot_takes_its_names_to_a_replica_of_the_new_owner() -> None:
    cluster, router, net, owner, handle = replicated()
    name = next(n for n in NAMES if cluster.owner(n) == NODES[2])
    assert cluster.shard_holders(name) == [NODES[2]]  # no replica there
    cluster.move_slot(key_slot(name), NODES[1])
    # The old owner unsubscribed the name itself: told by the refresh it asked for.
    net.settle()
    assert cluster.shard_holders(name) == REPLICAS[NODES[1]]
    assert net.activations[owner, name] == 2
    back = next(n for n in NAMES if cluster.owner(n) == NODES[0])
    was = cluster.shard_holders(back)
    assert was[0] in REPLICAS[NODES[0]]
    cluster.move_slot(key_slot(back), NODES[2])  # the replica unsubscribes it too
    net.settle()
    assert cluster.shard_holders(back) == [NODES[2]]
    assert all(router.is_active(handle, n) for n in NAMES)
    delivered_once(cluster, net, owner, b"after migration")


def test_a_replica_that_redirects_is_followed_to_the_master() -> None:
    """A replica that does not think its master owns the slot answers MOVED: the name
    goes where it says, as from a master, and back to the replica once the topology is
    asked again and the replica agrees."""
    cluster, router, net, owner, handle = replicated()
    replica = REPLICAS[NODES[1]][0]
    name = next(n for n in NAMES if cluster.shard_holders(n) == [replica])
    del cluster.replica_of[replica]  # it no longer serves its master's slots
    cluster.servers[replica].connections[0].lose_slot(key_slot(name))
    # It unsubscribed the name itself: the name waits for a refresh, which sends it back
    # there, and the replica's MOVED sends it to the master.
    for _ in range(5):
        net.settle(horizon=0.05)
        if handle.names[name] == NODES[1]:
            break
        net.now = router.next_deadline()  # type: ignore[assignment]
        net.take(router.handle_timeout(net.now))
    assert cluster.shard_holders(name) == [NODES[1]]
    assert router.is_active(handle, name)
    cluster.replica_of[replica] = NODES[1]  # it has heard again
    net.settle()
    assert cluster.shard_holders(name) == [replica]  # the refresh puts it back
    assert router.is_active(handle, name)
    delivered_once(cluster, net, owner, b"after the redirect")


def test_bad_shard_subscriptions_value() -> None:
    for wrong in ("replica", "", "Masters"):
        with pytest.raises(ValueError, match="shard_subscriptions must be one of"):
            ClusterCore(NODES, random=lambda: 0.5, shard_subscriptions=wrong)  # type: ignore[arg-type]
    for wrong_type in (None, 1, b"replicas"):
        with pytest.raises(TypeError, match="shard_subscriptions must be a str"):
            ClusterCore(NODES, random=lambda: 0.5, shard_subscriptions=wrong_type)  # type: ignore[arg-type]


class ReplicaMachine(ClusterMachine):
    """The routing machine of test_cluster_core on a cluster with replicas and
    ``shard_subscriptions="replicas"``: replicas also die, come back and take over."""

    @initialize()
    def start(self) -> None:
        super().start()
        self.cluster = FakeCluster(NODES)
        for master, replicas in REPLICAS.items():
            for replica in replicas:
                self.cluster.add_replica(master, replica)
        self.router = ClusterCore(
            NODES[:1],
            random=lambda: 0.5,
            health_check_interval=None,
            backoff_base=0.01,
            shard_subscriptions="replicas",
        )
        self.net = Harness(self.cluster, self.router)
        self.net.on_rejected = self.rejected
        self.net.settle()

    @rule(name=st.sampled_from(POOL), node=st.sampled_from(NODES))
    def migrate(self, name: bytes, node: Node) -> None:
        if node in self.cluster.nodes:  # (a master promoted away is a replica now)
            super().migrate(name, node)

    @precondition(lambda self: len(self.cluster.down | self.cluster.removed) < len(NODES) - 1)
    @rule(node=st.sampled_from(NODES))
    def kill(self, node: Node) -> None:
        if node in self.cluster.nodes:
            super().kill(node)

    @precondition(lambda self: False)
    @rule(node=st.sampled_from(NODES))
    def leave(self, node: Node) -> None:
        """(Not here: a node that leaves is test_cluster_core's.)"""

    @rule(replica=st.sampled_from(ALL_REPLICAS))
    def kill_replica(self, replica: Node) -> None:
        if replica not in self.cluster.nodes:
            self.cluster.kill(replica)

    @rule(replica=st.sampled_from(ALL_REPLICAS))
    def revive_replica(self, replica: Node) -> None:
        self.cluster.revive(replica)

    @rule(replica=st.sampled_from(ALL_REPLICAS))
    def promote(self, replica: Node) -> None:
        master = self.cluster.replica_of.get(replica)
        if (
            master in self.cluster.nodes
            and master not in self.cluster.down
            and replica not in self.cluster.down
        ):
            self.cluster.promote(replica)

    def teardown(self) -> None:
        if not hasattr(self, "router"):
            return
        self.net.settle()
        # Let a periodic refresh see what nothing told (a failover, a revived replica).
        self.net.now += self.router.refresh_interval
        self.net.take(self.router.handle_timeout(self.net.now))
        self.net.settle()
        wanted = self.wanted(SubscriptionKind.SHARD)
        for name in POOL:
            expected = [self.expected_carrier(name)] if name in wanted else []
            assert self.cluster.shard_holders(name) == expected, name
        for owner, (handle, held) in self.model.items():
            for name in held:
                assert self.router.is_active(handle, name), (owner, name)
        for name in sorted(wanted):
            self.net.messages.clear()
            self.cluster.spublish(name, b"payload")
            self.net.settle()
            got = sorted(owner.label for owner, channel, _ in self.net.messages)
            expected_owners = sorted(
                o.label
                for o, (handle, held) in self.model.items()
                if handle.kind is SubscriptionKind.SHARD and name in held
            )
            assert got == expected_owners, (name, got, expected_owners)

    def expected_carrier(self, name: bytes) -> Node:
        """The live replicas of the owner, as the topology lists them, picked by slot."""
        owner = self.cluster.owner(name)
        live = [r for r in self.cluster.replicas.get(owner, []) if r not in self.cluster.down]
        return live[key_slot(name) % len(live)] if live else owner


TestReplicaRouting = ReplicaMachine.TestCase
TestReplicaRouting.settings = settings(
    max_examples=int(os.environ.get("CLUSTER_EXAMPLES", "0")) or examples(100),
    stateful_step_count=30,
    deadline=None,
)
