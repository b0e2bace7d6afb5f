"""trio driver for redismpx.

Not built yet: this package is a placeholder so that the distribution already ships
its three import packages. The driver will run the sans-I/O ``redismpx_core`` state
machine over a trio stream.
"""

__all__: tuple[str, ...] = ()
