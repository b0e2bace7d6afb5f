"""A hypothesis state machine: one MultiplexerCore against one FakeRedis, checked
against a model of what the user asked for.

The machine plays the user (open subscriptions, add, remove, clear, close, new
promises, publish), the network (bytes delivered late and in arbitrary splits,
writes batched at random moments, connections lost and made again) and the clock
(advance time, call ``handle_timeout`` when due). The model records, from the user's
calls and the core's events only, which names every subscription holds and which
of them have been activated on the current connection. Checked:

(a) at rest (everything flushed both ways, connected and ready) the fake's channels,
    patterns and shard channels are exactly the distinct names the model holds, each
    subscribed once, with no redundant SUBSCRIBE ever sent;
(b) NamesActivated comes once per (subscription, name) per holding period per
    connection, only for held names, and at rest every held name was activated;
(c) a message reaches a subscription only for a name it holds and has had activated
    when the event is processed, at most once and in order; every message the fake
    wrote while the name was active for the subscription, and that was fed to the
    core before the next loss, reaches it (so: exactly once, in order);
(d) every promise settles exactly once: fulfilled by the first message on its channel
    that reaches the core, expired once its deadline has passed, failed with
    PromiseInterrupted on a loss or SubscriptionClosed on close; never later;
(e) SubscriptionDisconnected exactly once per loss for each subscription that holds a
    name (and was not told already during this outage), and once for each holder that
    had a name active when the server unsubscribed it of its own accord; never
    otherwise. So, per (subscription, name): activation, then disconnect, then
    activation again, never two activations in a row; and after every step the core's
    ``is_active`` agrees with the model (in ACTIVE every holder is activated, outside
    it none is).

Plus: publish tokens settle once, in order, with the fake's reply; the core's view
of a subscription's names equals the model's; ``next_deadline`` never lies about a
promise. Minimal reproductions of the bugs the machine found are at the end.
"""

from __future__ import annotations

import functools
import itertools
import unittest
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from core.fake_redis import FakeConnection, FakeRedis, glob_match
from redismpx_core import (
    AuthenticationError,
    ConnectionEstablished,
    ConnectionLost,
    ConnectionState,
    HealthCheckTimeout,
    InactiveSubscription,
    MessagesReceived,
    MultiplexerCore,
    NameDeactivated,
    NameRejected,
    NamesActivated,
    PromiseExpired,
    PromiseFailed,
    PromiseFulfilled,
    PromiseInterrupted,
    PublishCompleted,
    PublishFailed,
    RedisMPXError,
    ServerError,
    SubscriptionClosed,
    SubscriptionDisconnected,
    SubscriptionHandle,
    SubscriptionKind,
)
from redismpx_core._names import escape_glob
from server_matrix import examples

CHANNEL = SubscriptionKind.CHANNEL
SHARD = SubscriptionKind.SHARD
PATTERN = SubscriptionKind.PATTERN
PROMISE = SubscriptionKind.PROMISE

# Small pools, so that names are shared between subscriptions. Channel names with
# glob characters are literal for channel subscriptions; patterns and promise
# prefixes overlap ("ch*" is both a pattern and the promise pattern of "ch").
CHANNELS = [b"ch1", b"ch2", b"ch*x", b"c?1", b"denied"]
PATTERNS = [b"ch*", b"c?1", b"ch\\*x*", b"*1", b"den*"]
PREFIXES = [b"ch", b"ch*x"]
SUFFIXES = [b"1", b"x", b""]
DENIED = frozenset({b"denied", b"den*"})
PUBLISH_CHANNELS = sorted(set(CHANNELS) | {p + s for p in PREFIXES for s in SUFFIXES})

HEALTH_INTERVAL = 5.0
HEALTH_TIMEOUT = 1.0
CONNECT_TIMEOUT = 3.0

#: (core options, FakeRedis options): handshakes of every shape.
CONFIGS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {}),
    ({"password": "wrong"}, {"password": "pw"}),  # every handshake fails
    ({"password": "pw"}, {"password": "pw"}),
    ({"username": "alice", "password": "pw2"}, {"password": "pw", "users": {"alice": "pw2"}}),
    ({"db": 2, "client_name": "mpx"}, {}),
    ({"password": "pw", "db": 1, "client_name": "mpx"}, {"password": "pw"}),
]


