"""The names every driver package exports besides its two multiplexers.

``from redismpx_frontend.common import *`` in a driver's ``__init__`` re-exports
them, so that the list is written once: the objects the multiplexers hand out,
the configuration and statistics types, and the one error hierarchy.
"""

from redismpx_core import (
    AuthenticationError,
    ConnectionLost,
    HealthCheckTimeout,
    InactiveSubscription,
    NodeConnectionLost,
    NodeLeft,
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

from ._consumers import ChannelSubscription, PatternSubscription, ShardedSubscription
from ._delivery import Message
from ._iterator import MessageIterator
from ._promises import Promise, PromiseSubscription

__all__ = (
    # what the multiplexers hand out
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
    "NodeConnectionLost",
    "HealthCheckTimeout",
    "NodeLeft",
    "ServerError",
    "AuthenticationError",
    "__version__",
)
