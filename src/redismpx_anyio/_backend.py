"""The I/O boundary: opening streams, and the one place anyio's errors become ours."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import anyio
import anyio.abc

from redismpx_core import ConnectionLost, SentinelQuery, Settings
from redismpx_core._errors import describe_cause
from redismpx_core._sentinel import find_master, format_address

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
    """Connect as ``settings`` says (TCP, TLS or a unix socket), within connect_timeout.

    In sentinel mode the address is the master's, as the first sentinel to answer gives it.
    """
    if settings.scheme == "unix":
        assert settings.path is not None
        with map_exceptions(), anyio.fail_after(settings.connect_timeout):
            return await anyio.connect_unix(settings.path)
    if not settings.sentinels:
        assert settings.host is not None
        assert settings.port is not None
        return await _connect(settings, settings.host, settings.port)
    host, port = await find_master(settings, partial(_ask_in_time, settings))
    try:
        return await _connect(settings, host, port)
    except ConnectionLost as exc:
        # The URL names only the sentinels: say where they sent us.
        where = f"master {settings.master_name!r} at {format_address(host, port)}"
        raise ConnectionLost(f"{where}: {exc}") from exc


async def _connect(settings: Settings, host: str, port: int) -> anyio.abc.ByteStream:
    with map_exceptions(), anyio.fail_after(settings.connect_timeout):
        if settings.scheme == "rediss":
            # Certificates and host names are verified unless the caller's context says not.
            context = settings.ssl or ssl.create_default_context()
            return await anyio.connect_tcp(
                host, port, ssl_context=context, tls_hostname=host, tls_standard_compatible=False
            )
        return await anyio.connect_tcp(host, port)


async def _ask_in_time(
    settings: Settings, host: str, port: int, query: SentinelQuery
) -> tuple[str, int] | None:
    with map_exceptions(), anyio.move_on_after(settings.connect_timeout):
        return await _ask_sentinel(host, port, query)
    return None


async def _ask_sentinel(host: str, port: int, query: SentinelQuery) -> tuple[str, int]:
    """One sentinel's answer: connect, ask, read until the query has it (or raises)."""
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(query.data_to_send())
        while True:
            address = query.receive_data(await stream.receive())
            if address is not None:
                return address
