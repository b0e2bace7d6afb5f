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
