"""The anyio backend (under asyncio or trio): anyio's task groups and connections; its
clock, events and cancel scopes are named as trio's."""

from __future__ import annotations

import ssl

import anyio
import anyio.abc
import anyio.lowlevel

from redismpx_frontend import Address, LibraryStream, StreamErrors, StructuredBackend

__all__ = ("BACKEND",)

_ERRORS = StreamErrors(
    ended=(anyio.EndOfStream,),
    failed=(OSError, ssl.SSLError, anyio.BrokenResourceError, anyio.ClosedResourceError),
)


async def _connect(address: Address) -> LibraryStream:
    stream: anyio.abc.ByteStream
    with _ERRORS.mapped():
        if address.path is not None:
            stream = await anyio.connect_unix(address.path)
        elif address.tls is None:
            stream = await anyio.connect_tcp(address.host, address.port)
        else:  # anyio completes the TLS handshake before it returns
            stream = await anyio.connect_tcp(
                address.host, address.port, ssl_context=address.tls, tls_standard_compatible=False
            )
    return LibraryStream(stream.receive, stream.send, stream.aclose, _ERRORS)


BACKEND = StructuredBackend(anyio, anyio.lowlevel.checkpoint, anyio.create_task_group, _connect)
