"""redismpx_trio: the Redis Pub/Sub multiplexer on trio alone."""

from typing import final

import redismpx_frontend
from redismpx_frontend.common import *  # noqa: F403 - the names every driver exports
from redismpx_frontend.common import __all__ as _common

from ._backend import BACKEND

__all__ = ("Multiplexer", "ClusterMultiplexer", *_common)


@final
class Multiplexer(redismpx_frontend.Multiplexer, backend=BACKEND):
    """Many Pub/Sub subscriptions over one Redis connection, on trio. Its nursery runs
    the connections and the slow subscriptions' consumers; leaving ``async with``
    closes everything."""


@final
class ClusterMultiplexer(redismpx_frontend.ClusterMultiplexer, backend=BACKEND):
    """The Multiplexer's API over a Redis Cluster, on trio (see docs/cluster.md)."""
