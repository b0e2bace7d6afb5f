"""Failovers as they happen, in the core: FailoverWatch reads a sentinel's
``+switch-master`` announcements, MasterTarget decides what one connection does
about them, and a MultiplexerCore with watch_core_options() is the sentinel
connection that hears them.

An announcement is ``<name> <old host> <old port> <new host> <new port>``; whatever
else a sentinel sends on that channel is either about another master (ignored) or
a ProtocolError, never anything else.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.replay import arr, bulk
from redismpx_core import (
    ConnectionEstablished,
    FailoverWatch,
    MasterSwitched,
    MasterTarget,
    MessagesReceived,
    MultiplexerCore,
    NamesActivated,
    ProtocolError,
    Settings,
    SubscriptionKind,
)
from redismpx_core._sentinel import SWITCH_MASTER, watch_core_options

SECRET = "s3ntinel-Pa55-91ab"


def watch() -> FailoverWatch:
    return FailoverWatch("mymaster")


# ------------------------------------------------------------------ FailoverWatch


def test_the_channel_is_switch_master() -> None:
    assert watch().channel == SWITCH_MASTER == b"+switch-master"


@pytest.mark.parametrize(
    ("payload", "old", "new"),
    [
        (b"mymaster 127.0.0.1 6379 127.0.0.1 6380", ("127.0.0.1", 6379), ("127.0.0.1", 6380)),
        (b"mymaster ::1 1 ::1 65535", ("::1", 1), ("::1", 65535)),
        (b"mymaster node-a 6379 node-b 6379", ("node-a", 6379), ("node-b", 6379)),
        (bytearray(b"mymaster 10.0.0.1 1 10.0.0.2 2"), ("10.0.0.1", 1), ("10.0.0.2", 2)),
    ],
)  # fmt: skip
def test_an_announcement_for_this_master_is_a_switch(
    payload: bytes, old: tuple[str, int], new: tuple[str, int]
) -> None:
    assert watch().announcement(payload) == MasterSwitched("mymaster", old, new)


@pytest.mark.parametrize(
    "payload",
    [
        b"othermaster 127.0.0.1 6379 127.0.0.1 6380",
        b"mymaster2 127.0.0.1 6379 127.0.0.1 6380",  # our name is a prefix of it
        b"my master 127.0.0.1 6379 127.0.0.1 6380",  # a name with a space (SENTINEL MONITOR)
        b"MYMASTER 127.0.0.1 6379 127.0.0.1 6380",  # names are case-sensitive
        b"other \x00 0 \xff 99999",  # another master's, however odd: not ours to judge
        b"mymaster",
        b"",
    ],
)
def test_an_announcement_for_another_master_is_none(payload: bytes) -> None:
    assert watch().announcement(payload) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"mymaster 127.0.0.1 6379 127.0.0.1", "not '<name> <old host>"),
        (b"mymaster 127.0.0.1 6379 127.0.0.1 6380 extra", "not '<name> <old host>"),
        (b"mymaster  127.0.0.1 6379 127.0.0.1 6380", "not '<name> <old host>"),
        (b"mymaster 127.0.0.1 6379  6380", "the sentinel announced a bad host: the host is empty"),
        (b"mymaster 127.0.0.1 6379 bad\x00host 6380", "the sentinel announced a bad host"),
        (b"mymaster 127.0.0.1 6379 h\xc3\xa9 6380", "a host that is not ASCII"),
        (b"mymaster 127.0.0.1 6379 :::x 6380", "the sentinel announced a bad host"),
        (b"mymaster 127.0.0.1 6379 127.0.0.1 0", "a port that is not from 1 to 65535"),
        (b"mymaster 127.0.0.1 6379 127.0.0.1 65536", "a port that is not from 1 to 65535"),
        (b"mymaster 127.0.0.1 6379 127.0.0.1 -1", "a port that is not from 1 to 65535"),
        (b"mymaster 127.0.0.1 6379 127.0.0.1 000006379", "a port that is not from 1 to 65535"),
        (b"mymaster 127.0.0.1 x 127.0.0.1 6380", "a port that is not from 1 to 65535"),
        (b"mymaster 127.0.0.1 6379 127.0.0.1 \xd9\xa1", "a port that is not from 1 to 65535"),
    ],
)
def test_a_malformed_announcement_for_this_master_is_a_protocol_error(
    payload: bytes, message: str
) -> None:
    with pytest.raises(ProtocolError) as raised:
        watch().announcement(payload)
    assert type(raised.value) is ProtocolError
    assert message in str(raised.value)


def test_an_announced_address_is_checked_as_an_answer_is() -> None:
    """The same checks, the same words, as SentinelQuery's for GET-MASTER-ADDR-BY-NAME."""
    from redismpx_core._sentinel import _parse_address

    for host, port in [(b"bad\x00host", b"1"), (b"h", b"0"), (b"h\xff", b"1")]:
        with pytest.raises(ProtocolError) as answered:
            _parse_address([host, port])
        with pytest.raises(ProtocolError) as announced:
            watch().announcement(b"mymaster h 1 " + host + b" " + port)
        assert str(announced.value) == str(answered.value).replace(" gave ", " announced ")


