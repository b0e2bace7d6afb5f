"""Scripted scenarios for the core against a real ``redis-server`` and against FakeRedis.

Each scenario is one script written against a *backend* (where the core's peer
comes from, and an admin side that publishes and counts subscribers). It runs
once per backend:

* ``redis``: a ``redis-server`` started for the test (tests/redis_servers.py),
  reached over a plain socket, administered over separate connections;
* ``fake``: the in-memory ``FakeRedis`` of tests/core/fake_redis.py;
* ``fake-split``: the same fake, read a few bytes at a time (``SPLIT_READS``), so
  frames arrive split.

and once per protocol (RESP2 and RESP3). Every step compares the normalised
events (see ``peers.normalise``) with an explicitly written list, so a scenario
cannot pass vacuously, and since the list is the same for every backend, the fake
and the real server are held to the same transcript.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core.fake_redis import FakeRedis
from core.peers import FakePeer, Harness, SocketPeer, commands_in, normalise
from redis_servers import RedisServer, acl_user, require_redis7
from redismpx_core import (
    AuthenticationError,
    ConnectionLost,
    ConnectionState,
    MultiplexerCore,
    ProtocolError,
    SubscriptionKind,
)
from redismpx_core._table import MAX_NAMES_PER_COMMAND

CHANNEL = SubscriptionKind.CHANNEL
SHARD = SubscriptionKind.SHARD

protocols = pytest.mark.parametrize("protocol", [2, 3])

EST = ("established",)


def act(owner: str, *names: str | bytes) -> list[tuple[Any, ...]]:
    return [("activated", owner, _b(name)) for name in names]


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def msg(
    owner: str, channel: str | bytes, payload: str | bytes, pattern: str | bytes | None = None
) -> tuple[Any, ...]:
    return ("message", owner, _b(channel), None if pattern is None else _b(pattern), _b(payload))


def new_core(protocol: int, **options: Any) -> MultiplexerCore:
    options.setdefault("random", lambda: 0.5)
    return MultiplexerCore(protocol=protocol, **options)


def subscribe_commands(commands: list[list[bytes]]) -> list[list[bytes]]:
    """The commands written, less the handshake (HELLO/AUTH, or a lone PING)."""
    return [c for c in commands if c[0] not in (b"HELLO", b"AUTH", b"PING")]


# --------------------------------------------------------------------------- backends


@dataclasses.dataclass(frozen=True)
class Config:
    """How a backend's server is set up."""

    password: str | None = None
    #: One ACL user: (name, password, channel patterns it may use).
    acl: tuple[str, str, tuple[str, ...]] | None = None


class RealBackend:
    name = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def peer(self) -> SocketPeer:
        return SocketPeer(self.server.host, self.server.port)

    def require_redis7(self) -> None:
        require_redis7(self.server)

    def publish(self, channel: str | bytes, data: str | bytes) -> int:
        return int(self.server.command("PUBLISH", channel, data))

    def spublish(self, channel: str, data: str) -> int:
        return int(self.server.command("SPUBLISH", channel, data))

    def numsub(self, *channels: str) -> dict[str, int]:
        return {k.decode(): v for k, v in self.server.pubsub_numsub(*channels).items()}

    def shardnumsub(self, *channels: str) -> dict[str, int]:
        flat = self.server.command("PUBSUB", "SHARDNUMSUB", *channels)
        return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def numpat(self) -> int:
        return int(self.server.command("PUBSUB", "NUMPAT"))

    def kill_pubsub_clients(self) -> int:
        return int(self.server.kill_clients("pubsub"))

    def pubsub_clients(self) -> list[tuple[str, int]]:
        """(name, db) of every client in Pub/Sub mode."""
        listing = self.server.command("CLIENT", "LIST", "TYPE", "pubsub").decode()
        clients = []
        for line in listing.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            clients.append((fields["name"], int(fields["db"])))
        return clients


