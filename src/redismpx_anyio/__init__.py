"""redismpx_anyio: the Redis Pub/Sub multiplexer on anyio (runs under asyncio and trio)."""

from typing import final

import redismpx_frontend
from redismpx_frontend.common import *  # noqa: F403 - the names every driver exports
from redismpx_frontend.common import __all__ as _common

from ._backend import BACKEND

__all__ = ("Multiplexer", "ClusterMultiplexer", *_common)


@final
class Multiplexer(redismpx_frontend.Multiplexer, backend=BACKEND):
    """Many Pub/Sub subscriptions over one Redis connection, on anyio: under asyncio
    (``anyio.run(main)``, or ``asyncio.run``) or under trio (``anyio.run(main,
    backend="trio")``). ``async with Multiplexer("redis://localhost:6379/0") as mpx``:
    leaving the block closes everything: sockets, subscriptions, pending promises and
    waiters."""


@final
class ClusterMultiplexer(redismpx_frontend.ClusterMultiplexer, backend=BACKEND):
    """The Multiplexer's API over a Redis Cluster, on anyio (asyncio or trio):
    ``ClusterMultiplexer(["redis://10.0.0.1:7000", ...])``. See docs/cluster.md."""
