"""redismpx_socketio: a python-socketio client manager over one redismpx Multiplexer."""

__all__ = ()