class FakeBackend:
    def __init__(self, fake: FakeRedis, *, chunks: tuple[int, ...] | None = None) -> None:
        self.fake = fake
        self.chunks = chunks
        self.name = "fake" if chunks is None else "fake-split"

    def peer(self) -> FakePeer:
        return FakePeer(self.fake.connect(), chunks=self.chunks)

    def require_redis7(self) -> None:
        pass  # the fake speaks Redis 7

    def publish(self, channel: str | bytes, data: str | bytes) -> int:
        return int(self.fake.publish(_b(channel), _b(data)))

    def spublish(self, channel: str, data: str) -> int:
        return int(self.fake.spublish(_b(channel), _b(data)))

    def numsub(self, *channels: str) -> dict[str, int]:
        return {c: int(self.fake.numsub(c.encode())) for c in channels}

    def shardnumsub(self, *channels: str) -> dict[str, int]:
        return {c: int(self.fake.shardnumsub(c.encode())) for c in channels}

    def numpat(self) -> int:
        return int(self.fake.numpat())

    def kill_pubsub_clients(self) -> int:
        return int(self.fake.kill_pubsub_clients())

    def pubsub_clients(self) -> list[tuple[str, int]]:
        return [
            ((c.name or b"").decode(), c.db)
            for c in self.fake.connections
            if c.in_subscribed_mode()
        ]


Backend = RealBackend | FakeBackend
MakeBackend = Callable[..., Backend]

#: Read sizes the ``fake-split`` backend cycles through.
SPLIT_READS = (1, 3, 7, 2, 64, 5)


def _start_real(request: pytest.FixtureRequest, config: Config) -> RealBackend:
    factory = request.getfixturevalue("redis_server_factory")
    args: list[str] = []
    if config.acl is not None:
        user, password, patterns = config.acl
        args += acl_user(
            user, "on", f">{password}", "~*", "resetchannels", *(f"&{p}" for p in patterns), "+@all"
        )
    return RealBackend(factory(*args, password=config.password))


def _start_fake(config: Config, chunks: tuple[int, ...] | None) -> FakeBackend:
    options: dict[str, Any] = {}
    if config.password is not None:
        options["password"] = config.password
    if config.acl is not None:
        user, password, patterns = config.acl
        options["users"] = {user: (password, patterns)}
    return FakeBackend(FakeRedis(**options), chunks=chunks)


@pytest.fixture(params=["redis", "fake", "fake-split"])
def make_backend(request: pytest.FixtureRequest) -> Iterator[MakeBackend]:
    """``make_backend(password=..., acl=...)``: a fresh server of this backend kind."""
    peers: list[Any] = []

    def make(**options: Any) -> Backend:
        config = Config(**options)
        backend: Backend
        if request.param == "redis":
            backend = _start_real(request, config)
        else:
            backend = _start_fake(config, SPLIT_READS if request.param == "fake-split" else None)
        original = backend.peer

        def tracked() -> Any:
            peer = original()
            peers.append(peer)
            return peer

        backend.peer = tracked  # type: ignore[method-assign]
        return backend

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture
def backend(make_backend: MakeBackend) -> Backend:
    return make_backend()


# --------------------------------------------------------------------------- (a) channels


@protocols
def test_channel_batch_subscribe_deliver_unsubscribe(backend: Backend, protocol: int) -> None:
    core = new_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    keep = core.open_subscription(CHANNEL, "K")
    assert core.add(a, ["a:1", b"a:2", "a:3"]) == []
    assert core.add(keep, ["a:keep"]) == []
    h = Harness(core, backend.peer())

    assert h.run_until_events(5) == [EST, *act("A", "a:1", "a:2", "a:3"), *act("K", "a:keep")]
    assert subscribe_commands(h.take_sent()) == [[b"SUBSCRIBE", b"a:1", b"a:2", b"a:3", b"a:keep"]]
    assert backend.numsub("a:1", "a:2", "a:3", "a:keep") == {
        "a:1": 1,
        "a:2": 1,
        "a:3": 1,
        "a:keep": 1,
    }

    assert [backend.publish(c, d) for c, d in [("a:1", "x"), ("a:2", "y"), ("a:1", "z")]] == [1] * 3
    assert h.run_until_events(3) == [
        msg("A", "a:1", "x"),
        msg("A", "a:2", "y"),
        msg("A", "a:1", "z"),
    ]

    core.remove(a, ["a:1", "a:2", "a:3", "never-held"])
    h.flush()
    assert h.take_sent() == [[b"UNSUBSCRIBE", b"a:1", b"a:2", b"a:3"]]
    h.run_until(lambda: backend.numsub("a:1", "a:2", "a:3") == {"a:1": 0, "a:2": 0, "a:3": 0})
    assert backend.publish("a:1", "gone") == 0
    # The keep message comes after the UNSUBSCRIBE confirmations on the wire: once
    # it is delivered, the core has taken them without complaint.
    assert backend.publish("a:keep", "after") == 1
    assert h.run_until_events(1) == [msg("K", "a:keep", "after")]
    assert not core.is_active(a, b"a:1")
    assert core.is_active(keep, b"a:keep")
    assert h.settle() == []
    assert core.state is ConnectionState.READY


