"""RESP2/RESP3 framing: the only module that imports hiredis.

hiredis parses; this module bounds what a hostile server can make us hold.
Error replies come back from ``gets()`` as :data:`ReplyError` *objects* (hiredis
returns them rather than raising), and RESP3 push frames as :data:`PushFrame`
lists. Malformed input raises :data:`ParseError`, and a RESP3 map key or set member
that is itself an aggregate raises ``TypeError`` (Python cannot hash it): the core
turns both into its own :class:`~redismpx_core.ProtocolError`, the ``TypeError`` only
once :meth:`FrameReader.failed` says it was hiredis' (so that no bug of the core's
passes for the server's doing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

import hiredis

__all__ = (
    "NOT_ENOUGH_DATA",
    "FrameReader",
    "ParseError",
    "PushFrame",
    "ReplyError",
    "pack_command",
)

#: Returned by ``gets()`` when no complete frame is buffered. A unique object:
#: ``False``, ``0`` and ``None`` are all valid replies.
NOT_ENOUGH_DATA: Final = object()

PushFrame: Final = hiredis.PushNotification
ReplyError: Final = hiredis.ReplyError
ParseError: Final = hiredis.ProtocolError


#: hiredis drops consumed input from its buffer once it has consumed this much.
_HIREDIS_KEEPS_CONSUMED: Final = 1023


def pack_command(*args: bytes | str | int) -> bytes:
    """Encode one command as a RESP array of bulk strings."""
    # hiredis' stub types the argument as a 1-tuple; it takes any number of items.
    return cast(bytes, hiredis.pack_command(args))  # type: ignore[arg-type]


class FrameReader:
    """A hiredis Reader with a bound on the bytes of one incomplete frame.

    hiredis has no limit of its own: a server announcing a bulk string of 2**40
    bytes would have us buffer whatever it sends. While no frame completes, every
    byte fed belongs to the incomplete frame and is counted. When frames complete,
    the bytes left in hiredis' buffer are what the next frame has so far:
    ``Reader.len()`` minus the consumed input hiredis keeps until it has consumed
    1 KiB (so we subtract the most it can keep). An aggregate's elements already
    parsed out of the buffer are missed, so the count can fall short by one read
    chunk plus 1 KiB, never overshoot: a frame within the bound is never refused.
    Past ``max_frame_size`` the stream is rejected.

    After a :data:`ParseError` this reader is broken for good (hiredis keeps its
    error state): make a new one per connection.
    """

    __slots__ = ("_partial", "_reader", "gets", "max_frame_size")

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._reader = hiredis.Reader(notEnoughData=NOT_ENOUGH_DATA)
        self._partial = 0
        #: hiredis' own bound method: the hot loop calls it once per frame.
        self.gets: Callable[[], Any] = self._reader.gets

    def feed(self, data: bytes | bytearray, offset: int = 0, length: int = -1) -> None:
        if length < 0:
            length = len(data) - offset
        self._reader.feed(data, offset, length)  # type: ignore[arg-type]  # the stub is narrower
        self._partial += length

    def failed(self) -> bool:
        """True if hiredis has given up on the stream.

        A reply it could not build (a RESP3 map key or set member that is itself an
        aggregate, which Python cannot hash) makes ``gets()`` raise ``TypeError`` once,
        then fail for good (:data:`ParseError`): this tells that ``TypeError`` from any
        other, without a ``try`` around every ``gets()`` of the core's hot loop (one
        there costs a few percent of its throughput). It may consume a frame: ask only
        once an error has made the connection unusable.
        """
        try:
            self._reader.gets()
        except ParseError:
            return True
        return False

    def exceeds_bound(self, completed_frames: bool) -> bool:
        """Account for one drained chunk; true if the incomplete frame is too big."""
        if completed_frames:
            self._partial = max(0, self._reader.len() - _HIREDIS_KEEPS_CONSUMED)
        return self._partial > self.max_frame_size
