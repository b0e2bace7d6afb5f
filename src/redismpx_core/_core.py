"""The multiplexer state machine: RESP bytes and the time in; bytes, events and deadlines out.

A driver owns one :class:`MultiplexerCore` for the life of its multiplexer (it
outlives every connection) and runs a short loop around it:

* after connecting: ``events = core.connection_made(now)``;
* for every chunk read: ``events = core.receive_data(chunk, now)``;
* whenever ``core.data_to_send()`` returns bytes: write them;
* at ``core.next_deadline()``: ``events = core.handle_timeout(now)``;
* when an input raises a :class:`RedisMPXError` (the connection is unusable),
  or the socket fails: close it, ``events = core.connection_lost(error)``, wait
  ``core.next_reconnect_delay()`` seconds and connect again.

``connection_lost`` returns first the events an input produced before it raised
(messages already read are delivered before the disconnect notices).

User commands (``add``, ``remove``, ``close``, ``new_promise``, ``publish``) change
state and queue bytes; nothing is written until the driver asks. Per-name states
and their transitions are in :mod:`._state`.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, cast

from . import _state
from ._backoff import Backoff
from ._errors import (
    AuthenticationError,
    ConnectionLost,
    HealthCheckTimeout,
    InactiveSubscription,
    PromiseInterrupted,
    ProtocolError,
    RedisMPXError,
    ServerError,
    SubscriptionClosed,
)
from ._events import (
    CommandCompleted,
    CommandFailed,
    ConnectionEstablished,
    Event,
    MessagesReceived,
    NameRejected,
    NamesActivated,
    PromiseExpired,
    PromiseFailed,
    PromiseFulfilled,
    PublishCompleted,
    PublishFailed,
    SubscriptionDisconnected,
)
from ._handles import (
    PromiseHandle,
    SubscriptionHandle,
    SubscriptionKind,
    new_promise_subscription,
    pattern_to_add,
)
from ._names import coerce_name, coerce_names
from ._resp import NOT_ENOUGH_DATA, FrameReader, ParseError, PushFrame, ReplyError, pack_command
from ._settings import DEFAULT_MAX_FRAME_SIZE
from ._slots import key_slot
from ._state import ACTIVE, IDLE, Command, NameKind, NameState, Reply
from ._statistics import Statistics

__all__ = ("REDIRECT_CODES", "ConnectionState", "MultiplexerCore")


class ConnectionState(enum.Enum):
    DISCONNECTED = "disconnected"
    HANDSHAKING = "handshaking"
    READY = "ready"
    BROKEN = "broken"  # an input raised; waiting for connection_lost()
    CLOSED = "closed"


#: Names per SUBSCRIBE-family command: large enough that a resubscription of
#: thousands of names is a handful of commands, small enough that one refused
#: batch (retried name by name) stays cheap.
MAX_NAMES_PER_COMMAND: Final = 1024

#: receive_data feeds hiredis at most this many bytes at a time (see there).
FEED_SLICE: Final = 8 * 1024

_COMMAND_NAMES: Final = {
    (NameKind.CHANNEL, Command.SUBSCRIBE): b"SUBSCRIBE",
    (NameKind.CHANNEL, Command.UNSUBSCRIBE): b"UNSUBSCRIBE",
    (NameKind.PATTERN, Command.SUBSCRIBE): b"PSUBSCRIBE",
    (NameKind.PATTERN, Command.UNSUBSCRIBE): b"PUNSUBSCRIBE",
    (NameKind.SHARD, Command.SUBSCRIBE): b"SSUBSCRIBE",
    (NameKind.SHARD, Command.UNSUBSCRIBE): b"SUNSUBSCRIBE",
}

_SUBSCRIBED: Final = (Command.SUBSCRIBE, Reply.SUBSCRIBE_CONFIRMED)
_UNSUBSCRIBED: Final = (Command.UNSUBSCRIBE, Reply.UNSUBSCRIBE_CONFIRMED)

#: First element of a confirmation frame -> (name space, command confirmed, reply).
_CONFIRMATION_KINDS: Final = {
    b"subscribe": (NameKind.CHANNEL, *_SUBSCRIBED),
    b"unsubscribe": (NameKind.CHANNEL, *_UNSUBSCRIBED),
    b"psubscribe": (NameKind.PATTERN, *_SUBSCRIBED),
    b"punsubscribe": (NameKind.PATTERN, *_UNSUBSCRIBED),
    b"ssubscribe": (NameKind.SHARD, *_SUBSCRIBED),
    b"sunsubscribe": (NameKind.SHARD, *_UNSUBSCRIBED),
}

#: Error codes that say the connection, not a name, is the problem: reconnect.
_CONNECTION_ERROR_CODES: Final = frozenset(
    {
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "NOAUTH",
        "WRONGPASS",
        "MISCONF",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "MOVED",
        "ASK",
        "READONLY",
    }
)
_AUTH_ERROR_CODES: Final = frozenset({"WRONGPASS", "NOAUTH"})
#: Error codes by which a Redis Cluster node says "not here (now)" to a shard name.
#: A core in cluster mode hands such names back (NameRejected) for re-routing; a
#: stand-alone core treats them as connection errors.
REDIRECT_CODES: Final = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})

#: States in which a cluster node's own sunsubscribe may arrive before the reply to ours.
_SERVER_MAY_CROSS: Final = frozenset({NameState.UNSUBSCRIBING, NameState.RESUBSCRIBING})

_IF_WANTED: Final = _state.FLUSH_ACTIONS[True]
_IF_UNWANTED: Final = _state.FLUSH_ACTIONS[False]

# Kinds of replies the connection waits for, besides subscription confirmations.
_HANDSHAKE: Final = "handshake"
_PING: Final = "ping"
_FENCE: Final = "fence"
_PUBLISH: Final = "publish"
#: Sentinel mode's last handshake reply: the node must say it is the master.
_ROLE: Final = "role"
_ROLE_COMMAND: Final = pack_command(b"ROLE")
_REQUEST: Final = "request"


class _Expected:
    """One command whose replies are still due, in wire order."""

    __slots__ = ("command", "index", "kind", "label", "records", "token")

    def __init__(
        self,
        label: str,
        *,
        kind: NameKind | None = None,
        command: Command | None = None,
        records: list[_NameRecord] | None = None,
        token: int = 0,
    ) -> None:
        self.label = label
        self.kind = kind
        self.command = command
        # The records of the names sent, in order: a record stays the current one for
        # its name while a command for it is in flight (only an IDLE record is dropped).
        self.records = records or []
        self.index = 0
        self.token = token


class _NameRecord:
    """What the core knows of one name in one name space."""

    __slots__ = ("holders", "kind", "name", "promise_holders", "snapshot", "solo", "state")

    def __init__(self, kind: NameKind, name: bytes, holder: SubscriptionHandle) -> None:
        self.kind = kind
        self.name = name
        self.state = IDLE
        # The subscriptions holding the name: None, the only one, or a dict of two or
        # more in the order they came. Most names have one holder, and a dict for it
        # would be the largest part of the record.
        self.holders: SubscriptionHandle | dict[SubscriptionHandle, None] | None = holder
        # Owners of the non-promise holders, rebuilt lazily after a change.
        self.snapshot: tuple[Any, ...] | None = None
        self.promise_holders: tuple[SubscriptionHandle, ...] = ()
        # Send alone: this name was in a batch that Redis refused as a whole.
        self.solo = False

    def held_by(self) -> tuple[SubscriptionHandle, ...] | dict[SubscriptionHandle, None]:
        """The holders, in the order they came (iterate; do not change)."""
        holders = self.holders
        if holders is None:
            return ()
        if isinstance(holders, dict):
            return holders
        return (holders,)

    def refresh(self) -> tuple[Any, ...]:
        holders = self.held_by()
        self.promise_holders = tuple(s for s in holders if s.kind is SubscriptionKind.PROMISE)
        if self.promise_holders:
            snapshot = tuple(s.owner for s in holders if s.kind is not SubscriptionKind.PROMISE)
        else:
            snapshot = tuple(s.owner for s in holders)
        self.snapshot = snapshot
        return snapshot


_ONLY_BYTES: Final = {bytes}


def _channel_names(names: Iterable[object]) -> Iterable[bytes]:
    """``coerce_names(names, "channel")``, without a call per name when all are bytes.

    Every name is checked before any is used, as there; duplicates may be left in
    (``_add`` and ``_remove`` skip a name already done).
    """
    if (
        isinstance(names, tuple | list)
        and set(map(type, names)) == _ONLY_BYTES
        and b"" not in names
    ):
        return cast("tuple[bytes, ...] | list[bytes]", names)
    return coerce_names(names, "channel")


def _activated(events: list[Event], subscriber: Any, name: bytes) -> None:
    """Append the activation of ``name``, extending the last event if it is the same
    subscriber's activation (so that activations stay in order with everything else)."""
    if events:
        last = events[-1]
        if last.__class__ is NamesActivated and last.subscriber is subscriber:
            last.names.append(name)
            return
    events.append(NamesActivated(subscriber, [name]))