# --------------------------------------------------------------------------- (b) patterns


@protocols
def test_pattern_subscription_gets_the_concrete_channel(backend: Backend, protocol: int) -> None:
    core = new_core(protocol)
    p, events = core.open_pattern_subscription("news.*", "P")
    assert events == []
    c = core.open_subscription(CHANNEL, "C")
    assert core.add(c, ["news.sport"]) == []
    h = Harness(core, backend.peer())

    assert h.run_until_events(3) == [EST, *act("P", "news.*"), *act("C", "news.sport")]
    assert subscribe_commands(h.take_sent()) == [
        [b"PSUBSCRIBE", b"news.*"],
        [b"SUBSCRIBE", b"news.sport"],
    ]
    assert backend.numpat() == 1

    assert backend.publish("news.sport", "goal") == 2
    assert backend.publish("weather", "rain") == 0
    assert backend.publish("news.weather", "sun") == 1
    assert h.run_until_events(3) == [
        msg("C", "news.sport", "goal"),
        msg("P", "news.sport", "goal", "news.*"),
        msg("P", "news.weather", "sun", "news.*"),
    ]

    assert core.close_subscription(p) == []
    h.flush()
    assert h.take_sent() == [[b"PUNSUBSCRIBE", b"news.*"]]
    h.run_until(lambda: backend.numpat() == 0)
    assert backend.publish("news.sport", "late") == 1
    assert h.run_until_events(1) == [msg("C", "news.sport", "late")]
    assert h.settle() == []


# --------------------------------------------------------------------------- (c) shards


@protocols
def test_sharded_subscribe_and_spublish(backend: Backend, protocol: int) -> None:
    backend.require_redis7()
    core = new_core(protocol)
    s = core.open_subscription(SHARD, "S")
    c = core.open_subscription(CHANNEL, "C")
    assert core.add(s, ["{room}.a", "{room}.b"]) == []
    assert core.add(c, ["{room}.a"]) == []
    h = Harness(core, backend.peer())

    # Channels and shard channels are separate name spaces, even for one name.
    assert h.run_until_events(4) == [EST, *act("S", "{room}.a", "{room}.b"), *act("C", "{room}.a")]
    assert subscribe_commands(h.take_sent()) == [
        [b"SSUBSCRIBE", b"{room}.a", b"{room}.b"],
        [b"SUBSCRIBE", b"{room}.a"],
    ]
    assert backend.shardnumsub("{room}.a", "{room}.b") == {"{room}.a": 1, "{room}.b": 1}
    assert backend.numsub("{room}.a") == {"{room}.a": 1}

    assert backend.spublish("{room}.a", "s1") == 1
    assert backend.publish("{room}.a", "p1") == 1
    assert backend.spublish("{room}.b", "s2") == 1
    assert h.run_until_events(3) == [
        msg("S", "{room}.a", "s1"),
        msg("C", "{room}.a", "p1"),
        msg("S", "{room}.b", "s2"),
    ]

    core.remove(s, ["{room}.a"])
    h.flush()
    assert h.take_sent() == [[b"SUNSUBSCRIBE", b"{room}.a"]]
    h.run_until(lambda: backend.shardnumsub("{room}.a") == {"{room}.a": 0})
    assert backend.spublish("{room}.a", "gone") == 0
    assert backend.spublish("{room}.b", "s3") == 1
    assert h.run_until_events(1) == [msg("S", "{room}.b", "s3")]
    assert h.settle() == []


# --------------------------------------------------------------------------- (d) AUTH


@protocols
def test_auth_with_the_right_password(make_backend: MakeBackend, protocol: int) -> None:
    backend = make_backend(password="s3cret")
    core = new_core(protocol, password="s3cret")
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["d:1"])
    h = Harness(core, backend.peer())

    assert h.run_until_events(2) == [EST, *act("A", "d:1")]
    handshake = [c for c in h.take_sent() if c[0] in (b"HELLO", b"AUTH")]
    if protocol == 3:
        assert handshake == [[b"HELLO", b"3", b"AUTH", b"default", b"s3cret"]]
    else:
        assert handshake == [[b"AUTH", b"s3cret"]]
    assert backend.publish("d:1", "hello") == 1
    assert h.run_until_events(1) == [msg("A", "d:1", "hello")]
    assert h.settle() == []


