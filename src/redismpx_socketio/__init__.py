"""redismpx_socketio: python-socketio client managers over a redismpx multiplexer.

``MultiplexerManager`` replaces ``socketio.AsyncRedisManager`` (one Redis server);
``ClusterMultiplexerManager`` does the same over a Redis Cluster, on one shard channel.
Both resubscribe after every reconnect, buffer what they read within a bound, and log
what was lost. See docs/frameworks/socketio.md.
"""

from ._manager import ClusterMultiplexerManager, MultiplexerManager
from ._report import DEFAULT_LOGGER
from ._sequence import SEQUENCE_KEY
from ._statistics import ManagerStatistics

__all__ = (
    # the managers
    "MultiplexerManager",
    "ClusterMultiplexerManager",
    # what they tell
    "ManagerStatistics",
    "DEFAULT_LOGGER",
    "SEQUENCE_KEY",
)
