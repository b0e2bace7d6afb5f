"""redismpx_broadcaster: a broadcaster back end over one redismpx Multiplexer."""

__all__ = ()