def _check_seconds(label: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{label} must be a number of seconds, not {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{label} must be >= 0, got {value!r}")
    return float(value)


def _check_role(reply: Any) -> None:
    """Sentinel mode: a sentinel's answer may lag a failover, so the node it named must
    say "master" itself; anything else drops the connection, and the next attempt asks
    the sentinels again."""
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes):
        raise ProtocolError("ROLE answered with something other than a role")
    if reply[0] != b"master":
        role = reply[0][:16].decode("ascii", "replace")
        raise ConnectionLost(
            f"the node the sentinels named is a {role!r}, not the master (a failover?)"
        )


def _server_error(reply: Any, password: str | None, *, handshake: bool = False) -> ServerError:
    """The typed error for an error reply; secrets are scrubbed from its text."""
    message = str(reply)
    if password:
        # Redis does not echo passwords, but a proxy or a future version might.
        message = message.replace(password, "***")
    code = message.split(" ", 1)[0] if message else "ERR"
    # Old servers answer a bad AUTH with "ERR invalid password", newer ones with
    # "ERR AUTH <password> called without any password configured".
    if code in _AUTH_ERROR_CODES or (handshake and ("AUTH" in message or "password" in message)):
        return AuthenticationError(message, code)
    return ServerError(message, code)


class MultiplexerCore:
    """Sans-I/O Redis Pub/Sub multiplexer. See the module docstring for the driver loop."""

    def __init__(
        self,
        *,
        random: Callable[[], float],
        protocol: int = 2,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        client_name: str | None = None,
        health_check_interval: float | None = 30.0,
        health_check_timeout: float = 10.0,
        connect_timeout: float | None = 10.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
        cluster: bool = False,
        require_master: bool = False,
    ) -> None:
        if protocol not in (2, 3) or isinstance(protocol, bool):
            raise ValueError(f"protocol must be 2 or 3, got {protocol!r}")
        if isinstance(db, bool) or not isinstance(db, int) or db < 0:
            raise ValueError(f"db must be a non-negative int, got {db!r}")
        if isinstance(max_frame_size, bool) or not isinstance(max_frame_size, int):
            raise TypeError("max_frame_size must be an int")
        if max_frame_size < 1024:
            raise ValueError(f"max_frame_size must be >= 1024, got {max_frame_size}")
        if not callable(random):
            raise TypeError("random must be a callable returning a float in [0, 1)")
        self.protocol = protocol
        self.username = username
        self._password = password
        self.db = db
        self.client_name = client_name
        interval = _check_seconds("health_check_interval", health_check_interval, allow_none=True)
        self.health_check_interval = interval or None
        timeout = _check_seconds("health_check_timeout", health_check_timeout)
        if not timeout:
            raise ValueError("health_check_timeout must be > 0")
        self.health_check_timeout: float = timeout
        self.connect_timeout = (
            _check_seconds("connect_timeout", connect_timeout, allow_none=True) or None
        )
        self.max_frame_size = max_frame_size
        self.backoff = Backoff(base=backoff_base, cap=backoff_cap, random=random)
        #: Sentinel mode: the handshake ends with ROLE, and only a master will do.
        self.require_master = bool(require_master)
        #: One node of a Redis Cluster: shard names refused with a redirect are handed
        #: back (NameRejected) instead of breaking the connection.
        self.cluster = cluster

        self.state = ConnectionState.DISCONNECTED
        self._records: dict[NameKind, dict[bytes, _NameRecord]] = {k: {} for k in NameKind}
        self._channels = self._records[NameKind.CHANNEL]
        self._patterns = self._records[NameKind.PATTERN]
        self._shards = self._records[NameKind.SHARD]
        self._subscriptions: dict[SubscriptionHandle, None] = {}
        self._dirty: dict[_NameRecord, None] = {}
        self._out = bytearray()
        self._expected: deque[_Expected] = deque()
        self._handshake_pending = 0
        self._reader: FrameReader | None = None
        self._frame_type: type = PushFrame if protocol == 3 else list
        self._held: list[Event] = []
        # Timers (absolute times in the driver's clock).
        self._last_received = 0.0
        self._ping_sent_at: float | None = None
        self._handshake_deadline: float | None = None
        self._stable_at: float | None = None
        self._promise_heap: list[tuple[float, int, PromiseHandle]] = []
        #: Heap entries of promises settled before their deadline (see _settled_early).
        self._dead_timers = 0
        self._promise_seq = 0
        self._publish_seq = 0
        # Counters for statistics().
        self.connections_made = 0
        self.connections_lost = 0
        self.messages_received = 0

    def __repr__(self) -> str:
        return (
            f"<MultiplexerCore {self.state.value} protocol={self.protocol} "
            f"subscriptions={len(self._subscriptions)}>"
        )

    # ------------------------------------------------------------------ subscriptions

    def open_subscription(self, kind: SubscriptionKind, owner: Any) -> SubscriptionHandle:
        """A new, empty channel, pattern or shard subscription."""
        self._check_open()
        if kind is SubscriptionKind.PROMISE:
            raise ValueError("use open_promise_subscription() for promise subscriptions")
        sub = SubscriptionHandle(kind, owner)
        self._subscriptions[sub] = None
        return sub

    def open_pattern_subscription(
        self, pattern: object, owner: Any
    ) -> tuple[SubscriptionHandle, list[Event]]:
        """A pattern subscription holding ``pattern`` from the start."""
        name = coerce_name(pattern, "pattern")
        sub = self.open_subscription(SubscriptionKind.PATTERN, owner)
        return sub, self._add(sub, [name])

    def add_pattern(self, sub: SubscriptionHandle, pattern: object) -> list[Event]:
        """Give an empty pattern subscription its one pattern."""
        self._check_sub(sub)
        return self._add(sub, [pattern_to_add(sub, pattern)])

    def open_promise_subscription(
        self, prefix: object, owner: Any
    ) -> tuple[SubscriptionHandle, list[Event]]:
        """A promise subscription: one PSUBSCRIBE on ``prefix`` (escaped) followed by ``*``."""
        sub = new_promise_subscription(prefix, owner)
        self._check_open()
        self._subscriptions[sub] = None
        return sub, self._add(sub, [sub.pattern])

    def add(self, sub: SubscriptionHandle, names: Iterable[object]) -> list[Event]:
        """Add names to a channel or shard subscription.

        Returns the activations of names that were already active.
        """
        self._check_sub(sub)
        if sub.kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.SHARD):
            raise TypeError(f"a {sub.kind.value} subscription has a fixed name")
        return self._add(sub, _channel_names(names))

    def remove(self, sub: SubscriptionHandle, names: Iterable[object]) -> None:
        """Remove names from a channel or shard subscription (names it lacks are ignored)."""
        self._check_sub(sub)
        if sub.kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.SHARD):
            raise TypeError(f"a {sub.kind.value} subscription has a fixed name")
        self._remove(sub, _channel_names(names))

    def clear(self, sub: SubscriptionHandle) -> None:
        """Remove every name of a channel or shard subscription."""
        self._check_sub(sub)
        if sub.kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.SHARD):
            raise TypeError(f"a {sub.kind.value} subscription has a fixed name: close it")
        self._remove(sub, list(sub.names))

    def close_subscription(self, sub: SubscriptionHandle) -> list[Event]:
        """Close a subscription: drop its names, fail its promises. Closing twice is fine."""
        if sub.closed:
            return []
        self._remove(sub, list(sub.names))
        sub.closed = True
        self._subscriptions.pop(sub, None)
        events = self._fail_promises(sub, SubscriptionClosed("the subscription was closed"))
        sub.release_owner()  # the owner keeps its handle: no cycle outlives the close
        return events

    def subscription_owners(self) -> list[Any]:
        """The owners of every open subscription (for a driver that must wake them)."""
        return [sub.owner for sub in self._subscriptions]

    def is_active(self, sub: SubscriptionHandle, name: bytes) -> bool:
        """True if ``sub`` holds ``name`` and Redis has confirmed it on this connection."""
        if name not in sub.names:
            return False
        record = self._records[sub.kind.name_kind].get(name)
        return record is not None and record.state is ACTIVE

    def _add(self, sub: SubscriptionHandle, names: Iterable[bytes]) -> list[Event]:
        kind = sub.kind.name_kind
        records = self._records[kind]
        held = sub.names
        dirty = self._dirty
        events: list[Event] = []
        for name in names:
            if name in held:
                continue
            held[name] = None
            record = records.get(name)
            if record is None:
                record = records[name] = _NameRecord(kind, name, sub)
                dirty[record] = None
                continue
            holders = record.holders
            if holders is None:
                record.holders = sub
                dirty[record] = None
            elif isinstance(holders, dict):
                holders[sub] = None
            else:
                record.holders = {holders: None, sub: None}
            record.snapshot = None
            if record.state is ACTIVE:
                _activated(events, sub.owner, name)
        return events

    def _remove(self, sub: SubscriptionHandle, names: Iterable[bytes]) -> None:
        records = self._records[sub.kind.name_kind]
        held = sub.names
        dirty = self._dirty
        for name in names:
            if name not in held:
                continue
            del held[name]
            record = records[name]
            holders = record.holders
            if isinstance(holders, dict):
                del holders[sub]
                if len(holders) == 1:
                    record.holders = next(iter(holders))
            else:  # sub was the only holder
                record.holders = None
                dirty[record] = None
            record.snapshot = None

    def _check_open(self) -> None:
        if self.state is ConnectionState.CLOSED:
            raise SubscriptionClosed("the multiplexer is closed")

    def _check_sub(self, sub: SubscriptionHandle) -> None:
        if sub.closed:
            raise SubscriptionClosed("the subscription is closed")

    # ------------------------------------------------------------------ promises

    def new_promise(
        self, sub: SubscriptionHandle, suffix: object, timeout: float, now: float, owner: Any
    ) -> PromiseHandle:
        """A promise of the next message on ``prefix + suffix``, expiring ``timeout`` s from now.

        Raises :class:`InactiveSubscription` unless the subscription's pattern is active.
        """
        if sub.kind is not SubscriptionKind.PROMISE:
            raise TypeError("new_promise() needs a promise subscription")
        self._check_sub(sub)
        if isinstance(suffix, str):
            suffix_bytes = suffix.encode("utf-8")
        elif isinstance(suffix, bytes):
            suffix_bytes = bytes(suffix)
        else:
            raise TypeError(f"a suffix must be str or bytes, not {type(suffix).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if not self.is_active(sub, sub.pattern):
            raise InactiveSubscription("the promise subscription is not active")
        channel = sub.prefix + suffix_bytes
        promise = PromiseHandle(sub, channel, now + timeout, owner)
        if sub.promises is None:
            sub.promises = {}
        sub.promises.setdefault(channel, []).append(promise)
        self._promise_seq += 1
        heapq.heappush(self._promise_heap, (promise.deadline, self._promise_seq, promise))
        return promise

    def _fulfil(
        self, promises: dict[bytes, list[PromiseHandle]], channel: bytes, data: bytes, events: list[Event]
    ) -> None:
        for promise in promises.pop(channel, ()):
            events.append(PromiseFulfilled(promise.owner, data))
            self._settled_early(promise)

    def _fail_promises(self, sub: SubscriptionHandle, error: RedisMPXError) -> list[Event]:
        events: list[Event] = []
        if sub.promises:
            for promises in sub.promises.values():
                for promise in promises:
                    events.append(PromiseFailed(promise.owner, error))
                    self._settled_early(promise)
            sub.promises.clear()
        return events

    def _settled_early(self, promise: PromiseHandle) -> None:
        """A promise settled before its deadline: its timer entry is now dead weight.

        The entry stays in the heap until it reaches the top, so it lets go of the
        owner (and whatever the owner holds, such as the payload); and once dead
        entries are the majority the heap is rebuilt without them, so that promises
        with long timeouts cannot pin the memory of every promise settled since.
        """
        promise.settle()
        self._dead_timers += 1
        heap = self._promise_heap
        if self._dead_timers > 64 and self._dead_timers * 2 > len(heap):
            heap[:] = [entry for entry in heap if not entry[2].settled]
            heapq.heapify(heap)
            self._dead_timers = 0

    # ------------------------------------------------------------------ publishing

    def publish(self, channel: object, data: bytes, *, sharded: bool = False) -> int:
        """Queue a PUBLISH (or SPUBLISH); returns the token its reply event will carry.

        Under RESP2 Redis refuses PUBLISH on a connection with subscriptions (the
        reply is then a :class:`PublishFailed`): drivers publish through a second
        core that holds no subscriptions.
        """
        name = coerce_name(channel, "channel")
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if self.state not in (ConnectionState.HANDSHAKING, ConnectionState.READY):
            raise ConnectionLost("not connected")
        self._publish_seq += 1
        if self._dirty:
            self._flush_names()  # changes made before the publish go out before it
        self._out += pack_command(b"SPUBLISH" if sharded else b"PUBLISH", name, data)
        self._expected.append(_Expected(_PUBLISH, token=self._publish_seq))
        return self._publish_seq

    def request(self, *args: bytes) -> int:
        """Queue any other command; returns the token its reply event will carry.

        The reply comes back whole, as parsed, in :class:`CommandCompleted` (an error
        reply in :class:`CommandFailed`): for a router that needs the server's view,
        such as ``CLUSTER SHARDS``. Under RESP2 Redis refuses most commands on a
        connection with subscriptions, as for :meth:`publish`.
        """
        if not args or not all(isinstance(arg, bytes) for arg in args):
            raise TypeError("a command is one or more bytes arguments")
        if self.state not in (ConnectionState.HANDSHAKING, ConnectionState.READY):
            raise ConnectionLost("not connected")
        self._publish_seq += 1
        self._out += pack_command(*args)
        self._expected.append(_Expected(_REQUEST, token=self._publish_seq))
        return self._publish_seq

    # ------------------------------------------------------------------ lifecycle

    def connection_made(self, now: float) -> list[Event]:
        """A new connection is open: queue the handshake, then every wanted name."""
        if self.state is not ConnectionState.DISCONNECTED:
            raise RuntimeError(f"connection_made() while {self.state.value}")
        self.state = ConnectionState.HANDSHAKING
        self.connections_made += 1
        self._reader = FrameReader(self.max_frame_size)
        self._last_received = now
        self._ping_sent_at = None
        self._stable_at = None
        timeout = self.connect_timeout
        self._handshake_deadline = None if timeout is None else now + timeout
        for command in self._handshake_commands():
            self._out += command
            self._expected.append(_Expected(_ROLE if command == _ROLE_COMMAND else _HANDSHAKE))
            self._handshake_pending += 1
        for records in self._records.values():
            for record in records.values():
                if record.holders is not None:
                    self._dirty[record] = None
        return []

    def _handshake_commands(self) -> list[bytes]:
        commands: list[bytes] = []
        if self.protocol == 3:
            hello: list[bytes | str | int] = [b"HELLO", b"3"]
            if self._password is not None:
                hello += [b"AUTH", self.username or "default", self._password]
            if self.client_name:
                hello += [b"SETNAME", self.client_name]
            commands.append(pack_command(*hello))
        elif self._password is not None:
            if self.username:
                commands.append(pack_command(b"AUTH", self.username, self._password))
            else:
                commands.append(pack_command(b"AUTH", self._password))
        if self.db:
            commands.append(pack_command(b"SELECT", self.db))
        if self.client_name and self.protocol == 2:
            commands.append(pack_command(b"CLIENT", b"SETNAME", self.client_name))
        if self.require_master:
            commands.append(_ROLE_COMMAND)  # last: after AUTH, which ROLE needs
        if not commands:
            # The connection counts as up only once the server has answered something:
            # a server that accepts and never speaks (frozen, or refusing us with "max
            # number of clients") must not look connected.
            commands.append(pack_command(b"PING"))
        return commands

    def _handshake_completed(self, now: float) -> list[Event]:
        self.state = ConnectionState.READY
        self._handshake_deadline = None
        # The backoff forgets past failures only once a connection has stayed up for
        # a full cap: a server that accepts and drops at once still sees a slow rate.
        self._stable_at = now + self.backoff.cap
        for sub in self._subscriptions:
            sub.told = False
        return [ConnectionEstablished()]

    def connection_lost(self, error: RedisMPXError) -> list[Event]:
        """The connection is gone (or never came up): reset every name, tell subscribers.

        Callable in any state but CLOSED, including after a failed connection attempt.
        Returns, first, the events of the input that raised (if one did).
        """
        events, self._held = self._held, []
        if self.state is ConnectionState.CLOSED:
            return events
        if self.state is not ConnectionState.DISCONNECTED:
            self.connections_lost += 1
        self.state = ConnectionState.DISCONNECTED
        self._reader = None
        self._out.clear()
        self._handshake_pending = 0
        self._ping_sent_at = None
        self._handshake_deadline = None
        self._stable_at = None
        lost = error if isinstance(error, ServerError | ConnectionLost) else ConnectionLost(
            str(error)
        )
        for expected in self._expected:
            if expected.label is _PUBLISH:
                events.append(PublishFailed(expected.token, lost))
            elif expected.label is _REQUEST:
                events.append(CommandFailed(expected.token, lost))
        self._expected.clear()
        self._dirty.clear()
        for records in self._records.values():
            for name in [n for n, r in records.items() if r.holders is None]:
                del records[name]
            for record in records.values():
                record.state = IDLE
                record.solo = False
        interrupted = PromiseInterrupted(f"connection lost: {error}")
        for sub in self._subscriptions:
            if sub.names and not sub.told:
                sub.told = True
                events.append(SubscriptionDisconnected(sub.owner, error))
            if sub.promises:
                events += self._fail_promises(sub, interrupted)
        return events

    def close(self) -> list[Event]:
        """Close the multiplexer: every subscription closes and every promise fails.

        The driver then closes the socket; Redis drops the subscriptions with it.
        """
        if self.state is ConnectionState.CLOSED:
            return []
        events, self._held = self._held, []
        closed = SubscriptionClosed("the multiplexer was closed")
        for sub in list(self._subscriptions):
            self._remove(sub, list(sub.names))
            sub.closed = True
            events += self._fail_promises(sub, closed)
            sub.release_owner()
        for expected in self._expected:
            if expected.label is _PUBLISH:
                events.append(PublishFailed(expected.token, ConnectionLost("multiplexer closed")))
            elif expected.label is _REQUEST:
                events.append(CommandFailed(expected.token, ConnectionLost("multiplexer closed")))
        self._subscriptions.clear()
        self._expected.clear()
        self._dirty.clear()
        for records in self._records.values():
            records.clear()
        self._out.clear()
        self._promise_heap.clear()
        self._dead_timers = 0
        self._reader = None
        self.state = ConnectionState.CLOSED
        return events

    def statistics(self, *, messages_delivered: int, messages_dropped: int) -> Statistics:
        """A snapshot of the counters; the driver adds what only it counts."""
        active = {
            kind: [r.state for r in records.values()].count(ACTIVE)
            for kind, records in self._records.items()
        }
        return Statistics(
            connected=self.state is ConnectionState.READY,
            connections_made=self.connections_made,
            connections_lost=self.connections_lost,
            reconnect_attempts=self.backoff.attempts,
            subscriptions=len(self._subscriptions),
            active_channels=active[NameKind.CHANNEL],
            active_patterns=active[NameKind.PATTERN],
            active_shard_channels=active[NameKind.SHARD],
            messages_received=self.messages_received,
            messages_delivered=messages_delivered,
            messages_dropped=messages_dropped,
            promises_pending=sum(1 for _, _, p in self._promise_heap if not p.settled),
        )

    def wanted_counts(self) -> tuple[int, int, int]:
        """Names some subscription holds: (channels, patterns, shard channels).

        PromiseHandle prefixes count as patterns. Each new connection subscribes these; the
        drivers log the counts once per handshake (a pass over every name: not for a
        hot path).
        """
        records = self._records
        return (
            sum(1 for r in records[NameKind.CHANNEL].values() if r.holders is not None),
            sum(1 for r in records[NameKind.PATTERN].values() if r.holders is not None),
            sum(1 for r in records[NameKind.SHARD].values() if r.holders is not None),
        )

    def next_reconnect_delay(self) -> float:
        """Seconds to wait before the next connection attempt (counts an attempt)."""
        return self.backoff.next_delay()

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`handle_timeout` has work, or ``None``."""
        candidates: list[float] = []
        heap = self._promise_heap
        while heap and heap[0][2].settled:
            heapq.heappop(heap)
            self._dead_timers -= 1
        if heap:
            candidates.append(heap[0][0])
        if self.state is ConnectionState.HANDSHAKING or self.state is ConnectionState.READY:
            if self._handshake_deadline is not None:
                candidates.append(self._handshake_deadline)
            if self._stable_at is not None:
                candidates.append(self._stable_at)
            if self._ping_sent_at is not None:
                candidates.append(self._ping_sent_at + self.health_check_timeout)
            elif self.health_check_interval is not None:
                candidates.append(self._last_received + self.health_check_interval)
        return min(candidates) if candidates else None

    def handle_timeout(self, now: float) -> list[Event]:
        """Expire promises, send a health-check PING, or declare the connection dead.

        Raises :class:`HealthCheckTimeout` (or :class:`ConnectionLost` for a handshake
        that took longer than ``connect_timeout``); the events produced first are
        then returned by :meth:`connection_lost`.
        """
        events: list[Event] = []
        heap = self._promise_heap
        while heap and heap[0][0] <= now:
            _, _, promise = heapq.heappop(heap)
            if promise.settled:
                self._dead_timers -= 1
                continue
            promises = promise.subscription.promises
            if promises is not None and promise.channel in promises:
                pending = promises[promise.channel]
                pending.remove(promise)
                if not pending:
                    del promises[promise.channel]
            events.append(PromiseExpired(promise.owner))
            promise.settle()
        if self.state is ConnectionState.HANDSHAKING or self.state is ConnectionState.READY:
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                self._break(events)
                raise ConnectionLost("the handshake did not complete within connect_timeout")
            if self._stable_at is not None and now >= self._stable_at:
                self._stable_at = None
                self.backoff.reset()
            if self._ping_sent_at is not None:
                if now >= self._ping_sent_at + self.health_check_timeout:
                    self._break(events)
                    raise HealthCheckTimeout(
                        f"no reply to PING within {self.health_check_timeout:g} s"
                    )
            elif (
                self.health_check_interval is not None
                and now >= self._last_received + self.health_check_interval
            ):
                self._ping_sent_at = now
                self._out += b"*1\r\n$4\r\nPING\r\n"
                self._expected.append(_Expected(_PING))
        return events

    def _break(self, events: list[Event]) -> None:
        self.state = ConnectionState.BROKEN
        self._held = events
        # Messages read before the failure are still delivered (connection_lost returns
        # them): they count as received like any other.
        self.messages_received += sum(
            len(e.payloads) for e in events if e.__class__ is MessagesReceived
        )

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        """Bytes to write now: queued commands plus the subscription changes since last time."""
        if self._dirty and (
            self.state is ConnectionState.READY or self.state is ConnectionState.HANDSHAKING
        ):
            self._flush_names()
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def wants_write(self) -> bool:
        """True if :meth:`data_to_send` would return bytes (cheap; for waking a writer)."""
        return bool(self._out) or (
            bool(self._dirty)
            and (self.state is ConnectionState.READY or self.state is ConnectionState.HANDSHAKING)
        )

    def _flush_names(self) -> None:
        batches: dict[tuple[NameKind, Command], list[_NameRecord]] = {}
        solos: list[tuple[NameKind, Command, _NameRecord]] = []
        # The batch of the last record: names of one kind and command mostly come in a row.
        batch: list[_NameRecord] = []
        batch_kind: NameKind | None = None
        batch_command: Command | None = None
        for record in self._dirty:
            if record.holders is None:
                action = _IF_UNWANTED.get(record.state)
                if action is None:
                    if record.state is IDLE:
                        self._forget(record)
                    continue
            else:
                action = _IF_WANTED.get(record.state)
                if action is None:
                    continue
            command, record.state = action
            if record.solo:
                record.solo = False
                solos.append((record.kind, command, record))
                continue
            if command is not batch_command or record.kind is not batch_kind:
                batch_kind, batch_command = record.kind, command
                batch = batches.setdefault((batch_kind, batch_command), [])
            batch.append(record)
        self._dirty.clear()
        for (kind, command), records in batches.items():
            groups: Iterable[list[_NameRecord]] = (records,)
            if kind is NameKind.SHARD:
                # Redis Cluster refuses (CROSSSLOT) a command whose names span slots.
                by_slot: dict[int, list[_NameRecord]] = {}
                for record in records:
                    by_slot.setdefault(key_slot(record.name), []).append(record)
                groups = by_slot.values()
            for group in groups:
                for start in range(0, len(group), MAX_NAMES_PER_COMMAND):
                    self._send(kind, command, group[start : start + MAX_NAMES_PER_COMMAND])
        for kind, command, record in solos:
            self._send(kind, command, [record])

    def _send(self, kind: NameKind, command: Command, records: list[_NameRecord]) -> None:
        self._out += pack_command(_COMMAND_NAMES[kind, command], *[r.name for r in records])
        self._expected.append(_Expected("names", kind=kind, command=command, records=records))
        if self.cluster and kind is NameKind.SHARD and command is Command.UNSUBSCRIBE:
            # A cluster node that loses a slot unsubscribes its names itself, with
            # frames just like the confirmations of our SUNSUBSCRIBE, which it then
            # refuses with MOVED: a PING after it bounds what may belong to it.
            self._out += b"*1\r\n$4\r\nPING\r\n"
            self._expected.append(_Expected(_FENCE, records=records))

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray, now: float) -> list[Event]:
        """Feed bytes read from the socket; returns the events they complete.

        Raises :class:`ProtocolError` for malformed or out-of-turn replies and
        :class:`ServerError` / :class:`AuthenticationError` when the handshake is
        refused: the connection is then unusable (call :meth:`connection_lost`).
        """
        if self.state is not ConnectionState.READY and self.state is not (
            ConnectionState.HANDSHAKING
        ):
            raise RuntimeError(f"receive_data() while {self.state.value}")
        reader = self._reader
        assert reader is not None
        self._last_received = now
        self._ping_sent_at = None
        # hiredis moves the unparsed rest of its buffer to the front each time it has
        # consumed 1 KiB: fed a whole 64 KiB read, it copies ~30 times the data; fed in
        # slices, little.
        size = len(data)
        fed = min(size, FEED_SLICE)
        reader.feed(data, 0, fed)
        events: list[Event] = []
        gets = reader.gets
        frame_type: Any = self._frame_type  # Any: mypy would narrow frames to `object`
        channels = self._channels
        completed = False
        # The run: consecutive messages of one channel (and pattern) extend the last
        # MessagesReceived instead of making one event each. ``run`` says which frame
        # kind the open run takes (0: none); anything else that happens closes it.
        # Run 4 is one of confirmations: the next names of the command in flight, whose
        # confirmation frames (``run_channel``, b"subscribe" say) take a short path.
        run = 0
        run_channel = run_pattern = b""
        run_append: Callable[[bytes], None] = events.append  # type: ignore[assignment]
        run_expected: Any = None
        run_records: dict[bytes, _NameRecord] = channels
        run_transitions: dict[NameState, NameState] = {}
        try:
            while True:
                frame: Any = gets()
                if run == 1 and frame.__class__ is frame_type and len(frame) == 3:
                    # The common case: one more message of the open run, checked at once.
                    kind, channel, payload = frame
                    if kind == b"message" and channel == run_channel and payload.__class__ is bytes:
                        run_append(payload)
                        continue
                elif run == 4 and frame.__class__ is frame_type and frame[0] == run_channel:
                    # The common case: the next name of the command in flight, checked at
                    # once. Its two usual outcomes are written out as _enter has them (ACTIVE
                    # and held by one: tell it; IDLE and held by none: drop the record).
                    record = run_expected.records[run_expected.index]
                    state = run_transitions.get(record.state)
                    if state is not None and len(frame) == 3 and frame[1] == record.name:
                        run_expected.index += 1
                        if run_expected.index == len(run_expected.records):
                            self._expected.popleft()
                            run = 0
                        holders = record.holders
                        if state is ACTIVE and holders.__class__ is SubscriptionHandle:
                            record.state = state
                            _activated(events, holders.owner, record.name)
                        elif state is IDLE and holders is None and not self._dirty:
                            record.state = state
                            del run_records[record.name]
                        else:
                            self._enter(record, state, events)
                        continue
                if frame is NOT_ENOUGH_DATA:
                    if fed < size:
                        step = min(FEED_SLICE, size - fed)
                        reader.feed(data, fed, step)
                        fed += step
                        continue
                    break
                completed = True
                if frame.__class__ is frame_type and not (
                    # Under RESP2 an array reply looks like a push: a request's is its reply
                    # (a connection that sends requests holds no subscriptions).
                    frame_type is list and self._expected and self._expected[0].label is _REQUEST
                ):
                    kind = frame[0]
                    if kind == b"message":
                        channel = frame[1]
                        payload = frame[2]
                        if payload.__class__ is not bytes or len(frame) != 3:
                            raise ProtocolError("a message frame of the wrong shape")
                        if run == 1 and channel == run_channel:
                            run_append(payload)
                            continue
                        run = 0
                        record = channels.get(channel)
                        if record is not None and record.state is ACTIVE:
                            payloads = self._deliver(record, channel, None, payload, events)
                            if payloads is not None:
                                run, run_channel, run_append = 1, channel, payloads.append
                        continue
                    if kind == b"pmessage":
                        pattern = frame[1]
                        channel = frame[2]
                        payload = frame[3]
                        if payload.__class__ is not bytes or channel.__class__ is not bytes:
                            raise ProtocolError("a pmessage frame of the wrong shape")
                        if run == 3 and channel == run_channel and pattern == run_pattern:
                            run_append(payload)
                            continue
                        run = 0
                        record = self._patterns.get(pattern)
                        if record is not None and record.state is ACTIVE:
                            payloads = self._deliver(record, channel, pattern, payload, events)
                            if payloads is not None:
                                run, run_channel, run_pattern = 3, channel, pattern
                                run_append = payloads.append
                        continue
                    if kind == b"smessage":
                        channel = frame[1]
                        payload = frame[2]
                        if payload.__class__ is not bytes or len(frame) != 3:
                            raise ProtocolError("an smessage frame of the wrong shape")
                        if run == 2 and channel == run_channel:
                            run_append(payload)
                            continue
                        run = 0
                        record = self._shards.get(channel)
                        if record is not None and record.state is ACTIVE:
                            payloads = self._deliver(record, channel, None, payload, events)
                            if payloads is not None:
                                run, run_channel, run_append = 2, channel, payloads.append
                        continue
                    run = 0
                    confirmation = _CONFIRMATION_KINDS.get(kind)
                    if confirmation is not None:
                        run_expected = self._confirm(confirmation, frame, events)
                        if run_expected is not None:
                            run, run_channel = 4, kind
                            run_records = self._records[confirmation[0]]
                            run_transitions = _state.CONFIRMATIONS[confirmation[2]]
                        continue
                    if frame_type is PushFrame:
                        continue  # another RESP3 push (invalidate, ...): not ours to handle
                run = 0
                self._reply(frame, events, now)
            if reader.exceeds_bound(completed):
                raise ProtocolError(
                    f"a reply exceeds max_frame_size ({self.max_frame_size} bytes)"
                )
        except ParseError as exc:
            self._break(events)
            raise ProtocolError(f"malformed reply from the server: {exc}") from None
        except RedisMPXError:
            self._break(events)
            raise
        except (IndexError, TypeError, KeyError, AttributeError, ValueError):
            self._break(events)
            raise ProtocolError("a Pub/Sub frame of the wrong shape") from None
        except MemoryError:
            # hiredis allocates an aggregate's list when it reads the header: a server
            # announcing 2**32 elements makes that allocation fail, here, not later.
            self._break(events)
            raise ProtocolError("the server announced a reply too large to allocate") from None
        if events:
            self.messages_received += sum(
                len(e.payloads) for e in events if e.__class__ is MessagesReceived
            )
        return events

    def _deliver(
        self,
        record: _NameRecord,
        channel: bytes,
        pattern: bytes | None,
        payload: bytes,
        events: list[Event],
    ) -> list[bytes] | None:
        """Start a delivery event; returns its payload list if later messages may join it."""
        subscribers = record.snapshot
        if subscribers is None:
            subscribers = record.refresh()
        payloads = None
        if subscribers:
            payloads = [payload]
            events.append(MessagesReceived(subscribers, channel, pattern, payloads))
        if record.promise_holders:
            for sub in record.promise_holders:
                promises = sub.promises
                if promises and channel in promises:
                    self._fulfil(promises, channel, payload, events)
            return None  # promise fulfilments must stay in order with the messages
        return payloads

    def _confirm(
        self, confirmation: tuple[NameKind, Command, Reply], frame: Any, events: list[Event]
    ) -> _Expected | None:
        """Take a confirmation; returns the command in flight if more of its kind are due."""
        name = frame[1]
        if len(frame) != 3 or name.__class__ is not bytes:
            raise ProtocolError("a subscription confirmation of the wrong shape")
        kind, command, reply = confirmation
        expected = self._expected[0] if self._expected else None
        if expected is None or expected.kind is not kind or expected.command is not command:
            self._unexpected(kind, command, frame, events)
            return None
        record = expected.records[expected.index]
        if record.name != name:
            self._unexpected(kind, command, frame, events)
            return None
        expected.index += 1
        if expected.index == len(expected.records):
            self._expected.popleft()
            expected = None
        next_state = _state.CONFIRMATIONS[reply].get(record.state)
        if next_state is None:
            raise ProtocolError(f"{reply.value} while the name is {record.state.value}")
        self._enter(record, next_state, events)
        return expected

    def _unexpected(
        self, kind: NameKind, command: Command, frame: Any, events: list[Event]
    ) -> None:
        """A confirmation that does not match the command in flight."""
        head = self._expected[0] if self._expected else None
        if (
            head is not None
            and head.label is _FENCE
            and command is Command.UNSUBSCRIBE
            and any(r.name == frame[1] for r in head.records)
        ):
            # Between a SUNSUBSCRIBE and its fence: the node's own unsubscribe and then
            # the reply to ours (the slot moved away and back): both about the same name.
            return
        record = self._records[kind].get(frame[1])
        if (
            kind is NameKind.SHARD
            and command is Command.UNSUBSCRIBE
            and record is not None
            and record.state in _state.ON_SERVER_UNSUBSCRIBE
        ):
            # Redis Cluster moved the slot away (a migration, a failover).
            state = _state.ON_SERVER_UNSUBSCRIBE[record.state]
            if self.cluster:
                # The router places it again, on the slot's owner: this node may now
                # be a replica, which would take the name and serve it second-hand.
                moved = ServerError("MOVED: the server unsubscribed the name", code="MOVED")
                self._drop_holders(record, moved, events)
                self._enter(record, state, events)
            else:
                record.state = state
                self._dirty[record] = None  # subscribe again, here
            return
        if (
            self.cluster
            and kind is NameKind.SHARD
            and command is Command.UNSUBSCRIBE
            and record is not None
            and record.state in _SERVER_MAY_CROSS
        ):
            return  # the server's own, crossing our SUNSUBSCRIBE: its reply settles the name
        raise ProtocolError(
            f"unexpected {frame[0].decode(errors='replace')} confirmation from the server"
        )

    def _enter(self, record: _NameRecord, state: NameState, events: list[Event]) -> None:
        record.state = state
        holders = record.holders
        if holders is None:
            if state is IDLE:
                self._forget(record)
                if self._dirty:  # touched again while its command was out: moot now
                    self._dirty.pop(record, None)
            elif state in _IF_UNWANTED:
                self._dirty[record] = None
            return
        if state is ACTIVE:
            name = record.name
            if isinstance(holders, dict):
                for sub in holders:
                    _activated(events, sub.owner, name)
            else:
                _activated(events, holders.owner, name)
        if state in _IF_WANTED:
            self._dirty[record] = None

    def _forget(self, record: _NameRecord) -> None:
        """Drop an IDLE, unwanted record (only if it is still the current one for its name)."""
        records = self._records[record.kind]
        if records.get(record.name) is record:
            del records[record.name]

    def _reply(self, frame: Any, events: list[Event], now: float) -> None:
        """A reply that is not a Pub/Sub push: match it with the oldest command in flight."""
        is_error = frame.__class__ is ReplyError
        if not self._expected:
            if is_error:  # e.g. "-ERR max number of clients reached", sent on accept
                raise _server_error(frame, self._password)
            raise ProtocolError("a reply the core did not ask for")
        expected = self._expected[0]
        label = expected.label
        if label is _FENCE:
            if not is_error:
                self._expected.popleft()
                return
            error = _server_error(frame, self._password)
            if error.code in REDIRECT_CODES:
                return  # the SUNSUBSCRIBE before the fence, refused after the server's own
            raise error
        if label == "names":
            if not is_error:
                raise ProtocolError("a plain reply where a subscription confirmation was due")
            self._expected.popleft()
            self._refused(expected, _server_error(frame, self._password), events)
            return
        self._expected.popleft()
        if label is _PUBLISH:
            if is_error:
                events.append(PublishFailed(expected.token, _server_error(frame, self._password)))
            elif isinstance(frame, int):
                events.append(PublishCompleted(expected.token, frame))
            else:
                raise ProtocolError("PUBLISH answered with something other than an integer")
            return
        if label is _REQUEST:
            if is_error:
                events.append(CommandFailed(expected.token, _server_error(frame, self._password)))
            else:
                events.append(CommandCompleted(expected.token, frame))
            return
        if is_error:
            raise _server_error(frame, self._password, handshake=label is _HANDSHAKE)
        if label is _ROLE:
            _check_role(frame)
        if label is _HANDSHAKE or label is _ROLE:
            self._handshake_pending -= 1
            if not self._handshake_pending:
                events += self._handshake_completed(now)
        # A PING reply needs nothing more: any data already proved the server alive.

    def _refused(self, expected: _Expected, error: ServerError, events: list[Event]) -> None:
        """Redis answered a SUBSCRIBE-family command with an error reply."""
        message = str(error)
        if (
            self.cluster
            and expected.kind is NameKind.SHARD
            and error.code in REDIRECT_CODES
            and (not expected.index or expected.command is Command.UNSUBSCRIBE)
        ):
            self._redirected(expected, error, events)
            return
        if (
            expected.command is not Command.SUBSCRIBE
            or expected.index
            or error.code in _CONNECTION_ERROR_CODES
            or message.startswith("ERR max number of clients")
        ):
            raise error
        if len(expected.records) > 1:
            # ACLs refuse a whole command for one forbidden name: retry each name
            # alone, so that only the forbidden one is dropped.
            for record in expected.records:
                record.solo = True
                self._enter(record, _state.REJECTIONS[record.state], events)
            return
        self._drop_refused(expected.records[0], error, events)

    def _redirected(self, expected: _Expected, error: ServerError, events: list[Event]) -> None:
        """A cluster node does not serve these shard names' slot (any more, or yet).

        A refused SSUBSCRIBE hands the names back to their holders' router, which
        places them again once it knows the slot's owner; a refused SUNSUBSCRIBE means
        the node no longer has them, which is what it was meant to achieve. Batches
        never mix slots, so the whole command shares one fate.
        """
        if expected.command is Command.SUBSCRIBE:
            for record in expected.records:
                self._drop_refused(record, error, events)
            return
        confirmed = _state.CONFIRMATIONS[Reply.UNSUBSCRIBE_CONFIRMED]
        for record in expected.records[expected.index :]:
            self._enter(record, confirmed[record.state], events)

    def _drop_refused(self, record: _NameRecord, error: ServerError, events: list[Event]) -> None:
        """Drop a refused name from every holder and tell each of them."""
        self._drop_holders(record, error, events)
        self._enter(record, _state.REJECTIONS[record.state], events)

    def _drop_holders(self, record: _NameRecord, error: ServerError, events: list[Event]) -> None:
        name = record.name
        for sub in record.held_by():
            del sub.names[name]
            events.append(NameRejected(sub.owner, name, error))
        record.holders = None
        record.snapshot = None