@given(st.binary(max_size=64))
def test_any_payload_is_a_switch_none_or_a_protocol_error(payload: bytes) -> None:
    for data in (payload, b"mymaster " + payload):
        try:
            result = watch().announcement(data)
        except ProtocolError:
            continue
        assert result is None or isinstance(result, MasterSwitched)


@given(
    st.sampled_from(["127.0.0.1", "::1", "10.1.2.3", "node-7.example"]),
    st.integers(1, 65535),
    st.sampled_from(["127.0.0.2", "fe80::1", "node-8.example"]),
    st.integers(1, 65535),
)
def test_every_well_formed_announcement_round_trips(
    old_host: str, old_port: int, new_host: str, new_port: int
) -> None:
    payload = f"mymaster {old_host} {old_port} {new_host} {new_port}".encode()
    switch = watch().announcement(payload)
    assert switch == MasterSwitched("mymaster", (old_host, old_port), (new_host, new_port))


def test_bad_construction_is_refused() -> None:
    with pytest.raises(TypeError):
        FailoverWatch(b"mymaster")  # type: ignore[arg-type]
    for name in ["", "my master", "my\nmaster", "m\x00"]:
        with pytest.raises(ValueError, match="master_name"):
            FailoverWatch(name)
    with pytest.raises(TypeError):
        watch().announcement("mymaster 127.0.0.1 1 127.0.0.1 2")  # type: ignore[arg-type]


def test_a_utf8_master_name_is_matched_as_sentinel_sends_it() -> None:
    switch = FailoverWatch("maître").announcement("maître h 1 i 2".encode())
    assert switch == MasterSwitched("maître", ("h", 1), ("i", 2))


# ------------------------------------------------------------------ MasterTarget


A = ("10.0.0.1", 6379)
B = ("10.0.0.2", 6379)
C = ("10.0.0.3", 6379)


def switch(old: tuple[str, int], new: tuple[str, int]) -> MasterSwitched:
    return MasterSwitched("mymaster", old, new)


def test_without_an_announcement_the_sentinels_are_asked() -> None:
    target = MasterTarget()
    assert target.next_address() is None
    target.connected(A)
    assert target.address == A
    target.lost()
    assert target.address is None
    assert target.next_address() is None


def test_a_switch_away_from_the_connection_moves_it_once() -> None:
    target = MasterTarget()
    target.connected(A)
    assert target.switched(switch(A, B)) is True
    assert target.next_address() == B  # the next attempt goes there at once...
    assert target.next_address() is None  # ...and only that one: if it fails, ask


def test_a_switch_to_where_the_connection_is_changes_nothing() -> None:
    target = MasterTarget()
    target.connected(B)  # it reconnected on its own, and the sentinels named B
    assert target.switched(switch(A, B)) is False
    assert target.next_address() is None


