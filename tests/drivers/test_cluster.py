"""ClusterMultiplexer against a real local Redis Cluster (SPEC section 4), on every driver.

The shared cluster (3 masters, 3 replicas) serves the tests that leave it as they
found it: sharded messages on every shard, the other subscription kinds, a slot
migrated and moved back while messages flow. The fault tests (CLUSTER FAILOVER, a
master killed) take a fresh cluster each. Every wait has a deadline; the faults run
in a worker thread so that the multiplexer keeps running meanwhile.
"""

from __future__ import annotations

from functools import partial

import anyio
import anyio.to_thread
import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import CLUSTER_FAST, Inbox, Log, names_on, uniq, wait_server
from redis_cluster import RedisCluster, RedisClusterFactory

pytestmark = pytest.mark.server_feature("cluster-shards")

FAST = CLUSTER_FAST



def test_sharded_messages_on_every_shard(driver: Driver, redis_cluster: RedisCluster) -> None:
    cluster = redis_cluster
    by_master = {m.port: names_on(cluster, m, 3, "every-shard") for m in cluster.masters()}
    names = [name for group in by_master.values() for name in group]

    async def body() -> None:
        inbox = Inbox()
        activated: list[bytes] = []
        async with driver.module.ClusterMultiplexer(cluster.startup_urls) as mpx:
            with anyio.fail_after(10):
                await mpx.wait_connected()
            sub = mpx.new_sharded_subscription(inbox, on_activation=activated.append)
            sub.add(*names)
            await wait_until(lambda: len(activated) == len(names))
            assert sorted(activated) == sorted(n.encode() for n in names)
            assert mpx.statistics().active_shard_channels == len(names)
            for name in names:
                assert await mpx.spublish(name, b"via " + name.encode()) == 1
            await wait_until(lambda: len(inbox.messages) == len(names))
            assert sorted(inbox.messages) == sorted(
                (n.encode(), b"via " + n.encode()) for n in names
            )
            # Each name is subscribed once in the whole cluster, on its slot's owner.
            for name in names:
                assert cluster.shardnumsub(name) == 1
                owner = cluster.owner_of(name)
                for master in cluster.masters():
                    count = master.command("PUBSUB", "SHARDNUMSUB", name)[1]
                    assert count == (1 if master is owner else 0)
            statistics = mpx.statistics()
            assert statistics.subscriptions == 1
            assert statistics.messages_received == len(names)
            sub.remove(*names)
            await wait_until(lambda: mpx.statistics().active_shard_channels == 0)
        await wait_server(lambda: all(cluster.shardnumsub(n) == 0 for n in names))

    driver.run(body)


def test_channels_patterns_promises_and_iterators(
    driver: Driver, redis_cluster: RedisCluster
) -> None:
    cluster = redis_cluster
    channel = uniq("cluster-channel")
    prefix = uniq("cluster-promise") + ":"
    [shard] = names_on(cluster, cluster.masters()[1], 1, "cluster-iterator")

    async def body() -> None:
        inbox, patterns = Inbox(), Inbox()
        activated: list[bytes] = []
        async with driver.module.ClusterMultiplexer(cluster.startup_urls[::-1]) as mpx:
            sub = mpx.new_channel_subscription(inbox, on_activation=activated.append)
            sub.add(channel)
            psub = mpx.new_pattern_subscription(
                channel + "*", patterns, on_activation=activated.append
            )
            promises = mpx.new_promise_subscription(prefix)
            with anyio.fail_after(10):
                await promises.wait_for_activation()
            await wait_until(lambda: len(activated) == 2)
            # PUBLISH reaches every node: the subscription's node hears it whichever
            # node the publish went to.
            assert await mpx.publish(channel, b"hello") == 2  # the channel and the pattern
            await wait_until(lambda: inbox.messages and patterns.messages)
            assert inbox.messages == [(channel.encode(), b"hello")]
            assert patterns.messages == [(channel.encode(), b"hello")]
            promise = promises.new_promise("answer", 5)
            assert await mpx.publish(prefix + "answer", b"42") == 1
            with anyio.fail_after(5):
                assert await promise == b"42"
            async with mpx.ssubscribe(shard) as iterator:
                with anyio.fail_after(5):
                    while cluster.shardnumsub(shard) != 1:  # noqa: ASYNC110 - server state
                        await anyio.sleep(0.01)
                assert await mpx.spublish(shard, b"iterated") == 1
                with anyio.fail_after(5):
                    message = await iterator.__anext__()
                assert (message.channel, message.data) == (shard.encode(), b"iterated")
            psub.close()
            sub.close()

    driver.run(body)


