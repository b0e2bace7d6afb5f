"""Opening a connection as the settings say: TCP, TLS or a unix socket, found through
the sentinels in sentinel mode, all within ``connect_timeout``.

The backend opens sockets; this module decides which, and bounds how long it may
take. In sentinel mode the sentinels are asked in the order the settings list
them, each with a :class:`~redismpx_core.SentinelQuery` (the sans-I/O question and
its answer's parsing), and the first address given wins; the core then checks the
node's ROLE in its handshake, since a sentinel's answer may lag a failover. A
connection that follows announced failovers has a
:class:`~redismpx_core.MasterTarget`: an address a sentinel just announced is
connected to at once, without asking (``_sentinel.py``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections.abc import Awaitable

from redismpx_core import ConnectionLost, MasterTarget, RedisMPXError, SentinelQuery, Settings

from ._backend import Address, Backend, Stream

__all__ = ("CLOSE_TIMEOUT", "close_stream", "format_address", "open_stream", "within")

logger = logging.getLogger("redismpx")

#: How long closing a stream may take (a TLS close_notify to a dead peer must not hang us).
CLOSE_TIMEOUT = 1.0


def format_address(host: str, port: int) -> str:
    """``host:port`` for messages and logs, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_stream(
    backend: Backend, settings: Settings, target: MasterTarget | None = None
) -> Stream:
    """Connect as ``settings`` says; raises ``ConnectionLost`` when it cannot, in time.

    In sentinel mode, ``target`` (if given) gives the address a sentinel announced, to
    be connected to without asking, and learns the address connected to.
    """
    if settings.scheme == "unix":
        assert settings.path is not None  # the settings checked it
        return await within(backend, settings, backend.connect(Address(path=settings.path)))
    if not settings.sentinels:
        assert settings.host is not None
        assert settings.port is not None
        return await _connect(backend, settings, settings.host, settings.port)
    address = target.next_address() if target is not None else None
    if address is None:
        address = await _find_master(backend, settings)
    else:
        logger.info(
            "redismpx connecting to master %r at %s, as a sentinel announced",
            settings.master_name,
            format_address(*address),
        )
    host, port = address
    try:
        stream = await _connect(backend, settings, host, port)
    except ConnectionLost as exc:
        # The URL names only the sentinels: say where they sent us.
        where = f"master {settings.master_name!r} at {format_address(host, port)}"
        raise ConnectionLost(f"{where}: {exc}") from exc
    if target is not None:
        target.connected(address)
    return stream


async def _connect(backend: Backend, settings: Settings, host: str, port: int) -> Stream:
    tls = None
    if settings.scheme == "rediss":
        # Certificates and host names are verified unless the caller's context says not.
        tls = settings.ssl or ssl.create_default_context()
    return await within(backend, settings, backend.connect(Address(host, port, tls)))


async def within(backend: Backend, settings: Settings, connecting: Awaitable[Stream]) -> Stream:
    """``connecting``, or ``ConnectionLost`` once ``connect_timeout`` has passed."""
    with backend.cancel_scope(deadline=_deadline(backend, settings)):
        return await connecting
    # Only the deadline gets here: the scope cancelled the attempt.
    raise ConnectionLost(f"no connection within connect_timeout ({settings.connect_timeout} s)")


def _deadline(backend: Backend, settings: Settings) -> float:
    timeout = settings.connect_timeout
    return math.inf if timeout is None else backend.now() + timeout


async def _find_master(backend: Backend, settings: Settings) -> tuple[str, int]:
    """Ask the sentinels in turn where the master is; the first answer wins.

    Raises :class:`ConnectionLost` saying why each sentinel failed when none answered.
    """
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
            with backend.cancel_scope(deadline=_deadline(backend, settings)):
                address = await _ask(backend, host, port, query)
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


async def _ask(backend: Backend, host: str, port: int, query: SentinelQuery) -> tuple[str, int]:
    """One sentinel's answer: connect, ask, read until the query has it (or raises)."""
    stream = await backend.connect(Address(host, port))
    try:
        await stream.send(query.data_to_send())
        while True:
            address = query.receive_data(await stream.receive())
            if address is not None:
                return address
    finally:
        await close_stream(backend, stream)


async def close_stream(backend: Backend, stream: Stream) -> None:
    """Close ``stream`` even while being cancelled, within :data:`CLOSE_TIMEOUT`."""
    # Closing what already failed: its reason is known already.
    with (
        backend.cancel_scope(deadline=backend.now() + CLOSE_TIMEOUT, shield=True),
        contextlib.suppress(RedisMPXError),
    ):
        await stream.aclose()
