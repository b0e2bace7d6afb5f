"""Node-wide subscriptions on a real Redis Cluster, on every driver: keyspace
notifications, which each master publishes to its own subscribers only, heard from
every master exactly once, from the new master after a failover, from a master
added to the cluster, and from the master that takes over from a killed one, whose
loss is told naming it (docs/cluster.md).

Each test takes a fresh cluster with ``notify-keyspace-events KEA`` on every node (it
fails a master over). Keys written with a short expiry on each master's slots raise
``set`` and ``expired`` events there; a key without expiry written last on every
master is the barrier: once its event has come from a node, so has everything that
node published before it, on the same connection.
"""

from __future__ import annotations

from collections import Counter

import anyio
import anyio.to_thread
import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import CLUSTER_FAST, Log, uniq, wait_server
from redis_cluster import RedisCluster, RedisClusterFactory
from redis_servers import RedisServer

pytestmark = pytest.mark.server_feature("cluster-shards")

KEYSPACE = "__keyspace@0__:"
EXPIRED = "__keyevent@0__:expired"


def keys_on(cluster: RedisCluster, masters: list[RedisServer], base: str) -> dict[str, RedisServer]:
    """One key named ``base:<n>`` in each master's slots (``base`` with a hash tag: in
    its slot, whose owner must be the one master given)."""
    keys: dict[str, RedisServer] = {}
    index = 0
    while len(keys) < len(masters):
        key = f"{base}:{index}"
        index += 1
        owner = cluster.owner_of(key)
        if owner in masters and owner not in keys.values():
            keys[key] = owner
    return keys


def write(keys: dict[str, RedisServer], *, expire: bool) -> None:
    for key, master in keys.items():
        if expire:
            master.command("SET", key, "v", "PX", 50)
        else:
            master.command("SET", key, "v")


def test_keyspace_events_of_every_master_once_through_failovers_and_an_added_master(
    driver: Driver, redis_cluster_factory: RedisClusterFactory
) -> None:
    cluster = redis_cluster_factory(extra_args=("--notify-keyspace-events", "KEA"))
    prefix = uniq("node-wide")
    pattern = f"{KEYSPACE}{prefix}*"
    first = cluster.masters()[0]

    async def body() -> None:
        log = Log()
        expired: list[bytes] = []
        async with driver.module.ClusterMultiplexer(
            cluster.startup_urls, refresh_interval=0.5, **CLUSTER_FAST
        ) as mpx:
            keyspace = mpx.new_node_wide_pattern_subscription(pattern, *log.callbacks())
            async with mpx.subscribe_node_wide(EXPIRED) as iterator:  # every master confirmed

                async def collect() -> None:
                    async for message in iterator:
                        expired.append(message.data)

                async with anyio.create_task_group() as group:
                    group.start_soon(collect)
                    await wait_until(lambda: len(log.activations) == 3)
                    assert log.activations == [pattern.encode()] * 3  # once per master

                    async def round_of(tag: str, on: list[RedisServer]) -> list[str]:
                        """A key expiring on each of ``on``, then the barrier keys."""
                        keys = keys_on(cluster, on, f"{prefix}:{tag}")
                        barrier = keys_on(cluster, on, f"{prefix}:{tag}-barrier")
                        await anyio.to_thread.run_sync(lambda: write(keys, expire=True))
                        await wait_until(lambda: all(k.encode() in expired for k in keys))
                        await anyio.to_thread.run_sync(lambda: write(barrier, expire=False))
                        await wait_until(
                            lambda: all(
                                (f"{KEYSPACE}{k}".encode(), b"set") in log.messages for k in barrier
                            )
                        )
                        return list(keys)

                    written = await round_of("before", cluster.masters())
                    promoted = await anyio.to_thread.run_sync(cluster.failover, first)
                    # The next refresh finds the new master: one more activation there,
                    # and the old one, a replica now, is left.
                    await wait_until(lambda: len(log.activations) == 4, 10)
                    await wait_server(lambda: promoted.command("PUBSUB", "NUMPAT") == 1)
                    await wait_server(lambda: first.command("PUBSUB", "NUMPAT") == 0)
                    written += await round_of("after", [promoted])

                    # A master added, given the slot of the hash tag {added}.
                    added = await anyio.to_thread.run_sync(cluster.add_master)
                    slot = cluster.key_slot("added")
                    await anyio.to_thread.run_sync(cluster.migrate_slot, slot, added)
                    await wait_until(lambda: len(log.activations) == 5, 10)
                    await wait_server(lambda: added.command("PUBSUB", "NUMPAT") == 1)
                    written += await round_of("{added}", [added])

                    # The promoted master killed: told once, naming it; its replica
                    # (the first master) takes over and is heard from.
                    survivor = await anyio.to_thread.run_sync(cluster.kill_master, promoted)
                    await wait_until(lambda: len(log.activations) == 6, 15)
                    [lost] = log.disconnects
                    assert isinstance(lost, driver.module.NodeConnectionLost)
                    assert isinstance(lost, driver.module.ConnectionLost)
                    assert str(lost.node) == f"{promoted.host}:{promoted.port}"
                    written += await round_of("killed", [survivor])
                    group.cancel_scope.cancel()

            # Exactly once per owning node: no event twice, none missed.
            counted = Counter(log.messages)
            for key in written:
                channel = f"{KEYSPACE}{key}".encode()
                assert counted[channel, b"set"] == 1, key
                assert counted[channel, b"expired"] == 1, key
                assert expired.count(key.encode()) == 1, key
            assert len(expired) == len(written)
            assert len(log.disconnects) == 1  # the kill's; the failover lost no connection
            keyspace.close()

    driver.run(body)
