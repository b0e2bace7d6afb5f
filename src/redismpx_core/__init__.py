"""redismpx_core: the sans-I/O Redis Pub/Sub multiplexer.

A pure state machine: RESP bytes and the time in; bytes to send, events and
deadlines out. No sockets, no clock, no randomness of its own, no event loop, no
async code. The front end (``redismpx_frontend``) runs it over any event loop; a
driver of your own may run it directly (docs/core.md).
"""

from ._cluster import ClusterCore
from ._core import MultiplexerCore
from ._errors import (
    AuthenticationError,
    ConnectionLost,
    HealthCheckTimeout,
    InactiveSubscription,
    MasterNotFound,
    NodeConnectionLost,
    NodeLeft,
    PromiseInterrupted,
    ProtocolError,
    RedisMPXError,
    ServerError,
    SubscriptionClosed,
    SubscriptionOverflow,
)
from ._events import (
    CommandCompleted,
    CommandFailed,
    ConnectionEstablished,
    Event,
    MessagesReceived,
    NameDeactivated,
    NameRejected,
    NamesActivated,
    PromiseExpired,
    PromiseFailed,
    PromiseFulfilled,
    PublishCompleted,
    PublishFailed,
    SubscriptionDisconnected,
)
from ._handles import PromiseHandle, SubscriptionHandle, SubscriptionKind
from ._lifecycle import ConnectionState
from ._sentinel import FailoverWatch, MasterSwitched, MasterTarget, SentinelQuery
from ._settings import OverflowPolicy, Settings
from ._slots import key_slot
from ._statistics import Statistics
from ._topology import Node, Topology
from ._version import __version__

__all__ = (
    # the state machine
    "MultiplexerCore",
    "ConnectionState",
    "Statistics",
    # Redis Cluster
    "ClusterCore",
    "Node",
    "Topology",
    "key_slot",
    # configuration
    "Settings",
    "OverflowPolicy",
    # sentinel discovery, and failovers as they happen
    "SentinelQuery",
    "FailoverWatch",
    "MasterSwitched",
    "MasterTarget",
    # handles
    "SubscriptionHandle",
    "SubscriptionKind",
    "PromiseHandle",
    # events
    "Event",
    "ConnectionEstablished",
    "MessagesReceived",
    "NamesActivated",
    "NameRejected",
    "NameDeactivated",
    "SubscriptionDisconnected",
    "PromiseFulfilled",
    "PromiseExpired",
    "PromiseFailed",
    "PublishCompleted",
    "PublishFailed",
    "CommandCompleted",
    "CommandFailed",
    # errors
    "RedisMPXError",
    "InactiveSubscription",
    "SubscriptionClosed",
    "SubscriptionOverflow",
    "PromiseInterrupted",
    "ProtocolError",
    "ConnectionLost",
    "HealthCheckTimeout",
    "NodeLeft",
    "ServerError",
    "AuthenticationError",
    "MasterNotFound",
    "NodeConnectionLost",
    "__version__",
)
