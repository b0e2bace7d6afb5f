"""Unit tests of MultiplexerCore, one behaviour each, with byte fixtures replayed at every split."""

from __future__ import annotations

import pytest

from core.replay import arr, bulk, flatten, frame, push, replay_split
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
    ProtocolError,
    PublishCompleted,
    PublishFailed,
    ServerError,
    SubscriptionClosed,
    SubscriptionDisconnected,
    SubscriptionHandle,
    SubscriptionKind,
)

CHANNEL = SubscriptionKind.CHANNEL


def new_core(**options: object) -> MultiplexerCore:
    options.setdefault("random", lambda: 0.5)
    options.setdefault("health_check_interval", None)
    return MultiplexerCore(**options)  # type: ignore[arg-type]


def ready_core(protocol: int = 2, **options: object) -> MultiplexerCore:
    """A core whose handshake completed at time 0 and whose backoff timer has run out."""
    options.setdefault("backoff_cap", 0.5)
    core = new_core(protocol=protocol, **options)
    if protocol == 3:
        core.connection_made(0.0)
        assert core.data_to_send() == arr("HELLO", "3")
        core.receive_data(b"%1\r\n+proto\r\n:3\r\n", 0.0)
    else:
        # With nothing else to say, the handshake is a PING: the connection counts as
        # up only once the server has answered something.
        assert core.connection_made(0.0) == []
        assert core.data_to_send() == arr("PING")
        assert core.receive_data(b"+PONG\r\n", 0.0) == [ConnectionEstablished()]
    assert core.state is ConnectionState.READY
    assert core.handle_timeout(0.5) == []
    return core


def confirm(protocol: int, kind: str, *names: str, start: int = 1) -> bytes:
    return b"".join(
        frame(protocol, kind, name, start + i) for i, name in enumerate(names)
    )


def activated(owner: object, *names: str) -> list[NamesActivated]:
    return [NamesActivated(owner, [name.encode() for name in names])]


protocols = pytest.mark.parametrize("protocol", [2, 3])


# ---------------------------------------------------------------- batching and reference counting


@protocols
def test_adds_before_a_write_go_out_as_one_command(protocol: int) -> None:
    core = ready_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    b = core.open_subscription(CHANNEL, "B")
    assert core.add(a, ["x", "y"]) == []
    assert core.add(b, ["y", b"z"]) == []
    assert core.data_to_send() == arr("SUBSCRIBE", "x", "y", "z")
    assert core.data_to_send() == b""


def test_add_and_remove_before_the_write_cancel_out() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x", "y"])
    core.remove(a, ["x"])
    assert core.data_to_send() == arr("SUBSCRIBE", "y")
    core.remove(a, ["y"])
    core.add(a, ["y"])
    assert core.data_to_send() == b""


@protocols
def test_a_shared_name_is_subscribed_once_and_released_by_its_last_holder(protocol: int) -> None:
    core = ready_core(protocol)
    subs = [core.open_subscription(CHANNEL, i) for i in range(3)]
    for sub in subs:
        core.add(sub, ["x"])
    assert core.data_to_send() == arr("SUBSCRIBE", "x")
    events = core.receive_data(confirm(protocol, "subscribe", "x"), 0.0)
    assert events == [NamesActivated(i, [b"x"]) for i in range(3)]
    core.remove(subs[0], ["x"])
    core.close_subscription(subs[1])
    assert core.data_to_send() == b""
    core.clear(subs[2])
    assert core.data_to_send() == arr("UNSUBSCRIBE", "x")


def test_joining_an_active_name_activates_at_once_without_a_command() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x"])
    core.data_to_send()
    core.receive_data(confirm(2, "subscribe", "x"), 0.0)
    b = core.open_subscription(CHANNEL, "B")
    assert core.add(b, ["x"]) == activated("B", "x")
    assert core.data_to_send() == b""


def test_adding_a_name_twice_is_one_hold() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x", "x", b"x"])
    core.add(a, ["x"])
    assert list(a.names) == [b"x"]
    core.remove(a, ["x"])
    assert core.data_to_send() == b""


def test_names_are_split_into_commands_of_bounded_size() -> None:
    from redismpx_core._table import MAX_NAMES_PER_COMMAND

    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    names = [f"n{i}" for i in range(MAX_NAMES_PER_COMMAND + 5)]
    core.add(a, names)
    out = core.data_to_send()
    assert out == arr("SUBSCRIBE", *names[:MAX_NAMES_PER_COMMAND]) + arr(
        "SUBSCRIBE", *names[MAX_NAMES_PER_COMMAND:]
    )


def _batch_in_flight(
    protocol: int,
) -> tuple[MultiplexerCore, SubscriptionHandle, SubscriptionHandle]:
    """SUBSCRIBE x y z in flight: A holds all three, B holds y."""
    core = ready_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    b = core.open_subscription(CHANNEL, "B")
    core.add(a, [b"x", b"y", b"z"])
    core.add(b, [b"y"])
    assert core.data_to_send() == arr("SUBSCRIBE", "x", "y", "z")
    return core, a, b


@protocols
def test_a_batch_is_confirmed_name_by_name_around_the_messages_between(protocol: int) -> None:
    data = (
        confirm(protocol, "subscribe", "x", "y")
        + frame(protocol, "message", "x", "early")
        + confirm(protocol, "subscribe", "z", start=3)
    )
    assert replay_split(lambda: _batch_in_flight(protocol)[0], data) == [
        ("activated", "'A'", "b'x'"),
        ("activated", "'A'", "b'y'"),
        ("activated", "'B'", "b'y'"),
        ("message", ("A",), b"x", None, b"early"),
        ("activated", "'A'", "b'z'"),
    ]