class Owner:
    """What the driver would pass as a subscription's owner."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return self.label


@dataclass(eq=False)
class SubModel:
    sid: int
    kind: SubscriptionKind
    owner: Owner
    handle: SubscriptionHandle
    pattern: bytes = b""  # promise subscriptions
    prefix: bytes = b""
    held: dict[bytes, None] = field(default_factory=dict)
    activated: set[bytes] = field(default_factory=set)
    closed: bool = False
    told: bool = False
    last_seq: dict[bytes, int] = field(default_factory=dict)
    received: dict[bytes, set[int]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<{self.owner} {self.kind.value} held={list(self.held)}>"

    def key_of(self, event: MessagesReceived) -> bytes:
        if self.kind is PATTERN:
            assert event.pattern is not None, f"{self}: a pattern message without its pattern"
            return event.pattern
        assert event.pattern is None, f"{self}: a channel message with pattern {event.pattern!r}"
        return event.channel


@dataclass(eq=False)
class PromiseModel:
    owner: Owner
    sub: SubModel
    channel: bytes
    deadline: float
    outcome: str | None = None
    data: bytes | None = None


@dataclass
class Expectation:
    """A message the fake wrote that these (subscription id, key) must receive."""

    seq: int
    end: int
    recipients: set[tuple[int, bytes]]


def _guard(method: Callable[..., Any]) -> Callable[..., Any]:
    """Remember that a step failed, so that teardown() reports that and nothing more."""

    @functools.wraps(method)
    def guarded(self: CoreMachine, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.failed = True
            raise

    return guarded


class CoreMachine(RuleBasedStateMachine):
    protocol = 2

    def __init__(self) -> None:
        super().__init__()
        self.ids = itertools.count(1)
        self.subs: dict[Owner, SubModel] = {}
        self.by_id: dict[int, SubModel] = {}
        self.promises: dict[Owner, PromiseModel] = {}
        self.now = 1000.0
        self.seq = itertools.count(1)
        self.published: dict[int, tuple[bytes, bool]] = {}
        self.conn: FakeConnection | None = None
        self.established = False
        self.core_closed = False
        self.expectations: list[Expectation] = []
        self.deliveries_seen = 0
        self.tokens: list[int] = []
        self.publish_replies_seen = 0
        self.recent_payloads: list[tuple[list[bytes], list[bytes]]] = []
        # The order in which the fake wrote each (payload, pattern) on the connection.
        self.wire_order: dict[tuple[int, bytes | None], int] = {}
        self.wire_counter = itertools.count(1)
        self.failed = False
        # The model's connection timers: when the connection was made, when bytes were
        # last fed to the core, when the core should have queued a health-check PING.
        self.connect_at = self.last_fed = 0.0
        self.ping_at: float | None = None
        # The shard channel the server is unsubscribing of its own accord, if it is.
        self.server_unsubscribed: bytes | None = None

    channel_subs = Bundle("channel_subs")  # channel and shard subscriptions
    pattern_subs = Bundle("pattern_subs")
    promise_subs = Bundle("promise_subs")

    # ------------------------------------------------------------------ setup

    @initialize(config=st.sampled_from(CONFIGS))
    @_guard
    def setup(self, config: tuple[dict[str, Any], dict[str, Any]]) -> None:
        core_options, fake_options = config
        self.bad_password = core_options.get("password") == "wrong"
        self.fake = FakeRedis(**fake_options)
        for name in DENIED:
            self.fake.deny(None, name)
        self.core = MultiplexerCore(
            random=lambda: 0.5,
            protocol=self.protocol,
            health_check_interval=HEALTH_INTERVAL,
            health_check_timeout=HEALTH_TIMEOUT,
            connect_timeout=CONNECT_TIMEOUT,
            **core_options,
        )
        self._connect()

    # ------------------------------------------------------------------ helpers

    def _new_owner(self, what: str) -> Owner:
        return Owner(f"{what}{next(self.ids)}")

    def _register(
        self, kind: SubscriptionKind, handle: SubscriptionHandle, owner: Owner
    ) -> SubModel:
        model = SubModel(next(self.ids), kind, owner, handle)
        assert handle.owner is owner
        self.subs[owner] = model
        self.by_id[model.sid] = model
        return model

    def _drop_expectations(self, sub: SubModel, names: list[bytes]) -> None:
        for expectation in self.expectations:
            for name in names:
                expectation.recipients.discard((sub.sid, name))

    def _unhold(self, sub: SubModel, names: list[bytes]) -> None:
        for name in names:
            sub.held.pop(name, None)
            sub.activated.discard(name)
        self._drop_expectations(sub, names)

    def _pending_promises(self, sub: SubModel | None = None) -> list[PromiseModel]:
        return [
            p for p in self.promises.values() if p.outcome is None and (sub is None or p.sub is sub)
        ]

    def _connect(self) -> None:
        assert self.core.state is ConnectionState.DISCONNECTED
        self.conn = self.fake.connect()
        self.established = False
        self.expectations = []
        self.deliveries_seen = 0
        self.publish_replies_seen = 0
        self.tokens = []
        self.wire_order = {}
        self.connect_at = self.last_fed = self.now
        self.ping_at = None
        self.process(self.core.connection_made(self.now), "connect")

    def _lose(self, error: RedisMPXError) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.process(self.core.connection_lost(error), "lost", error=error)

    def _register_new_deliveries(self) -> None:
        """Expectations for the messages the fake wrote since the last look: computed
        now, at publish time, from what the model says is active."""
        conn = self.conn
        if conn is None:
            return
        for delivery in conn.deliveries[self.deliveries_seen :]:
            seq = int(delivery.data)
            recipients: set[tuple[int, bytes]] = set()
            for sub in self.subs.values():
                if sub.closed:
                    continue
                if (delivery.kind, sub.kind) in ((b"message", CHANNEL), (b"smessage", SHARD)):
                    key = delivery.channel
                elif delivery.kind == b"pmessage" and sub.kind is PATTERN:
                    assert delivery.pattern is not None
                    key = delivery.pattern
                else:
                    continue
                if key in sub.activated:
                    recipients.add((sub.sid, key))
            self.expectations.append(Expectation(seq, delivery.end, recipients))
            self.wire_order[seq, delivery.pattern] = next(self.wire_counter)
        self.deliveries_seen = len(conn.deliveries)

    # ------------------------------------------------------------------ events

    def process(self, events: list[Any], source: str, *, error: Any = None) -> None:
        assert isinstance(events, list)
        disconnected: list[Owner] = []
        publish_failed: list[int] = []
        for event in events:
            if isinstance(event, ConnectionEstablished):
                assert source in ("connect", "data"), f"{event} from {source}"
                assert not self.established, "ConnectionEstablished twice on one connection"
                self.established = True
                for sub in self.subs.values():
                    sub.told = False
            elif isinstance(event, NamesActivated):
                sub = self.subs[event.subscriber]
                assert not sub.closed, f"activation of closed {sub}"
                assert self.established, "activation before the handshake completed"
                assert event.names, "an activation of no name"
                for name in event.names:
                    assert name in sub.held, f"{sub}: activation of {name!r}, not held"
                    assert name not in sub.activated, f"{sub}: {name!r} activated twice"
                    sub.activated.add(name)
            elif isinstance(event, NameRejected):
                sub = self.subs[event.subscriber]
                assert source == "data"
                assert event.name in DENIED, f"{sub}: {event.name!r} rejected ({event.error})"
                assert event.name in sub.held
                assert event.name not in sub.activated
                assert isinstance(event.error, ServerError)
                assert event.error.code == "NOPERM"
                self._unhold(sub, [event.name])
            elif isinstance(event, MessagesReceived):
                self._check_messages(event)
            elif isinstance(event, NameDeactivated):
                assert source == "server_unsubscribe", f"{event} from {source}"
                sub = self.subs[event.subscriber]
                name = self.server_unsubscribed
                assert event.name == name
                assert name in sub.activated, f"{sub}: told of {name!r}, not active for it"
                assert isinstance(event.error, ConnectionLost)
                sub.activated.discard(name)
            elif isinstance(event, SubscriptionDisconnected):
                disconnected.append(event.subscriber)
                assert source == "lost", f"{event} from {source}"
                assert event.error is error
            elif isinstance(event, PromiseFulfilled):
                promise = self.promises[event.promise]
                assert promise.outcome is None, f"{promise} settled twice"
                assert source == "data"
                channel, sharded = self.published[int(event.data)]
                assert channel == promise.channel
                assert not sharded
                assert not promise.sub.closed
                promise.outcome, promise.data = "fulfilled", event.data
            elif isinstance(event, PromiseExpired):
                promise = self.promises[event.promise]
                assert promise.outcome is None, f"{promise} settled twice"
                assert source in ("timeout", "lost"), f"{event} from {source}"
                assert self.now >= promise.deadline, "expired early"
                promise.outcome = "expired"
            elif isinstance(event, PromiseFailed):
                promise = self.promises[event.promise]
                assert promise.outcome is None, f"{promise} settled twice"
                if source == "lost":
                    assert isinstance(event.error, PromiseInterrupted)
                else:
                    assert source in ("close", "close_core"), f"{event} from {source}"
                    assert isinstance(event.error, SubscriptionClosed)
                promise.outcome = "failed"
            elif isinstance(event, PublishCompleted | PublishFailed):
                self._check_publish_reply(event, source, publish_failed, error)
            else:
                raise AssertionError(f"unknown event {event!r}")
        if source == "lost":
            expected = {
                sub.owner
                for sub in self.subs.values()
                if not sub.closed and sub.held and not sub.told
            }
            assert len(disconnected) == len(set(disconnected)), "told twice in one loss"
            assert set(disconnected) == expected
            for owner in disconnected:
                self.subs[owner].told = True
            assert publish_failed == self.tokens, "every PUBLISH in flight fails, in order"
            self.tokens = []
            self.established = False
            self.expectations = []
            for sub in self.subs.values():
                sub.activated.clear()
        if source in ("lost", "close_core"):
            assert self._pending_promises() == [], "a promise survived a loss or close()"
        if source == "timeout":
            late = [p for p in self._pending_promises() if p.deadline <= self.now]
            assert late == [], f"promises past their deadline not expired: {late}"

    def _check_messages(self, event: MessagesReceived) -> None:
        owners = event.subscribers
        assert len(set(owners)) == len(owners), f"a subscriber twice in {owners}"
        assert owners, "a message for nobody"
        assert isinstance(event.payloads, list)
        assert event.payloads
        self.recent_payloads.append((event.payloads, list(event.payloads)))
        for owner in owners:
            sub = self.subs[owner]
            assert not sub.closed, f"message for closed {sub}"
            assert sub.kind is not PROMISE, "promise subscriptions get no MessagesReceived"
            key = sub.key_of(event)
            assert key in sub.held, f"{sub}: message on {key!r}, not held"
            assert key in sub.activated, f"{sub}: message on {key!r} before its activation"
            for payload in event.payloads:
                seq = int(payload)
                channel, sharded = self.published[seq]
                assert channel == event.channel, f"payload {seq} was published on {channel!r}"
                assert sharded is (sub.kind is SHARD)
                if sub.kind is PATTERN:
                    assert glob_match(key, channel)
                order = self.wire_order.get((seq, event.pattern))
                assert order is not None, f"{sub}: message {seq} was not sent on this connection"
                assert order > sub.last_seq.get(key, 0), f"{sub}: {seq} out of order or twice"
                sub.last_seq[key] = order
                sub.received.setdefault(key, set()).add(seq)

    def _check_publish_reply(
        self, event: Any, source: str, publish_failed: list[int], error: Any
    ) -> None:
        if source == "lost":
            assert isinstance(event, PublishFailed)
            assert event.error is error  # a ConnectionLost or the handshake's ServerError
            publish_failed.append(event.token)
            return
        assert source == "data", f"{event} from {source}"
        assert self.tokens, "a publish reply with no PUBLISH in flight"
        assert event.token == self.tokens[0], "publish replies out of order"
        self.tokens.pop(0)
        assert self.conn is not None
        reply = self.conn.publish_replies[self.publish_replies_seen]
        self.publish_replies_seen += 1
        if isinstance(event, PublishCompleted):
            assert event.receivers == reply
        else:
            assert isinstance(event.error, ServerError)
            assert str(event.error) == reply

    # ------------------------------------------------------------------ user rules

    @precondition(lambda self: not self.core_closed)
    @rule(
        target=channel_subs,
        kind=st.sampled_from([CHANNEL, SHARD]),
        names=st.lists(st.sampled_from(CHANNELS), max_size=3),
    )
    @_guard
    def open_subscription(self, kind: SubscriptionKind, names: list[bytes]) -> SubModel:
        owner = self._new_owner("S" if kind is SHARD else "C")
        sub = self._register(kind, self.core.open_subscription(kind, owner), owner)
        if names:
            self.add(sub, names)
        return sub

    @precondition(lambda self: not self.core_closed)
    @rule(target=pattern_subs, pattern=st.sampled_from(PATTERNS))
    @_guard
    def open_pattern_subscription(self, pattern: bytes) -> SubModel:
        owner = self._new_owner("P")
        handle, events = self.core.open_pattern_subscription(pattern, owner)
        sub = self._register(PATTERN, handle, owner)
        sub.held[pattern] = None
        self.process(events, "user")
        return sub

    @precondition(lambda self: not self.core_closed)
    @rule(target=promise_subs, prefix=st.sampled_from(PREFIXES))
    @_guard
    def open_promise_subscription(self, prefix: bytes) -> SubModel:
        owner = self._new_owner("R")
        handle, events = self.core.open_promise_subscription(prefix, owner)
        sub = self._register(PROMISE, handle, owner)
        sub.prefix = prefix
        sub.pattern = escape_glob(prefix) + b"*"
        assert handle.pattern == sub.pattern
        sub.held[sub.pattern] = None
        self.process(events, "user")
        return sub

    @precondition(lambda self: not self.core_closed)
    @rule(sub=channel_subs, names=st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=3))
    @_guard
    def add(self, sub: SubModel, names: list[bytes]) -> None:
        if sub.closed:
            with pytest.raises(SubscriptionClosed):
                self.core.add(sub.handle, names)
            return
        for name in names:
            sub.held.setdefault(name, None)
        self.process(self.core.add(sub.handle, names), "user")

    @precondition(lambda self: not self.core_closed)
    @rule(sub=channel_subs, names=st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=3))
    @_guard
    def remove(self, sub: SubModel, names: list[bytes]) -> None:
        if sub.closed:
            with pytest.raises(SubscriptionClosed):
                self.core.remove(sub.handle, names)
            return
        self.core.remove(sub.handle, names)  # names it does not hold are ignored
        self._unhold(sub, names)

    @precondition(lambda self: not self.core_closed)
    @rule(sub=st.one_of(channel_subs, pattern_subs))
    @_guard
    def clear(self, sub: SubModel) -> None:
        if sub.closed:
            with pytest.raises(SubscriptionClosed):
                self.core.clear(sub.handle)
            return
        if sub.handle.kind is SubscriptionKind.PATTERN:
            with pytest.raises(TypeError):  # a pattern subscription is closed, not cleared
                self.core.clear(sub.handle)
            return
        self.core.clear(sub.handle)
        self._unhold(sub, list(sub.held))

    @precondition(lambda self: not self.core_closed)
    @rule(sub=pattern_subs, pattern=st.sampled_from(PATTERNS))
    @_guard
    def add_pattern(self, sub: SubModel, pattern: bytes) -> None:
        """Give a pattern subscription emptied by a rejection a new pattern."""
        if sub.closed:
            with pytest.raises(SubscriptionClosed):
                self.core.add_pattern(sub.handle, pattern)
            return
        if sub.held:
            with pytest.raises(ValueError, match="exactly one pattern"):
                self.core.add_pattern(sub.handle, pattern)
            return
        sub.held[pattern] = None
        self.process(self.core.add_pattern(sub.handle, pattern), "user")

    @precondition(lambda self: not self.core_closed)
    @rule(sub=st.one_of(channel_subs, pattern_subs, promise_subs))
    @_guard
    def close_subscription(self, sub: SubModel) -> None:
        pending = {p.owner for p in self._pending_promises(sub)}
        events = self.core.close_subscription(sub.handle)
        if sub.closed:
            assert events == [], "closing twice does nothing"
            return
        self._unhold(sub, list(sub.held))
        sub.closed = True
        self.process(events, "close")
        assert all(isinstance(e, PromiseFailed) for e in events)
        assert {e.promise for e in events if isinstance(e, PromiseFailed)} == pending
        assert len(events) == len(pending)

    @precondition(lambda self: not self.core_closed)
    @rule(sub=st.one_of(channel_subs, pattern_subs, promise_subs))
    @_guard
    def misuse(self, sub: SubModel) -> None:
        """Calls that do not fit the subscription's kind change nothing."""
        closed = (SubscriptionClosed, TypeError) if sub.closed else TypeError
        if sub.kind not in (CHANNEL, SHARD):
            with pytest.raises(closed):
                self.core.add(sub.handle, [b"ch1"])
            with pytest.raises(closed):
                self.core.remove(sub.handle, list(sub.held) or [b"ch1"])
        if sub.kind is not PATTERN:
            with pytest.raises(closed):
                self.core.add_pattern(sub.handle, b"ch*")
        if sub.kind is not PROMISE:
            with pytest.raises(closed):
                self.core.new_promise(sub.handle, b"1", 1.0, self.now, None)
        if not sub.closed:
            with pytest.raises(TypeError):
                self.core.add(sub.handle, [42]) if sub.kind in (CHANNEL, SHARD) else (
                    self.core.add_pattern(sub.handle, 42)
                    if sub.kind is PATTERN
                    else self.core.new_promise(sub.handle, 42, 1.0, self.now, None)
                )

    @precondition(lambda self: not self.core_closed)
    @rule(
        sub=promise_subs,
        suffix=st.sampled_from(SUFFIXES),
        timeout=st.sampled_from([0.3, 1.0, 4.0, 30.0]),
    )
    @_guard
    def new_promise(self, sub: SubModel, suffix: bytes, timeout: float) -> None:
        owner = self._new_owner("p")
        if sub.closed:
            with pytest.raises(SubscriptionClosed):
                self.core.new_promise(sub.handle, suffix, timeout, self.now, owner)
            return
        if sub.pattern not in sub.activated:
            with pytest.raises(InactiveSubscription):
                self.core.new_promise(sub.handle, suffix, timeout, self.now, owner)
            return
        promise = self.core.new_promise(sub.handle, suffix, timeout, self.now, owner)
        assert promise.owner is owner
        assert promise.channel == sub.prefix + suffix
        self.promises[owner] = PromiseModel(owner, sub, sub.prefix + suffix, self.now + timeout)

    def _publish_pool(self) -> list[bytes]:
        """Channels worth publishing on now, the likeliest first (hypothesis shrinks
        towards the start of the list): those the server has subscribed, those held,
        those promised; then every channel of the pools."""
        pool: dict[bytes, None] = {}
        for channel in PUBLISH_CHANNELS:
            patterns = self.fake.patterns()
            if channel in self.fake.channels() or any(glob_match(p, channel) for p in patterns):
                pool[channel] = None
        pool.update(dict.fromkeys(sorted(self.fake.shard_channels())))
        for sub in self.subs.values():
            if sub.kind in (CHANNEL, SHARD):
                pool.update(dict.fromkeys(sub.held))
        pool.update(dict.fromkeys(p.channel for p in self._pending_promises()))
        return list(pool) * 3 + PUBLISH_CHANNELS

    @precondition(lambda self: not self.core_closed)
    @rule(data=st.data(), sharded=st.booleans())
    @_guard
    def core_publish(self, data: st.DataObject, sharded: bool) -> None:
        channel = data.draw(st.sampled_from(self._publish_pool()), label="channel")
        seq = next(self.seq)
        if self.core.state not in (ConnectionState.READY, ConnectionState.HANDSHAKING):
            with pytest.raises(ConnectionLost):
                self.core.publish(channel, b"%d" % seq, sharded=sharded)
            return
        self.published[seq] = (channel, sharded)
        token = self.core.publish(channel, b"%d" % seq, sharded=sharded)
        assert not self.tokens or token > self.tokens[-1]
        self.tokens.append(token)

    # ------------------------------------------------------------------ server and network

    @precondition(lambda self: not self.core_closed)
    @rule(data=st.data(), count=st.integers(1, 4))
    @_guard
    def server_publish(self, data: st.DataObject, count: int) -> None:
        pool = self._publish_pool()
        for _ in range(count):
            channel = data.draw(st.sampled_from(pool), label="channel")
            sharded = data.draw(st.booleans(), label="sharded")
            seq = next(self.seq)
            self.published[seq] = (channel, sharded)
            if sharded:
                self.fake.spublish(channel, b"%d" % seq)
            else:
                self.fake.publish(channel, b"%d" % seq)
        self._register_new_deliveries()

    @precondition(lambda self: not self.core_closed and self.conn is not None)
    @rule(rounds=st.integers(1, 2))
    @_guard
    def publish_round(self, rounds: int) -> None:
        """One message on every channel the server would deliver, in turn: runs of
        messages on alternating channels, for every kind of subscription at once."""
        patterns = self.fake.patterns()
        targets = [
            (c, False)
            for c in PUBLISH_CHANNELS
            if c in self.fake.channels() or any(glob_match(p, c) for p in patterns)
        ]
        targets += [(c, True) for c in sorted(self.fake.shard_channels())]
        for _ in range(rounds):
            for channel, sharded in targets:
                seq = next(self.seq)
                self.published[seq] = (channel, sharded)
                if sharded:
                    self.fake.spublish(channel, b"%d" % seq)
                else:
                    self.fake.publish(channel, b"%d" % seq)
        self._register_new_deliveries()

    @precondition(lambda self: not self.core_closed and self.conn is not None)
    @rule(
        sub=promise_subs,
        suffix=st.sampled_from(SUFFIXES),
        promises=st.integers(1, 2),
        messages=st.integers(0, 2),
    )
    @_guard
    def promise_cycle(self, sub: SubModel, suffix: bytes, promises: int, messages: int) -> None:
        """Promises on one channel, then messages on it, then everything delivered."""
        if sub.closed or sub.pattern not in sub.activated:
            return
        for _ in range(promises):
            self.new_promise(sub, suffix, 30.0)
        for _ in range(messages):
            seq = next(self.seq)
            self.published[seq] = (sub.prefix + suffix, False)
            self.fake.publish(sub.prefix + suffix, b"%d" % seq)
        self._register_new_deliveries()
        self._quiesce()

    @precondition(lambda self: not self.core_closed)
    @rule()
    @_guard
    def flush(self) -> None:
        data = self.core.data_to_send()
        if self.conn is None:
            assert data == b"", "bytes to send while disconnected"
            return
        if data:
            self.conn.feed(data)
            self._register_new_deliveries()

    @precondition(
        lambda self: (
            not self.core_closed
            and self.conn is not None
            and self.core.state in (ConnectionState.HANDSHAKING, ConnectionState.READY)
        )
    )
    @rule(n=st.one_of(st.integers(1, 64), st.integers(1, 400), st.none()))
    @_guard
    def deliver(self, n: int | None) -> None:
        self._deliver(n)

    @precondition(
        lambda self: (
            not self.core_closed
            and self.conn is not None
            and self.core.state in (ConnectionState.HANDSHAKING, ConnectionState.READY)
        )
    )
    @rule(n=st.one_of(st.integers(1, 64), st.none()))
    @_guard
    def flush_and_deliver(self, n: int | None) -> None:
        self.flush()
        if self.conn is not None:
            self._deliver(n)

    def _deliver(self, n: int | None) -> bool:
        conn = self.conn
        assert conn is not None
        # The core never changes a payload list it handed out.
        for payloads, copy in self.recent_payloads:
            assert payloads == copy, "the core changed a payload list it had handed out"
        self.recent_payloads = []
        start = conn.taken
        data = conn.take(n)
        if not data:
            return False
        pending_before = [p for p in self._pending_promises() if p.sub.pattern in p.sub.activated]
        refused: AuthenticationError | None = None
        try:
            events = self.core.receive_data(data, self.now)
        except AuthenticationError as exc:
            refused = exc
        except RedisMPXError as exc:
            raise AssertionError(f"the core refused the fake's bytes: {exc!r}") from exc
        self.last_fed, self.ping_at = self.now, None
        if refused is not None:
            assert self.bad_password, f"the core refused the handshake: {refused!r}"
            assert not self.established
            assert refused.code == "WRONGPASS"
            assert "wrong" not in str(refused)  # no secrets in messages
            self._lose(refused)
            return True
        self.process(events, "data")
        end = conn.taken
        # (c) liveness: messages fully fed reached every subscription that had them active.
        due = [e for e in self.expectations if e.end <= end]
        self.expectations = [e for e in self.expectations if e.end > end]
        for expectation in due:
            for sid, key in expectation.recipients:
                sub = self.by_id[sid]
                assert expectation.seq in sub.received.get(key, ()), (
                    f"{sub} never got message {expectation.seq} on {key!r}"
                )
        # (d) liveness: a promise pending before this chunk is fulfilled by the first
        # message of the chunk on its channel (for its pattern).
        checked: set[int] = set()
        for delivery in conn.deliveries:
            if delivery.end <= start or delivery.end > end or delivery.kind != b"pmessage":
                continue
            for promise in pending_before:
                if id(promise) in checked:
                    continue
                if promise.channel == delivery.channel and promise.sub.pattern == delivery.pattern:
                    checked.add(id(promise))
                    assert promise.outcome == "fulfilled", f"{promise} missed {delivery}"
                    assert promise.data == delivery.data
        return True

    @precondition(lambda self: not self.core_closed)
    @rule(dt=st.sampled_from([0.1, 0.5, 2.0, 6.0]), eager=st.booleans())
    @_guard
    def advance_time(self, dt: float, eager: bool) -> None:
        """Time passes; handle_timeout() runs when the core says it is due (or, ``eager``,
        anyway: a driver may call it early). Checked against the model's own timers: a
        handshake must complete within connect_timeout, a PING goes out once nothing has
        arrived for health_check_interval, and no answer within health_check_timeout is
        a HealthCheckTimeout."""
        self.now += dt
        deadline = self.core.next_deadline()
        due = self._model_deadlines()
        if due:
            assert deadline is not None, f"next_deadline() is None, the model says {min(due)}"
            assert deadline <= min(due), f"next_deadline() {deadline} > {min(due)}"
        if not eager and (deadline is None or self.now < deadline):
            return
        connected = self.conn is not None and self.core.state in (
            ConnectionState.HANDSHAKING,
            ConnectionState.READY,
        )
        handshake_late = (
            connected and not self.established and (self.now >= self.connect_at + CONNECT_TIMEOUT)
        )
        ping_late = (
            connected and self.ping_at is not None and (self.now >= self.ping_at + HEALTH_TIMEOUT)
        )
        lost: ConnectionLost | None = None
        try:
            events = self.core.handle_timeout(self.now)
        except ConnectionLost as exc:
            lost = exc
        if lost is not None:
            if handshake_late:
                assert type(lost) is ConnectionLost, repr(lost)
            else:
                assert ping_late, f"{lost!r} before the model's deadlines"
                assert isinstance(lost, HealthCheckTimeout)
            self._lose(lost)
            return
        assert not handshake_late, "the handshake outlived connect_timeout"
        assert not ping_late, "a PING went unanswered past health_check_timeout"
        if connected and self.ping_at is None and self.now >= self.last_fed + HEALTH_INTERVAL:
            self.ping_at = self.now
            assert self.core.wants_write, "no PING after health_check_interval of silence"
        self.process(events, "timeout")

    def _model_deadlines(self) -> list[float]:
        due = [p.deadline for p in self._pending_promises()]
        if self.conn is not None and self.core.state in (
            ConnectionState.HANDSHAKING,
            ConnectionState.READY,
        ):
            if not self.established:
                due.append(self.connect_at + CONNECT_TIMEOUT)
            if self.ping_at is not None:
                due.append(self.ping_at + HEALTH_TIMEOUT)
            else:
                due.append(self.last_fed + HEALTH_INTERVAL)
        return due

    @precondition(lambda self: not self.core_closed and self.conn is not None)
    @rule(data=st.data())
    @_guard
    def server_unsubscribe(self, data: st.DataObject) -> None:
        """The server drops a shard channel of its own accord, as a Redis Cluster node does
        when the slot moves away: every holder that had it active hears of it before the
        core subscribes it again (and then activates it again)."""
        self._quiesce()
        conn = self.conn
        if conn is None or self.core.state is not ConnectionState.READY:
            return
        if not conn.shard_channels:
            return
        name = data.draw(st.sampled_from(sorted(conn.shard_channels)), label="name")
        holders = [
            sub.owner
            for sub in self.subs.values()
            if not sub.closed and sub.kind is SHARD and name in sub.activated
        ]
        assert holders, f"the server holds {name!r} for nobody at rest"
        conn.server_unsubscribe("shard", name)
        self.server_unsubscribed = name
        try:
            events = self.core.receive_data(conn.take(), self.now)
            self.last_fed, self.ping_at = self.now, None
            self.process(events, "server_unsubscribe")
        finally:
            self.server_unsubscribed = None
        told = [e.subscriber for e in events if isinstance(e, NameDeactivated)]
        assert len(told) == len(set(told)), f"a holder told twice of {name!r}: {told}"
        assert set(told) == set(holders), f"told {told} of {name!r}, its holders are {holders}"
        assert not any(self.core.is_active(self.subs[o].handle, name) for o in holders)

    @precondition(lambda self: not self.core_closed)
    @rule(dice=st.integers(0, 4))
    @_guard
    def disconnect(self, dice: int) -> None:
        # Losses are rarer than the other rules; a connection_lost() without a
        # connection (as after a failed attempt) is allowed too.
        if dice:
            return
        self._lose(ConnectionLost("the test pulled the plug"))

    @precondition(
        lambda self: not self.core_closed and self.core.state is ConnectionState.DISCONNECTED
    )
    @rule()
    @_guard
    def reconnect(self) -> None:
        self._connect()

    @precondition(lambda self: not self.core_closed)
    @rule()
    @_guard
    def quiesce(self) -> None:
        """Flush both ways until quiet; then, if connected and ready, check the rest state."""
        self._quiesce()

    def _quiesce(self) -> None:
        if self.core_closed or self.conn is None:
            return
        for _ in range(100):
            self.flush()
            if self.conn is None or self.core.state not in (
                ConnectionState.HANDSHAKING,
                ConnectionState.READY,
            ):
                return
            if not self._deliver(None) and not self.core.wants_write:
                break
        else:
            raise AssertionError("no rest after 100 rounds")
        if self.core.state is ConnectionState.READY:
            self.check_rest()

    def check_rest(self) -> None:
        conn = self.conn
        assert conn is not None
        assert conn.pending() == 0
        open_subs = [s for s in self.subs.values() if not s.closed]
        want = {kind: set[bytes]() for kind in (CHANNEL, SHARD, PATTERN)}
        for sub in open_subs:
            want[PATTERN if sub.kind is PROMISE else sub.kind].update(sub.held)
        # (a)
        assert self.fake.channels() == want[CHANNEL]
        assert self.fake.patterns() == want[PATTERN]
        assert self.fake.shard_channels() == want[SHARD]
        assert all(self.fake.numsub(n) == 1 for n in want[CHANNEL])
        assert all(self.fake.shardnumsub(n) == 1 for n in want[SHARD])
        assert self.fake.numpat() == len(want[PATTERN])
        assert conn.redundant_subscribes == 0, "SUBSCRIBE for a name already subscribed"
        # (b) every held name was activated; denied names were rejected.
        for sub in open_subs:
            assert set(sub.held) == sub.activated, f"{sub}: activated only {sub.activated}"
            assert not DENIED & set(sub.held)
            for name in sub.held:
                assert self.core.is_active(sub.handle, name)
        assert self.tokens == [], "PUBLISH replies still missing at rest"
        assert self.expectations == []

    @precondition(lambda self: not self.core_closed)
    @rule(dice=st.integers(0, 19))
    @_guard
    def close_core(self, dice: int) -> None:
        if dice:
            return  # closing ends the run: make it rarer than the other rules
        pending = {p.owner for p in self._pending_promises()}
        tokens = list(self.tokens)
        events = self.core.close()
        failed = [e.token for e in events if isinstance(e, PublishFailed)]
        assert failed == tokens
        self.tokens = []
        self.process([e for e in events if not isinstance(e, PublishFailed)], "close_core")
        assert {e.promise for e in events if isinstance(e, PromiseFailed)} == pending
        for sub in self.subs.values():
            sub.closed = True
            sub.held.clear()
            sub.activated.clear()
        if self.conn is not None:
            self.conn.close()  # the driver closes the socket; Redis drops everything
            self.conn = None
        self.core_closed = True
        assert self.core.state is ConnectionState.CLOSED
        assert self.core.close() == []
        assert self.core.data_to_send() == b""
        assert self.core.connection_lost(ConnectionLost("after close")) == []
        with pytest.raises(SubscriptionClosed):
            self.core.open_subscription(CHANNEL, None)
        for sub in self.subs.values():
            assert sub.handle.closed
            assert self.core.close_subscription(sub.handle) == []

    @precondition(lambda self: self.core_closed)
    @rule(
        sub=st.one_of(channel_subs, pattern_subs, promise_subs), channel=st.sampled_from(CHANNELS)
    )
    @_guard
    def use_after_close(self, sub: SubModel, channel: bytes) -> None:
        assert sub.handle.closed
        with pytest.raises(SubscriptionClosed):
            self.core.clear(sub.handle)
        if sub.kind in (CHANNEL, SHARD):
            with pytest.raises(SubscriptionClosed):
                self.core.add(sub.handle, [channel])
        if sub.kind is PROMISE:
            with pytest.raises(SubscriptionClosed):
                self.core.new_promise(sub.handle, b"x", 1.0, self.now, None)
        assert self.core.close_subscription(sub.handle) == []

    @precondition(lambda self: self.core_closed)
    @rule(dt=st.sampled_from([0.5, 50.0]))
    @_guard
    def time_after_close(self, dt: float) -> None:
        self.now += dt
        assert self.core.next_deadline() is None
        assert self.core.handle_timeout(self.now) == []
        with pytest.raises(SubscriptionClosed):
            self.core.open_pattern_subscription(b"p*", None)
        with pytest.raises(SubscriptionClosed):
            self.core.open_promise_subscription(b"p", None)
        with pytest.raises(ConnectionLost):
            self.core.publish(b"ch1", b"x")

    # ------------------------------------------------------------------ invariants

    @invariant()
    @_guard
    def names_agree(self) -> None:
        if not hasattr(self, "core"):
            return
        for sub in self.subs.values():
            assert list(sub.handle.names) == list(sub.held), (
                f"{sub}: the core says {list(sub.handle.names)}"
            )
            assert sub.handle.closed is sub.closed

    @invariant()
    @_guard
    def activation_agrees(self) -> None:
        """In ACTIVE every holder is activated, outside it none is."""
        if not hasattr(self, "core") or self.core_closed:
            return
        for sub in self.subs.values():
            if sub.closed:
                continue
            for name in sub.held:
                assert self.core.is_active(sub.handle, name) is (name in sub.activated), (
                    f"{sub}: the core says {name!r} is "
                    f"{'' if self.core.is_active(sub.handle, name) else 'not '}active"
                )

    @invariant()
    @_guard
    def deadline_covers_promises(self) -> None:
        if not hasattr(self, "core") or self.core_closed:
            return
        pending = self._pending_promises()
        if pending:
            deadline = self.core.next_deadline()
            assert deadline is not None
            assert deadline <= min(p.deadline for p in pending)

    def teardown(self) -> None:
        if self.failed:
            return  # a step failed: report that, not a consequence of it
        if hasattr(self, "core") and not self.core_closed:
            if self.core.state is ConnectionState.DISCONNECTED:
                self._connect()
            self._quiesce()
            if self.core.state is ConnectionState.READY:
                # Nothing published is still in flight: everything expected arrived.
                assert self.expectations == []