def test_a_switch_while_disconnected_is_where_the_next_attempt_goes() -> None:
    target = MasterTarget()
    assert target.switched(switch(A, B)) is True  # waiting out a backoff: end the wait
    assert target.next_address() == B


def test_the_latest_switch_wins() -> None:
    target = MasterTarget()
    target.connected(A)
    assert target.switched(switch(A, B)) is True
    assert target.switched(switch(B, C)) is True
    assert target.next_address() == C
    target.connected(C)
    assert target.switched(switch(B, C)) is False


def test_a_switch_back_to_the_connection_cancels_one_pending() -> None:
    target = MasterTarget()
    target.connected(A)
    assert target.switched(switch(A, B)) is True
    assert target.switched(switch(B, A)) is False
    assert target.next_address() is None


def test_a_switch_from_elsewhere_still_moves_the_connection() -> None:
    """Only the new address matters: a connection at a third address (a sentinel's
    stale answer) moves too."""
    target = MasterTarget()
    target.connected(C)
    assert target.switched(switch(A, B)) is True
    assert target.next_address() == B


# ------------------------------------------------------------------ the sentinel connection


def sentinel_settings(**options: Any) -> Settings:
    return Settings.from_url("redis+sentinel://s1:26379,s2:26379/mymaster", **options)


def test_watch_options_are_the_sentinels_not_the_data_nodes() -> None:
    settings = sentinel_settings(
        password="data-secret",
        username="app",
        db=3,
        protocol=3,
        client_name="web",
        sentinel_username="watcher",
        sentinel_password=SECRET,
        health_check_interval=5.0,
        backoff_cap=2.0,
    )
    options = watch_core_options(settings)
    assert options["protocol"] == 2
    assert options["username"] == "watcher"
    assert options["password"] == SECRET
    assert options["db"] == 0
    assert "require_master" not in options
    assert options["client_name"] == "web"
    assert options["health_check_interval"] == 5.0
    assert options["backoff_cap"] == 2.0
    assert settings.core_options()["password"] == "data-secret"  # the settings' own: untouched
    assert settings.core_options()["require_master"] is True


def test_a_core_with_the_watch_options_subscribes_and_hears_announcements() -> None:
    """The sentinel connection is a MultiplexerCore like any other: AUTH with the
    sentinel's credentials, CLIENT SETNAME, then SUBSCRIBE +switch-master; each
    announcement arrives as a message of that channel."""
    settings = sentinel_settings(client_name="web", sentinel_password=SECRET)
    core: MultiplexerCore[str, object] = MultiplexerCore(
        random=lambda: 0.5, **watch_core_options(settings)
    )
    sub = core.open_subscription(SubscriptionKind.CHANNEL, "listener")
    w = FailoverWatch(settings.master_name or "")
    assert core.add(sub, [w.channel]) == []
    core.connection_made(0.0)
    sent = core.data_to_send()
    assert sent == (
        arr("AUTH", SECRET) + arr("CLIENT", "SETNAME", "web") + arr("SUBSCRIBE", "+switch-master")
    )
    events = core.receive_data(b"+OK\r\n+OK\r\n", 0.1)
    assert [type(e) for e in events] == [ConnectionEstablished]
    events = core.receive_data(
        b"*3\r\n" + bulk(b"subscribe") + bulk(b"+switch-master") + b":1\r\n", 0.2
    )
    assert events == [NamesActivated("listener", [b"+switch-master"])]
    payload = b"mymaster 127.0.0.1 6379 127.0.0.1 6380"
    events = core.receive_data(
        b"*3\r\n" + bulk(b"message") + bulk(b"+switch-master") + bulk(payload), 0.3
    )
    (event,) = events
    assert type(event) is MessagesReceived
    assert event.channel == b"+switch-master"
    assert [w.announcement(p) for p in event.payloads] == [
        MasterSwitched("mymaster", ("127.0.0.1", 6379), ("127.0.0.1", 6380))
    ]
