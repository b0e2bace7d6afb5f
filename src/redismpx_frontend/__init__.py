"""redismpx_frontend: the multiplexer's public API, written once over a backend protocol.

Subscriptions, delivery, iterators, promises, the connection runner (connect,
handshake, read, the one writer, timers, backoff), Sentinel discovery and the
cluster's connections live here, over the sans-I/O core (``redismpx_core``) and a
:class:`Backend`: what the front end needs from an event loop (a clock, jitter,
signals, a task group, cancel scopes, streams). ``redismpx_anyio`` and
``redismpx_trio`` are one backend each; to run redismpx on another loop, implement
:class:`Backend` and use :class:`Multiplexer` here (docs/embedding.md).
"""

from ._backend import (
    Address,
    Backend,
    CancelScope,
    LibraryStream,
    Signal,
    Stream,
    StreamErrors,
    StructuredBackend,
    TaskGroup,
    TrioNames,
)
from ._multiplexer import ClusterMultiplexer, Multiplexer, MultiplexerAPI
from .common import *  # noqa: F403 - the names every driver re-exports, listed once
from .common import __all__ as _common

__all__ = (
    # the multiplexers, over any backend
    "Multiplexer",
    "ClusterMultiplexer",
    "MultiplexerAPI",
    # the backend protocol
    "Backend",
    "Address",
    "Stream",
    "Signal",
    "TaskGroup",
    "CancelScope",
    # building a backend
    "StructuredBackend",
    "TrioNames",
    "LibraryStream",
    "StreamErrors",
    *_common,
)