@protocols
def test_auth_with_a_wrong_password(make_backend: MakeBackend, protocol: int) -> None:
    backend = make_backend(password="s3cret")
    core = new_core(protocol, password="hunter2-wrong")
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["d:1"])
    h = Harness(core, backend.peer())

    with pytest.raises(AuthenticationError) as raised:
        h.run_until(lambda: False)
    assert raised.value.code == "WRONGPASS"
    assert "hunter2-wrong" not in str(raised.value)
    assert h.events == []
    assert core.state is ConnectionState.BROKEN
    assert h.lose(raised.value) == [("disconnected", "A", "AuthenticationError")]
    assert core.state is ConnectionState.DISCONNECTED
    assert backend.numsub("d:1") == {"d:1": 0}


@protocols
def test_auth_missing_password(make_backend: MakeBackend, protocol: int) -> None:
    backend = make_backend(password="s3cret")
    core = new_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["d:1"])
    h = Harness(core, backend.peer())

    with pytest.raises(AuthenticationError) as raised:
        h.run_until(lambda: False)
    assert raised.value.code == "NOAUTH"
    # Under RESP2 the handshake is a lone PING, which the server refuses: never up.
    assert h.take() == []
    assert h.lose(raised.value) == [("disconnected", "A", "AuthenticationError")]


@protocols
def test_handshake_selects_the_db_and_names_the_client(
    make_backend: MakeBackend, protocol: int
) -> None:
    backend = make_backend(password="s3cret")
    core = new_core(protocol, password="s3cret", db=3, client_name="mpx-test")
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["h:1"])
    h = Harness(core, backend.peer())
    assert h.run_until_events(2) == [EST, *act("A", "h:1")]
    sent = h.take_sent()
    if protocol == 3:
        assert sent[:2] == [
            [b"HELLO", b"3", b"AUTH", b"default", b"s3cret", b"SETNAME", b"mpx-test"],
            [b"SELECT", b"3"],
        ]
    else:
        assert sent[:3] == [
            [b"AUTH", b"s3cret"],
            [b"SELECT", b"3"],
            [b"CLIENT", b"SETNAME", b"mpx-test"],
        ]
    assert backend.pubsub_clients() == [("mpx-test", 3)]
    # Pub/Sub ignores the db: a publisher on db 0 reaches the subscriber on db 3.
    assert backend.publish("h:1", "any db") == 1
    assert h.run_until_events(1) == [msg("A", "h:1", "any db")]


# --------------------------------------------------------------------------- (e) ACL


@protocols
def test_acl_denied_name_is_rejected_alone(make_backend: MakeBackend, protocol: int) -> None:
    backend = make_backend(acl=("alice", "pw", ("allowed*",)))
    core = new_core(protocol, username="alice", password="pw")
    a = core.open_subscription(CHANNEL, "A")
    b = core.open_subscription(CHANNEL, "B")
    core.add(a, ["allowed:1", "denied:1", "allowed:2"])
    h = Harness(core, backend.peer())

    assert h.run_until_events(4) == [
        EST,
        *act("A", "allowed:1"),
        ("rejected", "A", b"denied:1", "NOPERM"),
        *act("A", "allowed:2"),
    ]
    handshake = [c for c in h.take_sent() if c[0] in (b"HELLO", b"AUTH")]
    if protocol == 3:
        assert handshake == [[b"HELLO", b"3", b"AUTH", b"alice", b"pw"]]
    else:
        assert handshake == [[b"AUTH", b"alice", b"pw"]]
    assert list(a.names) == [b"allowed:1", b"allowed:2"]
    assert backend.numsub("allowed:1", "denied:1", "allowed:2") == {
        "allowed:1": 1,
        "denied:1": 0,
        "allowed:2": 1,
    }

    # A refused pattern, and a later refusal of the same channel for another holder.
    _, events = core.open_pattern_subscription("denied:*", "P")
    assert events == []
    assert normalise(core.add(b, ["denied:1", "allowed:1"])) == act("B", "allowed:1")
    assert h.run_until_events(2) == [
        ("rejected", "P", b"denied:*", "NOPERM"),
        ("rejected", "B", b"denied:1", "NOPERM"),
    ]
    assert list(b.names) == [b"allowed:1"]

    assert backend.publish("allowed:1", "ok") == 1
    assert backend.publish("denied:1", "no") == 0
    assert h.run_until_events(2) == [msg("A", "allowed:1", "ok"), msg("B", "allowed:1", "ok")]
    assert h.settle() == []
    assert core.state is ConnectionState.READY
    assert core.connections_lost == 0


# --------------------------------------------------------------------------- (g) reconnect