@protocols
def test_a_wrong_name_within_a_batch_is_a_protocol_error(protocol: int) -> None:
    core, _, _ = _batch_in_flight(protocol)
    data = confirm(protocol, "subscribe", "x") + confirm(protocol, "subscribe", "z", start=2)
    with pytest.raises(ProtocolError):
        core.receive_data(data, 0.0)
    events = core.connection_lost(ConnectionLost("dropped"))
    assert events[0] == NamesActivated("A", [b"x"])  # confirmed before the wrong one


@protocols
def test_the_confirmed_unsubscribe_of_a_batch_leaves_no_record(protocol: int) -> None:
    core, a, b = _batch_in_flight(protocol)
    core.receive_data(confirm(protocol, "subscribe", "x", "y", "z"), 0.0)
    core.close_subscription(b)
    core.close_subscription(a)
    assert core.data_to_send() == arr("UNSUBSCRIBE", "x", "y", "z")
    assert core.receive_data(confirm(protocol, "unsubscribe", "x", "y", "z"), 0.0) == []
    assert core._table.channels == {}
    assert core.data_to_send() == b""


def test_a_batch_confirmed_after_changes_of_mind() -> None:
    core, a, b = _batch_in_flight(2)
    core.remove(a, [b"y"])  # B still holds it
    core.remove(a, [b"z"])  # cancelled: its UNSUBSCRIBE follows
    assert core.data_to_send() == arr("UNSUBSCRIBE", "z")
    core.add(b, [b"w"])  # waits for the next write
    data = confirm(2, "subscribe", "x", "y", "z") + confirm(2, "unsubscribe", "z", start=2)
    events = core.receive_data(data, 0.0)
    assert events == [NamesActivated("A", [b"x"]), NamesActivated("B", [b"y"])]
    assert list(core._table.channels) == [b"x", b"y", b"w"]
    assert core.data_to_send() == arr("SUBSCRIBE", "w")


# ---------------------------------------------------------------- races (SPEC 3.3)


def test_remove_before_the_subscribe_is_confirmed() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x"])
    assert core.data_to_send() == arr("SUBSCRIBE", "x")
    core.remove(a, ["x"])
    assert core.data_to_send() == arr("UNSUBSCRIBE", "x")
    data = confirm(2, "subscribe", "x") + arr("message", "x", "late") + confirm(
        2, "unsubscribe", "x", start=0
    )

    def make() -> MultiplexerCore:
        c = ready_core()
        s = c.open_subscription(CHANNEL, "A")
        c.add(s, ["x"])
        c.data_to_send()
        c.remove(s, ["x"])
        c.data_to_send()
        return c

    assert replay_split(make, data) == []  # no activation, no delivery
    core.receive_data(data, 0.0)
    assert core.data_to_send() == b""
    assert core._table.channels == {}  # nothing left behind


def test_add_while_the_unsubscribe_is_in_flight() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x"])
    core.data_to_send()
    core.receive_data(confirm(2, "subscribe", "x"), 0.0)
    core.remove(a, ["x"])
    assert core.data_to_send() == arr("UNSUBSCRIBE", "x")
    assert core.add(a, ["x"]) == []  # not active: the UNSUBSCRIBE will land first
    assert core.data_to_send() == arr("SUBSCRIBE", "x")
    events = core.receive_data(
        confirm(2, "unsubscribe", "x", start=0)
        + arr("message", "x", "between")  # cannot happen, but must not leak if it did
        + confirm(2, "subscribe", "x")
        + arr("message", "x", "after"),
        0.0,
    )
    assert flatten(events) == flatten(
        [NamesActivated("A", [b"x"]), MessagesReceived(("A",), b"x", None, [b"after"])]
    )


def test_subscribe_unsubscribe_subscribe_in_a_burst_keeps_two_commands_in_flight_at_most() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x"])
    assert core.data_to_send() == arr("SUBSCRIBE", "x")
    core.remove(a, ["x"])
    assert core.data_to_send() == arr("UNSUBSCRIBE", "x")
    core.add(a, ["x"])
    assert core.data_to_send() == b""  # waits: SUBSCRIBE and UNSUBSCRIBE already in flight
    core.receive_data(confirm(2, "subscribe", "x"), 0.0)
    assert core.data_to_send() == arr("SUBSCRIBE", "x")
    events = core.receive_data(
        confirm(2, "unsubscribe", "x", start=0) + confirm(2, "subscribe", "x"), 0.0
    )
    assert events == activated("A", "x")


def test_remove_while_disconnected_sends_nothing_on_reconnect() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x", "y"])
    core.data_to_send()
    core.receive_data(confirm(2, "subscribe", "x", "y"), 0.0)
    core.connection_lost(ConnectionLost("reset"))
    core.remove(a, ["x"])
    core.connection_made(1.0)
    assert core.data_to_send() == arr("PING") + arr("SUBSCRIBE", "y")


def test_close_twice_and_use_after_close() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x"])
    assert core.close_subscription(a) == []
    assert core.close_subscription(a) == []
    with pytest.raises(SubscriptionClosed):
        core.add(a, ["y"])
    with pytest.raises(SubscriptionClosed):
        core.remove(a, ["x"])
    with pytest.raises(SubscriptionClosed):
        core.clear(a)
    assert core.data_to_send() == b""


# ---------------------------------------------------------------- bad input (SPEC 3.14)


