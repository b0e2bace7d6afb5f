"""The anyio backend: the front end's clock, signals, tasks, scopes and streams on anyio
(under asyncio or trio), and the one place anyio's errors become ours."""

from __future__ import annotations

import math
import random
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.abc
import anyio.lowlevel

from redismpx_core import ConnectionLost
from redismpx_core._errors import describe_cause

__all__ = ("AnyioBackend",)

#: Bytes asked of the socket per read.
READ_SIZE = 64 * 1024

#: What a broken or refused connection raises under anyio, on either event loop.
_IO_ERRORS = (
    OSError,  # includes ConnectionError
    ssl.SSLError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
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


class _Stream:
    __slots__ = ("_stream",)

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream

    async def receive(self) -> bytes:
        with map_exceptions():
            return await self._stream.receive(READ_SIZE)

    async def send(self, data: bytes) -> None:
        with map_exceptions():
            await self._stream.send(data)

    async def aclose(self) -> None:
        with map_exceptions():
            await self._stream.aclose()


class AnyioBackend:
    """:class:`redismpx_frontend.Backend` on anyio."""

    __slots__ = ()

    random = staticmethod(random.random)
    now = staticmethod(anyio.current_time)
    new_signal = anyio.Event
    open_task_group = staticmethod(anyio.create_task_group)
    checkpoint = staticmethod(anyio.lowlevel.checkpoint)

    @staticmethod
    def cancel_scope(*, deadline: float = math.inf, shield: bool = False) -> anyio.CancelScope:
        return anyio.CancelScope(deadline=deadline, shield=shield)

    @staticmethod
    async def connect_tcp(host: str, port: int, tls: ssl.SSLContext | None) -> _Stream:
        with map_exceptions():
            if tls is None:
                return _Stream(await anyio.connect_tcp(host, port))
            stream = await anyio.connect_tcp(
                host, port, ssl_context=tls, tls_hostname=host, tls_standard_compatible=False
            )
            return _Stream(stream)

    @staticmethod
    async def connect_unix(path: str) -> _Stream:
        with map_exceptions():
            return _Stream(await anyio.connect_unix(path))