@pytest.mark.parametrize("how", ["server-kills", "client-closes"])
@protocols
def test_reconnect_resubscribes(backend: Backend, protocol: int, how: str) -> None:
    core = new_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["r:1", "r:2"])
    core.open_pattern_subscription("rp:*", "P")
    h = Harness(core, backend.peer())
    assert h.run_until_events(4) == [EST, *act("A", "r:1", "r:2"), *act("P", "rp:*")]
    assert backend.publish("r:1", "before") == 1
    assert h.run_until_events(1) == [msg("A", "r:1", "before")]

    lost = ConnectionLost("the connection went away")
    if how == "server-kills":
        assert backend.kill_pubsub_clients() == 1
        h.run_until(lambda: h.eof)
        assert h.take() == []
    expected_lost = [
        ("disconnected", "A", "ConnectionLost"),
        ("disconnected", "P", "ConnectionLost"),
    ]
    assert h.lose(lost) == expected_lost
    assert h.take() == expected_lost
    assert core.state is ConnectionState.DISCONNECTED

    # Changes while disconnected: drop r:2, add r:3.
    core.remove(a, ["r:2"])
    assert core.add(a, ["r:3"]) == []
    assert core.data_to_send() == b""
    h.run_until(lambda: backend.numsub("r:1", "r:2") == {"r:1": 0, "r:2": 0})

    h.take_sent()
    h.reconnect(backend.peer())
    events = h.run_until_events(4)
    # The order among resubscribed names is the core's business; the set is not.
    assert events[0] == EST
    assert sorted(events[1:]) == sorted([*act("A", "r:1", "r:3"), *act("P", "rp:*")])
    sent = subscribe_commands(h.take_sent())
    assert sorted((c[0], sorted(c[1:])) for c in sent) == [
        (b"PSUBSCRIBE", [b"rp:*"]),
        (b"SUBSCRIBE", [b"r:1", b"r:3"]),
    ]
    assert backend.numsub("r:1", "r:2", "r:3") == {"r:1": 1, "r:2": 0, "r:3": 1}
    assert backend.numpat() == 1

    assert backend.publish("r:1", "after") == 1
    assert backend.publish("r:2", "dropped") == 0
    assert backend.publish("rp:x", "pattern") == 1
    assert h.run_until_events(2) == [msg("A", "r:1", "after"), msg("P", "rp:x", "pattern", "rp:*")]
    assert h.settle() == []
    assert (core.connections_made, core.connections_lost) == (2, 1)


# --------------------------------------------------------------------------- (h) many names


@protocols
def test_two_thousand_names_in_one_go(backend: Backend, protocol: int) -> None:
    names = [f"bulk:{i}" for i in range(2000)]
    core = new_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    assert core.add(a, names) == []
    h = Harness(core, backend.peer())

    assert h.run_until_events(1 + len(names)) == [EST, *act("A", *names)]
    sent = subscribe_commands(h.take_sent())
    assert [c[0] for c in sent] == [b"SUBSCRIBE", b"SUBSCRIBE"]
    assert [len(c) - 1 for c in sent] == [MAX_NAMES_PER_COMMAND, 2000 - MAX_NAMES_PER_COMMAND]
    assert [n.decode() for c in sent for n in c[1:]] == names
    assert backend.numsub(*names) == dict.fromkeys(names, 1)

    # A second holder of all of them: activated at once, nothing on the wire.
    b = core.open_subscription(CHANNEL, "B")
    assert normalise(core.add(b, names)) == act("B", *names)
    assert core.data_to_send() == b""
    assert backend.numsub(*names) == dict.fromkeys(names, 1)

    # One connection holds each name once: one receiver as far as Redis knows.
    assert backend.publish("bulk:0", "first") == 1
    assert backend.publish("bulk:1999", "last") == 1
    assert h.run_until_events(4) == [
        msg("A", "bulk:0", "first"),
        msg("B", "bulk:0", "first"),
        msg("A", "bulk:1999", "last"),
        msg("B", "bulk:1999", "last"),
    ]

    core.clear(a)
    core.close_subscription(b)
    h.flush()
    assert [len(c) - 1 for c in subscribe_commands(h.take_sent())] == [1024, 976]
    h.run_until(lambda: backend.numsub(*names) == dict.fromkeys(names, 0))
    assert h.settle() == []


# --------------------------------------------------------------------------- (i) ref counting


