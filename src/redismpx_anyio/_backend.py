"""The I/O boundary: opening streams, and the one place anyio's errors become ours."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.abc

from redismpx_core import ConnectionLost, RedisMPXError, SentinelQuery, Settings
from redismpx_core._errors import describe_cause
from redismpx_core._sentinel import format_address

__all__ = ("map_exceptions", "open_stream")

logger = logging.getLogger("redismpx")

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
    host, port = await _find_master(settings)
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


async def _find_master(settings: Settings) -> tuple[str, int]:
    """Ask the sentinels in turn where the master is; the first answer wins."""
    assert settings.master_name is not None
    failures: list[str] = []
    for host, port in settings.sentinels:
        where = format_address(host, port)
        query = SentinelQuery(
            settings.master_name,
            username=settings.sentinel_username,
            password=settings.sentinel_password,
        )
        address = None
        try:
            with map_exceptions(), anyio.move_on_after(settings.connect_timeout):
                address = await _ask_sentinel(host, port, query)
        except RedisMPXError as exc:
            failures.append(f"{where}: {exc}")
            continue
        if address is None:
            failures.append(f"{where}: no answer within connect_timeout")
            continue
        logger.info(
            "redismpx sentinel %s gives master %r at %s",
            where,
            settings.master_name,
            format_address(*address),
        )
        return address
    raise ConnectionLost(
        f"no sentinel gave the address of master {settings.master_name!r} "
        f"({'; '.join(failures)})"
    )


async def _ask_sentinel(host: str, port: int, query: SentinelQuery) -> tuple[str, int]:
    """One sentinel's answer: connect, ask, read until the query has it (or raises)."""
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(query.data_to_send())
        while True:
            address = query.receive_data(await stream.receive())
            if address is not None:
                return address
