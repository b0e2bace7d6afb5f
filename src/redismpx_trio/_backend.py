"""The I/O boundary: opening trio streams, and the one place trio's errors become ours."""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from redismpx_core import ConnectionLost, Settings
from redismpx_core._errors import describe_cause

__all__ = ("map_exceptions", "open_stream")

#: What a broken or refused connection raises under trio.
_IO_ERRORS = (
    OSError,
    ssl.SSLError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
)


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Turn trio's and the OS's connection errors into :class:`ConnectionLost`."""
    try:
        yield
    except trio.TooSlowError:
        raise ConnectionLost("connect_timeout expired") from None
    except _IO_ERRORS as exc:
        raise ConnectionLost(describe_cause(exc)) from exc


async def open_stream(settings: Settings) -> trio.abc.Stream:
    """Connect as ``settings`` says (TCP, TLS or a unix socket), within connect_timeout."""
    timeout = math.inf if settings.connect_timeout is None else settings.connect_timeout
    with map_exceptions(), trio.fail_after(timeout):
        if settings.scheme == "unix":
            assert settings.path is not None
            return await trio.open_unix_socket(settings.path)
        assert settings.host is not None
        assert settings.port is not None
        if settings.scheme == "rediss":
            # Certificates and host names are verified unless the caller's context says not.
            context = settings.ssl or ssl.create_default_context()
            stream = await trio.open_ssl_over_tcp_stream(
                settings.host, settings.port, ssl_context=context
            )
            try:
                await stream.do_handshake()  # fail here, inside connect_timeout
            except BaseException:
                await trio.aclose_forcefully(stream)  # or its socket would leak
                raise
            return stream
        return await trio.open_tcp_stream(settings.host, settings.port)