@protocols
def test_one_name_in_three_subscriptions(backend: Backend, protocol: int) -> None:
    core = new_core(protocol)
    subs = {owner: core.open_subscription(CHANNEL, owner) for owner in "ABC"}
    keep = core.open_subscription(CHANNEL, "K")
    for sub in subs.values():
        assert core.add(sub, ["shared"]) == []
    core.add(keep, ["i:keep"])
    h = Harness(core, backend.peer())

    assert h.run_until_events(5) == [
        EST,
        *act("A", "shared"),
        *act("B", "shared"),
        *act("C", "shared"),
        *act("K", "i:keep"),
    ]
    assert subscribe_commands(h.take_sent()) == [[b"SUBSCRIBE", b"shared", b"i:keep"]]
    assert backend.numsub("shared") == {"shared": 1}

    assert backend.publish("shared", "m1") == 1
    assert backend.publish("shared", "m2") == 1
    assert h.run_until_events(6) == [
        msg("A", "shared", "m1"),
        msg("B", "shared", "m1"),
        msg("C", "shared", "m1"),
        msg("A", "shared", "m2"),
        msg("B", "shared", "m2"),
        msg("C", "shared", "m2"),
    ]

    core.remove(subs["A"], ["shared"])
    core.remove(subs["B"], ["shared"])
    h.flush()
    assert h.take_sent() == []
    assert backend.numsub("shared") == {"shared": 1}
    assert backend.publish("shared", "m3") == 1
    assert h.run_until_events(1) == [msg("C", "shared", "m3")]

    core.remove(subs["C"], ["shared"])
    h.flush()
    assert h.take_sent() == [[b"UNSUBSCRIBE", b"shared"]]
    h.run_until(lambda: backend.numsub("shared") == {"shared": 0})
    assert backend.publish("shared", "m4") == 0
    assert backend.publish("i:keep", "k") == 1
    assert h.run_until_events(1) == [msg("K", "i:keep", "k")]
    assert h.settle() == []


# --------------------------------------------------------------------------- publishing


@protocols
def test_publish_on_the_subscribed_connection(backend: Backend, protocol: int) -> None:
    core = new_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["pub:1"])
    h = Harness(core, backend.peer())
    assert h.run_until_events(2) == [EST, *act("A", "pub:1")]

    token = core.publish("pub:1", b"self")
    if protocol == 3:
        # RESP3 lets a subscribed connection publish; its own message comes first.
        assert h.run_until_events(2) == [msg("A", "pub:1", "self"), ("published", token, 1)]
    else:
        # RESP2 refuses commands other than (P|S)(UN)SUBSCRIBE, PING... in this state.
        assert h.run_until_events(1) == [("publish_failed", token, "ERR")]
    assert backend.publish("pub:1", "other") == 1
    assert h.run_until_events(1) == [msg("A", "pub:1", "other")]
    assert h.settle() == []
    assert core.state is ConnectionState.READY


# --------------------------------------------------------------------------- health check


@protocols
def test_health_check_ping_in_subscribed_mode(backend: Backend, protocol: int) -> None:
    # Under RESP2 a subscribed connection answers PING with ["pong", ""], not +PONG.
    core = new_core(protocol, health_check_interval=0.01, health_check_timeout=5.0)
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["hc:1"])
    h = Harness(core, backend.peer())
    assert h.run_until_events(2) == [EST, *act("A", "hc:1")]
    h.take_sent()
    pings: list[list[bytes]] = []

    def pings_answered() -> bool:
        pings.extend(commands_in(bytes(h.sent)))
        h.sent.clear()
        # A PING goes out only once the previous one was answered: three sent, two answered.
        return len(pings) >= 3

    h.run_until(pings_answered)
    assert pings[:3] == [[b"PING"]] * 3
    assert h.take() == []
    assert backend.publish("hc:1", "alive") == 1
    assert h.run_until_events(1) == [msg("A", "hc:1", "alive")]
    assert core.state is ConnectionState.READY


@protocols
def test_password_given_but_none_configured(backend: Backend, protocol: int) -> None:
    core = new_core(protocol, password="pw-not-needed")
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["n:1"])
    h = Harness(core, backend.peer())
    if protocol == 3:
        # HELLO 3 AUTH default <anything> succeeds: the default user is "nopass".
        assert h.run_until_events(2) == [EST, *act("A", "n:1")]
        assert backend.publish("n:1", "in") == 1
        assert h.run_until_events(1) == [msg("A", "n:1", "in")]
        return
    # The one-argument AUTH is refused when no password is configured.
    with pytest.raises(AuthenticationError) as raised:
        h.run_until(lambda: False)
    assert raised.value.code == "ERR"
    assert "pw-not-needed" not in str(raised.value)
    assert h.lose(raised.value) == [("disconnected", "A", "AuthenticationError")]


