"""Sentinel discovery, sans I/O: one question to one sentinel, "where is the master?".

A driver in sentinel mode runs one :class:`SentinelQuery` per sentinel it asks,
in the order the settings list them, until one gives an address::

    query = SentinelQuery(settings.master_name, username=..., password=...)
    write(query.data_to_send())
    while (address := query.receive_data(read())) is None:
        pass                                  # the answer is not complete yet
    host, port = address                      # connect there, as for a redis:// URL

``receive_data`` raises instead of answering when the sentinel cannot help:
:class:`MasterNotFound` (it monitors no master of that name),
:class:`AuthenticationError` (it refused the sentinel credentials),
:class:`ServerError` (another error reply: not a sentinel, ACLs...) or
:class:`ProtocolError` (bytes that are not a well-formed answer). The driver then
asks the next sentinel. An answer is only a sentinel's opinion, and it may lag a
failover: the core's handshake checks the node's ROLE (``require_master``) before
the connection counts as up.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from ._errors import MasterNotFound, ProtocolError, RedisMPXError
from ._replies import server_error
from ._resp import NOT_ENOUGH_DATA, FrameReader, ParseError, ReplyError, pack_command
from ._settings import _host_problem

__all__ = ("SentinelQuery",)

logger = logging.getLogger("redismpx")

#: An answer is two short strings: anything near this size is not one.
MAX_ANSWER_SIZE: Final = 64 * 1024

_MAX_PORT: Final = 65535
_AUTH: Final = "auth"
_ADDRESS: Final = "address"


class SentinelQuery:
    """Ask one sentinel for the address of the master it monitors as ``master_name``.

    One query serves one connection: make a new one for each sentinel and each
    attempt. ``username``/``password`` authenticate to the sentinel itself (``AUTH``
    goes first when a password is given).
    """

    __slots__ = ("_address", "_expected", "_out", "_password", "_reader", "_state", "master_name")

    def __init__(
        self, master_name: str, *, username: str | None = None, password: str | None = None
    ) -> None:
        if not isinstance(master_name, str) or not master_name:
            raise ValueError("master_name must be a non-empty str")
        if username is not None and password is None:
            raise ValueError("a sentinel username needs a password (AUTH takes both)")
        self.master_name = master_name
        self._password = password
        self._reader = FrameReader(MAX_ANSWER_SIZE)
        self._address: tuple[str, int] | None = None
        # "asking" until the answer is in, then "answered"; "failed" after an error.
        self._state = "asking"
        # The replies due, in order: AUTH's (if any), then the address.
        self._expected: list[str] = []
        out = b""
        if password is not None:
            auth: tuple[str, ...] = (username, password) if username else (password,)
            out += pack_command(b"AUTH", *auth)
            self._expected.append(_AUTH)
        out += pack_command(b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", master_name)
        self._expected.append(_ADDRESS)
        self._out = out

    def __repr__(self) -> str:
        return f"<SentinelQuery {self.master_name!r} {self._state}>"

    @property
    def address(self) -> tuple[str, int] | None:
        """The master's ``(host, port)`` once the sentinel has given it, else ``None``."""
        return self._address

    def data_to_send(self) -> bytes:
        """The whole request, the first time; then nothing."""
        out, self._out = self._out, b""
        return out

    def receive_data(self, data: bytes | bytearray) -> tuple[str, int] | None:
        """Feed bytes read from the sentinel; the master's address once it is complete.

        Returns ``None`` while more bytes are needed. Raises as the module docstring
        says; after a raise, or once answered, the query takes no more input.
        """
        if self._state != "asking":
            raise RuntimeError(f"receive_data() on a query already {self._state}")
        try:
            self._reader.feed(data)
            completed = False
            while self._expected:
                reply = self._reader.gets()
                if reply is NOT_ENOUGH_DATA:
                    break
                completed = True
                self._take(self._expected.pop(0), reply)
            if self._address is None and self._reader.exceeds_bound(completed):
                raise ProtocolError(
                    f"the sentinel's answer exceeds {MAX_ANSWER_SIZE} bytes: not an address"
                )
        except ParseError as exc:
            self._state = "failed"
            raise ProtocolError(f"malformed reply from the sentinel: {exc}") from None
        except RedisMPXError:
            self._state = "failed"
            raise
        if self._address is not None:
            self._state = "answered"
        return self._address

    def _take(self, label: str, reply: Any) -> None:
        if reply.__class__ is ReplyError:
            error = server_error(reply, self._password, handshake=label is _AUTH)
            what = "AUTH" if label is _AUTH else "the query"
            raise type(error)(f"the sentinel refused {what}: {error}", error.code)
        if label is _AUTH:
            if reply != b"OK":
                raise ProtocolError("the sentinel answered AUTH with something other than OK")
            return
        if reply is None:
            raise MasterNotFound(f"the sentinel monitors no master named {self.master_name!r}")
        self._address = _parse_address(reply)


def _parse_address(reply: Any) -> tuple[str, int]:
    """``[host, port]`` as bulk strings, checked: a hostile sentinel must not send us
    to a host name with a NUL in it or to port 0."""
    if not isinstance(reply, list) or len(reply) != 2:
        raise ProtocolError("the sentinel's answer is not a [host, port] pair")
    raw_host, raw_port = reply
    if not isinstance(raw_host, bytes) or not isinstance(raw_port, bytes):
        raise ProtocolError("the sentinel's answer is not a [host, port] pair of strings")
    try:
        host = raw_host.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("the sentinel gave a host that is not ASCII") from None
    problem = _host_problem(host)
    if problem is not None:
        raise ProtocolError(f"the sentinel gave a bad host: {problem}")
    if not raw_port.isdigit() or len(raw_port) > 5 or not 1 <= int(raw_port) <= _MAX_PORT:
        raise ProtocolError(f"the sentinel gave a port that is not from 1 to {_MAX_PORT}")
    return host, int(raw_port)
