"""The I/O boundary: opening trio streams, and the one place trio's errors become ours."""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import trio

from redismpx_core import ConnectionLost, SentinelQuery, Settings
from redismpx_core._errors import describe_cause
from redismpx_core._sentinel import find_master, format_address

__all__ = ("map_exceptions", "open_stream")

#: A sentinel's answer is a few dozen bytes.
_SENTINEL_READ_SIZE = 4096

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
    """Connect as ``settings`` says (TCP, TLS or a unix socket), within connect_timeout.

    In sentinel mode the address is the master's, as the first sentinel to answer gives it.
    """
    timeout = math.inf if settings.connect_timeout is None else settings.connect_timeout
    if settings.scheme == "unix":
        assert settings.path is not None
        with map_exceptions(), trio.fail_after(timeout):
            return await trio.open_unix_socket(settings.path)
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


async def _connect(settings: Settings, host: str, port: int) -> trio.abc.Stream:
    timeout = math.inf if settings.connect_timeout is None else settings.connect_timeout
    with map_exceptions(), trio.fail_after(timeout):
        if settings.scheme == "rediss":
            # Certificates and host names are verified unless the caller's context says not.
            context = settings.ssl or ssl.create_default_context()
            stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context)
            try:
                await stream.do_handshake()  # fail here, inside connect_timeout
            except BaseException:
                await trio.aclose_forcefully(stream)  # or its socket would leak
                raise
            return stream
        return await trio.open_tcp_stream(host, port)


async def _ask_in_time(
    settings: Settings, host: str, port: int, query: SentinelQuery
) -> tuple[str, int] | None:
    timeout = math.inf if settings.connect_timeout is None else settings.connect_timeout
    with map_exceptions(), trio.move_on_after(timeout):
        return await _ask_sentinel(host, port, query)
    return None


async def _ask_sentinel(host: str, port: int, query: SentinelQuery) -> tuple[str, int]:
    """One sentinel's answer: connect, ask, read until the query has it (or raises)."""
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(query.data_to_send())
        while True:
            data = await stream.receive_some(_SENTINEL_READ_SIZE)
            if not data:
                raise ConnectionLost("the server closed the connection")
            address = query.receive_data(data)
            if address is not None:
                return address
