"""redismpx_channels: a Django Channels layer over redismpx multiplexers.

``"BACKEND": "redismpx_channels.RedisMPXChannelLayer"`` in ``CHANNEL_LAYERS`` where the
stock layer reads ``"channels_redis.pubsub.RedisPubSubChannelLayer"``; see
docs/frameworks/channels.md.
"""

from ._layer import RedisMPXChannelLayer
from ._telling import LayerStatistics

__all__ = (
    # the layer
    "RedisMPXChannelLayer",
    # what it counts
    "LayerStatistics",
)