@pytest.mark.parametrize(
    ("names", "error"),
    [
        (["ok", 5], TypeError),
        (["ok", None], TypeError),
        (["ok", bytearray(b"x")], TypeError),
        (["ok", ""], ValueError),
        (["ok", b""], ValueError),
        ([b"ok", b""], ValueError),
        ([b"ok", b"ok", 5], TypeError),
    ],
)
def test_a_bad_name_changes_nothing(names: list[object], error: type[Exception]) -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    with pytest.raises(error):
        core.add(a, names)
    assert a.names == {}
    assert core.data_to_send() == b""


def test_str_names_are_utf8_and_bytes_are_kept() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["café", b"\xff"])
    assert list(a.names) == ["café".encode(), b"\xff"]


def test_names_of_a_bytes_subclass_are_held_as_bytes() -> None:
    class Name(bytes):
        pass

    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, (Name(b"x"), b"y", b"x"))
    assert [type(name) for name in a.names] == [bytes, bytes]
    assert core.data_to_send() == arr("SUBSCRIBE", "x", "y")


def test_pattern_and_promise_subscriptions_have_a_fixed_name() -> None:
    core = ready_core()
    p, _ = core.open_pattern_subscription("a*", "P")
    with pytest.raises(TypeError):
        core.add(p, ["b"])
    with pytest.raises(TypeError):
        core.open_pattern_subscription(5, "P")
    with pytest.raises(TypeError):
        core.clear(p)
    promises, _ = core.open_promise_subscription("q-", "Q")
    with pytest.raises(TypeError):
        core.clear(promises)
    assert list(p.names) == [b"a*"]
    with pytest.raises(ValueError, match="empty"):
        core.open_promise_subscription("", "Q")


# ---------------------------------------------------------------- delivery (SPEC 3.5)


@protocols
def test_messages_reach_every_holder_in_order(protocol: int) -> None:
    def make() -> MultiplexerCore:
        c = ready_core(protocol)
        for owner in ("A", "B"):
            s = c.open_subscription(CHANNEL, owner)
            c.add(s, ["x"])
        c.data_to_send()
        c.receive_data(confirm(protocol, "subscribe", "x"), 0.0)
        return c

    data = (
        frame(protocol, "message", "x", "1")
        + frame(protocol, "message", "x", "2")
        + frame(protocol, "message", "other", "ignored")
        + frame(protocol, "message", "x", b"\x00\xff3")
    )
    events = replay_split(make, data)
    assert events == [
        ("message", ("A", "B"), b"x", None, b"1"),
        ("message", ("A", "B"), b"x", None, b"2"),
        ("message", ("A", "B"), b"x", None, b"\x00\xff3"),
    ]


def test_consecutive_messages_share_one_event() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x", "y"])
    core.data_to_send()
    core.receive_data(confirm(2, "subscribe", "x", "y"), 0.0)
    events = core.receive_data(
        arr("message", "x", "1") + arr("message", "x", "2") + arr("message", "y", "3"), 0.0
    )
    assert events == [
        MessagesReceived(("A",), b"x", None, [b"1", b"2"]),
        MessagesReceived(("A",), b"y", None, [b"3"]),
    ]


def test_no_delivery_after_remove() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    b = core.open_subscription(CHANNEL, "B")
    core.add(a, ["x"])
    core.add(b, ["x"])
    core.data_to_send()
    core.receive_data(confirm(2, "subscribe", "x"), 0.0)
    core.remove(a, ["x"])
    events = core.receive_data(arr("message", "x", "1"), 0.0)
    assert events == [MessagesReceived(("B",), b"x", None, [b"1"])]


@protocols
def test_pattern_messages_carry_the_concrete_channel(protocol: int) -> None:
    def make() -> MultiplexerCore:
        c = ready_core(protocol)
        c.open_pattern_subscription("news:*", "P")
        assert c.data_to_send() == arr("PSUBSCRIBE", "news:*")
        c.receive_data(confirm(protocol, "psubscribe", "news:*"), 0.0)
        return c

    data = frame(protocol, "pmessage", "news:*", "news:1", "a") + frame(
        protocol, "pmessage", "news:*", "news:2", "b"
    )
    assert replay_split(make, data) == [
        ("message", ("P",), b"news:1", b"news:*", b"a"),
        ("message", ("P",), b"news:2", b"news:*", b"b"),
    ]


@protocols
def test_sharded_subscriptions(protocol: int) -> None:
    core = ready_core(protocol)
    s = core.open_subscription(SubscriptionKind.SHARD, "S")
    core.add(s, ["user:{1}"])
    c = core.open_subscription(CHANNEL, "C")
    core.add(c, ["user:{1}"])
    assert core.data_to_send() == arr("SSUBSCRIBE", "user:{1}") + arr("SUBSCRIBE", "user:{1}")
    events = core.receive_data(
        confirm(protocol, "ssubscribe", "user:{1}")
        + confirm(protocol, "subscribe", "user:{1}")
        + frame(protocol, "smessage", "user:{1}", "s")
        + frame(protocol, "message", "user:{1}", "c"),
        0.0,
    )
    assert events == [
        NamesActivated("S", [b"user:{1}"]),
        NamesActivated("C", [b"user:{1}"]),
        MessagesReceived(("S",), b"user:{1}", None, [b"s"]),
        MessagesReceived(("C",), b"user:{1}", None, [b"c"]),
    ]
    core.clear(s)
    assert core.data_to_send() == arr("SUNSUBSCRIBE", "user:{1}")


