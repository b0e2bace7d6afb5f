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
state and queue bytes; nothing is written until the driver asks.

The core is the composition of parts with one job each: the name table
(:mod:`._table`, whose per-name states and transitions are in :mod:`._state`), the
replies in flight (:mod:`._replies`), the connection's lifecycle and timers
(:mod:`._lifecycle`), the promise timers (:mod:`._promises`) and the policy for a
stand-alone server or a cluster node (:mod:`._policy`). What stays here is the
parsing of what the server sends and the handshake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, Generic

from ._backoff import Backoff
from ._errors import (
    ConnectionLost,
    InactiveSubscription,
    PromiseInterrupted,
    ProtocolError,
    RedisMPXError,
    ServerError,
    SubscriptionClosed,
)
from ._events import (
    ConnectionEstablished,
    Event,
    MessagesReceived,
    P,
    S,
    SubscriptionDisconnected,
)
from ._handles import (
    PromiseHandle,
    SubscriptionHandle,
    SubscriptionKind,
    new_promise_subscription,
    pattern_to_add,
)
from ._lifecycle import LIVE, PING, ConnectionState, Lifecycle
from ._names import channel_names, check_publish, coerce_name
from ._policy import REDIRECT_CODES, STAND_ALONE, NodePolicy
from ._promises import PromiseTimers
from ._replies import (
    COMMAND_VERBS,
    CONFIRMATION_WORDS,
    CONNECTION_ERROR_CODES,
    Expected,
    ReplyFor,
    ReplyQueue,
    check_role,
    server_error,
)
from ._resp import NOT_ENOUGH_DATA, FrameReader, ParseError, PushFrame, ReplyError, pack_command
from ._seconds import check_seconds
from ._settings import DEFAULT_MAX_FRAME_SIZE
from ._state import (
    ACTIVE,
    CONFIRMATIONS,
    ON_SERVER_UNSUBSCRIBE,
    Command,
    NameKind,
    NameState,
    Reply,
)
from ._statistics import Statistics
from ._table import MAX_NAMES_PER_COMMAND, NameRecord, NameTable

# ConnectionState, REDIRECT_CODES and MAX_NAMES_PER_COMMAND live with their parts;
# they are re-exported here for the modules that import them from the core (and
# _server_error for _sentinel, until it imports server_error from _replies).
__all__ = ("MAX_NAMES_PER_COMMAND", "REDIRECT_CODES", "ConnectionState", "MultiplexerCore")
_server_error: Final = server_error

#: receive_data feeds hiredis at most this many bytes at a time (see there).
FEED_SLICE: Final = 8 * 1024

_NAMES: Final = ReplyFor.NAMES
_HANDSHAKE: Final = ReplyFor.HANDSHAKE
_ROLE: Final = ReplyFor.ROLE
_PING: Final = ReplyFor.PING
_FENCE: Final = ReplyFor.FENCE
_PUBLISH: Final = ReplyFor.PUBLISH
_REQUEST: Final = ReplyFor.REQUEST
_ROLE_COMMAND: Final = pack_command(b"ROLE")

_NO_TRANSITIONS: Final[dict[NameState, NameState]] = {}
_MANY_NAMES: Final = (SubscriptionKind.CHANNEL, SubscriptionKind.SHARD)


