"""redismpx_anyio: the Redis Pub/Sub multiplexer on anyio (runs under asyncio and trio)."""

from typing import Any, final

import redismpx_frontend
from redismpx_frontend.common import *  # noqa: F403 - the names every driver exports
from redismpx_frontend.common import __all__ as _common

from ._backend import AnyioBackend

__all__ = ("Multiplexer", "ClusterMultiplexer", *_common)


@final
class Multiplexer(redismpx_frontend.Multiplexer):
    """Many Pub/Sub subscriptions over one Redis connection, on anyio (asyncio or trio).

    ``async with Multiplexer("redis://localhost:6379/0") as mpx: ...`` The multiplexer
    owns a task group for its connections and its subscriptions' consumers; leaving
    the block closes everything: sockets, subscriptions, pending promises and waiters.
    """

    def __init__(self, url: str = "redis://localhost:6379/0", **options: Any) -> None:
        super().__init__(url, backend=AnyioBackend(), **options)


@final
class ClusterMultiplexer(redismpx_frontend.ClusterMultiplexer):
    """The Multiplexer's API over a Redis Cluster, on anyio (asyncio or trio).

    ``async with ClusterMultiplexer(["redis://10.0.0.1:7000", ...]) as mpx: ...``
    Channel and pattern subscriptions ride one node's connection; shard channels
    ride the connection of the master owning their slot, and follow it when the
    cluster changes. See docs/cluster.md.
    """

    def __init__(
        self, startup_urls: str | list[str] = "redis://localhost:6379/0", **options: Any
    ) -> None:
        super().__init__(startup_urls, backend=AnyioBackend(), **options)