def test_a_server_sent_sunsubscribe_resubscribes() -> None:
    core = ready_core()
    s = core.open_subscription(SubscriptionKind.SHARD, "S")
    core.add(s, ["k"])
    core.data_to_send()
    core.receive_data(confirm(2, "ssubscribe", "k"), 0.0)
    [told] = core.receive_data(confirm(2, "sunsubscribe", "k", start=0), 0.0)
    assert isinstance(told, NameDeactivated)
    assert (told.subscriber, told.name) == ("S", b"k")
    assert not core.is_active(s, b"k")
    assert core.data_to_send() == arr("SSUBSCRIBE", "k")
    assert core.receive_data(confirm(2, "ssubscribe", "k"), 0.0) == activated("S", "k")


@protocols
def test_a_server_sent_unsubscribe_tells_every_holder_before_the_name_comes_back(
    protocol: int,
) -> None:
    """Each holder sees activation, disconnect, activation (the invariant of _state.py):
    the messages published while the name was unsubscribed are lost, and the holders
    are told so. The notice is not a connection outage: a real loss later is told too."""
    core = ready_core(protocol)
    a = core.open_subscription(SubscriptionKind.SHARD, "A")
    b = core.open_subscription(SubscriptionKind.SHARD, "B")
    core.add(a, ["s", "t"])
    core.add(b, ["s"])
    assert core.data_to_send() == arr("SSUBSCRIBE", "s") + arr("SSUBSCRIBE", "t")  # two slots
    assert core.receive_data(confirm(protocol, "ssubscribe", "s", "t"), 0.0) == [
        NamesActivated("A", [b"s"]),
        NamesActivated("B", [b"s"]),
        NamesActivated("A", [b"t"]),
    ]
    events = core.receive_data(
        frame(protocol, "sunsubscribe", "s", 1) + frame(protocol, "smessage", "s", "gone"), 0.0
    )
    assert [(type(e), e.subscriber, e.name) for e in events] == [  # type: ignore[union-attr]
        (NameDeactivated, "A", b"s"),
        (NameDeactivated, "B", b"s"),
    ]
    error = events[0].error  # type: ignore[union-attr]
    assert events[1].error is error  # type: ignore[union-attr]
    assert isinstance(error, ConnectionLost)
    assert "server unsubscribed" in str(error)
    assert "'s'" in str(error)
    assert not core.is_active(a, b"s")
    assert core.is_active(a, b"t")  # the holder's other names carry on
    assert list(a.names) == [b"s", b"t"]  # still wanted: subscribed again, here
    assert core.data_to_send() == arr("SSUBSCRIBE", "s")
    assert core.receive_data(confirm(protocol, "ssubscribe", "s", start=2), 0.0) == [
        NamesActivated("A", [b"s"]),
        NamesActivated("B", [b"s"]),
    ]
    lost = ConnectionLost("reset")
    assert core.connection_lost(lost) == [
        SubscriptionDisconnected("A", lost),
        SubscriptionDisconnected("B", lost),
    ]


# ---------------------------------------------------------------- handshake


def test_resp2_handshake_with_user_db_and_name() -> None:
    core = new_core(username="alice", password="s3cret", db=2, client_name="web")
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x"])
    assert core.connection_made(0.0) == []
    assert core.data_to_send() == (
        arr("AUTH", "alice", "s3cret")
        + arr("SELECT", "2")
        + arr("CLIENT", "SETNAME", "web")
        + arr("SUBSCRIBE", "x")
    )

    def make() -> MultiplexerCore:
        c = new_core(username="alice", password="s3cret", db=2, client_name="web")
        c.add(c.open_subscription(CHANNEL, "A"), ["x"])
        c.connection_made(0.0)
        c.data_to_send()
        return c

    events = replay_split(make, b"+OK\r\n+OK\r\n+OK\r\n" + confirm(2, "subscribe", "x"))
    assert events == [("ConnectionEstablished",), ("activated", "'A'", "b'x'")]


def test_resp3_handshake_is_one_hello() -> None:
    core = new_core(protocol=3, password="pw", client_name="web")
    core.connection_made(0.0)
    assert core.data_to_send() == arr("HELLO", "3", "AUTH", "default", "pw", "SETNAME", "web")
    events = core.receive_data(b"%1\r\n+server\r\n+redis\r\n", 0.0)
    assert events == [ConnectionEstablished()]


@pytest.mark.parametrize(
    "reply",
    [
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        b"-ERR AUTH <password> called without any password configured for the default user.\r\n",
    ],
)
def test_a_refused_password_is_an_authentication_error(reply: bytes) -> None:
    core = new_core(password="hunter2")
    core.add(core.open_subscription(CHANNEL, "A"), ["x"])
    core.connection_made(0.0)
    core.data_to_send()
    with pytest.raises(AuthenticationError) as raised:
        core.receive_data(reply, 0.0)
    assert "hunter2" not in str(raised.value)
    events = core.connection_lost(raised.value)
    assert events == [SubscriptionDisconnected("A", raised.value)]
    assert core.state is ConnectionState.DISCONNECTED


def test_the_password_is_scrubbed_from_server_errors_and_repr() -> None:
    core = new_core(password="hunter2")
    core.connection_made(0.0)
    with pytest.raises(AuthenticationError) as raised:
        core.receive_data(b"-ERR no such password hunter2\r\n", 0.0)
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in repr(core)


def test_max_clients_at_accept_is_a_server_error() -> None:
    core = ready_core()
    core.add(core.open_subscription(CHANNEL, "A"), ["x"])
    core.data_to_send()
    with pytest.raises(ServerError) as raised:
        core.receive_data(b"-ERR max number of clients reached\r\n", 0.0)
    assert not isinstance(raised.value, AuthenticationError)