class MultiplexerCore(Generic[S, P]):
    """Sans-I/O Redis Pub/Sub multiplexer. See the module docstring for the driver loop.

    ``policy`` says whether the server is one of its own or a node of a Redis Cluster
    (see :mod:`._policy`): a cluster router makes its node cores with ``CLUSTER_NODE``.
    """

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
        require_master: bool = False,
        policy: NodePolicy = STAND_ALONE,
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
        self.max_frame_size = max_frame_size
        #: Sentinel mode: the handshake ends with ROLE, and only a master will do.
        self.require_master = bool(require_master)
        self.policy = policy
        interval = check_seconds(
            "health_check_interval", health_check_interval, optional=True, allow_zero=True
        )
        self._lifecycle = Lifecycle(
            backoff=Backoff(base=backoff_base, cap=backoff_cap, random=random),
            health_check_interval=interval or None,
            health_check_timeout=check_seconds("health_check_timeout", health_check_timeout),
            connect_timeout=check_seconds(
                "connect_timeout", connect_timeout, optional=True, allow_zero=True
            )
            or None,
        )
        self._table: NameTable[S, P] = NameTable()
        self._replies: ReplyQueue[S, P] = ReplyQueue()
        self._promises: PromiseTimers[S, P] = PromiseTimers()
        self._subscriptions: dict[SubscriptionHandle[S, P], None] = {}
        self._out = bytearray()
        self._reader: FrameReader | None = None
        self._frame_type: type = PushFrame if protocol == 3 else list
        # The events of an input that raised, for connection_lost() to return first.
        self._held: list[Event[S, P]] = []
        self._tokens = 0
        self.messages_received = 0

    def __repr__(self) -> str:
        return (
            f"<MultiplexerCore {self.state.value} protocol={self.protocol} "
            f"subscriptions={len(self._subscriptions)}>"
        )

    # The lifecycle's view, as the core has always shown it.

    @property
    def state(self) -> ConnectionState:
        return self._lifecycle.state

    @property
    def backoff(self) -> Backoff:
        return self._lifecycle.backoff

    @property
    def health_check_interval(self) -> float | None:
        return self._lifecycle.health_check_interval

    @property
    def health_check_timeout(self) -> float:
        return self._lifecycle.health_check_timeout

    @property
    def connect_timeout(self) -> float | None:
        return self._lifecycle.connect_timeout

    @property
    def connections_made(self) -> int:
        return self._lifecycle.connections_made

    @property
    def connections_lost(self) -> int:
        return self._lifecycle.connections_lost

    # ------------------------------------------------------------------ subscriptions

    def open_subscription(
        self, kind: SubscriptionKind, owner: S, *, node_wide: bool = False
    ) -> SubscriptionHandle[S, P]:
        """A new, empty channel, pattern or shard subscription.

        ``node_wide`` (held on every master of a cluster: see :class:`ClusterCore`)
        changes nothing here: one server is every node there is.
        """
        self._check_open()
        if node_wide and kind not in (SubscriptionKind.CHANNEL, SubscriptionKind.PATTERN):
            raise ValueError(
                f"a node-wide subscription is a channel or pattern one, not {kind.value}"
            )
        if kind is SubscriptionKind.PROMISE:
            raise ValueError("use open_promise_subscription() for promise subscriptions")
        sub: SubscriptionHandle[S, P] = SubscriptionHandle(kind, owner)
        self._subscriptions[sub] = None
        return sub

    def open_pattern_subscription(
        self, pattern: object, owner: S
    ) -> tuple[SubscriptionHandle[S, P], list[Event[S, P]]]:
        """A pattern subscription holding ``pattern`` from the start."""
        name = coerce_name(pattern, "pattern")
        sub = self.open_subscription(SubscriptionKind.PATTERN, owner)
        return sub, self._table.add(sub, [name])

    def add_pattern(self, sub: SubscriptionHandle[S, P], pattern: object) -> list[Event[S, P]]:
        """Give an empty pattern subscription its one pattern."""
        self._check_sub(sub)
        return self._table.add(sub, [pattern_to_add(sub, pattern)])

    def open_promise_subscription(
        self, prefix: object, owner: S
    ) -> tuple[SubscriptionHandle[S, P], list[Event[S, P]]]:
        """A promise subscription: one PSUBSCRIBE on ``prefix`` (escaped) followed by ``*``."""
        sub: SubscriptionHandle[S, P] = new_promise_subscription(prefix, owner)
        self._check_open()
        self._subscriptions[sub] = None
        return sub, self._table.add(sub, [sub.pattern])

    def add(self, sub: SubscriptionHandle[S, P], names: Iterable[object]) -> list[Event[S, P]]:
        """Add names to a channel or shard subscription.

        Returns the activations of names that were already active.
        """
        self._check_names_taken(sub)
        return self._table.add(sub, channel_names(names))

    def remove(self, sub: SubscriptionHandle[S, P], names: Iterable[object]) -> None:
        """Remove names from a channel or shard subscription (names it lacks are ignored)."""
        self._check_names_taken(sub)
        self._table.remove(sub, channel_names(names))

    def clear(self, sub: SubscriptionHandle[S, P]) -> None:
        """Remove every name of a channel or shard subscription."""
        self._check_names_taken(sub)
        self._table.remove(sub, list(sub.names))

    def close_subscription(self, sub: SubscriptionHandle[S, P]) -> list[Event[S, P]]:
        """Close a subscription: drop its names, fail its promises. Closing twice is fine."""
        if sub.closed:
            return []
        self._table.remove(sub, list(sub.names))
        sub.closed = True
        self._subscriptions.pop(sub, None)
        events = self._promises.fail(sub, SubscriptionClosed("the subscription was closed"))
        sub.release_owner()  # the owner keeps its handle: no cycle outlives the close
        return events

    def subscription_owners(self) -> list[S]:
        """The owners of every open subscription (for a driver that must wake them)."""
        return [sub.owner for sub in self._subscriptions]

    def is_active(self, sub: SubscriptionHandle[S, P], name: bytes) -> bool:
        """True if ``sub`` holds ``name`` and Redis has confirmed it on this connection."""
        return self._table.is_active(sub, name)

    def _check_open(self) -> None:
        if self._lifecycle.state is ConnectionState.CLOSED:
            raise SubscriptionClosed("the multiplexer is closed")

    def _check_sub(self, sub: SubscriptionHandle[S, P]) -> None:
        if sub.closed:
            raise SubscriptionClosed("the subscription is closed")

    def _check_names_taken(self, sub: SubscriptionHandle[S, P]) -> None:
        self._check_sub(sub)
        if sub.kind not in _MANY_NAMES:
            raise TypeError(f"a {sub.kind.value} subscription has a fixed name")

    # ------------------------------------------------------------------ promises and publishing

    def new_promise(
        self,
        sub: SubscriptionHandle[S, P],
        suffix: object,
        timeout: float,
        now: float,
        owner: P,
    ) -> PromiseHandle[S, P]:
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
        seconds = check_seconds("timeout", timeout)
        if not self.is_active(sub, sub.pattern):
            raise InactiveSubscription("the promise subscription is not active")
        return self._promises.add(sub, sub.prefix + suffix_bytes, now + seconds, owner)

    def publish(self, channel: object, data: bytes, *, sharded: bool = False) -> int:
        """Queue a PUBLISH (or SPUBLISH); returns the token its reply event will carry.

        Under RESP2 Redis refuses PUBLISH on a connection with subscriptions (the
        reply is then a :class:`PublishFailed`): drivers publish through a second
        core that holds no subscriptions.
        """
        name = check_publish(channel, data)
        if self._lifecycle.state not in LIVE:
            raise ConnectionLost("not connected")
        if self._table.dirty:
            self._flush_names()  # changes made before the publish go out before it
        self._out += pack_command(b"SPUBLISH" if sharded else b"PUBLISH", name, data)
        return self._expect_token(_PUBLISH)

    def request(self, *args: bytes) -> int:
        """Queue any other command; returns the token its reply event will carry.

        The reply comes back whole, as parsed, in :class:`CommandCompleted` (an error
        reply in :class:`CommandFailed`): for a router that needs the server's view,
        such as ``CLUSTER SHARDS``. Under RESP2 Redis refuses most commands on a
        connection with subscriptions, as for :meth:`publish`.
        """
        if not args or not all(isinstance(arg, bytes) for arg in args):
            raise TypeError("a command is one or more bytes arguments")
        if self._lifecycle.state not in LIVE:
            raise ConnectionLost("not connected")
        self._out += pack_command(*args)
        return self._expect_token(_REQUEST)

    def _expect_token(self, label: ReplyFor) -> int:
        self._tokens += 1
        self._replies.append(Expected(label, token=self._tokens))
        return self._tokens

    # ------------------------------------------------------------------ lifecycle

    def connection_made(self, now: float) -> list[Event[S, P]]:
        """A new connection is open: queue the handshake, then every wanted name."""
        commands = self._handshake_commands()
        self._lifecycle.connection_made(now, replies_due=len(commands))
        self._reader = FrameReader(self.max_frame_size)
        for command in commands:
            self._out += command
            self._replies.append(Expected(_ROLE if command == _ROLE_COMMAND else _HANDSHAKE))
        # Every wanted name is dirty since the last loss (or since it was added): the
        # first write after the handshake subscribes them.
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
            commands.append(PING)
        return commands

    def connection_lost(self, error: RedisMPXError) -> list[Event[S, P]]:
        """The connection is gone (or never came up): reset every name, tell subscribers.

        Callable in any state, including after a failed connection attempt (and after
        close, where it does nothing). Returns, first, the events of the input that
        raised (if one did).
        """
        events, self._held = self._held, []
        if not self._lifecycle.connection_lost():
            return events
        self._reader = None
        self._out.clear()
        lost = error if isinstance(error, ServerError | ConnectionLost) else ConnectionLost(
            str(error)
        )
        events += self._replies.fail_pending(lost)
        self._table.connection_lost()
        interrupted = PromiseInterrupted(f"connection lost: {error}")
        for sub in self._subscriptions:
            if sub.names and not sub.told:
                sub.told = True
                events.append(SubscriptionDisconnected(sub.owner, error))
            if sub.promises:
                events += self._promises.fail(sub, interrupted)
        return events

    def close(self) -> list[Event[S, P]]:
        """Close the multiplexer: every subscription closes and every promise fails.

        The driver then closes the socket; Redis drops the subscriptions with it.
        """
        if not self._lifecycle.close():
            return []
        events, self._held = self._held, []
        closed = SubscriptionClosed("the multiplexer was closed")
        for sub in self._subscriptions:
            sub.closed = True
            events += self._promises.fail(sub, closed)
            sub.names.clear()
            sub.release_owner()
        events += self._replies.fail_pending(ConnectionLost("multiplexer closed"))
        self._subscriptions.clear()
        self._table.clear()
        self._promises.clear()
        self._out.clear()
        self._reader = None
        return events

    def statistics(self, *, messages_delivered: int, messages_dropped: int) -> Statistics:
        """A snapshot of the counters; the driver adds what only it counts."""
        active = self._table.active_counts()
        lifecycle = self._lifecycle
        return Statistics(
            connected=lifecycle.state is ConnectionState.READY,
            connections_made=lifecycle.connections_made,
            connections_lost=lifecycle.connections_lost,
            reconnect_attempts=lifecycle.backoff.attempts,
            subscriptions=len(self._subscriptions),
            active_channels=active[NameKind.CHANNEL],
            active_patterns=active[NameKind.PATTERN],
            active_shard_channels=active[NameKind.SHARD],
            messages_received=self.messages_received,
            messages_delivered=messages_delivered,
            messages_dropped=messages_dropped,
            promises_pending=self._promises.pending(),
        )

    def wanted_counts(self) -> tuple[int, int, int]:
        """Names some subscription holds: (channels, patterns, shard channels).

        PromiseHandle prefixes count as patterns. Each new connection subscribes these; the
        drivers log the counts once per handshake (a pass over every name: not for a
        hot path).
        """
        return self._table.wanted_counts()

    def next_reconnect_delay(self) -> float:
        """Seconds to wait before the next connection attempt (counts an attempt)."""
        return self._lifecycle.backoff.next_delay()

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`handle_timeout` has work, or ``None``."""
        promise = self._promises.next_deadline()
        connection = self._lifecycle.next_deadline()
        if promise is None or connection is None:
            return connection if promise is None else promise
        return min(promise, connection)

    def handle_timeout(self, now: float) -> list[Event[S, P]]:
        """Expire promises, send a health-check PING, or declare the connection dead.

        Raises :class:`HealthCheckTimeout` (or :class:`ConnectionLost` for a handshake
        that took longer than ``connect_timeout``); the events produced first are
        then returned by :meth:`connection_lost`.
        """
        events: list[Event[S, P]] = []
        self._promises.expire(now, events)
        try:
            ping = self._lifecycle.handle_timeout(now)
        except ConnectionLost:
            self._break(events)
            raise
        if ping:
            self._out += PING
            self._replies.append(Expected(_PING))
        return events

    def _break(self, events: list[Event[S, P]]) -> None:
        self._lifecycle.input_failed()
        self._held = events
        # Messages read before the failure are still delivered (connection_lost returns
        # them): they count as received like any other.
        self._count_messages(events)

    def _count_messages(self, events: list[Event[S, P]]) -> None:
        self.messages_received += sum(
            len(e.payloads) for e in events if e.__class__ is MessagesReceived
        )

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        """Bytes to write now: queued commands plus the subscription changes since last time."""
        if self._table.dirty and self._lifecycle.state in LIVE:
            self._flush_names()
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def wants_write(self) -> bool:
        """True if :meth:`data_to_send` would return bytes (cheap; for waking a writer)."""
        return bool(self._out) or (bool(self._table.dirty) and self._lifecycle.state in LIVE)

    def _flush_names(self) -> None:
        out = self._out
        replies = self._replies
        fences = self.policy.fences
        for kind, command, records in self._table.flush():
            out += pack_command(COMMAND_VERBS[kind, command], *[r.name for r in records])
            replies.append(Expected(_NAMES, kind=kind, command=command, records=records))
            if fences(kind, command):
                out += PING
                replies.append(Expected(_FENCE, records=records))

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray, now: float) -> list[Event[S, P]]:
        """Feed bytes read from the socket; returns the events they complete.

        Raises :class:`ProtocolError` for malformed or out-of-turn replies and
        :class:`ServerError` / :class:`AuthenticationError` when the handshake is
        refused: the connection is then unusable (call :meth:`connection_lost`).
        """
        lifecycle = self._lifecycle
        lifecycle.check_live("receive_data()")
        lifecycle.data_received(now)
        reader = self._reader
        assert reader is not None
        # hiredis moves the unparsed rest of its buffer to the front each time it has
        # consumed 1 KiB: fed a whole 64 KiB read, it copies ~30 times the data; fed in
        # slices, little.
        size = len(data)
        fed = min(size, FEED_SLICE)
        reader.feed(data, 0, fed)
        events: list[Event[S, P]] = []
        gets = reader.gets
        frame_type: Any = self._frame_type  # Any: mypy would narrow frames to `object`
        replies = self._replies
        table = self._table
        channels = table.channels
        completed = False
        # The run: consecutive messages of one channel (and pattern) extend the last
        # MessagesReceived instead of making one event each. ``run`` says which frame
        # kind the open run takes (0: none); anything else that happens closes it.
        # Run 4 is one of confirmations: the next names of the command in flight
        # (``run_expected``), whose frames (``run_channel``, b"subscribe" say) are checked
        # at once. Its records, their transitions and how far they are confirmed are
        # kept in locals; the command's own count catches up when the run ends.
        run = 0
        run_channel = run_pattern = b""
        run_append: Callable[[bytes], None] = events.append  # type: ignore[assignment]
        run_expected: Any = None
        run_records: list[NameRecord[S, P]] = []
        run_index = run_end = 0
        run_next: Callable[[NameState], NameState | None] = _NO_TRANSITIONS.get
        enter = table.enter
        try:
            while True:
                frame: Any = gets()
                if run == 1 and frame.__class__ is frame_type and len(frame) == 3:
                    # The common case: one more message of the open run, checked at once.
                    kind, channel, payload = frame
                    if kind == b"message" and channel == run_channel and payload.__class__ is bytes:
                        run_append(payload)
                        continue
                elif (
                    run == 4
                    and frame.__class__ is frame_type
                    and len(frame) == 3
                    and frame[0] == run_channel
                ):
                    # The next name of the command in flight: the same checks as
                    # _confirm's, and the same transition (anything else takes that path).
                    next_record = run_records[run_index]
                    state = run_next(next_record.state)
                    if (
                        state is not None
                        and frame[1] == next_record.name
                        and frame[2].__class__ is int
                    ):
                        run_index += 1
                        if run_index == run_end:
                            replies.popleft()
                            run = 0
                        enter(next_record, state, events)
                        continue
                if frame is NOT_ENOUGH_DATA:
                    if fed < size:
                        step = min(FEED_SLICE, size - fed)
                        reader.feed(data, fed, step)
                        fed += step
                        continue
                    break
                completed = True
                if run == 4:
                    run_expected.index = run_index
                    run = 0
                if frame.__class__ is frame_type and not (
                    # Under RESP2 an array reply looks like a push: a request's is its reply
                    # (a connection that sends requests holds no subscriptions).
                    frame_type is list and replies and replies[0].label is _REQUEST
                ):
                    # A push is named by a string, and so is every array reply we ask for.
                    if not frame or frame[0].__class__ is not bytes:
                        raise ProtocolError("a push or array without a name")
                    kind = frame[0]
                    if kind == b"message":
                        if len(frame) != 3:
                            raise ProtocolError("a message frame of the wrong shape")
                        channel = frame[1]
                        payload = frame[2]
                        if payload.__class__ is not bytes or channel.__class__ is not bytes:
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
                        if len(frame) != 4:
                            raise ProtocolError("a pmessage frame of the wrong shape")
                        _, pattern, channel, payload = frame
                        if (
                            payload.__class__ is not bytes
                            or channel.__class__ is not bytes
                            or pattern.__class__ is not bytes
                        ):
                            raise ProtocolError("a pmessage frame of the wrong shape")
                        if run == 3 and channel == run_channel and pattern == run_pattern:
                            run_append(payload)
                            continue
                        run = 0
                        record = table.patterns.get(pattern)
                        if record is not None and record.state is ACTIVE:
                            payloads = self._deliver(record, channel, pattern, payload, events)
                            if payloads is not None:
                                run, run_channel, run_pattern = 3, channel, pattern
                                run_append = payloads.append
                        continue
                    if kind == b"smessage":
                        if len(frame) != 3:
                            raise ProtocolError("an smessage frame of the wrong shape")
                        channel = frame[1]
                        payload = frame[2]
                        if payload.__class__ is not bytes or channel.__class__ is not bytes:
                            raise ProtocolError("an smessage frame of the wrong shape")
                        if run == 2 and channel == run_channel:
                            run_append(payload)
                            continue
                        run = 0
                        record = table.shards.get(channel)
                        if record is not None and record.state is ACTIVE:
                            payloads = self._deliver(record, channel, None, payload, events)
                            if payloads is not None:
                                run, run_channel, run_append = 2, channel, payloads.append
                        continue
                    run = 0
                    confirmation = CONFIRMATION_WORDS.get(kind)
                    if confirmation is not None:
                        run_expected = self._confirm(confirmation, frame, events)
                        if run_expected is not None:
                            run, run_channel = 4, kind
                            run_next = CONFIRMATIONS[confirmation[2]].get
                            run_records = run_expected.records
                            run_index = run_expected.index
                            run_end = len(run_records)
                        continue
                    if frame_type is PushFrame:
                        continue  # another RESP3 push (invalidate, ...): not ours to handle
                run = 0
                self._reply(frame, events, now)
            if run == 4:
                run_expected.index = run_index
            if reader.exceeds_bound(completed):
                raise ProtocolError(
                    f"a reply exceeds max_frame_size ({self.max_frame_size} bytes)"
                )
        except ParseError as exc:
            self._break(events)
            raise ProtocolError(f"malformed reply from the server: {exc}") from None
        except TypeError:
            if not reader.failed():
                raise  # a bug of the core's own, not the server's doing
            self._break(events)
            raise ProtocolError("a map key or set member that is an aggregate") from None
        except RedisMPXError:
            self._break(events)
            raise
        except MemoryError:
            # hiredis allocates an aggregate's list when it reads the header: a server
            # announcing 2**32 elements makes that allocation fail, here, not later.
            self._break(events)
            raise ProtocolError("the server announced a reply too large to allocate") from None
        if events:
            self._count_messages(events)
        return events

    def _deliver(
        self,
        record: NameRecord[S, P],
        channel: bytes,
        pattern: bytes | None,
        payload: bytes,
        events: list[Event[S, P]],
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
                    self._promises.fulfil(promises, channel, payload, events)
            return None  # promise fulfilments must stay in order with the messages
        return payloads

    def _confirm(
        self, confirmation: tuple[NameKind, Command, Reply], frame: Any, events: list[Event[S, P]]
    ) -> Expected[S, P] | None:
        """A subscription confirmation: it settles the next name of the command in flight.

        Returns that command if more of its names are due (confirmations come in runs).
        """
        if len(frame) != 3 or frame[1].__class__ is not bytes or frame[2].__class__ is not int:
            raise ProtocolError("a subscription confirmation of the wrong shape")
        kind, command, reply = confirmation
        replies = self._replies
        record = replies.confirm(kind, command, frame[1])
        if record is None:
            self._unexpected(kind, command, frame, events)
            return None
        self._table.confirm(record, reply, events)
        head = replies[0] if replies else None
        if head is not None and head.kind is kind and head.command is command:
            return head
        return None

    def _unexpected(
        self, kind: NameKind, command: Command, frame: Any, events: list[Event[S, P]]
    ) -> None:
        """A confirmation that does not match the command in flight."""
        name = frame[1]
        head = self._replies[0] if self._replies else None
        if (
            head is not None
            and head.label is _FENCE
            and command is Command.UNSUBSCRIBE
            and any(r.name == name for r in head.records)
        ):
            # Between a SUNSUBSCRIBE and its fence: the node's own unsubscribe and then
            # the reply to ours (the slot moved away and back): both about the same name.
            return
        record = self._table.spaces[kind].get(name)
        if kind is NameKind.SHARD and command is Command.UNSUBSCRIBE and record is not None:
            if record.state in ON_SERVER_UNSUBSCRIBE:
                # The server moved the slot away (a migration, a failover): its own.
                self.policy.server_unsubscribed(self._table, record, events)
                return
            if self.policy.accepts_crossing(record):
                return
        raise ProtocolError(
            f"unexpected {frame[0].decode(errors='replace')} confirmation from the server"
        )

    def _reply(self, frame: Any, events: list[Event[S, P]], now: float) -> None:
        """A reply that is not a Pub/Sub push: it settles the oldest command in flight."""
        error = None
        replies = self._replies
        if frame.__class__ is ReplyError:
            handshake = bool(replies) and replies[0].label is _HANDSHAKE
            error = server_error(frame, self._password, handshake=handshake)
        if not replies:
            # An error nobody asked for: "-ERR max number of clients reached", on accept.
            raise error or ProtocolError("a reply the core did not ask for")
        expected = replies.settle(frame, error, events)
        if expected is None:
            return
        if error is not None:  # a SUBSCRIBE-family command refused
            self._refused(expected, error, events)
            return
        if expected.label is _ROLE:
            check_role(frame)
        if self._lifecycle.handshake_reply(now):
            for sub in self._subscriptions:
                sub.told = False  # a new connection: its loss is a new outage
            events.append(ConnectionEstablished())

    def _refused(
        self, expected: Expected[S, P], error: ServerError, events: list[Event[S, P]]
    ) -> None:
        """Redis answered a SUBSCRIBE-family command with an error reply."""
        if self.policy.redirected(self._table, expected, error, events):
            return
        if (
            expected.command is not Command.SUBSCRIBE
            or expected.index
            or error.code in CONNECTION_ERROR_CODES
            or str(error).startswith("ERR max number of clients")
        ):
            raise error
        self._table.refused(expected.records, error, events)
