"""The normal flow: an emit on one python-socketio server reaches the client of another,
through Redis, with our managers (one server, and a Redis Cluster on a shard channel)
and with the stock ``AsyncRedisManager``, alone and side by side on one channel."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import socketio

from frameworks.socketio.deploy import CHANNEL, deployment
from redis_servers import RedisServer
from redismpx_socketio import ClusterMultiplexerManager, MultiplexerManager

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # python-socketio's AsyncServer and AsyncClient are asyncio only


def numsub(server: RedisServer) -> int:
    return server.pubsub_numsub(CHANNEL)[CHANNEL.encode()]


async def test_emit_reaches_the_client_of_another_server(redis_server: RedisServer) -> None:
    async with deployment(lambda: MultiplexerManager(redis_server.url)) as nodes:
        await nodes.wait_subscribed(lambda: numsub(redis_server))
        await nodes.delivered("hello")
        await nodes.delivered({"nested": [1, 2.5, None, "é"]})
        stats = nodes[1].manager.statistics()
        assert stats.subscribed
        assert stats.events_received >= 2
        assert nodes[0].manager.statistics().emits_published >= 2


async def test_cluster_on_one_shard_channel(redis_cluster: Any) -> None:
    owner = redis_cluster.owner_of(CHANNEL)
    others = [node for node in redis_cluster.reachable() if node is not owner]

    def make() -> ClusterMultiplexerManager:
        return ClusterMultiplexerManager(redis_cluster.startup_urls)

    async with deployment(make) as nodes:
        await nodes.wait_subscribed(lambda: redis_cluster.shardnumsub(CHANNEL))
        await nodes.delivered("over the cluster")
        # One shard channel, on the master that owns its slot: no plain channel anywhere.
        assert redis_cluster.shardnumsub(CHANNEL) == 2
        for node in [owner, *others]:
            assert numsub(node) == 0


async def test_stock_manager_flow(redis_server: RedisServer) -> None:
    """The same flow with the stock back end: what the fault tests compare against."""
    channel = "socketio-stock-flow"

    def make() -> Any:
        return socketio.AsyncRedisManager(redis_server.url, channel=channel)

    async with deployment(make) as nodes:
        await nodes.wait_subscribed(lambda: redis_server.pubsub_numsub(channel)[channel.encode()])
        await nodes.delivered("stock")


async def test_a_fleet_mixes_stock_and_ours(redis_server: RedisServer) -> None:
    """Wire compatibility: a stock server and one of ours share a channel, both ways,
    so a fleet can move one server at a time."""
    channel = "socketio-mixed"
    makers = iter(
        [
            lambda: socketio.AsyncRedisManager(redis_server.url, channel=channel),
            lambda: MultiplexerManager(redis_server.url, channel=channel),
        ]
    )
    async with deployment(lambda: next(makers)()) as nodes:
        await nodes.wait_subscribed(lambda: redis_server.pubsub_numsub(channel)[channel.encode()])
        await nodes[0].broadcast("stock to ours")
        await nodes[1].wait_news("stock to ours")
        await nodes[1].broadcast(["ours to stock", b"\x00binary"])
        await nodes[0].wait_news(["ours to stock", b"\x00binary"])
        # The stock server's events carry no sequence number: nothing counted as missed.
        assert nodes[1].manager.statistics().events_missed == 0


async def test_write_only_emitter(redis_server: RedisServer) -> None:
    """An external process emits through a write-only manager, as with the stock one."""
    channel = "socketio-external"
    async with deployment(lambda: MultiplexerManager(redis_server.url, channel=channel)) as nodes:
        await nodes.wait_subscribed(lambda: redis_server.pubsub_numsub(channel)[channel.encode()])
        emitter = MultiplexerManager(redis_server.url, channel=channel, write_only=True)
        try:
            await emitter.emit("news", "from outside", room="news-room")
            for node in nodes:
                await node.wait_news("from outside")
            assert emitter.statistics().emits_published == 1
            assert not emitter.statistics().subscribed
        finally:
            await emitter.close()
        with pytest.raises(RuntimeError, match="closed"):
            await emitter.emit("news", "after close", room="news-room")


async def test_subscription_is_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="redismpx_socketio")
    channel = "socketio-logged"
    async with deployment(
        lambda: MultiplexerManager(redis_server.url, channel=channel), servers=1
    ) as nodes:
        await nodes.wait_subscribed(lambda: redis_server.pubsub_numsub(channel)[channel.encode()])
    assert f"subscribed to channel '{channel}'" in caplog.text


def test_an_emitter_serves_one_event_loop_after_another(redis_server: RedisServer) -> None:
    """A script that runs ``asyncio.run`` twice with one write-only manager: the second
    loop gets a multiplexer of its own (the first closed with its loop)."""
    import asyncio

    import hiredis

    from redis_servers import encode_command

    channel = "socketio-two-loops"
    sock = redis_server.connect(timeout=5)
    reader = hiredis.Reader()

    def read() -> Any:
        while (reply := reader.gets()) is False:
            reader.feed(sock.recv(1 << 16))
        return reply

    sock.sendall(encode_command("SUBSCRIBE", channel))
    read()
    emitter = MultiplexerManager(redis_server.url, channel=channel, write_only=True)
    try:
        asyncio.run(emitter.emit("news", "first loop", room="r"))
        asyncio.run(emitter.emit("news", "second loop", room="r"))
        assert b"first loop" in read()[2]
        assert b"second loop" in read()[2]
        assert emitter.statistics().emits_published == 2
    finally:
        sock.close()