def test_a_server_that_refuses_at_accept_never_counts_as_connected() -> None:
    core = new_core()
    core.add(core.open_subscription(CHANNEL, "A"), ["x"])
    assert core.connection_made(0.0) == []
    assert core.data_to_send() == arr("PING") + arr("SUBSCRIBE", "x")
    with pytest.raises(ServerError):
        core.receive_data(b"-ERR max number of clients reached\r\n", 0.0)
    first = core.connection_lost(ConnectionLost("x"))
    assert [type(e) for e in first] == [SubscriptionDisconnected]
    for _ in range(3):  # every later refusal is the same outage: nobody is told again
        core.connection_made(1.0)
        core.data_to_send()
        with pytest.raises(ServerError):
            core.receive_data(b"-ERR max number of clients reached\r\n", 1.0)
        assert core.connection_lost(ConnectionLost("x")) == []
        assert core.state is ConnectionState.DISCONNECTED


# ------------------------------------------------------------- per-name server errors (SPEC 3.12)


@protocols
def test_a_refused_batch_is_retried_name_by_name(protocol: int) -> None:
    core = ready_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    b = core.open_subscription(CHANNEL, "B")
    core.add(a, ["ok", "secret"])
    core.add(b, ["secret"])
    assert core.data_to_send() == arr("SUBSCRIBE", "ok", "secret")
    nope = b"-NOPERM this user has no permissions to access one of the channels\r\n"
    assert core.receive_data(nope, 0.0) == []
    assert core.data_to_send() == arr("SUBSCRIBE", "ok") + arr("SUBSCRIBE", "secret")
    events = core.receive_data(confirm(protocol, "subscribe", "ok") + nope, 0.0)
    assert events[0] == NamesActivated("A", [b"ok"])
    assert [(type(e), e.subscriber, e.name) for e in events[1:]] == [
        (NameRejected, "A", b"secret"),
        (NameRejected, "B", b"secret"),
    ]
    rejected = events[1]
    assert isinstance(rejected, NameRejected)
    assert rejected.error.code == "NOPERM"
    assert list(a.names) == [b"ok"]
    assert list(b.names) == []
    assert core.state is ConnectionState.READY  # no reconnect
    assert core.data_to_send() == b""


def test_connection_level_errors_on_subscribe_are_raised() -> None:
    core = ready_core()
    core.add(core.open_subscription(CHANNEL, "A"), ["x"])
    core.data_to_send()
    with pytest.raises(ServerError) as raised:
        core.receive_data(b"-LOADING Redis is loading the dataset in memory\r\n", 0.0)
    assert raised.value.code == "LOADING"


# ---------------------------------------------------------------- protocol errors


def test_a_reply_nobody_asked_for_is_a_protocol_error() -> None:
    core = ready_core()
    with pytest.raises(ProtocolError):
        core.receive_data(b"+OK\r\n", 0.0)
    assert core.state is ConnectionState.BROKEN


def test_malformed_bytes_keep_the_messages_read_before_them() -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x"])
    core.data_to_send()
    core.receive_data(confirm(2, "subscribe", "x"), 0.0)
    with pytest.raises(ProtocolError) as raised:
        core.receive_data(arr("message", "x", "kept") + b"?garbage\r\n", 0.0)
    events = core.connection_lost(raised.value)
    assert events == [
        MessagesReceived(("A",), b"x", None, [b"kept"]),
        SubscriptionDisconnected("A", raised.value),
    ]


@pytest.mark.parametrize(
    "data",
    [
        arr("message", "x"),
        arr("message", "x", "a", "b"),
        b"*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n:5\r\n",
        arr("subscribe", "nobody-asked", 1),
        arr("pmessage", "x"),
        b"*0\r\n",
        # Checked, not caught: each of these once raised an IndexError or TypeError.
        b"*3\r\n:1\r\n$1\r\nx\r\n$1\r\ny\r\n",  # an int where the kind goes
        b"*2\r\n*0\r\n$1\r\nx\r\n",  # a list (unhashable) where the kind goes
        b"*3\r\n$7\r\nmessage\r\n*0\r\n$1\r\na\r\n",  # a list where the channel goes
        arr("pmessage", "x*", "x", "a", "b"),
        b"*4\r\n$8\r\npmessage\r\n*0\r\n$1\r\nx\r\n$1\r\na\r\n",
        b"*1\r\n$9\r\nsubscribe\r\n",
        b"%1\r\n*0\r\n:1\r\n",  # a map keyed by an array: hiredis cannot hash it
        b"~1\r\n%0\r\n",  # a set of a map: the same
    ],
)
def test_frames_of_the_wrong_shape_are_protocol_errors(data: bytes) -> None:
    core = ready_core()
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x"])
    core.data_to_send()
    core.receive_data(confirm(2, "subscribe", "x"), 0.0)
    with pytest.raises(ProtocolError):
        core.receive_data(data, 0.0)


@protocols
def test_a_confirmation_whose_count_is_not_an_int_is_a_protocol_error(protocol: int) -> None:
    def make() -> MultiplexerCore:
        core = ready_core(protocol)
        core.add(core.open_subscription(CHANNEL, "A"), ["x", "y"])
        assert core.data_to_send() == arr("SUBSCRIBE", "x", "y")
        return core

    first = frame(protocol, "subscribe", "x", 1)
    bad = (b"*3\r\n" if protocol == 2 else b">3\r\n") + bulk("subscribe") + bulk("y")
    assert make().receive_data(first + bad + b":2\r\n", 0.0) == activated("A", "x", "y")
    for count in (bulk("2"), b"_\r\n" if protocol == 3 else b"$-1\r\n", b"*0\r\n"):
        core = make()
        with pytest.raises(ProtocolError, match="confirmation of the wrong shape"):
            core.receive_data(first + bad + count, 0.0)  # second of a run: the short path
        core = make()
        with pytest.raises(ProtocolError, match="confirmation of the wrong shape"):
            core.receive_data(bad.replace(b"y", b"x") + count, 0.0)  # first: the long path