# --------------------------------------------------------------------------- payloads


@protocols
def test_binary_names_and_payloads(backend: Backend, protocol: int) -> None:
    core = new_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    binary = b"bin\x00\xff \r\n*3\r\n"
    core.add(a, [binary, "ünïcode"])
    core.open_pattern_subscription(b"pat\x00*", "P")
    h = Harness(core, backend.peer())
    assert h.run_until_events(4) == [EST, *act("A", binary, "ünïcode"), *act("P", b"pat\x00*")]

    big = bytes(range(256)) * 800  # 200 KiB: many reads, one frame
    payloads = [b"", b"\r\n$3\r\nfoo\r\n", b"\x00\xff" * 3, big]
    for payload in payloads:
        assert backend.publish(binary, payload) == 1
    assert backend.publish("ünïcode", "ü") == 1
    assert backend.publish(b"pat\x00\xfe", b"\r\n") == 1
    assert h.run_until_events(6) == [
        *(msg("A", binary, payload) for payload in payloads),
        msg("A", "ünïcode", "ü"),
        msg("P", b"pat\x00\xfe", b"\r\n", b"pat\x00*"),
    ]
    assert h.settle() == []


@protocols
def test_a_frame_over_max_frame_size_drops_the_connection(backend: Backend, protocol: int) -> None:
    core = new_core(protocol, max_frame_size=16 * 1024)
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["f:1"])
    h = Harness(core, backend.peer())
    assert h.run_until_events(2) == [EST, *act("A", "f:1")]

    assert backend.publish("f:1", "x" * 200_000) == 1
    with pytest.raises(ProtocolError, match="max_frame_size"):
        h.run_until(lambda: False)
    assert h.lose(ProtocolError("frame too big")) == [("disconnected", "A", "ProtocolError")]
    assert h.take() == [("disconnected", "A", "ProtocolError")]  # no message got through

    h.reconnect(backend.peer())
    assert h.run_until_events(2) == [EST, *act("A", "f:1")]
    assert backend.publish("f:1", "small") == 1
    assert h.run_until_events(1) == [msg("A", "f:1", "small")]


@protocols
def test_a_burst_of_small_frames_is_not_an_oversized_frame(backend: Backend, protocol: int) -> None:
    # Every frame is ~130 bytes, far below max_frame_size; only their sum, read in
    # one chunk, is above it.
    core = new_core(protocol, max_frame_size=4096)
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["burst"])
    h = Harness(core, backend.peer())
    assert h.run_until_events(2) == [EST, *act("A", "burst")]

    payloads = [f"{i:03d}".encode() * 30 for i in range(100)]
    for payload in payloads:
        assert backend.publish("burst", payload) == 1
    assert h.run_until_events(100) == [msg("A", "burst", p) for p in payloads]
    assert core.state is ConnectionState.READY


@protocols
def test_a_frame_just_under_max_frame_size_is_accepted(backend: Backend, protocol: int) -> None:
    # The last frame is 4073 bytes on the wire, under max_frame_size, whatever the
    # reads it arrives in (fake-split reads a few bytes at a time).
    core = new_core(protocol, max_frame_size=4096)
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["near"])
    h = Harness(core, backend.peer())
    assert h.run_until_events(2) == [EST, *act("A", "near")]

    payloads = [b"s" * 40] * 9 + [b"B" * 4040]
    for payload in payloads:
        assert backend.publish("near", payload) == 1
    assert h.run_until_events(10) == [msg("A", "near", p) for p in payloads]
    assert core.state is ConnectionState.READY


# --------------------------------------------------------------------------- races


@protocols
def test_subscribe_unsubscribe_bursts_end_as_asked(backend: Backend, protocol: int) -> None:
    core = new_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    h = Harness(core, backend.peer())
    assert h.run_until_events(1) == [EST]

    # Every change is written before any confirmation is read.
    for _ in range(5):
        core.add(a, ["z:1"])
        h.flush()
        core.remove(a, ["z:1"])
        h.flush()
    core.add(a, ["z:1"])
    h.flush()
    # An add and a remove between two writes cancel out: z:2 never reaches the wire.
    core.add(a, ["z:2"])
    core.remove(a, ["z:2"])
    h.flush()
    assert all(b"z:2" not in c for c in h.take_sent())

    assert h.run_until_events(1) == [*act("A", "z:1")]
    h.run_until(lambda: not core.wants_write and h.settle(1) == [])
    assert backend.numsub("z:1", "z:2") == {"z:1": 1, "z:2": 0}
    assert backend.publish("z:1", "once") == 1
    assert h.run_until_events(1) == [msg("A", "z:1", "once")]

    # Remove while the UNSUBSCRIBE is in flight, then add back twice: still one.
    core.remove(a, ["z:1"])
    h.flush()
    core.add(a, ["z:1"])
    h.flush()
    core.remove(a, ["z:1"])
    h.flush()
    core.add(a, ["z:1"])
    h.flush()
    assert h.run_until_events(1) == [*act("A", "z:1")]
    h.run_until(lambda: backend.numsub("z:1") == {"z:1": 1})
    assert backend.publish("z:1", "again") == 1
    assert h.run_until_events(1) == [msg("A", "z:1", "again")]
    assert h.settle() == []


