"""redismpx_channels: a Django Channels layer over redismpx multiplexers."""

__all__ = ()
