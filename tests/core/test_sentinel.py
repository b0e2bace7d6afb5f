"""Sentinel mode in the core: SentinelQuery (asking one sentinel) and the ROLE check.

SentinelQuery is fed byte fixtures whole, one byte at a time and split at every
point; whatever a sentinel sends, it answers with an address or raises a
RedisMPXError, never anything else. The core, told ``require_master``, ends its
handshake with ROLE and counts the connection up only if the node says "master".
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.replay import arr, bulk, replay_split
from redismpx_core import (
    AuthenticationError,
    ConnectionEstablished,
    ConnectionLost,
    ConnectionState,
    MasterNotFound,
    MultiplexerCore,
    NamesActivated,
    ProtocolError,
    RedisMPXError,
    SentinelQuery,
    ServerError,
    Settings,
    SubscriptionDisconnected,
    SubscriptionKind,
)
from redismpx_core._sentinel import MAX_ANSWER_SIZE
from redismpx_frontend._connect import format_address

SECRET = "s3ntinel-Pa55-91ab"
QUERY = arr("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")


def answer_of(data: bytes, **options: Any) -> tuple[str, int] | None:
    """Feed ``data`` whole, byte by byte and split at every point: the same outcome
    each time (the address, or None if incomplete); returns it."""

    def fresh() -> SentinelQuery:
        query = SentinelQuery("mymaster", **options)
        query.data_to_send()
        return query

    whole = fresh().receive_data(data)
    one_by_one = fresh()
    results = [one_by_one.receive_data(data[i : i + 1]) for i in range(len(data))]
    assert all(r is None for r in results[:-1]), "answered before the last byte"
    assert results[-1] == whole
    for cut in range(1, len(data)):
        split = fresh()
        assert split.receive_data(data[:cut]) is None
        assert split.receive_data(data[cut:]) == whole, f"split at byte {cut} differs"
    return whole


def raised_by(query: SentinelQuery, chunks: list[bytes]) -> RedisMPXError:
    """The error ``query`` raises when fed ``chunks`` in turn (the test fails if none)."""
    try:
        for chunk in chunks:
            assert query.receive_data(chunk) is None
    except RedisMPXError as error:
        return error
    pytest.fail("no error raised")


def error_of(data: bytes, **options: Any) -> RedisMPXError:
    """The error a fresh query raises for ``data``, fed whole and byte by byte alike."""
    whole = raised_by(SentinelQuery("mymaster", **options), [data])
    by_byte = raised_by(
        SentinelQuery("mymaster", **options), [data[i : i + 1] for i in range(len(data))]
    )
    assert type(by_byte) is type(whole)
    assert str(by_byte) == str(whole)
    return whole


# ------------------------------------------------------------------------------ the request


def test_the_request_is_one_command_sent_once() -> None:
    query = SentinelQuery("mymaster")
    assert query.data_to_send() == QUERY
    assert query.data_to_send() == b""
    assert query.address is None


@pytest.mark.parametrize(
    ("options", "auth"),
    [
        ({"password": SECRET}, arr("AUTH", SECRET)),
        ({"username": "watcher", "password": SECRET}, arr("AUTH", "watcher", SECRET)),
    ],
)
def test_sentinel_credentials_go_first_as_auth(options: dict[str, str], auth: bytes) -> None:
    query = SentinelQuery("mymaster", **options)
    assert query.data_to_send() == auth + QUERY
    assert SECRET not in repr(query)
    assert answer_of(b"+OK\r\n" + arr("10.0.0.7", "6380"), **options) == ("10.0.0.7", 6380)


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="master_name"):
        SentinelQuery("")
    with pytest.raises(ValueError, match="needs a password"):
        SentinelQuery("mymaster", username="watcher")


# ------------------------------------------------------------------------------- the answer


@pytest.mark.parametrize(
    ("host", "port"),
    [("10.0.0.5", 6380), ("127.0.0.1", 1), ("redis-a.internal", 65535), ("::1", 7000)],
)
def test_the_answer_is_the_masters_address(host: str, port: int) -> None:
    assert answer_of(arr(host, str(port))) == (host, port)


def test_the_query_takes_no_input_after_its_answer() -> None:
    query = SentinelQuery("mymaster")
    assert query.receive_data(arr("10.0.0.5", "6380")) == ("10.0.0.5", 6380)
    assert query.address == ("10.0.0.5", 6380)
    assert "answered" in repr(query)
    with pytest.raises(RuntimeError, match="answered"):
        query.receive_data(b"+OK\r\n")


@pytest.mark.parametrize("null", [b"*-1\r\n", b"$-1\r\n", b"_\r\n"])
def test_an_unknown_master_is_master_not_found(null: bytes) -> None:
    error = error_of(null)
    assert type(error) is MasterNotFound
    assert str(error) == "the sentinel monitors no master named 'mymaster'"


@pytest.mark.parametrize(
    ("data", "options", "code"),
    [
        (
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            {"password": SECRET},
            "WRONGPASS",
        ),
        (
            b"-ERR AUTH <password> called without any password configured for the "
            b"default user. Are you sure your configuration is correct?\r\n",
            {"password": SECRET},
            "ERR",
        ),
        (b"-NOAUTH Authentication required.\r\n", {}, "NOAUTH"),
        (b"-ERR invalid password " + SECRET.encode() + b"\r\n", {"password": SECRET}, "ERR"),
    ],
)
def test_refused_credentials_are_an_authentication_error(
    data: bytes, options: dict[str, str], code: str
) -> None:
    error = error_of(data, **options)
    assert type(error) is AuthenticationError
    assert error.code == code
    assert str(error).startswith("the sentinel refused")
    assert SECRET not in str(error)


def test_a_refused_query_is_a_server_error() -> None:
    # What a plain Redis server (not a sentinel) answers.
    error = error_of(b"-ERR unknown command 'SENTINEL', with args beginning with: \r\n")
    assert type(error) is ServerError
    assert error.code == "ERR"
    assert str(error).startswith("the sentinel refused the query: ERR unknown command")


@pytest.mark.parametrize(
    "data",
    [
        b"!!!\r\n",  # not RESP
        b"+OK\r\n",  # a status where the address was due
        b":1\r\n",
        arr("10.0.0.5"),
        arr("10.0.0.5", "6380", "extra"),
        b"*2\r\n:1\r\n:6380\r\n",  # not strings
        b"*2\r\n*0\r\n$4\r\n6380\r\n",
        arr("10.0.0.5", "0"),
        arr("10.0.0.5", "65536"),
        arr("10.0.0.5", "+80"),
        arr("10.0.0.5", "63x"),
        arr("10.0.0.5", ""),
        arr("10.0.0.5", "000000000006379"),
        arr("", "6379"),
        arr("bad host", "6379"),
        arr(b"h\x00st", "6379"),
        arr("h\u00e9st", "6379"),
        arr("1:2", "6379"),  # a ':' but not IPv6
    ],
)
def test_malformed_answers_are_protocol_errors(data: bytes) -> None:
    assert type(error_of(data)) is ProtocolError


def test_auth_answered_with_anything_but_ok_is_a_protocol_error() -> None:
    error = error_of(b":1\r\n" + arr("10.0.0.5", "6380"), password=SECRET)
    assert type(error) is ProtocolError
    assert "AUTH" in str(error)


def test_an_oversized_answer_is_refused_before_it_completes() -> None:
    query = SentinelQuery("mymaster")
    assert query.receive_data(b"*2\r\n$1000000\r\n") is None
    assert query.receive_data(b"x" * (MAX_ANSWER_SIZE - 100)) is None  # within the bound
    with pytest.raises(ProtocolError, match="exceeds"):
        query.receive_data(b"x" * 4096)
    with pytest.raises(RuntimeError, match="failed"):
        query.receive_data(b"x")


@given(st.binary(max_size=64))
@settings(max_examples=500)
def test_any_bytes_answer_or_raise_a_redismpx_error(data: bytes) -> None:
    query = SentinelQuery("mymaster", password=SECRET)
    outcome: Any
    try:
        outcome = query.receive_data(b"+OK\r\n" + data)
    except RedisMPXError as error:
        outcome = error
    if isinstance(outcome, RedisMPXError):
        assert isinstance(outcome, ProtocolError | ServerError | MasterNotFound)
        assert SECRET not in str(outcome)
    elif outcome is not None:
        host, port = outcome
        assert host
        assert 1 <= port <= 65535


def test_format_address() -> None:
    assert format_address("10.0.0.5", 26379) == "10.0.0.5:26379"
    assert format_address("::1", 26379) == "[::1]:26379"


# ------------------------------------------------------------------------ the ROLE check

ROLE_MASTER = b"*3\r\n" + bulk("master") + b":0\r\n*0\r\n"
ROLE_REPLICA = (
    b"*5\r\n" + bulk("slave") + bulk("127.0.0.1") + b":6379\r\n" + bulk("connected") + b":0\r\n"
)
ROLE_SENTINEL = b"*2\r\n" + bulk("sentinel") + b"*1\r\n" + bulk("mymaster")


def sentinel_core(**options: Any) -> MultiplexerCore:
    options.setdefault("random", lambda: 0.5)
    options.setdefault("health_check_interval", None)
    return MultiplexerCore(require_master=True, **options)


def subscribed_core(**options: Any) -> MultiplexerCore:
    """A sentinel-mode core holding channel "x", its handshake and SUBSCRIBE sent."""
    core = sentinel_core(**options)
    core.add(core.open_subscription(SubscriptionKind.CHANNEL, "A"), ["x"])
    core.connection_made(0.0)
    core.data_to_send()
    return core


def test_the_handshake_ends_with_role() -> None:
    core = sentinel_core(username="app", password=SECRET, db=3, client_name="web")
    core.add(core.open_subscription(SubscriptionKind.CHANNEL, "A"), ["x"])
    core.connection_made(0.0)
    assert core.data_to_send() == (
        arr("AUTH", "app", SECRET)
        + arr("SELECT", "3")
        + arr("CLIENT", "SETNAME", "web")
        + arr("ROLE")
        + arr("SUBSCRIBE", "x")
    )
    # ROLE's reply also proves the server alive: no PING of its own.
    bare = sentinel_core()
    bare.connection_made(0.0)
    assert bare.data_to_send() == arr("ROLE")
    resp3 = sentinel_core(protocol=3)
    resp3.connection_made(0.0)
    assert resp3.data_to_send() == arr("HELLO", "3") + arr("ROLE")


def test_without_require_master_there_is_no_role() -> None:
    core = MultiplexerCore(random=lambda: 0.5)
    core.connection_made(0.0)
    assert core.data_to_send() == arr("PING")


def test_a_master_completes_the_handshake() -> None:
    events = replay_split(subscribed_core, ROLE_MASTER + arr("subscribe", "x", 1))
    assert events == [("ConnectionEstablished",), ("activated", "'A'", "b'x'")]
    core = sentinel_core(protocol=3)
    core.connection_made(0.0)
    core.data_to_send()
    assert core.receive_data(b"%1\r\n+server\r\n+redis\r\n", 0.0) == []
    assert core.state is ConnectionState.HANDSHAKING  # ROLE's reply is still due
    assert core.receive_data(ROLE_MASTER, 0.0) == [ConnectionEstablished()]


@pytest.mark.parametrize(("reply", "role"), [(ROLE_REPLICA, "slave"), (ROLE_SENTINEL, "sentinel")])
def test_anything_but_a_master_loses_the_connection(reply: bytes, role: str) -> None:
    core = subscribed_core()
    # The SUBSCRIBE went out with the handshake; its confirmation follows ROLE's reply
    # and must not activate anything.
    with pytest.raises(ConnectionLost) as raised:
        core.receive_data(reply + arr("subscribe", "x", 1), 0.0)
    assert type(raised.value) is ConnectionLost
    assert f"is a {role!r}, not the master" in str(raised.value)
    assert core.state is ConnectionState.BROKEN
    events = core.connection_lost(raised.value)
    assert events == [SubscriptionDisconnected("A", raised.value)]
    assert not any(isinstance(e, NamesActivated) for e in events)
    # The next connection (to the master the sentinels name now) works as any other.
    core.connection_made(1.0)
    assert core.data_to_send() == arr("ROLE") + arr("SUBSCRIBE", "x")
    assert core.receive_data(ROLE_MASTER + arr("subscribe", "x", 1), 1.0) == [
        ConnectionEstablished(),
        NamesActivated("A", [b"x"]),
    ]


def test_a_refused_role_is_a_server_error_not_an_authentication_error() -> None:
    core = subscribed_core(password=SECRET)
    core.receive_data(b"+OK\r\n", 0.0)  # AUTH
    refusal = b"-NOPERM this user has no permissions to run the 'role' command\r\n"
    with pytest.raises(ServerError) as raised:
        core.receive_data(refusal, 0.0)
    assert type(raised.value) is ServerError
    assert raised.value.code == "NOPERM"


@pytest.mark.parametrize("reply", [b":1\r\n", b"+OK\r\n", b"*0\r\n", b"*1\r\n:1\r\n"])
def test_a_role_reply_of_the_wrong_shape_is_a_protocol_error(reply: bytes) -> None:
    core = subscribed_core()
    with pytest.raises(ProtocolError):  # (an empty array fails earlier, as a frame)
        core.receive_data(reply, 0.0)
    assert core.state is ConnectionState.BROKEN


def test_settings_ask_for_the_role_check_only_in_sentinel_mode() -> None:
    plain = Settings.from_url("redis://h")
    assert "require_master" not in plain.core_options()
    sentinel = Settings.from_url("redis+sentinel://h1,h2/mymaster")
    assert sentinel.core_options()["require_master"] is True
    core = MultiplexerCore(random=lambda: 0.5, **sentinel.core_options())
    core.connection_made(0.0)
    assert core.data_to_send() == arr("ROLE")