@pytest.mark.parametrize("seed", [1, 2, 3])
@protocols
def test_random_changes_converge(backend: Backend, protocol: int, seed: int) -> None:
    rng = random.Random(seed)
    names = ["q:0", "q:1", "q:2"]
    core = new_core(protocol)
    subs = {owner: core.open_subscription(CHANNEL, owner) for owner in ("A", "B")}
    wanted: dict[str, set[str]] = {owner: set() for owner in subs}
    h = Harness(core, backend.peer())
    for _ in range(150):
        owner = rng.choice("AB")
        name = rng.choice(names)
        if rng.random() < 0.5:
            core.add(subs[owner], [name])
            wanted[owner].add(name)
        else:
            core.remove(subs[owner], [name])
            wanted[owner].discard(name)
        roll = rng.random()
        if roll < 0.4:
            h.flush()
        elif roll < 0.6:
            h.step(timeout=0.0)
    holders = {n: [o for o in "AB" if n in wanted[o]] for n in names}
    counts = {n: int(bool(holders[n])) for n in names}

    def converged() -> bool:
        return (
            all(core.is_active(subs[o], n.encode()) for o in "AB" for n in wanted[o])
            and backend.numsub(*names) == counts
        )

    h.run_until(converged)
    h.take()
    for name in names:
        assert backend.publish(name, f"to {name}") == counts[name]
    expected = [msg(o, n, f"to {n}") for n in names for o in holders[n]]
    if expected:
        got = h.run_until_events(len(expected))
        # Channels in publishing order; the order of one message's holders is the core's.
        assert [e[2] for e in got] == [e[2] for e in expected]
        assert sorted(got) == sorted(expected)
    assert h.settle() == []
    assert core.state is ConnectionState.READY


# --------------------------------------------------------------------------- promises


@protocols
def test_promises_on_a_glob_prefix(backend: Backend, protocol: int) -> None:
    core = new_core(protocol)
    prefix = b"job[1]*?\\:"
    sub, events = core.open_promise_subscription(prefix, "PS")
    assert events == []
    h = Harness(core, backend.peer())
    pattern = b"job\\[1\\]\\*\\?\\\\:*"
    assert h.run_until_events(2) == [EST, *act("PS", pattern)]
    assert subscribe_commands(h.take_sent()) == [[b"PSUBSCRIBE", pattern]]

    now = time.monotonic()
    core.new_promise(sub, "a", 5.0, now, owner="p1")
    core.new_promise(sub, b"a", 5.0, now, owner="p2")
    core.new_promise(sub, "b", 0.05, now, owner="p3")
    # The unescaped glob would match this channel; the escaped one must not.
    assert backend.publish(b"job1zz:a", "decoy") == 0
    assert backend.publish(prefix + b"a", "A1") == 1
    assert h.run_until_events(2) == [("fulfilled", "p1", b"A1"), ("fulfilled", "p2", b"A1")]
    assert h.run_until_events(1) == [("expired", "p3")]
    assert backend.publish(prefix + b"a", "nobody waits") == 1
    assert h.settle() == []

    core.new_promise(sub, "c", 5.0, time.monotonic(), owner="p4")
    assert h.lose(ConnectionLost("gone")) == [
        ("disconnected", "PS", "ConnectionLost"),
        ("promise_failed", "p4", "PromiseInterrupted"),
    ]
    h.take()
    h.reconnect(backend.peer())
    assert h.run_until_events(2) == [EST, *act("PS", pattern)]
    core.new_promise(sub, "d", 5.0, time.monotonic(), owner="p5")
    assert backend.publish(prefix + b"d", "D") == 1
    assert h.run_until_events(1) == [("fulfilled", "p5", b"D")]
