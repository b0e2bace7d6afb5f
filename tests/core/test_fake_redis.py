"""Tests of the in-memory FakeRedis itself.

Two kinds:

* direct tests of what the state-machine and fuzz tests rely on (confirmation
  format, NOPERM, glob escapes, RESP3 pushes, delayed and split output, several
  connections over time), which run everywhere;
* differential tests: the same transcript of raw commands sent to the fake and to a
  real ``redis-server`` (tests/redis_servers.py), replies compared frame by frame, so
  that the fake cannot drift from the server it stands for.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.fake_redis import (
    Delivery,
    FakeConnection,
    FakeRedis,
    Map,
    Push,
    RespError,
    Simple,
    encode,
    glob_match,
)
from redis_servers import RedisServer, acl_user, encode_command

NOPERM = "NOPERM this user has no permissions to access one of the channels used as arguments"


def cmd(*args: str | bytes) -> bytes:
    return bytes(encode_command(*args))


def frames(data: bytes) -> list[Any]:
    """Every complete frame in ``data`` (and nothing left over)."""
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (frame := reader.gets()) is not False:
        out.append(frame)
    assert not reader.has_data(), "a partial frame was left over"
    return out


def run(conn: FakeConnection, *commands: bytes) -> list[Any]:
    conn.feed(b"".join(commands))
    return frames(conn.take())


# --------------------------------------------------------------------------- encoder


def test_encoder_resp2_and_resp3() -> None:
    assert encode(Simple(b"OK")) == b"+OK\r\n"
    assert encode(RespError("ERR x")) == b"-ERR x\r\n"
    assert encode(7) == b":7\r\n"
    assert encode(b"ab") == b"$2\r\nab\r\n"
    assert encode(None) == b"$-1\r\n"
    assert encode(None, 3) == b"_\r\n"
    assert encode(True, 3) == b"#t\r\n"
    assert encode(1.5, 3) == b",1.5\r\n"
    assert encode(Push([b"a", 1])) == b"*2\r\n$1\r\na\r\n:1\r\n"
    assert encode(Push([b"a", 1]), 3) == b">2\r\n$1\r\na\r\n:1\r\n"
    assert encode(Map({b"k": [1]})) == b"*2\r\n$1\r\nk\r\n*1\r\n:1\r\n"
    assert encode(Map({b"k": [1]}), 3) == b"%1\r\n$1\r\nk\r\n*1\r\n:1\r\n"
    assert encode({1, 2}, 3) == b"~2\r\n:1\r\n:2\r\n"
    # And hiredis reads back what we wrote.
    reader = hiredis.Reader()
    reader.feed(encode([Map({b"k": Push([b"x", None])}), RespError("ERR y"), 3], 3))
    value = reader.gets()
    assert value[0] == {b"k": [b"x", None]}
    assert isinstance(value[1], hiredis.ReplyError)
    assert str(value[1]) == "ERR y"
    assert value[2] == 3


# --------------------------------------------------------------------------- glob


@pytest.mark.parametrize(
    ("pattern", "string", "expected"),
    [
        (b"h?llo", b"hello", True),
        (b"h?llo", b"hllo", False),
        (b"h*llo", b"hllo", True),
        (b"h*llo", b"heeeello", True),
        (b"h[ae]llo", b"hallo", True),
        (b"h[ae]llo", b"hillo", False),
        (b"h[^e]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[a-b]llo", b"hbllo", True),
        (b"h[b-a]llo", b"hbllo", True),  # reversed ranges are swapped
        (b"h[a-b]llo", b"hcllo", False),
        (b"h\\*llo", b"h*llo", True),  # escaped star is literal
        (b"h\\*llo", b"hello", False),
        (b"h\\?llo", b"hello", False),
        (b"h\\?llo", b"h?llo", True),
        (b"a\\[b", b"a[b", True),
        (b"a[\\]]b", b"a]b", True),  # escape inside a class
        (b"a[\\^]b", b"a^b", True),
        (b"a\\\\b", b"a\\b", True),  # escaped backslash
        (b"a\\", b"a\\", True),  # trailing backslash is literal
        (b"a[", b"ab", False),  # unterminated class matches nothing more
        (b"[abc", b"a", True),  # ... but an unterminated class still matches its set
        (b"*", b"", False),  # Redis: a pattern never matches the empty string
        (b"a*", b"a", True),
        (b"a**b", b"axxb", True),
        (b"ch\\*x*", b"ch*x1", True),
        (b"ch\\*x*", b"chax1", False),
        (b"*a*b*c", b"xaybzc", True),
        (b"*a*b*c", b"xaybz", False),
    ],
)
def test_glob_match(pattern: bytes, string: bytes, expected: bool) -> None:
    assert glob_match(pattern, string) is expected


def test_glob_escapes_drive_pmessage() -> None:
    fake = FakeRedis()
    conn = fake.connect()
    run(conn, cmd("PSUBSCRIBE", "ch\\*x*", "c?1"))
    assert fake.publish(b"ch*x1", b"d1") == 1
    assert fake.publish(b"chax1", b"d2") == 0
    assert fake.publish(b"c*1", b"d3") == 1
    assert run(conn) == [
        [b"pmessage", b"ch\\*x*", b"ch*x1", b"d1"],
        [b"pmessage", b"c?1", b"c*1", b"d3"],
    ]


# --------------------------------------------------------------------------- confirmations


def test_confirmations_resp2() -> None:
    fake = FakeRedis()
    conn = fake.connect()
    assert run(conn, cmd("SUBSCRIBE", "a", "b", "a"), cmd("PSUBSCRIBE", "p*")) == [
        [b"subscribe", b"a", 1],
        [b"subscribe", b"b", 2],
        [b"subscribe", b"a", 2],
        [b"psubscribe", b"p*", 3],
    ]
    assert conn.redundant_subscribes == 1
    # Shard channels are counted apart, as in Redis 7.
    assert run(conn, cmd("SSUBSCRIBE", "s1", "s2")) == [
        [b"ssubscribe", b"s1", 1],
        [b"ssubscribe", b"s2", 2],
    ]
    assert run(conn, cmd("UNSUBSCRIBE", "a", "zz"), cmd("SUNSUBSCRIBE", "s1")) == [
        [b"unsubscribe", b"a", 2],
        [b"unsubscribe", b"zz", 2],
        [b"sunsubscribe", b"s1", 1],
    ]
    assert run(conn, cmd("UNSUBSCRIBE"), cmd("UNSUBSCRIBE")) == [
        [b"unsubscribe", b"b", 1],
        [b"unsubscribe", None, 1],
    ]
    assert fake.channels() == set()
    assert fake.patterns() == {b"p*"}
    assert fake.shard_channels() == {b"s2"}
    assert fake.numpat() == 1
    assert fake.shardnumsub(b"s2") == 1


def test_a_server_initiated_unsubscribe_drops_the_name_and_says_so() -> None:
    fake = FakeRedis()
    conn = fake.connect()
    run(conn, cmd("SUBSCRIBE", "a"), cmd("PSUBSCRIBE", "p*"), cmd("SSUBSCRIBE", "s1", "s2"))
    conn.server_unsubscribe("shard", b"s1")
    conn.server_unsubscribe("shard", b"nope")  # not subscribed: nothing
    conn.server_unsubscribe("channel", b"a")
    conn.server_unsubscribe("pattern", b"p*")
    assert frames(conn.take()) == [
        [b"sunsubscribe", b"s1", 1],
        [b"unsubscribe", b"a", 1],
        [b"punsubscribe", b"p*", 0],
    ]
    assert fake.shard_channels() == {b"s2"}
    assert fake.channels() == set()
    assert fake.patterns() == set()
    assert fake.spublish(b"s1", b"x") == 0
    conn.close()
    conn.server_unsubscribe("shard", b"s2")
    assert conn.take() == b""


def test_confirmations_and_messages_are_pushes_in_resp3() -> None:
    fake = FakeRedis()
    conn = fake.connect()
    conn.feed(cmd("HELLO", "3"))
    hello = frames(conn.take())[0]
    assert hello[b"proto"] == 3
    assert hello[b"server"] == b"redis"
    conn.feed(cmd("SUBSCRIBE", "a") + cmd("PSUBSCRIBE", "a*"))
    out = conn.take()
    assert out.startswith(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
    pushes = frames(out)
    assert all(isinstance(p, hiredis.PushNotification) for p in pushes)
    assert pushes == [[b"subscribe", b"a", 1], [b"psubscribe", b"a*", 2]]
    # PUBLISH shares the connection under RESP3: our own pushes first, then the count.
    conn.feed(cmd("PUBLISH", "a", "x") + cmd("PING"))
    out = conn.take()
    assert out.startswith(b">3\r\n$7\r\nmessage\r\n")
    replies = frames(out)
    assert replies == [
        [b"message", b"a", b"x"],
        [b"pmessage", b"a*", b"a", b"x"],
        2,
        b"PONG",
    ]
    assert [type(r) for r in replies[:2]] == [hiredis.PushNotification] * 2
    assert conn.publish_replies == [2]
    assert [(d.kind, d.pattern) for d in conn.deliveries] == [
        (b"message", None),
        (b"pmessage", b"a*"),
    ]


def test_subscribed_mode_resp2() -> None:
    fake = FakeRedis()
    conn = fake.connect()
    run(conn, cmd("SUBSCRIBE", "a"))
    assert run(conn, cmd("PING"), cmd("PING", "hi")) == [[b"pong", b""], [b"pong", b"hi"]]
    replies = run(conn, cmd("PUBLISH", "a", "x"), cmd("CLIENT", "SETNAME", "n"))
    assert [str(r) for r in replies] == [
        "ERR Can't execute 'publish': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT "
        "/ RESET are allowed in this context",
        "ERR Can't execute 'client|setname': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING "
        "/ QUIT / RESET are allowed in this context",
    ]
    assert conn.publish_replies == [str(replies[0])]
    run(conn, cmd("UNSUBSCRIBE", "a"))
    assert run(conn, cmd("PING")) == [b"PONG"]


def test_noperm_refuses_the_whole_command() -> None:
    fake = FakeRedis()
    fake.deny(None, b"secret")
    conn = fake.connect()
    replies = run(conn, cmd("SUBSCRIBE", "a", "secret", "b"), cmd("SSUBSCRIBE", "secret"))
    assert [str(r) for r in replies] == [NOPERM, NOPERM]
    assert all(isinstance(r, hiredis.ReplyError) for r in replies)
    assert fake.channels() == set()
    assert fake.shard_channels() == set()
    # The denial is literal, whatever the name space: "secret" as a pattern too.
    replies = run(conn, cmd("SUBSCRIBE", "a"), cmd("PSUBSCRIBE", "secret"), cmd("PSUBSCRIBE", "s*"))
    assert replies[0] == [b"subscribe", b"a", 1]
    assert str(replies[1]) == NOPERM
    assert replies[2] == [b"psubscribe", b"s*", 2]
    # A pattern denied literally.
    fake.deny(None, b"se*")
    assert [str(r) for r in run(conn, cmd("PSUBSCRIBE", "se*"))] == [NOPERM]
    fake.allow(None, b"se*")
    assert run(conn, cmd("PSUBSCRIBE", "se*")) == [[b"psubscribe", b"se*", 3]]
    assert fake.publish(b"secret", b"x") == 2  # server-side publishing is not subject to ACLs


def test_acl_user_channel_patterns() -> None:
    fake = FakeRedis(password="pw0", users={"alice": ("pw", ["ok*"])})
    conn = fake.connect()
    assert [str(r) for r in run(conn, cmd("SUBSCRIBE", "ok1"))] == [
        "NOAUTH Authentication required."
    ]
    assert run(conn, cmd("AUTH", "alice", "pw")) == [b"OK"]
    assert [str(r) for r in run(conn, cmd("SUBSCRIBE", "ok1", "no"))] == [NOPERM]
    assert [str(r) for r in run(conn, cmd("PSUBSCRIBE", "ok1*"))] == [NOPERM]
    assert run(conn, cmd("SUBSCRIBE", "ok1"), cmd("PSUBSCRIBE", "ok*")) == [
        [b"subscribe", b"ok1", 1],
        [b"psubscribe", b"ok*", 2],
    ]


def test_authentication() -> None:
    fake = FakeRedis(password="pw")
    conn = fake.connect()
    replies = run(
        conn,
        cmd("PING"),
        cmd("HELLO", "3"),
        cmd("AUTH", "nope"),
        cmd("HELLO", "3", "AUTH", "default", "nope"),
        cmd("AUTH", "pw"),
        cmd("PING"),
    )
    assert [str(r) for r in replies[:4]] == [
        "NOAUTH Authentication required.",
        "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
        "HELLO AUTH <user> <pass> option can be used to authenticate the client and "
        "select the RESP protocol version at the same time",
        "WRONGPASS invalid username-password pair or user is disabled.",
        "WRONGPASS invalid username-password pair or user is disabled.",
    ]
    assert replies[4:] == [b"OK", b"PONG"]
    assert conn.protocol == 2  # the refused HELLO changed nothing

    conn2 = fake.connect()
    conn2.feed(cmd("HELLO", "3", "AUTH", "default", "pw", "SETNAME", "me"))
    assert frames(conn2.take())[0][b"proto"] == 3
    assert conn2.name == b"me"
    assert conn2.user == "default"

    open_server = FakeRedis()
    conn3 = open_server.connect()
    replies = run(conn3, cmd("AUTH", "x"), cmd("AUTH", "default", "x"), cmd("AUTH", "bob", "x"))
    assert [str(r) for r in replies[::2]] == [
        "ERR AUTH <password> called without any password configured for the default user. "
        "Are you sure your configuration is correct?",
        "WRONGPASS invalid username-password pair or user is disabled.",
    ]
    assert replies[1] == b"OK"  # the default user is nopass: any password will do


def test_handshake_commands_and_unknown() -> None:
    fake = FakeRedis()
    conn = fake.connect()
    replies = run(
        conn,
        cmd("SELECT", "3"),
        cmd("SELECT", "16"),
        cmd("CLIENT", "SETNAME", "mpx"),
        cmd("CLIENT", "GETNAME"),
        cmd("FLUSHALL"),
        cmd("SUBSCRIBE"),
    )
    assert replies[0] == b"OK"
    assert conn.db == 3
    assert str(replies[1]) == "ERR DB index is out of range"
    assert replies[2:4] == [b"OK", b"mpx"]
    assert str(replies[4]).startswith("ERR unknown command 'FLUSHALL'")
    assert str(replies[5]) == "ERR wrong number of arguments for 'subscribe' command"


# --------------------------------------------------------------------------- network realities


def test_partial_commands_and_split_output() -> None:
    fake = FakeRedis()
    conn = fake.connect()
    data = cmd("SUBSCRIBE", "a", "b")
    for i in range(len(data) - 1):
        conn.feed(data[i : i + 1])
        assert conn.pending() == 0  # nothing runs before the command is complete
    conn.feed(data[-1:])
    expected = (
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
    )
    assert conn.pending() == len(expected)
    # Replies wait in the queue until taken, in whatever pieces the test likes.
    pieces = [conn.take(5), conn.take(1), conn.take(0), conn.take(1000)]
    assert b"".join(pieces) == expected
    assert [len(p) for p in pieces[:3]] == [5, 1, 0]
    assert conn.pending() == 0
    assert conn.taken == conn.written == len(expected)


def test_delivery_log_offsets() -> None:
    fake = FakeRedis()
    conn = fake.connect()
    run(conn, cmd("SUBSCRIBE", "a"))
    fake.publish(b"a", b"1")
    fake.publish(b"a", b"2")
    first, second = conn.deliveries
    assert first == Delivery(b"message", b"a", None, b"1", first.end)
    out = conn.take()
    assert conn.written == second.end
    assert frames(out[: first.end - (conn.written - len(out))]) == [[b"message", b"a", b"1"]]


def test_connections_over_time() -> None:
    fake = FakeRedis()
    old = fake.connect()
    run(old, cmd("SUBSCRIBE", "a"), cmd("PSUBSCRIBE", "a*"), cmd("SSUBSCRIBE", "s"))
    fake.publish(b"a", b"in-flight")
    new = fake.connect()
    run(new, cmd("SUBSCRIBE", "a"))
    assert fake.numsub(b"a") == 2
    assert fake.channels() == {b"a"}
    old.close()
    assert old.closed
    assert not new.closed
    # The server forgot the old connection's subscriptions at once...
    assert fake.numsub(b"a") == 1
    assert fake.numpat() == 0
    assert fake.shard_channels() == set()
    # ... but what it had written before closing is still there to read.
    assert frames(old.take()) == [
        [b"message", b"a", b"in-flight"],
        [b"pmessage", b"a*", b"a", b"in-flight"],
    ]
    assert fake.publish(b"a", b"later") == 1
    assert old.pending() == 0
    with pytest.raises(BrokenPipeError):
        old.feed(cmd("PING"))
    assert frames(new.take()) == [[b"message", b"a", b"later"]]
    assert fake.kill_pubsub_clients() == 1
    assert new.closed
    assert fake.connections == []


def test_quit_and_protocol_error_close() -> None:
    fake = FakeRedis()
    conn = fake.connect()
    conn.feed(cmd("QUIT") + cmd("PING"))
    assert conn.closed
    assert frames(conn.take()) == [b"OK"]
    conn = fake.connect()
    conn.feed(b"PING\r\n")  # inline commands are not supported: a protocol error
    assert conn.closed
    assert str(frames(conn.take())[0]).startswith("ERR Protocol error")


# --------------------------------------------------------------------------- against a real server


class Twin:
    """The same commands to n fake connections and n real ones, frames compared."""

    def __init__(self, fake: FakeRedis, server: RedisServer, n: int = 2) -> None:
        self.fakes = [fake.connect() for _ in range(n)]
        self.reals: list[socket.socket] = []
        for _ in range(n):
            sock = server.connect(authenticate=False, timeout=5.0)
            self.reals.append(sock)
        self.real_readers = [hiredis.Reader() for _ in range(n)]
        self.steps = 0

    def close(self) -> None:
        for sock in self.reals:
            sock.close()

    def _read_real(self, i: int, count: int) -> list[Any]:
        out: list[Any] = []
        reader = self.real_readers[i]
        while len(out) < count:
            frame = reader.gets()
            if frame is not False:
                out.append(frame)
                continue
            data = self.reals[i].recv(65536)
            assert data, "the real server closed the connection"
            reader.feed(data)
        return out

    def send(self, i: int, *args: str | bytes) -> list[Any]:
        """Send one command on connection i; compare everything every connection got."""
        self.steps += 1
        data = cmd(*args)
        self.fakes[i].feed(data)
        self.reals[i].sendall(data)
        result: list[Any] = []
        for j, conn in enumerate(self.fakes):
            got_fake = frames(conn.take())
            got_real = self._read_real(j, len(got_fake))
            hello = args[0].upper() in ("HELLO", b"HELLO") and j == i
            assert normalise(got_fake, hello) == normalise(got_real, hello), (
                f"step {self.steps} {args!r}, connection {j}"
            )
            if j == i:
                result = got_fake
        return result

    def finish(self) -> None:
        """Nothing more is pending on the real side: a final PING answers first."""
        for i in range(len(self.fakes)):
            self.send(i, "PING")


def normalise(value: Any, hello: bool = False) -> Any:
    if isinstance(value, hiredis.ReplyError):
        return ("error", str(value))
    if isinstance(value, hiredis.PushNotification):
        return ("push", [normalise(v) for v in value])
    if isinstance(value, list):
        items = [normalise(v, hello) for v in value]
        if hello and len(items) > 1 and items[0] == b"server":  # RESP2 HELLO reply
            for k in range(0, len(items) - 1, 2):
                if items[k] in (b"id", b"version"):
                    items[k + 1] = "masked"
        return items
    if isinstance(value, dict):
        return {
            k: ("masked" if hello and k in (b"id", b"version") else normalise(v))
            for k, v in value.items()
        }
    return value


@pytest.fixture
def plain_twin(redis_server_factory: Callable[..., RedisServer]) -> Any:
    twin = Twin(FakeRedis(), redis_server_factory())
    yield twin
    twin.close()


@pytest.fixture
def secured_twin(redis_server_factory: Callable[..., RedisServer]) -> Any:
    server = redis_server_factory(
        *acl_user("alice", "on", ">pw", "~*", "resetchannels", "&ok*", "+@all"), password="secret"
    )
    twin = Twin(FakeRedis(password="secret", users={"alice": ("pw", ["ok*"])}), server)
    yield twin
    twin.close()


def test_matches_redis_resp2(plain_twin: Twin) -> None:
    t = plain_twin
    assert t.send(0, "PING") == [b"PONG"]
    t.send(0, "AUTH", "x")
    assert t.send(0, "AUTH", "default", "x") == [b"OK"]
    t.send(0, "AUTH", "nobody", "x")
    t.send(0, "SELECT", "3")
    t.send(0, "SELECT", "99")
    t.send(0, "SELECT", "x")
    t.send(0, "CLIENT", "SETNAME", "n1")
    t.send(0, "CLIENT", "SETNAME", "a b")
    t.send(0, "FOO", "a", "b")
    t.send(0, "FOO")
    t.send(0, "SUBSCRIBE")
    assert len(t.send(0, "SUBSCRIBE", "a", "b", "a", "pq")) == 4
    assert len(t.send(0, "PSUBSCRIBE", "p*", "h\\*x", "[ab]c")) == 3
    t.send(0, "SSUBSCRIBE", "s1", "s2")
    t.send(0, "PING")
    t.send(0, "PING", "hi")
    t.send(0, "PUBLISH", "a", "x")
    t.send(0, "CLIENT", "SETNAME", "x")
    t.send(0, "HELLO", "3")
    for channel in ("a", "pa", "pq", "h*x", "hax", "ac", "bc", "cc", "zz"):
        t.send(1, "PUBLISH", channel, "m-" + channel)
    t.send(1, "SPUBLISH", "s1", "sm")
    t.send(1, "SPUBLISH", "a", "not-a-shard-subscriber")
    t.send(0, "UNSUBSCRIBE", "a", "zz", "pq")
    t.send(0, "UNSUBSCRIBE")
    t.send(0, "UNSUBSCRIBE")
    t.send(0, "PUNSUBSCRIBE", "p*", "h\\*x")
    t.send(0, "PUNSUBSCRIBE")
    t.send(0, "PUNSUBSCRIBE")
    t.send(0, "PING")  # still subscribed to shard channels
    t.send(0, "SUNSUBSCRIBE", "s1", "s2")
    t.send(0, "SUNSUBSCRIBE")
    assert t.send(0, "PING") == [b"PONG"]
    t.finish()


def test_matches_redis_resp3(plain_twin: Twin) -> None:
    t = plain_twin
    t.send(0, "HELLO", "3", "SETNAME", "mpx")
    t.send(0, "HELLO", "4")
    t.send(0, "SUBSCRIBE", "a", "b")
    t.send(0, "PSUBSCRIBE", "a*")
    t.send(0, "SSUBSCRIBE", "s")
    t.send(0, "PING")
    t.send(0, "PING", "x")
    t.send(0, "PUBLISH", "a", "own")  # allowed under RESP3; pushes come before the count
    t.send(0, "PUBLISH", "nobody", "x")
    t.send(1, "PUBLISH", "b", "from-1")
    t.send(1, "SPUBLISH", "s", "shard")
    t.send(0, "CLIENT", "GETNAME")
    t.send(0, "UNSUBSCRIBE", "b", "a")
    t.send(0, "UNSUBSCRIBE")
    t.send(0, "PUNSUBSCRIBE")
    t.send(0, "SUNSUBSCRIBE")
    t.finish()


def test_matches_redis_auth_and_acl(secured_twin: Twin) -> None:
    t = secured_twin
    t.send(0, "PING")
    t.send(0, "SUBSCRIBE", "a")
    t.send(0, "HELLO", "3")
    t.send(0, "AUTH", "wrong")
    t.send(0, "AUTH", "secret")
    t.send(0, "SUBSCRIBE", "a", "ok1")
    t.send(1, "HELLO", "3", "AUTH", "alice", "wrong")
    t.send(1, "HELLO", "3", "AUTH", "alice", "pw", "SETNAME", "al")
    t.send(1, "SUBSCRIBE", "ok1", "other")
    t.send(1, "SSUBSCRIBE", "other")
    t.send(1, "PSUBSCRIBE", "ok1*")
    t.send(1, "SUBSCRIBE", "ok1", "ok2")
    t.send(1, "PSUBSCRIBE", "ok*")
    t.send(1, "PUBLISH", "other", "x")
    t.send(1, "PUBLISH", "ok1", "y")
    t.send(0, "PUBLISH", "ok2", "from-default")  # RESP2 subscribed mode: refused
    t.finish()


# A glob differential: patterns and strings over a small alphabet rich in specials.
_GLOB_ALPHABET = st.sampled_from([b"a", b"b", b"-", b"*", b"?", b"[", b"]", b"^", b"\\"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cases=st.lists(
        st.tuples(
            st.lists(_GLOB_ALPHABET, min_size=1, max_size=7).map(b"".join),
            st.lists(_GLOB_ALPHABET, min_size=1, max_size=6).map(b"".join),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_glob_matches_redis(redis_server: RedisServer, cases: list[tuple[bytes, bytes]]) -> None:
    # KEYS runs the very stringmatchlen() that PSUBSCRIBE uses; db 15 holds only our key.
    with redis_server.connect() as sock:
        reader = hiredis.Reader()
        sock.sendall(cmd("SELECT", "15"))
        for pattern, string in cases:
            sock.sendall(cmd("SET", string, "1") + cmd("KEYS", pattern) + cmd("DEL", string))
        replies: list[Any] = []
        while len(replies) < 1 + 3 * len(cases):
            frame = reader.gets()
            if frame is False:
                data = sock.recv(65536)
                assert data
                reader.feed(data)
            else:
                replies.append(frame)
    for k, (pattern, string) in enumerate(cases):
        real = string in replies[2 + 3 * k]
        assert glob_match(pattern, string) is real, (pattern, string)
