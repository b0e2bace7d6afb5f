"""redismpx_broadcaster: a broadcaster back end over one redismpx Multiplexer.

``Broadcast(backend=RedisMPXBackend("redis://..."))`` with broadcaster's own
``Broadcast``, or ``redismpx_broadcaster.Broadcast("redis://...")``, which also
bounds each subscriber's buffer. Reconnects, outages and drops are told on the
``redismpx.broadcaster`` logger. See docs/frameworks/broadcaster.md.
"""

from ._backend import RedisMPXBackend
from ._broadcast import Broadcast, Subscriber, SubscriberOverflow
from ._outage import Outage

__all__ = (
    # the back end, for broadcaster's own Broadcast(backend=...)
    "RedisMPXBackend",
    "Outage",
    # Broadcast with bounded subscribers
    "Broadcast",
    "Subscriber",
    "SubscriberOverflow",
)
