"""redismpx_core: the sans-I/O Redis Pub/Sub multiplexer.

A pure state machine: RESP bytes and the time in; bytes to send, events and
deadlines out. No sockets, no clock, no randomness of its own, no event loop.
Drivers (``redismpx_anyio``, ``redismpx_trio``, or your own) do the I/O.
"""

from ._backoff import Backoff
from ._cluster import ClusterCore
from ._core import MAX_NAMES_PER_COMMAND, ConnectionState, MultiplexerCore
from ._errors import (
    AuthenticationError,
    ConnectionLost,
    HealthCheckTimeout,
    InactiveSubscription,
    MasterNotFound,
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
from ._names import coerce_name, escape_glob
from ._sentinel import SentinelQuery
from ._settings import DEFAULT_MAX_FRAME_SIZE, OverflowPolicy, Settings
from ._slots import SLOTS, key_slot
from ._state import NameKind, NameState
from ._statistics import Statistics
from ._topology import Node, Topology
from ._version import __version__

__all__ = (
    # the state machine
    "MultiplexerCore",
    "ConnectionState",
    "Backoff",
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_NAMES_PER_COMMAND",
    "Statistics",
    # Redis Cluster
    "ClusterCore",
    "Node",
    "Topology",
    "SLOTS",
    "key_slot",
    # configuration
    "Settings",
    "OverflowPolicy",
    # sentinel discovery
    "SentinelQuery",
    # handles
    "SubscriptionHandle",
    "SubscriptionKind",
    "PromiseHandle",
    "NameKind",
    "NameState",
    # events
    "Event",
    "ConnectionEstablished",
    "MessagesReceived",
    "NamesActivated",
    "NameRejected",
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
    "ServerError",
    "AuthenticationError",
    "MasterNotFound",
    # helpers
    "coerce_name",
    "escape_glob",
    "__version__",
)
