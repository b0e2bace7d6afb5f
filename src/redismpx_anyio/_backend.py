"""The I/O boundary: opening streams, and the one place anyio's errors become ours."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.abc

from redismpx_core import ConnectionLost, Settings
from redismpx_core._errors import describe_cause

__all__ = ("map_exceptions", "open_stream")

#: What a broken or refused connection raises under anyio, on either backend.
_IO_ERRORS = (
    OSError,  # includes ConnectionError and TimeoutError (anyio.fail_after)
    ssl.SSLError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Turn anyio's and the OS's connection errors into :class:`ConnectionLost`."""
    try:
        yield
    except anyio.EndOfStream:
        raise ConnectionLost("the server closed the connection") from None
    except _IO_ERRORS as exc:
        raise ConnectionLost(describe_cause(exc)) from exc


async def open_stream(settings: Settings) -> anyio.abc.ByteStream:
    """Connect as ``settings`` says (TCP, TLS or a unix socket), within connect_timeout."""
    with map_exceptions(), anyio.fail_after(settings.connect_timeout):
        if settings.scheme == "unix":
            assert settings.path is not None
            return await anyio.connect_unix(settings.path)
        assert settings.host is not None
        assert settings.port is not None
        if settings.scheme == "rediss":
            # Certificates and host names are verified unless the caller's context says not.
            context = settings.ssl or ssl.create_default_context()
            return await anyio.connect_tcp(
                settings.host,
                settings.port,
                ssl_context=context,
                tls_hostname=settings.host,
                tls_standard_compatible=False,
            )
        return await anyio.connect_tcp(settings.host, settings.port)
