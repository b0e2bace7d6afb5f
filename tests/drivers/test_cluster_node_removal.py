"""A ClusterMultiplexer's home node leaves the cluster while our connection to it stays up.

The home (the node whose subscriber connection carries channel, pattern and promise
subscriptions) is a replica, a node without slots, named first among the startup
URLs. It is forgotten by the other node and reset (``RedisCluster.remove_node``):
it no longer hears the cluster's PUBLISHes, and answers the topology query with a
cluster of its own. Within about ``refresh_interval`` the subscriptions move to a
node of the cluster: their holders get ``on_disconnect(NodeLeft)`` then
``on_activation``, a pending promise fails as interrupted, and a PUBLISH made on the
cluster reaches every kind again. A fresh cluster each (1 master, 1 replica).
"""

from __future__ import annotations

import anyio
import anyio.to_thread
import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import CLUSTER_FAST, Log, numpat, numsub, uniq, wait_server
from redis_cluster import RedisClusterFactory
from redismpx_core._cluster import LEAVE_CONFIRM_SECONDS

pytestmark = pytest.mark.server_feature("cluster-shards")

REFRESH = 0.5


def test_the_home_node_leaves_the_cluster(
    driver: Driver, redis_cluster_factory: RedisClusterFactory
) -> None:
    cluster = redis_cluster_factory(masters=1, replicas_per_master=1)
    [master] = cluster.masters()
    home = cluster.replica_of(master)
    channel = uniq("left")
    pattern = channel + "*"
    prefix = uniq("left-promise") + ":"
    NodeLeft, ConnectionLost = driver.module.NodeLeft, driver.module.ConnectionLost
    PromiseInterrupted = driver.module.PromiseInterrupted

    async def body() -> None:
        channels, patterns = Log(), Log()
        async with driver.module.ClusterMultiplexer(
            [home.url, master.url], refresh_interval=REFRESH, **CLUSTER_FAST
        ) as mpx:
            sub = mpx.new_channel_subscription(*channels.callbacks())
            sub.add(channel)
            psub = mpx.new_pattern_subscription(pattern, *patterns.callbacks())
            promises = mpx.new_promise_subscription(prefix)
            with anyio.fail_after(10):
                await promises.wait_for_activation()
            await wait_until(lambda: channels.activations and patterns.activations)
            assert numsub(home, channel) == 1  # on the home, a node without slots
            assert numsub(master, channel) == 0
            # Our subscriber and commands connections (it answers the topology), the
            # probe asking (and, counted on a replica, the link to its master).
            assert int(home.info("clients")["connected_clients"]) >= 3
            pending = promises.new_promise("before", 30)

            await anyio.to_thread.run_sync(cluster.remove_node, home)
            removed = anyio.current_time()
            await wait_until(
                lambda: len(channels.activations) == 2 and len(patterns.activations) == 2,
                timeout=REFRESH + LEAVE_CONFIRM_SECONDS + 4,
            )
            moved_within = anyio.current_time() - removed
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            for log, name in ((channels, channel), (patterns, pattern)):
                kinds = [kind for kind, _ in log.entries]
                assert kinds == ["activate", "disconnect", "activate"], log.entries
                [error] = log.disconnects
                assert isinstance(error, NodeLeft)
                assert isinstance(error, ConnectionLost)
                assert str(home.port) in str(error)
                assert log.activations == [name.encode()] * 2
            with pytest.raises(PromiseInterrupted), anyio.fail_after(5):
                await pending

            # A PUBLISH made on the cluster reaches every kind again.
            assert master.command("PUBLISH", channel, "on the cluster") == 2
            await wait_until(lambda: channels.messages and patterns.messages)
            assert channels.messages == [(channel.encode(), b"on the cluster")]
            assert patterns.messages == [(channel.encode(), b"on the cluster")]
            promise = promises.new_promise("after", 5)
            assert master.command("PUBLISH", prefix + "after", "42") == 1
            with anyio.fail_after(5):
                assert await promise == b"42"
            assert await mpx.publish(channel, b"via the multiplexer") == 2
            await wait_until(lambda: len(channels.messages) == 2)
            # Nothing of ours is left on the node that left: neither the subscriber
            # connection nor the commands one (it was the control); the one client
            # there is the probe asking.
            await wait_server(lambda: numsub(home, channel) == 0 and numpat(home) == 0)
            await wait_server(lambda: int(home.info("clients")["connected_clients"]) == 1)
            psub.close()
            sub.close()
        # About one refresh_interval after the node left, and the time to confirm its
        # absence (remove_node waits for the cluster too, so the move may even come
        # before it returns).
        assert moved_within < REFRESH + LEAVE_CONFIRM_SECONDS + 2

    driver.run(body)