def test_a_migrated_slot_is_followed(driver: Driver, redis_cluster: RedisCluster) -> None:
    """A slot moves while messages flow: the subscription is re-activated on the new
    owner, and every message published after that arrives, once and in order."""
    cluster = redis_cluster
    source, destination = cluster.masters()[0], cluster.masters()[1]
    [moving, staying] = names_on(cluster, source, 2, "migrated")
    slot = cluster.key_slot(moving)

    async def body() -> None:
        log = Log()
        async with driver.module.ClusterMultiplexer(cluster.startup_urls, **FAST) as mpx:
            sub = mpx.new_sharded_subscription(*log.callbacks())
            sub.add(moving, staying)
            await wait_until(lambda: len(log.activations) == 2)
            sent: list[bytes] = []
            stop = anyio.Event()

            async def publish_all_the_time() -> None:
                sequence = 0
                while not stop.is_set():
                    sequence += 1
                    data = b"%d" % sequence
                    try:
                        receivers = await mpx.spublish(moving, data)
                    except Exception:  # a publish caught in the move may fail: not counted
                        continue
                    if receivers:
                        sent.append(data)
                    await anyio.sleep(0.002)

            async with anyio.create_task_group() as group:
                group.start_soon(publish_all_the_time)
                await wait_until(lambda: len(sent) >= 20)
                await anyio.to_thread.run_sync(partial(cluster.migrate_slot, slot, destination))
                await wait_until(lambda: log.activations.count(moving.encode()) == 2, 10)
                mark = len(sent)
                await wait_until(lambda: len(sent) >= mark + 20)
                stop.set()
            after = sent[mark:]
            await wait_until(lambda: set(after) <= {d for c, d in log.messages}, 5)
            received = [d for c, d in log.messages if c == moving.encode()]
            assert len(received) == len(set(received)), "a message arrived twice"
            assert [d for d in received if d in set(after)] == after  # all, in order
            assert received == sorted(received, key=int)  # never out of order
            assert log.disconnects == []  # no connection was lost
            assert cluster.owner_of(moving) is destination
            assert destination.command("PUBSUB", "SHARDNUMSUB", moving)[1] == 1
            assert source.command("PUBSUB", "SHARDNUMSUB", moving)[1] == 0
            assert await mpx.spublish(staying, b"untouched") == 1
            await wait_until(lambda: (staying.encode(), b"untouched") in log.messages)

    try:
        driver.run(body)
    finally:  # the shared cluster is left as it was
        if cluster.owner_of_slot(slot) is not source:
            cluster.migrate_slot(slot, source)


def test_failover_and_a_killed_master(
    driver: Driver, redis_cluster_factory: RedisClusterFactory
) -> None:
    """CLUSTER FAILOVER (the old master unsubscribes its subscribers itself), then
    SIGKILL of the new master (its connections die): each time the names move to the
    master that took over, are re-activated, and get what is published there."""
    cluster = redis_cluster_factory()
    first = cluster.masters()[0]
    names = names_on(cluster, first, 3, "failover")

    async def body() -> None:
        log = Log()
        async with driver.module.ClusterMultiplexer(cluster.startup_urls, **FAST) as mpx:
            sub = mpx.new_sharded_subscription(*log.callbacks())
            sub.add(*names)
            await wait_until(lambda: len(log.activations) == 3)

            promoted = await anyio.to_thread.run_sync(cluster.failover, first)
            await wait_until(lambda: len(log.activations) == 6, 10)
            assert log.disconnects == []  # the old master kept the connection
            for name in names:
                assert await mpx.spublish(name, b"after failover") == 1
            await wait_until(lambda: len(log.messages) == 3)

            survivor = await anyio.to_thread.run_sync(cluster.kill_master, promoted)
            assert survivor is first
            await wait_until(lambda: len(log.activations) == 9, 15)
            assert len(log.disconnects) == 1  # the killed node's connection, once
            for name in names:
                assert await mpx.spublish(name, b"after kill") == 1
            await wait_until(lambda: len(log.messages) == 6)
            assert sorted(log.messages) == sorted(
                [(n.encode(), b"after failover") for n in names]
                + [(n.encode(), b"after kill") for n in names]
            )
            for name in names:
                assert survivor.command("PUBSUB", "SHARDNUMSUB", name)[1] == 1

    driver.run(body)


def test_construction_errors(driver: Driver) -> None:
    ClusterMultiplexer = driver.module.ClusterMultiplexer
    with pytest.raises(TypeError, match="startup_urls"):
        ClusterMultiplexer([])
    with pytest.raises(TypeError, match="startup_urls"):
        ClusterMultiplexer([b"redis://h:1"])
    with pytest.raises(ValueError, match="unix"):
        ClusterMultiplexer(["unix:///tmp/redis.sock"])
    with pytest.raises(ValueError, match="database 0"):
        ClusterMultiplexer(["redis://h:7000/2"])
    with pytest.raises(ValueError, match="port"):
        ClusterMultiplexer(["redis://h:notaport"])
    with pytest.raises(ValueError, match="sentinels"):
        ClusterMultiplexer(["redis+sentinel://h:26379/mymaster"])
    with pytest.raises(ValueError, match="refresh_interval"):
        ClusterMultiplexer(["redis://h:7000"], refresh_interval=0)
