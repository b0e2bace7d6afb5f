"""Shard names served by replicas (``shard_subscriptions="replicas"``) on a real
cluster of 3 masters with a replica each, on every driver: no subscriber of ours on
any master, every SPUBLISH received once, and still once each after a replica is
killed, a master fails over and a slot migrates (docs/cluster.md)."""

from __future__ import annotations

from functools import partial

import anyio
import anyio.to_thread
import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import CLUSTER_FAST, Log, names_on, wait_server
from redis_cluster import RedisCluster, RedisClusterFactory
from redis_servers import RedisServer

pytestmark = pytest.mark.server_feature("cluster-shards")


def holders(cluster: RedisCluster, name: str) -> list[RedisServer]:
    """The reachable nodes with a subscriber of shard channel ``name``."""
    return [node for node in cluster.reachable() if node.command("PUBSUB", "SHARDNUMSUB", name)[1]]


def replicas_online(cluster: RedisCluster) -> bool:
    """Every replica's health in CLUSTER SHARDS is ``online``: a replica whose
    replication offset is still 0 (nothing written, no ping from its master yet) is
    reported ``loading``, and the router leaves names on its master."""
    for shard in cluster.shards():
        fields = dict(zip(shard[::2], shard[1::2], strict=True))
        for node in fields[b"nodes"]:
            described = dict(zip(node[::2], node[1::2], strict=True))
            if described[b"health"] != b"online":
                return False
    return True


def write_to_every_shard(cluster: RedisCluster) -> None:
    """A key written on every master, so that its replica's offset leaves 0."""
    for master in cluster.masters():
        [key] = names_on(cluster, master, 1, "replicated-key")
        cluster.command_for(key, "SET", key, "1")


def carried_by_replicas(cluster: RedisCluster, names: list[str]) -> bool:
    """Each name is subscribed on exactly one node: a replica of its slot's master, or
    the master when it has no replica left."""
    for name in names:
        owner = cluster.owner_of(name)
        where = holders(cluster, name)
        if len(where) != 1 or where[0] not in (cluster.replicas_of(owner) or [owner]):
            return False
    return True


async def received_once(mpx: object, log: Log, names: list[str], tag: bytes) -> None:
    """One SPUBLISH per name, each received once (a second round, received after the
    first, shows nothing of the first still comes)."""
    for round_tag in (tag, tag + b" again"):
        for name in names:
            await mpx.spublish(name, round_tag)  # type: ignore[attr-defined]
        wanted = {(name.encode(), round_tag) for name in names}
        await wait_until(lambda: wanted <= set(log.messages), 10)  # noqa: B023
    for name in names:
        assert log.messages.count((name.encode(), tag)) == 1, name


def test_shard_names_on_replicas_follow_the_cluster(
    driver: Driver, redis_cluster_factory: RedisClusterFactory
) -> None:
    cluster = redis_cluster_factory(masters=3, replicas_per_master=1)
    first, second, third = cluster.masters()
    groups = {master.port: names_on(cluster, master, 2, "replicas") for master in cluster.masters()}
    names = [name for group in groups.values() for name in group]
    write_to_every_shard(cluster)

    async def body() -> None:
        await wait_server(lambda: replicas_online(cluster), 10)
        log = Log()
        async with driver.module.ClusterMultiplexer(
            cluster.startup_urls,
            shard_subscriptions="replicas",
            refresh_interval=1.0,  # see the failover below
            **CLUSTER_FAST,
        ) as mpx:
            sub = mpx.new_sharded_subscription(*log.callbacks())
            sub.add(*names)
            await wait_until(lambda: set(log.activations) == {n.encode() for n in names}, 10)
            await wait_server(lambda: carried_by_replicas(cluster, names))
            for master in cluster.masters():  # no subscriber of ours on a master
                assert master.command("CLIENT", "LIST", "TYPE", "pubsub") == b""
            await received_once(mpx, log, names, b"first")

            # A replica dies: its names go to its master (the shard has no other).
            lost = cluster.replica_of(first)
            moving = groups[first.port]
            mark = len(log.activations)
            lost.kill()
            await wait_until(
                lambda: set(moving) <= set(map(bytes.decode, log.activations[mark:])), 15
            )
            await wait_server(lambda: carried_by_replicas(cluster, names), 10)
            assert all(holders(cluster, name) == [first] for name in moving)
            await received_once(mpx, log, names, b"after a replica died")

            # A failover: the promoted replica keeps serving its names (it owns their
            # slots now) and tells nothing; the next periodic refresh moves them to the
            # replica of the new master, the old master.
            promoted = await anyio.to_thread.run_sync(cluster.failover, second)
            await wait_server(lambda: carried_by_replicas(cluster, names), 15)
            assert all(holders(cluster, name) == [second] for name in groups[second.port])
            await received_once(mpx, log, names, b"after a failover")

            # A slot migrates from the third shard to the promoted master's.
            [migrated] = groups[third.port][:1]
            slot = cluster.key_slot(migrated)
            await anyio.to_thread.run_sync(partial(cluster.migrate_slot, slot, promoted))
            await wait_server(lambda: carried_by_replicas(cluster, names), 15)
            assert holders(cluster, migrated) == [second]
            await received_once(mpx, log, names, b"after a migration")
            sub.close()

    driver.run(body)


def test_a_wrong_shard_subscriptions_value_is_refused(driver: Driver) -> None:
    with pytest.raises(ValueError, match="shard_subscriptions"):
        driver.module.ClusterMultiplexer(["redis://h:7000"], shard_subscriptions="replica")
    with pytest.raises(TypeError, match="shard_subscriptions"):
        driver.module.ClusterMultiplexer(["redis://h:7000"], shard_subscriptions=None)
