"""The URL schemes of Valkey's clients (valkey://, valkeys://, valkey+sentinel://) are
aliases of the Redis ones: the same connection, whichever server is at the other end."""

from __future__ import annotations

import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import Inbox, b, uniq
from redis_cluster import RedisCluster
from redis_servers import RedisServer


def _valkey(url: str) -> str:
    scheme, rest = url.split("://", 1)
    assert scheme == "redis"
    return "valkey://" + rest


def test_a_valkey_url_connects(driver: Driver, redis_server: RedisServer) -> None:
    chan = uniq("valkey-url")

    async def body() -> None:
        inbox, active = Inbox(), []
        async with driver.Multiplexer(_valkey(redis_server.url) + "/0?protocol=3") as mpx:
            mpx.new_channel_subscription(inbox, on_activation=active.append).add(chan)
            await wait_until(lambda: active == [b(chan)])
            assert await mpx.publish(chan, b"hi") == 1
            await wait_until(lambda: inbox.data() == [b"hi"])

    driver.run(body)


@pytest.mark.server_feature("cluster-shards")
def test_valkey_urls_name_the_cluster(driver: Driver, redis_cluster: RedisCluster) -> None:
    chan = "v:{" + uniq("shard") + "}"

    async def body() -> None:
        inbox, active = Inbox(), []
        urls = [_valkey(url) for url in redis_cluster.startup_urls]
        async with driver.module.ClusterMultiplexer(urls) as mpx:
            mpx.new_sharded_subscription(inbox, on_activation=active.append).add(chan)
            await wait_until(lambda: active == [b(chan)])
            assert await mpx.spublish(chan, b"hi") == 1
            await wait_until(lambda: inbox.data() == [b"hi"])

    driver.run(body)
