"""An in-memory Redis 7 Pub/Sub peer for driving the sans-I/O core in tests.

Pure Python apart from ``hiredis.Reader``, which parses the commands a client sends
(arrays of bulk strings). Replies are encoded here (:func:`encode`, RESP2 and RESP3)
and sit in a per-connection output queue until the test takes them, in any split
it likes: delayed replies and arbitrary chunking are the test's choice, not ours.
Several connections may be open at once; a closed one loses its subscriptions at
once, as when Redis sees the socket close.

What it answers, as Redis 7 does (test_fake_redis.py holds it to a real
redis-server, reply for reply): HELLO (with AUTH and SETNAME), AUTH (one or two
arguments), SELECT, CLIENT SETNAME/GETNAME/ID, PING, ECHO, QUIT, RESET, PUBLISH,
SPUBLISH and the SUBSCRIBE family (one confirmation per name, with the connection's
subscription count; pushes under RESP3). ACLs: :meth:`FakeRedis.deny` and users
limited to channel patterns; a denied name refuses the whole SUBSCRIBE-family
command with NOPERM, as Redis 7 does. Anything else is ``-ERR unknown command``.
On its own initiative, a connection can unsubscribe a name and say so
(:meth:`FakeConnection.server_unsubscribe`), as Redis Cluster does with a slot's
shard channels when the slot moves.

Bookkeeping for tests: every connection logs the commands it received
(``commands``), the Pub/Sub messages it wrote with their end offsets in its output
stream (``deliveries``; compare with ``taken``), the replies to the client's own
PUBLISH/SPUBLISH (``publish_replies``) and the SUBSCRIBE-family requests for names
it already held (``redundant_subscribes``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import hiredis

__all__ = (
    "Delivery",
    "FakeConnection",
    "FakeRedis",
    "Map",
    "Push",
    "RespError",
    "Simple",
    "encode",
    "glob_match",
)

CRLF = b"\r\n"
SERVER_VERSION = b"7.0.15"

WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
NOAUTH = "NOAUTH Authentication required."
NOAUTH_HELLO = (
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
    "HELLO AUTH <user> <pass> option can be used to authenticate the client and "
    "select the RESP protocol version at the same time"
)
NO_PASSWORD_CONFIGURED = (
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)
NOPERM_CHANNELS = (
    "NOPERM this user has no permissions to access one of the channels used as arguments"
)


# ---------------------------------------------------------------------------- RESP encoding


class Simple(bytes):
    """A RESP simple string (``+OK``)."""


class RespError(str):
    """A RESP error reply (``-ERR ...``); the text without the leading ``-``."""


class Push(list):  # type: ignore[type-arg]
    """A RESP3 push frame (``>``); an array under RESP2."""


class Map(dict):  # type: ignore[type-arg]
    """A RESP3 map (``%``); a flat array of keys and values under RESP2."""


def encode(value: Any, protocol: int = 2) -> bytes:
    """Encode one reply. Python types: bytes/str -> bulk, int -> integer, None -> null,
    list/tuple -> array, set -> set (RESP3), bool -> boolean (RESP3), float -> double
    (RESP3), plus :class:`Simple`, :class:`RespError`, :class:`Push` and :class:`Map`."""
    out = bytearray()
    _encode_into(out, value, protocol)
    return bytes(out)


def _encode_into(out: bytearray, value: Any, protocol: int) -> None:
    resp3 = protocol == 3
    if isinstance(value, RespError):
        out += b"-" + value.encode() + CRLF
    elif isinstance(value, Simple):
        out += b"+" + bytes(value) + CRLF
    elif isinstance(value, bool):
        if resp3:
            out += b"#t\r\n" if value else b"#f\r\n"
        else:
            out += b":1\r\n" if value else b":0\r\n"
    elif isinstance(value, int):
        out += b":%d\r\n" % value
    elif isinstance(value, float):
        text = repr(value).encode()
        if resp3:
            out += b"," + text + CRLF
        else:
            out += b"$%d\r\n%s\r\n" % (len(text), text)
    elif value is None:
        out += b"_\r\n" if resp3 else b"$-1\r\n"
    elif isinstance(value, bytes | bytearray | str):
        data = value.encode() if isinstance(value, str) else bytes(value)
        out += b"$%d\r\n" % len(data) + data + CRLF
    elif isinstance(value, Push):
        out += (b">%d\r\n" if resp3 else b"*%d\r\n") % len(value)
        for item in value:
            _encode_into(out, item, protocol)
    elif isinstance(value, Map):
        if resp3:
            out += b"%%%d\r\n" % len(value)
        else:
            out += b"*%d\r\n" % (2 * len(value))
        for key, item in value.items():
            _encode_into(out, key, protocol)
            _encode_into(out, item, protocol)
    elif isinstance(value, set | frozenset):
        out += (b"~%d\r\n" if resp3 else b"*%d\r\n") % len(value)
        for item in sorted(value):
            _encode_into(out, item, protocol)
    elif isinstance(value, list | tuple):
        out += b"*%d\r\n" % len(value)
        for item in value:
            _encode_into(out, item, protocol)
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


# ---------------------------------------------------------------------------- glob matching


def glob_match(pattern: bytes, string: bytes) -> bool:
    """Redis' ``stringmatchlen`` (util.c), case-sensitive: ``*``, ``?``, ``[...]`` with
    ``^`` and ranges, backslash escapes (also inside brackets)."""
    skip = [False]
    return _match(pattern, 0, string, 0, skip, 0)


def _match(p: bytes, pi: int, s: bytes, si: int, skip: list[bool], nesting: int) -> bool:
    if nesting > 1000:
        return False
    plen = len(p) - pi
    slen = len(s) - si
    while plen and slen:
        c = p[pi]
        if c == 0x2A:  # '*'
            while plen > 1 and p[pi + 1] == 0x2A:
                pi += 1
                plen -= 1
            if plen == 1:
                return True
            while slen:
                if _match(p, pi + 1, s, si, skip, nesting + 1):
                    return True
                if skip[0]:
                    return False
                si += 1
                slen -= 1
            skip[0] = True
            return False
        elif c == 0x3F:  # '?'
            si += 1
            slen -= 1
        elif c == 0x5B:  # '['
            pi += 1
            plen -= 1
            negate = plen > 0 and p[pi] == 0x5E  # '^'
            if negate:
                pi += 1
                plen -= 1
            matched = False
            while True:
                if plen >= 2 and p[pi] == 0x5C:  # backslash escape inside brackets
                    pi += 1
                    plen -= 1
                    if p[pi] == s[si]:
                        matched = True
                elif plen == 0:
                    # Unterminated class: Redis steps back so that the common
                    # "advance past the pattern character" lands at the end.
                    pi -= 1
                    plen += 1
                    break
                elif p[pi] == 0x5D:  # ']'
                    break
                elif plen >= 3 and p[pi + 1] == 0x2D:  # 'a-z'
                    start, end = p[pi], p[pi + 2]
                    if start > end:
                        start, end = end, start
                    pi += 2
                    plen -= 2
                    if start <= s[si] <= end:
                        matched = True
                elif p[pi] == s[si]:
                    matched = True
                pi += 1
                plen -= 1
            if negate:
                matched = not matched
            if not matched:
                return False
            si += 1
            slen -= 1
        else:
            if c == 0x5C and plen >= 2:  # backslash: the next character is literal
                pi += 1
                plen -= 1
            if p[pi] != s[si]:
                return False
            si += 1
            slen -= 1
        pi += 1
        plen -= 1
        if slen == 0:
            while plen and p[pi] == 0x2A:
                pi += 1
                plen -= 1
            break
    return plen == 0 and slen == 0


# ---------------------------------------------------------------------------- the server


@dataclass(frozen=True, slots=True)
class Delivery:
    """One Pub/Sub message a connection wrote; ``end`` is its end offset in the output."""

    kind: bytes  # b"message", b"pmessage" or b"smessage"
    channel: bytes
    pattern: bytes | None
    data: bytes
    end: int


class FakeRedis:
    """The server: users, ACL denials and the open connections.

    ``password`` is the default user's password (``requirepass``). ``users`` maps more
    user names to a password, or to ``(password, channel_patterns)`` for a user limited
    to those channels (ACL ``resetchannels &pattern...``: a channel is allowed if a
    pattern glob-matches it; PSUBSCRIBE needs the pattern itself to be listed).
    Without a password the default user is ``nopass``: any password is accepted for
    it in the two-argument forms, and a one-argument ``AUTH`` is an error, as in Redis.
    """

    def __init__(
        self,
        password: str | None = None,
        users: dict[str, str | tuple[str, Iterable[str | bytes]]] | None = None,
    ) -> None:
        self.users: dict[str, str | None] = {}
        self._channel_rules: dict[str, list[bytes]] = {}
        for user, spec in (users or {}).items():
            if isinstance(spec, tuple):
                secret, patterns = spec
                self.users[user] = secret
                self._channel_rules[user] = [
                    p.encode() if isinstance(p, str) else bytes(p) for p in patterns
                ]
            else:
                self.users[user] = spec
        if password is not None:
            self.users["default"] = password
        self.users.setdefault("default", None)
        self.connections: list[FakeConnection] = []
        self._denied: dict[str | None, set[bytes]] = {}
        self._ids = itertools.count(1)

    # -- ACL

    def deny(self, user: str | None, channel: bytes) -> None:
        """Refuse ``channel`` (a channel, shard channel or pattern, matched literally) to
        ``user``, or to every user when ``user`` is None."""
        self._denied.setdefault(user, set()).add(bytes(channel))

    def allow(self, user: str | None, channel: bytes) -> None:
        """Undo :meth:`deny`."""
        self._denied.get(user, set()).discard(bytes(channel))

    def is_denied(self, user: str | None, name: bytes, *, pattern: bool = False) -> bool:
        if name in self._denied.get(None, ()) or (
            user is not None and name in self._denied.get(user, ())
        ):
            return True
        rules = self._channel_rules.get(user) if user is not None else None
        if rules is None:
            return False
        if pattern:
            return name not in rules
        return not any(glob_match(rule, name) for rule in rules)

    def auth_required(self) -> bool:
        return self.users.get("default") is not None

    def check_credentials(self, user: str, password: str) -> bool:
        if user not in self.users:
            return False
        expected = self.users[user]
        return expected is None or expected == password

    # -- connections

    def connect(self) -> FakeConnection:
        conn = FakeConnection(self, next(self._ids))
        self.connections.append(conn)
        return conn

    def kill_pubsub_clients(self) -> int:
        """CLIENT KILL TYPE PUBSUB: close every connection with a subscription."""
        victims = [conn for conn in self.connections if conn.in_subscribed_mode()]
        for conn in victims:
            conn.close()
        return len(victims)

    def _forget(self, conn: FakeConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)

    # -- publishing (server side: no ACL check, as if another client published)

    def publish(self, channel: bytes, data: bytes) -> int:
        """Deliver ``message`` and ``pmessage`` frames; returns the number of receivers."""
        receivers = 0
        for conn in list(self.connections):
            if channel in conn.channels:
                conn._deliver(Delivery(b"message", channel, None, data, 0))
                receivers += 1
        for conn in list(self.connections):
            for pattern in list(conn.patterns):
                if glob_match(pattern, channel):
                    conn._deliver(Delivery(b"pmessage", channel, pattern, data, 0))
                    receivers += 1
        return receivers

    def spublish(self, channel: bytes, data: bytes) -> int:
        receivers = 0
        for conn in list(self.connections):
            if channel in conn.shard_channels:
                conn._deliver(Delivery(b"smessage", channel, None, data, 0))
                receivers += 1
        return receivers

    # -- introspection (distinct names over the open connections)

    def numsub(self, channel: bytes) -> int:
        return sum(channel in conn.channels for conn in self.connections)

    def shardnumsub(self, channel: bytes) -> int:
        return sum(channel in conn.shard_channels for conn in self.connections)

    def numpat(self) -> int:
        return len(self.patterns())

    def channels(self) -> set[bytes]:
        return {name for conn in self.connections for name in conn.channels}

    def patterns(self) -> set[bytes]:
        return {name for conn in self.connections for name in conn.patterns}

    def shard_channels(self) -> set[bytes]:
        return {name for conn in self.connections for name in conn.shard_channels}


_SUBSCRIBED_MODE_COMMANDS = frozenset(
    {
        b"subscribe",
        b"unsubscribe",
        b"psubscribe",
        b"punsubscribe",
        b"ssubscribe",
        b"sunsubscribe",
        b"ping",
        b"quit",
        b"reset",
    }
)

# name -> (arity as in the Redis command table: >0 exact, <0 at least -arity)
_ARITY = {
    b"hello": -1,
    b"auth": -2,
    b"select": 2,
    b"client": -2,
    b"ping": -1,
    b"echo": 2,
    b"quit": -1,
    b"reset": 1,
    b"publish": 3,
    b"spublish": 3,
    b"subscribe": -2,
    b"unsubscribe": -1,
    b"psubscribe": -2,
    b"punsubscribe": -1,
    b"ssubscribe": -2,
    b"sunsubscribe": -1,
}

# Commands a client may send before it has authenticated.
_NO_AUTH_COMMANDS = frozenset({b"hello", b"auth", b"quit", b"reset"})


class FakeConnection:
    """One client connection: ``feed`` client bytes in, ``take`` server bytes out."""

    def __init__(self, server: FakeRedis, client_id: int) -> None:
        self.server = server
        self.id = client_id
        self.protocol = 2
        self.user: str | None = None if server.auth_required() else "default"
        self.name: bytes | None = None
        self.db = 0
        self.channels: dict[bytes, None] = {}
        self.patterns: dict[bytes, None] = {}
        self.shard_channels: dict[bytes, None] = {}
        self.closed = False
        self._closing = False  # QUIT: close once the reply is queued
        self._reader = hiredis.Reader()
        self._out = bytearray()
        #: Bytes written to the output stream so far, and taken from it so far.
        self.written = 0
        self.taken = 0
        self.commands: list[list[bytes]] = []
        self.deliveries: list[Delivery] = []
        self.publish_replies: list[int | str] = []
        self.redundant_subscribes = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<FakeConnection #{self.id} {state} resp{self.protocol}>"

    # -- the client side of the socket

    def feed(self, data: bytes) -> None:
        """Bytes from the client. Complete commands are executed at once; a partial
        command waits for the rest."""
        if self.closed:
            raise BrokenPipeError("the fake connection is closed")
        self._reader.feed(data)
        while not self.closed:
            try:
                command = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._reply(RespError(f"ERR Protocol error: {exc}"))
                self.close()
                return
            if command is False:
                return
            if (
                not isinstance(command, list)
                or not command
                or not all(isinstance(arg, bytes) for arg in command)
            ):
                self._reply(RespError("ERR Protocol error: expected an array of bulk strings"))
                self.close()
                return
            self.commands.append(command)
            self._execute(command)
            if self._closing:
                self.close()

    def take(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes of the queued output (all of it when ``n`` is None)."""
        if n is None or n >= len(self._out):
            chunk = bytes(self._out)
            self._out.clear()
        else:
            chunk = bytes(self._out[:n])
            del self._out[:n]
        self.taken += len(chunk)
        return chunk

    def pending(self) -> int:
        return len(self._out)

    def close(self) -> None:
        """Close the connection: the server forgets its subscriptions at once. Output
        already queued can still be taken (it was in flight); nothing more is queued."""
        if self.closed:
            return
        self.closed = True
        self.channels.clear()
        self.patterns.clear()
        self.shard_channels.clear()
        self.server._forget(self)

    # -- output

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        self._out += data
        self.written += len(data)

    def _reply(self, value: Any) -> None:
        self._write(encode(value, self.protocol))

    def _deliver(self, delivery: Delivery) -> None:
        if delivery.kind == b"pmessage":
            frame = Push([b"pmessage", delivery.pattern, delivery.channel, delivery.data])
        else:
            frame = Push([delivery.kind, delivery.channel, delivery.data])
        self._reply(frame)
        self.deliveries.append(
            Delivery(delivery.kind, delivery.channel, delivery.pattern, delivery.data, self.written)
        )

    # -- state

    def subscription_count(self) -> int:
        return len(self.channels) + len(self.patterns)

    def in_subscribed_mode(self) -> bool:
        return bool(self.channels or self.patterns or self.shard_channels)

    # -- the server's own initiative

    def server_unsubscribe(self, kind: str, name: bytes) -> None:
        """Drop ``name`` of its own accord and tell the client, as Redis Cluster does with a
        slot's shard channels after the slot migrates (``kind`` "shard": an ``sunsubscribe``
        push); "channel" and "pattern" send ``unsubscribe`` and ``punsubscribe``, which no
        Redis sends unasked, to see that a client survives them. Nothing if not subscribed."""
        verb, table = {
            "channel": (b"unsubscribe", self.channels),
            "pattern": (b"punsubscribe", self.patterns),
            "shard": (b"sunsubscribe", self.shard_channels),
        }[kind]
        if self.closed or name not in table:
            return
        del table[name]
        count = len(table) if kind == "shard" else self.subscription_count()
        self._reply(Push([verb, name, count]))

    # -- commands

    def _execute(self, command: list[bytes]) -> None:
        name = command[0].lower()
        error = self._check(name, command)
        if error is not None:
            if name in (b"publish", b"spublish"):
                self.publish_replies.append(str(error))
            self._reply(error)
            return
        getattr(self, "_cmd_" + name.decode())(command[1:])

    def _check(self, name: bytes, command: list[bytes]) -> RespError | None:
        """The error Redis answers before running the command, if any (in its order:
        unknown command, arity, authentication, ACL, RESP2 subscribed-mode context)."""
        args = command[1:]
        arity = _ARITY.get(name)
        if arity is None:
            shown = "".join(f"'{a.decode(errors='replace')}' " for a in args[:3])
            return RespError(
                f"ERR unknown command '{command[0].decode(errors='replace')}', "
                f"with args beginning with: {shown}"
            )
        if (arity > 0 and len(command) != arity) or (arity < 0 and len(command) < -arity):
            return RespError(f"ERR wrong number of arguments for '{name.decode()}' command")
        if self.user is None and name not in _NO_AUTH_COMMANDS:
            return RespError(NOAUTH)
        if name in (b"subscribe", b"psubscribe", b"ssubscribe", b"publish", b"spublish"):
            names = args[:1] if name in (b"publish", b"spublish") else args
            pattern = name == b"psubscribe"
            if any(self.server.is_denied(self.user, n, pattern=pattern) for n in names):
                return RespError(NOPERM_CHANNELS)
        subscribed = self.protocol == 2 and self.in_subscribed_mode()
        if subscribed and name not in _SUBSCRIBED_MODE_COMMANDS:
            shown = name.decode()
            if name == b"client" and args:
                shown += "|" + args[0].lower().decode(errors="replace")
            return RespError(
                f"ERR Can't execute '{shown}': only (P|S)SUBSCRIBE / "
                "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            )
        return None

    def _cmd_hello(self, args: list[bytes]) -> None:
        protocol = self.protocol
        if args:
            try:
                protocol = int(args[0])
            except ValueError:
                self._reply(RespError("ERR Protocol version is not an integer or out of range"))
                return
            if protocol not in (2, 3):
                self._reply(RespError("NOPROTO unsupported protocol version"))
                return
        rest = args[1:]
        user = self.user
        name = self.name
        i = 0
        while i < len(rest):
            option = rest[i].lower()
            if option == b"auth" and i + 2 < len(rest):
                username = rest[i + 1].decode(errors="replace")
                password = rest[i + 2].decode(errors="replace")
                if not self.server.check_credentials(username, password):
                    self._reply(RespError(WRONGPASS))
                    return
                user = username
                i += 3
            elif option == b"setname" and i + 1 < len(rest):
                name = rest[i + 1]
                i += 2
            else:
                option_text = rest[i].decode(errors="replace")
                self._reply(RespError(f"ERR Syntax error in HELLO option '{option_text}'"))
                return
        if user is None:
            self._reply(RespError(NOAUTH_HELLO))
            return
        self.user = user
        self.name = name
        self.protocol = protocol
        self._reply(
            Map(
                {
                    b"server": b"redis",
                    b"version": SERVER_VERSION,
                    b"proto": protocol,
                    b"id": self.id,
                    b"mode": b"standalone",
                    b"role": b"master",
                    b"modules": [],
                }
            )
        )

    def _cmd_auth(self, args: list[bytes]) -> None:
        if len(args) > 2:
            self._reply(RespError("ERR syntax error"))
            return
        if len(args) == 1:
            if self.server.users.get("default") is None:
                self._reply(RespError(NO_PASSWORD_CONFIGURED))
                return
            username, password = "default", args[0].decode(errors="replace")
        else:
            username = args[0].decode(errors="replace")
            password = args[1].decode(errors="replace")
        if not self.server.check_credentials(username, password):
            self._reply(RespError(WRONGPASS))
            return
        self.user = username
        self._reply(Simple(b"OK"))

    def _cmd_select(self, args: list[bytes]) -> None:
        try:
            db = int(args[0])
        except ValueError:
            self._reply(RespError("ERR value is not an integer or out of range"))
            return
        if not 0 <= db < 16:
            self._reply(RespError("ERR DB index is out of range"))
            return
        self.db = db
        self._reply(Simple(b"OK"))

    def _cmd_client(self, args: list[bytes]) -> None:
        sub = args[0].lower()
        if sub == b"setname" and len(args) == 2:
            if any(c <= 0x20 or c >= 0x7F for c in args[1]):
                self._reply(
                    RespError(
                        "ERR Client names cannot contain spaces, newlines or special characters."
                    )
                )
                return
            self.name = args[1] or None
            self._reply(Simple(b"OK"))
        elif sub == b"getname" and len(args) == 1:
            self._reply(self.name)
        elif sub == b"id" and len(args) == 1:
            self._reply(self.id)
        else:
            self._reply(
                RespError(
                    f"ERR unknown subcommand or wrong number of arguments for "
                    f"'{args[0].decode(errors='replace')}'. Try CLIENT HELP."
                )
            )

    def _cmd_ping(self, args: list[bytes]) -> None:
        if len(args) > 1:
            self._reply(RespError("ERR wrong number of arguments for 'ping' command"))
            return
        if self.protocol == 2 and self.in_subscribed_mode():
            self._reply([b"pong", args[0] if args else b""])
        elif args:
            self._reply(args[0])
        else:
            self._reply(Simple(b"PONG"))

    def _cmd_echo(self, args: list[bytes]) -> None:
        self._reply(args[0])

    def _cmd_quit(self, args: list[bytes]) -> None:
        self._reply(Simple(b"OK"))
        self._closing = True

    def _cmd_reset(self, args: list[bytes]) -> None:
        self.channels.clear()
        self.patterns.clear()
        self.shard_channels.clear()
        self.protocol = 2
        self.db = 0
        self.name = None
        self.user = None if self.server.auth_required() else "default"
        self._reply(Simple(b"RESET"))

    def _cmd_publish(self, args: list[bytes]) -> None:
        receivers = self.server.publish(args[0], args[1])
        self.publish_replies.append(receivers)
        self._reply(receivers)

    def _cmd_spublish(self, args: list[bytes]) -> None:
        receivers = self.server.spublish(args[0], args[1])
        self.publish_replies.append(receivers)
        self._reply(receivers)

    # The subscribe family: one confirmation per name, with this connection's count
    # of subscriptions (channels + patterns; shard channels counted apart, as Redis 7).

    def _subscribe(self, kind: bytes, names: Iterable[bytes], table: dict[bytes, None]) -> None:
        for name in names:
            if name in table:
                self.redundant_subscribes += 1
            table[name] = None
            count = len(table) if kind == b"ssubscribe" else self.subscription_count()
            self._reply(Push([kind, name, count]))

    def _unsubscribe(self, kind: bytes, names: list[bytes], table: dict[bytes, None]) -> None:
        if not names:
            names = list(table)
            if not names:
                count = len(table) if kind == b"sunsubscribe" else self.subscription_count()
                self._reply(Push([kind, None, count]))
                return
        for name in names:
            table.pop(name, None)
            count = len(table) if kind == b"sunsubscribe" else self.subscription_count()
            self._reply(Push([kind, name, count]))

    def _cmd_subscribe(self, args: list[bytes]) -> None:
        self._subscribe(b"subscribe", args, self.channels)

    def _cmd_unsubscribe(self, args: list[bytes]) -> None:
        self._unsubscribe(b"unsubscribe", args, self.channels)

    def _cmd_psubscribe(self, args: list[bytes]) -> None:
        self._subscribe(b"psubscribe", args, self.patterns)

    def _cmd_punsubscribe(self, args: list[bytes]) -> None:
        self._unsubscribe(b"punsubscribe", args, self.patterns)

    def _cmd_ssubscribe(self, args: list[bytes]) -> None:
        self._subscribe(b"ssubscribe", args, self.shard_channels)

    def _cmd_sunsubscribe(self, args: list[bytes]) -> None:
        self._unsubscribe(b"sunsubscribe", args, self.shard_channels)
