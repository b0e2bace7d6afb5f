"""redismpx_core: the sans-I/O Redis Pub/Sub multiplexer.

A pure state machine: RESP bytes and the time in; bytes to send, events and
deadlines out. No sockets, no clock, no randomness of its own, no event loop.
Drivers (``redismpx_anyio``, ``redismpx_trio``, or your own) do the I/O.
"""

from ._backoff import Backoff
from ._core import MAX_NAMES_PER_COMMAND, ConnectionState, MultiplexerCore
from ._delivery import DeliveryQueue, Message, Notice, SubscriptionOverflow
from ._errors import (
    AuthenticationError,
    ConnectionLost,
    HealthCheckTimeout,
    InactiveSubscription,
    PromiseInterrupted,
    ProtocolError,
    RedisMPXError,
    ServerError,
    SubscriptionClosed,
)
from ._events import (
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
from ._handles import Promise, Subscription, SubscriptionKind
from ._names import coerce_name, escape_glob
from ._settings import DEFAULT_MAX_FRAME_SIZE, OverflowPolicy, Settings
from ._state import NameKind, NameState
from ._statistics import Statistics
from ._version import __version__

__all__ = (
    # the state machine
    "MultiplexerCore",
    "ConnectionState",
    "Backoff",
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_NAMES_PER_COMMAND",
    "Statistics",
    # delivery to consumers
    "DeliveryQueue",
    "Message",
    "Notice",
    # configuration
    "Settings",
    "OverflowPolicy",
    # handles
    "Subscription",
    "SubscriptionKind",
    "Promise",
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
    # helpers
    "coerce_name",
    "escape_glob",
    "__version__",
)
