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

Once connected, a driver may also hear failovers as they happen, instead of when
the old master drops its clients: sentinels announce each switch of a master's
address on their own Pub/Sub, ``+switch-master <name> <old host> <old port> <new
host> <new port>``. A :class:`FailoverWatch` reads those announcements (the one
channel to subscribe to, on a connection to any sentinel, and what each message
means for one master name), and a :class:`MasterTarget` per data connection
decides whether an announcement moves that connection::

    watch = FailoverWatch(settings.master_name)
    # on the sentinel connection: SUBSCRIBE watch.channel (a MultiplexerCore does it)
    switch = watch.announcement(payload)      # None: another master's
    if switch is not None and target.switched(switch):
        ...                                   # drop that connection, reconnect at once
    address = target.next_address()           # before each attempt: the announced
                                              # address, once; None: ask the sentinels
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from ._errors import MasterNotFound, ProtocolError, RedisMPXError
from ._replies import server_error
from ._resp import NOT_ENOUGH_DATA, FrameReader, ParseError, ReplyError, pack_command
from ._settings import CoreOptions, Settings, _check_master_name, _host_problem

__all__ = (
    "SWITCH_MASTER",
    "FailoverWatch",
    "MasterSwitched",
    "MasterTarget",
    "SentinelQuery",
    "watch_core_options",
)

logger = logging.getLogger("redismpx")

#: An answer is two short strings: anything near this size is not one.
MAX_ANSWER_SIZE: Final = 64 * 1024

#: The channel on which a sentinel announces that it moved a master to a new address.
SWITCH_MASTER: Final = b"+switch-master"

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
    return _checked_address(raw_host, raw_port, "gave")


def _checked_address(raw_host: bytes, raw_port: bytes, verb: str) -> tuple[str, int]:
    """A host and a port a sentinel ``verb`` (gave, announced), checked alike wherever
    they come from: an ASCII host name or IP address, a port from 1 to 65535."""
    try:
        host = raw_host.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"the sentinel {verb} a host that is not ASCII") from None
    problem = _host_problem(host)
    if problem is not None:
        raise ProtocolError(f"the sentinel {verb} a bad host: {problem}")
    if not raw_port.isdigit() or len(raw_port) > 5 or not 1 <= int(raw_port) <= _MAX_PORT:
        raise ProtocolError(f"the sentinel {verb} a port that is not from 1 to {_MAX_PORT}")
    return host, int(raw_port)


# ------------------------------------------------------------------ failovers as they happen


@dataclass(frozen=True, slots=True)
class MasterSwitched:
    """A sentinel's announcement: it now knows master ``master_name`` at ``new``, where
    it knew it at ``old`` (each a checked ``(host, port)``)."""

    master_name: str
    old: tuple[str, int]
    new: tuple[str, int]


class FailoverWatch:
    """What a sentinel's ``+switch-master`` announcements mean for one master name.

    Subscribe to :attr:`channel` on a connection to a sentinel (any sentinel that
    monitors the master: each announces the switches it learns of), and hand each
    message's payload to :meth:`announcement`.
    """

    __slots__ = ("_prefix", "master_name")

    #: The channel to subscribe to on the sentinel.
    channel: Final = SWITCH_MASTER

    def __init__(self, master_name: str) -> None:
        self.master_name = _check_master_name(master_name)
        # A name has no whitespace (the settings check it, as here): every announcement
        # for it starts with the name and one space, and nothing else does.
        self._prefix = master_name.encode("utf-8") + b" "

    def __repr__(self) -> str:
        return f"<FailoverWatch {self.master_name!r}>"

    def announcement(self, payload: bytes) -> MasterSwitched | None:
        """The switch ``payload`` (a message on :attr:`channel`) announces for this
        master; ``None`` when it is about another master.

        Raises :class:`ProtocolError` for an announcement about this master that is not
        ``<name> <old host> <old port> <new host> <new port>`` with hosts and ports
        checked as :class:`SentinelQuery` checks an answer (a host name or IP address,
        a port from 1 to 65535): a sentinel that sends that is not to be followed.
        """
        if not isinstance(payload, bytes | bytearray):
            raise TypeError(f"a payload is bytes, not {type(payload).__name__}")
        if not payload.startswith(self._prefix):
            return None
        fields = bytes(payload).split(b" ")
        if len(fields) != 5:
            raise ProtocolError(
                f"the sentinel announced a switch of master {self.master_name!r} that is "
                "not '<name> <old host> <old port> <new host> <new port>'"
            )
        _, old_host, old_port, new_host, new_port = fields
        return MasterSwitched(
            self.master_name,
            _checked_address(old_host, old_port, "announced"),
            _checked_address(new_host, new_port, "announced"),
        )


class MasterTarget:
    """Where one data connection in sentinel mode goes: the decision half of following
    announced failovers, for one connection (a multiplexer has one per connection it
    keeps to the master).

    Before each attempt the driver asks :meth:`next_address`: the address a sentinel
    announced since, once, or ``None`` (ask the sentinels, as always). It reports the
    address it connected to (:meth:`connected`) and every loss (:meth:`lost`).
    :meth:`switched` tells whether an announcement moves this connection.
    """

    __slots__ = ("_announced", "address")

    def __init__(self) -> None:
        #: The address of the connection made, from the moment it is made until it is lost.
        self.address: tuple[str, int] | None = None
        self._announced: tuple[str, int] | None = None

    def __repr__(self) -> str:
        return f"<MasterTarget at {self.address} next {self._announced}>"

    def switched(self, switch: MasterSwitched) -> bool:
        """A sentinel announced ``switch``. True: the connection must end now (with a
        loss its subscriptions are told of) and the next attempt start at once, at
        ``switch.new``. False: the connection is there already."""
        if switch.new == self.address:
            self._announced = None
            return False
        self._announced = switch.new
        return True

    def next_address(self) -> tuple[str, int] | None:
        """Where the next attempt goes: the announced address, given once (if it
        fails, the attempt after it asks the sentinels), else ``None``."""
        address, self._announced = self._announced, None
        return address

    def connected(self, address: tuple[str, int]) -> None:
        self.address = address

    def lost(self) -> None:
        self.address = None


def watch_core_options(settings: Settings) -> CoreOptions:
    """The core options of a connection to a sentinel that hears announcements: RESP2,
    the sentinel credentials, no database, no ROLE check; the timers, backoff and
    client name of the data connections."""
    options = settings.core_options()
    options.pop("require_master", None)
    options["protocol"] = 2
    options["username"] = settings.sentinel_username
    options["password"] = settings.sentinel_password
    options["db"] = 0
    return options