SETTINGS = settings(
    max_examples=examples(300),
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class Resp2Machine(CoreMachine):
    protocol = 2


class Resp3Machine(CoreMachine):
    protocol = 3


Resp2Machine.TestCase.settings = SETTINGS
Resp3Machine.TestCase.settings = SETTINGS
TestResp2StateMachine: type[unittest.TestCase] = Resp2Machine.TestCase
TestResp3StateMachine: type[unittest.TestCase] = Resp3Machine.TestCase


# ---------------------------------------------------------------------- minimal reproductions
#
# Bugs the machine found, each reduced to the fewest steps: regression tests now.
# One defect, three ways in: a name record that reached IDLE unwanted was deleted
# from the core's table while still queued in its dirty set, so the next
# data_to_send() deleted it again (KeyError), or, if the name had been added again
# in between, deleted the *new* record, whose confirmation then raised
# ProtocolError and whose name was never subscribed again, even after reconnecting.


def _ready(
    protocol: int = 2, fake: FakeRedis | None = None
) -> tuple[MultiplexerCore, FakeConnection, FakeRedis]:
    fake = fake or FakeRedis()
    core = MultiplexerCore(random=lambda: 0.5, protocol=protocol)
    conn = fake.connect()
    core.connection_made(0.0)
    conn.feed(core.data_to_send())
    events = core.receive_data(conn.take(), 0.0) if conn.pending() else []
    assert ConnectionEstablished() in events or core.state is ConnectionState.READY
    return core, conn, fake


def _round_trip(core: MultiplexerCore, conn: FakeConnection) -> list[Any]:
    conn.feed(core.data_to_send())
    return core.receive_data(conn.take(), 0.0)


def test_remove_readd_remove_while_unsubscribing() -> None:
    """A name removed, re-added and removed again while its UNSUBSCRIBE is in flight,
    then the unsubscribe confirmation. Was: KeyError b'a' from data_to_send()."""
    core, conn, fake = _ready()
    sub = core.open_subscription(CHANNEL, "A")
    core.add(sub, [b"a"])
    assert _round_trip(core, conn) == [NamesActivated("A", [b"a"])]
    core.remove(sub, [b"a"])
    conn.feed(core.data_to_send())  # UNSUBSCRIBE a, in flight
    core.add(sub, [b"a"])  # a change of mind...
    core.remove(sub, [b"a"])  # ... and back, before the next write
    assert core.receive_data(conn.take(), 0.0) == []  # the unsubscribe confirmation
    assert core.data_to_send() == b""  # KeyError: b'a'
    assert fake.channels() == set()


def test_readd_after_confirmation_of_a_stale_unsubscribe() -> None:
    """As above, then the name is added again before the next write. Was: the new
    SUBSCRIBE's confirmation raised ProtocolError ("confirmation for a name the core
    does not track") and, after the reconnect, the subscription held b"a" while the
    core sent nothing for it, ever."""
    core, conn, fake = _ready()
    sub = core.open_subscription(CHANNEL, "A")
    core.add(sub, [b"a"])
    _round_trip(core, conn)
    core.remove(sub, [b"a"])
    conn.feed(core.data_to_send())
    core.add(sub, [b"a"])
    core.remove(sub, [b"a"])
    core.receive_data(conn.take(), 0.0)
    assert core.add(sub, [b"a"]) == []
    try:
        events = _round_trip(core, conn)
    except RedisMPXError as exc:  # report what happened next, too
        core.connection_lost(exc)
        conn.close()
        conn = fake.connect()
        core.connection_made(1.0)
        resent = core.data_to_send()
        raise AssertionError(
            f"{exc!r}; after reconnecting the core sends {resent!r} and holds {list(sub.names)}"
        ) from exc
    assert events == [NamesActivated("A", [b"a"])]
    assert fake.channels() == {b"a"}


def test_subscription_closed_while_its_subscribe_is_refused() -> None:
    """The same defect through a NOPERM refusal: the PSUBSCRIBE of a denied pattern is
    in flight when its only subscription closes. Was: KeyError b'den*'."""
    fake = FakeRedis()
    fake.deny(None, b"den*")
    core, conn, _ = _ready(3, fake)
    sub, events = core.open_pattern_subscription(b"den*", "P")
    assert events == []
    conn.feed(core.data_to_send())  # PSUBSCRIBE den*, in flight
    assert core.close_subscription(sub) == []
    assert core.receive_data(conn.take(), 0.0) == []  # -NOPERM ...
    assert core.data_to_send() == b""  # KeyError: b'den*'
    assert fake.patterns() == set()


def test_name_removed_while_its_batch_is_refused() -> None:
    """And through a batch refusal: one SUBSCRIBE for an allowed and a denied name, the
    allowed one removed before Redis refuses the whole command. Was: KeyError b'ok'.
    Expected: the denied name alone is retried, rejected, and nothing is subscribed."""
    fake = FakeRedis()
    fake.deny(None, b"denied")
    core, conn, _ = _ready(2, fake)
    sub = core.open_subscription(CHANNEL, "A")
    core.add(sub, [b"ok", b"denied"])
    conn.feed(core.data_to_send())  # SUBSCRIBE ok denied, in flight
    core.remove(sub, [b"ok"])
    assert core.receive_data(conn.take(), 0.0) == []  # -NOPERM for the whole command
    events = _round_trip(core, conn)  # SUBSCRIBE denied, alone: refused again
    assert [(type(e), e.subscriber, e.name) for e in events] == [(NameRejected, "A", b"denied")]
    assert list(sub.names) == []
    assert core.data_to_send() == b""
    assert fake.channels() == set()
    assert conn.commands[-2:] == [[b"SUBSCRIBE", b"ok", b"denied"], [b"SUBSCRIBE", b"denied"]]
