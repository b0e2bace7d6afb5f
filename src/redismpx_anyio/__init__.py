"""redismpx_anyio: the Redis Pub/Sub multiplexer on anyio (runs under asyncio and trio)."""

from redismpx_core import (
    AuthenticationError,
    ConnectionLost,
    HealthCheckTimeout,
    InactiveSubscription,
    Message,
    OverflowPolicy,
    PromiseInterrupted,
    ProtocolError,
    RedisMPXError,
    ServerError,
    Statistics,
    SubscriptionClosed,
    SubscriptionOverflow,
    __version__,
)
from redismpx_core._frontend import (
    ChannelSubscription,
    MessageIterator,
    PatternSubscription,
    Promise,
    PromiseSubscription,
    ShardedSubscription,
)

from ._multiplexer import ClusterMultiplexer, Multiplexer

__all__ = (
    # the multiplexer and what it hands out
    "Multiplexer",
    "ClusterMultiplexer",
    "ChannelSubscription",
    "PatternSubscription",
    "ShardedSubscription",
    "PromiseSubscription",
    "Promise",
    "MessageIterator",
    "Message",
    "Statistics",
    "OverflowPolicy",
    # errors
    "RedisMPXError",
    "InactiveSubscription",
    "SubscriptionClosed",
    "SubscriptionOverflow",
    "PromiseInterrupted",
    "ProtocolError",
    "ConnectionLost",
    "HealthCheckTimeout",
    "ServerError",
    "AuthenticationError",
    "__version__",
)
