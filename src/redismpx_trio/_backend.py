"""The trio backend: the front end on trio alone, through trio's own names, its nurseries
and its streams."""

from __future__ import annotations

import ssl

import trio
import trio.lowlevel

from redismpx_frontend import Address, LibraryStream, StreamErrors, StructuredBackend

__all__ = ("BACKEND",)

# trio reports the end of a stream as an empty read, which LibraryStream takes as such.
_ERRORS = StreamErrors(
    ended=(), failed=(OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError)
)


async def _open(address: Address) -> LibraryStream:
    with _ERRORS.mapped():
        if address.path is not None:
            stream: trio.abc.Stream = await trio.open_unix_socket(address.path)
        elif address.tls is None:
            stream = await trio.open_tcp_stream(address.host, address.port)
        else:
            tls = await trio.open_ssl_over_tcp_stream(
                address.host, address.port, ssl_context=address.tls
            )
            try:
                await tls.do_handshake()  # fail here, within the caller's deadline
            except BaseException:
                await trio.aclose_forcefully(tls)  # or its socket would leak
                raise
            stream = tls
    return LibraryStream(stream.receive_some, stream.send_all, stream.aclose, _ERRORS)


BACKEND = StructuredBackend(trio, trio.lowlevel.checkpoint, trio.open_nursery, _open)