@pytest.mark.parametrize("bug", [KeyError, TypeError, IndexError, AttributeError, ValueError])
def test_a_bug_of_the_core_is_not_taken_for_the_servers(
    bug: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the server's bytes make a ProtocolError: an error of the core's own code
    surfaces as itself, instead of a reconnect that would meet the same bug again
    (TypeError too, which hiredis also raises, for a map keyed by an array)."""
    from redismpx_core._table import NameTable

    core = ready_core()
    core.add(core.open_subscription(CHANNEL, "A"), ["x"])
    core.data_to_send()

    def broken(*args: object) -> None:
        raise bug("a bug of ours")

    monkeypatch.setattr(NameTable, "enter", broken)
    with pytest.raises(bug, match="a bug of ours"):
        core.receive_data(confirm(2, "subscribe", "x") + arr("message", "x", "after"), 0.0)


def test_an_incomplete_frame_larger_than_the_bound_is_refused() -> None:
    core = ready_core(max_frame_size=4096)
    core.receive_data(b"$1099511627776\r\n", 0.0)
    core.receive_data(b"x" * 4000, 0.0)
    with pytest.raises(ProtocolError, match="max_frame_size"):
        core.receive_data(b"x" * 200, 0.0)


def test_resp3_pushes_that_are_not_pubsub_are_ignored() -> None:
    core = ready_core(3)
    assert core.receive_data(push("invalidate", "key"), 0.0) == []


# ---------------------------------------------------------------- health check and time


def test_health_check_pings_when_idle_and_fails_without_an_answer() -> None:
    core = ready_core(health_check_interval=5.0, health_check_timeout=2.0)
    assert core.next_deadline() == 5.0
    assert core.handle_timeout(4.9) == []
    assert core.data_to_send() == b""
    core.receive_data(b"", 3.0)  # arrival of anything resets the idle clock
    assert core.next_deadline() == 8.0
    assert core.handle_timeout(8.0) == []
    assert core.data_to_send() == arr("PING")
    assert core.next_deadline() == 10.0
    with pytest.raises(HealthCheckTimeout):
        core.handle_timeout(10.0)
    events = core.connection_lost(HealthCheckTimeout("x"))
    assert events == []


@protocols
def test_a_pong_clears_the_health_check(protocol: int) -> None:
    core = ready_core(protocol, health_check_interval=5.0, health_check_timeout=2.0)
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x"])
    core.data_to_send()
    core.receive_data(confirm(protocol, "subscribe", "x"), 0.0)
    core.handle_timeout(5.0)
    assert core.data_to_send() == arr("PING")
    pong = arr("pong", "") if protocol == 2 else b"+PONG\r\n"
    assert core.receive_data(pong, 6.0) == []
    assert core.next_deadline() == 11.0


def test_a_handshake_that_hangs_times_out() -> None:
    core = new_core(password="pw", connect_timeout=3.0)
    core.connection_made(10.0)
    assert core.next_deadline() == 13.0
    with pytest.raises(ConnectionLost, match="connect_timeout"):
        core.handle_timeout(13.0)


# ---------------------------------------------------------------- disconnect and reconnect


@protocols
def test_disconnect_notifies_each_holder_once_per_outage_and_reconnect_reactivates(
    protocol: int,
) -> None:
    core = ready_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    b = core.open_subscription(CHANNEL, "B")
    idle = core.open_subscription(CHANNEL, "idle")  # holds nothing: not notified
    core.add(a, ["x", "y"])
    core.add(b, ["y"])
    assert idle.names == {}
    core.data_to_send()
    core.receive_data(confirm(protocol, "subscribe", "x", "y"), 0.0)
    error = ConnectionLost("reset")
    assert core.connection_lost(error) == [
        SubscriptionDisconnected("A", error),
        SubscriptionDisconnected("B", error),
    ]
    assert not core.is_active(a, b"x")
    # A failed attempt during the same outage tells nobody again.
    assert core.connection_lost(ConnectionLost("refused")) == []
    assert core.connection_made(1.0) == []
    handshake = arr("HELLO", "3") if protocol == 3 else arr("PING")
    assert core.data_to_send() == handshake + arr("SUBSCRIBE", "x", "y")
    # Not up before the server answers: a failed attempt now would tell nobody again.
    assert core.connection_lost(ConnectionLost("refused")) == []
    core.connection_made(1.0)
    core.data_to_send()
    answer = b"%0\r\n" if protocol == 3 else b"+PONG\r\n"
    assert core.receive_data(answer, 1.0) == [ConnectionEstablished()]
    events = core.receive_data(confirm(protocol, "subscribe", "x", "y"), 1.0)
    assert events == [NamesActivated("A", [b"x", b"y"]), NamesActivated("B", [b"y"])]
    # The next loss is a new outage: told again.
    assert core.connection_lost(error) == [
        SubscriptionDisconnected("A", error),
        SubscriptionDisconnected("B", error),
    ]


def test_a_failed_first_attempt_tells_the_holders() -> None:
    core = new_core()
    core.add(core.open_subscription(CHANNEL, "A"), ["x"])
    refused = ConnectionLost("refused")
    assert core.connection_lost(refused) == [SubscriptionDisconnected("A", refused)]


def test_backoff_grows_to_the_cap_and_resets_after_a_stable_connection() -> None:
    core = new_core(random=lambda: 1.0, backoff_base=0.5, backoff_cap=4.0)
    delays = [core.next_reconnect_delay() for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    core.connection_made(100.0)
    core.receive_data(b"+PONG\r\n", 100.0)  # the handshake
    assert core.next_deadline() == 104.0  # stability timer: one cap
    core.connection_lost(ConnectionLost("dropped early"))
    assert core.next_reconnect_delay() == 4.0  # an early drop does not reset
    core.connection_made(200.0)
    core.receive_data(b"+PONG\r\n", 200.0)
    core.handle_timeout(204.0)
    assert core.next_reconnect_delay() == 0.5


def test_backoff_applies_full_jitter() -> None:
    core = new_core(random=lambda: 0.25, backoff_base=1.0, backoff_cap=8.0)
    assert [core.next_reconnect_delay() for _ in range(5)] == [0.25, 0.5, 1.0, 2.0, 2.0]


# ---------------------------------------------------------------- promises (SPEC 3.8)


def promise_core(protocol: int = 2) -> tuple[MultiplexerCore, SubscriptionHandle]:
    core = ready_core(protocol)
    sub, events = core.open_promise_subscription("job[1]-", "P")
    assert events == []
    assert core.data_to_send() == arr("PSUBSCRIBE", "job\\[1\\]-*")
    assert core.receive_data(confirm(protocol, "psubscribe", "job\\[1\\]-*"), 0.0) == [
        NamesActivated("P", [b"job\\[1\\]-*"])
    ]
    return core, sub


def test_a_promise_needs_an_active_subscription() -> None:
    core = ready_core()
    sub, _ = core.open_promise_subscription("p-", "P")
    with pytest.raises(InactiveSubscription):
        core.new_promise(sub, "a", 1.0, 0.0, None)
    with pytest.raises(TypeError):
        core.new_promise(sub, 5, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="timeout"):
        core.new_promise(sub, "a", 0, 0.0, None)


@protocols
def test_every_pending_promise_on_a_channel_is_fulfilled_by_its_next_message(
    protocol: int,
) -> None:
    core, sub = promise_core(protocol)
    p1 = core.new_promise(sub, "a", 5.0, 0.0, owner="p1")
    p2 = core.new_promise(sub, b"a", 5.0, 0.0, owner="p2")
    core.new_promise(sub, "b", 5.0, 0.0, owner="p3")
    assert p1.channel == b"job[1]-a"
    events = core.receive_data(
        frame(protocol, "pmessage", "job\\[1\\]-*", "job[1]-a", "done")
        + frame(protocol, "pmessage", "job\\[1\\]-*", "job[1]-a", "again"),
        1.0,
    )
    assert events == [PromiseFulfilled("p1", b"done"), PromiseFulfilled("p2", b"done")]
    assert p1.settled
    assert p2.settled
    assert list(sub.promises) == [b"job[1]-b"]


def test_a_promise_expires_and_leaves_nothing_behind() -> None:
    core, sub = promise_core()
    core.new_promise(sub, "a", 2.0, 10.0, owner="p")
    assert core.next_deadline() == 12.0
    assert core.handle_timeout(11.9) == []
    assert core.handle_timeout(12.0) == [PromiseExpired("p")]
    assert sub.promises == {}
    assert core.next_deadline() is None
    later = core.receive_data(
        arr("pmessage", "job\\[1\\]-*", "job[1]-a", "late"), 13.0
    )
    assert later == []


def test_connection_loss_interrupts_pending_promises() -> None:
    core, sub = promise_core()
    core.new_promise(sub, "a", 2.0, 0.0, owner="p")
    events = core.connection_lost(ConnectionLost("reset"))
    failed = [e for e in events if isinstance(e, PromiseFailed)]
    assert len(failed) == 1
    assert isinstance(failed[0].error, PromiseInterrupted)
    assert core.handle_timeout(5.0) == []  # settled once only


def test_closing_fails_pending_promises_with_subscription_closed() -> None:
    core, sub = promise_core()
    core.new_promise(sub, "a", 2.0, 0.0, owner="p")
    events = core.close_subscription(sub)
    assert len(events) == 1
    assert isinstance(events[0], PromiseFailed)
    assert isinstance(events[0].error, SubscriptionClosed)
    assert core.data_to_send() == arr("PUNSUBSCRIBE", "job\\[1\\]-*")
    with pytest.raises(SubscriptionClosed):
        core.new_promise(sub, "a", 1.0, 0.0, None)


def test_a_pattern_shared_by_a_promise_and_a_pattern_subscription() -> None:
    core, promises = promise_core()
    _, events = core.open_pattern_subscription(b"job\\[1\\]-*", "Q")
    assert events == [NamesActivated("Q", [b"job\\[1\\]-*"])]
    assert core.data_to_send() == b""
    core.new_promise(promises, "a", 2.0, 0.0, owner="p")
    events = core.receive_data(arr("pmessage", "job\\[1\\]-*", "job[1]-a", "v"), 0.5)
    assert events == [
        MessagesReceived(("Q",), b"job[1]-a", b"job\\[1\\]-*", [b"v"]),
        PromiseFulfilled("p", b"v"),
    ]


# ---------------------------------------------------------------- publish and close


def test_publish_under_resp3_and_its_failure_on_loss() -> None:
    core = ready_core(3)
    token = core.publish("x", b"hello")
    assert core.data_to_send() == arr("PUBLISH", "x", "hello")
    assert core.receive_data(b":2\r\n", 0.0) == [PublishCompleted(token, 2)]
    second = core.publish("x", b"again")
    events = core.connection_lost(ConnectionLost("reset"))
    assert len(events) == 1
    assert isinstance(events[0], PublishFailed)
    assert events[0].token == second
    with pytest.raises(ConnectionLost):
        core.publish("x", b"while disconnected")
    with pytest.raises(TypeError):
        ready_core(3).publish("x", "not bytes")  # type: ignore[arg-type]


def test_publish_refused_in_resp2_subscribed_mode_is_reported_not_raised() -> None:
    core = ready_core()
    token = core.publish("x", b"p")
    events = core.receive_data(b"-ERR Can't execute 'publish': only (P|S)SUBSCRIBE\r\n", 0.0)
    assert len(events) == 1
    assert isinstance(events[0], PublishFailed)
    assert events[0].token == token
    assert core.state is ConnectionState.READY


def test_close_fails_everything_and_refuses_new_work() -> None:
    core, promises = promise_core()
    core.new_promise(promises, "a", 2.0, 0.0, owner="p")
    a = core.open_subscription(CHANNEL, "A")
    core.add(a, ["x"])
    events = core.close()
    assert [type(e) for e in events] == [PromiseFailed]
    assert a.closed
    assert promises.closed
    assert core.data_to_send() == b""
    assert core.close() == []
    with pytest.raises(SubscriptionClosed):
        core.open_subscription(CHANNEL, None)
    assert core.connection_lost(ConnectionLost("late")) == []


def test_misuse_of_the_lifecycle_is_a_runtime_error() -> None:
    core = new_core()
    with pytest.raises(RuntimeError):
        core.receive_data(b"+OK\r\n", 0.0)
    core.connection_made(0.0)
    with pytest.raises(RuntimeError):
        core.connection_made(0.0)


def test_bulk_helper_round_trips() -> None:
    assert bulk("ab") == b"$2\r\nab\r\n"


# ------------------------------------------------------------------ what the core lets go of


class _Owner:
    """An owner object that holds its handle, as every driver's subscription does."""

    handle: object = None


def test_a_closed_subscription_is_freed_without_the_cyclic_collector() -> None:
    import gc
    import weakref

    core = ready_core()
    owner = _Owner()
    owner.handle = core.open_subscription(CHANNEL, owner)
    core.add(owner.handle, ["a"])  # type: ignore[arg-type]
    core.data_to_send()
    gone = weakref.ref(owner)
    core.close_subscription(owner.handle)  # type: ignore[arg-type]
    enabled = gc.isenabled()
    gc.disable()
    try:
        del owner
        assert gone() is None, "the owner and its handle still reference each other"
    finally:
        if enabled:
            gc.enable()


def test_settled_promises_do_not_pile_up_behind_a_long_timer() -> None:
    """A promise with a long timeout stays pending while thousands settle early: their
    timer entries let go of their owners at once and are swept out of the heap."""
    import weakref

    core, sub = promise_core()
    core.new_promise(sub, "long", 3000.0, 0.0, owner="long")
    owners = []
    for i in range(2000):
        owner = _Owner()
        owners.append(weakref.ref(owner))
        core.new_promise(sub, f"n{i}", 10.0, 0.0, owner=owner)
        events = core.receive_data(arr("pmessage", "job\\[1\\]-*", f"job[1]-n{i}", "x"), 1.0)
        assert events == [PromiseFulfilled(owner, b"x")]
        del owner, events
    assert all(ref() is None for ref in owners)
    assert core._promises.entries <= 2 * 64 + 2
    assert core.next_deadline() == 3000.0
    assert core.statistics(messages_delivered=0, messages_dropped=0).promises_pending == 1


@protocols
def test_a_batch_of_confirmations_is_one_activation_event_per_subscriber_in_a_row(
    protocol: int,
) -> None:
    core = ready_core(protocol)
    a = core.open_subscription(CHANNEL, "A")
    b = core.open_subscription(CHANNEL, "B")
    names = [f"n{i}" for i in range(2000)]
    core.add(a, names)
    core.add(b, ["n1999"])
    core.data_to_send()  # two SUBSCRIBE commands: 1,024 names, then the rest
    events = core.receive_data(confirm(protocol, "subscribe", *names), 0.0)
    assert events == activated("A", *names) + activated("B", "n1999")
    # Joining names already active: one event for the whole add.
    assert core.add(b, names[:3]) == activated("B", *names[:3])


@pytest.mark.parametrize("single", ["news", b"news"])
def test_a_single_name_is_not_taken_for_its_letters(single: object) -> None:
    core = ready_core()
    sub = core.open_subscription(SubscriptionKind.CHANNEL, None)
    with pytest.raises(TypeError, match="iterable"):
        core.add(sub, single)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        core.remove(sub, single)  # type: ignore[arg-type]
    assert sub.names == {}
    assert core.data_to_send() == b""


def test_a_publish_goes_out_after_the_changes_made_before_it() -> None:
    core = ready_core(protocol=3)
    sub = core.open_subscription(SubscriptionKind.CHANNEL, None)
    core.add(sub, [b"a"])
    core.data_to_send()
    core.receive_data(frame(3, "subscribe", "a", 1), 0.0)
    core.remove(sub, [b"a"])
    core.publish(b"a", b"x")
    assert core.data_to_send() == arr("UNSUBSCRIBE", "a") + arr("PUBLISH", "a", "x")
