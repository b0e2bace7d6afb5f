"""The trio backend: the front end's clock, signals, tasks, scopes and streams on trio
alone, and the one place trio's errors become ours."""

from __future__ import annotations

import math
import random
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import trio
import trio.lowlevel

from redismpx_core import ConnectionLost
from redismpx_core._errors import describe_cause

__all__ = ("TrioBackend",)

#: Bytes asked of the socket per read.
READ_SIZE = 64 * 1024

#: What a broken or refused connection raises under trio.
_IO_ERRORS = (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError)


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Turn trio's and the OS's connection errors into :class:`ConnectionLost`."""
    try:
        yield
    except _IO_ERRORS as exc:
        raise ConnectionLost(describe_cause(exc)) from exc


class _Stream:
    __slots__ = ("_stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def receive(self) -> bytes:
        with map_exceptions():
            data = await self._stream.receive_some(READ_SIZE)
        if not data:
            raise ConnectionLost("the server closed the connection")
        return bytes(data)

    async def send(self, data: bytes) -> None:
        with map_exceptions():
            await self._stream.send_all(data)

    async def aclose(self) -> None:
        with map_exceptions():
            await self._stream.aclose()


class TrioBackend:
    """:class:`redismpx_frontend.Backend` on trio."""

    __slots__ = ()

    random = staticmethod(random.random)
    now = staticmethod(trio.current_time)
    new_signal = trio.Event
    open_task_group = staticmethod(trio.open_nursery)
    checkpoint = staticmethod(trio.lowlevel.checkpoint)

    @staticmethod
    def cancel_scope(*, deadline: float = math.inf, shield: bool = False) -> trio.CancelScope:
        return trio.CancelScope(deadline=deadline, shield=shield)

    @staticmethod
    async def connect_tcp(host: str, port: int, tls: ssl.SSLContext | None) -> _Stream:
        with map_exceptions():
            if tls is None:
                return _Stream(await trio.open_tcp_stream(host, port))
            stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=tls)
            try:
                await stream.do_handshake()  # fail here, within the caller's deadline
            except BaseException:
                await trio.aclose_forcefully(stream)  # or its socket would leak
                raise
            return _Stream(stream)

    @staticmethod
    async def connect_unix(path: str) -> _Stream:
        with map_exceptions():
            return _Stream(await trio.open_unix_socket(path))
