"""The fault-injecting proxy itself (tests/fault_proxy.py), against a real redis-server.

Plain blocking sockets only, no library: these tests pin down what each fault does on
the wire, so that the conformance tests built on the proxy
(tests/drivers/test_network_faults.py) can rely on it. Every wait is a poll with a
deadline; the only timed windows are the ones a fault is about (a delay, a refusal, a
short socket timeout that must expire on a silenced connection).
"""

from __future__ import annotations

import math
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import hiredis
import pytest

from fault_proxy import FaultProxy
from redis_servers import RedisServer, RedisServerFactory, encode_command, free_port

#: How long a socket read may wait for something that must arrive.
READ_TIMEOUT = 5.0


def uniq(tag: str) -> str:
    """A channel name no other test uses (the shared server outlives every test)."""
    return f"proxy:{tag}:{uuid.uuid4().hex[:12]}"


def poll(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.005)


def message_frame(channel: str, data: bytes) -> bytes:
    """The RESP2 frame Redis pushes to a subscriber for one message."""
    name = channel.encode()
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(name), name, len(data), data)


def subscribe_frame(channel: str, count: int) -> bytes:
    name = channel.encode()
    return b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n" % (len(name), name, count)


class Client:
    """A blocking RESP client on one socket (to the proxy)."""

    def __init__(self, port: int, timeout: float = READ_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = hiredis.Reader()

    def send(self, *args: str | bytes | int) -> None:
        self.sock.sendall(encode_command(*args))

    def reply(self) -> Any:
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the proxy closed the connection")
            self.reader.feed(data)

    def call(self, *args: str | bytes | int) -> Any:
        self.send(*args)
        return self.reply()

    def read_exactly(self, size: int) -> bytes:
        """Raw bytes (no parsing); fails if the connection ends first."""
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
            data += chunk
        return bytes(data)

    def read_to_end(self) -> tuple[bytes, BaseException | None]:
        """Raw bytes until the connection ends: (bytes, None) on an orderly EOF,
        (bytes, the error) when it ends with an error (a reset)."""
        data = bytearray()
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:
                return bytes(data), exc
            if not chunk:
                return bytes(data), None
            data += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.host, redis_server.port) as running:
        yield running


@pytest.fixture
def clients() -> Iterator[Callable[[FaultProxy], Client]]:
    """``connect(proxy) -> Client``; every client is closed at teardown."""
    made: list[Client] = []

    def connect(through: FaultProxy) -> Client:
        client = Client(through.port)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def subscribed(connect: Callable[[FaultProxy], Client], proxy: FaultProxy, channel: str) -> Client:
    """A client subscribed to ``channel`` through the proxy (confirmation read raw)."""
    client = connect(proxy)
    client.send("SUBSCRIBE", channel)
    expected = subscribe_frame(channel, 1)
    assert client.read_exactly(len(expected)) == expected
    return client


def assert_reset(ending: BaseException | None) -> None:
    """The connection ended with a TCP reset, not an orderly EOF."""
    assert isinstance(ending, ConnectionResetError), (
        f"expected a reset (ECONNRESET), the connection ended with {ending!r} "
        "(None: an orderly FIN/EOF)"
    )


# ------------------------------------------------------------------ forwarding


def test_forwards_both_ways(
    proxy: FaultProxy, redis_server: RedisServer, clients: Callable[[FaultProxy], Client]
) -> None:
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}"
    assert proxy.port != redis_server.port
    client = clients(proxy)
    # Requests up, replies down, binary-safe, in order (pipelined).
    client.send("PING")
    client.send("ECHO", b"\x00\r\n\xff")
    assert client.reply() == b"PONG"
    assert client.reply() == b"\x00\r\n\xff"
    # Large values cross in many chunks each way, intact.
    key = uniq("big")
    big = bytes(range(256)) * 4096  # 1 MiB
    assert client.call("SET", key, big) == b"OK"
    assert redis_server.command("STRLEN", key) == len(big)
    assert client.call("GET", key) == big
    redis_server.command("DEL", key)
    assert proxy.accepted == 1
    assert proxy.connections == 1
    assert proxy.refused == 0

    # Pushes: a subscriber behind the proxy gets what is published directly.
    channel = uniq("push")
    sub = subscribed(clients, proxy, channel)
    assert proxy.connections == 2
    assert redis_server.pubsub_numsub(channel) == {channel.encode(): 1}
    expected = message_frame(channel, b"hello") + message_frame(channel, b"world")
    assert redis_server.command("PUBLISH", channel, b"hello") == 1
    assert redis_server.command("PUBLISH", channel, b"world") == 1
    assert sub.read_exactly(len(expected)) == expected

    # A client that leaves is forgotten, and its upstream connection closed.
    sub.close()
    poll(lambda: proxy.connections == 1)
    poll(lambda: redis_server.pubsub_numsub(channel) == {channel.encode(): 0})


# ------------------------------------------------------------------ cut


#: Where the cut falls in a stream of four message frames (F: the first frame's length;
#: the third frame is 120 kB long, so the proxy reads it in several chunks).
CUT_OFFSETS = {
    "1": lambda f: 1,
    "inside-header": lambda f: 7,
    "F-1": lambda f: f - 1,
    "F": lambda f: f,
    "F+1": lambda f: f + 1,
    "inside-2nd": lambda f: f + 30,
    "inside-big-chunk": lambda f: 70_000,
    "inside-big-later-chunk": lambda f: 100_000,
}


@pytest.mark.parametrize("where", list(CUT_OFFSETS))
def test_cut_passes_exactly_n_more_bytes_then_resets(
    proxy: FaultProxy,
    redis_server: RedisServer,
    clients: Callable[[FaultProxy], Client],
    where: str,
) -> None:
    """cut(n): the client gets exactly the next n bytes (even inside a frame, even
    inside one large chunk), then a reset; the upstream connection is closed too."""
    channel = uniq("cut")
    client = subscribed(clients, proxy, channel)
    payloads = [b"a" * 10, b"b" * 11, b"c" * 120_000, b"d"]
    stream = b"".join(message_frame(channel, p) for p in payloads)
    offset = CUT_OFFSETS[where](len(message_frame(channel, payloads[0])))
    assert 0 < offset < len(stream)

    assert proxy.cut(offset) == 1
    assert proxy.connections == 1  # armed, not cut yet: nothing has passed
    for payload in payloads:  # (once the cut falls, the server loses its subscriber)
        redis_server.command("PUBLISH", channel, payload)
    data, ending = client.read_to_end()

    assert len(data) == offset
    assert data == stream[:offset]
    assert_reset(ending)
    poll(lambda: proxy.connections == 0)
    poll(lambda: redis_server.pubsub_numsub(channel) == {channel.encode(): 0})


def test_cut_arms_every_live_connection_and_no_new_one(
    proxy: FaultProxy,
    redis_server: RedisServer,
    clients: Callable[[FaultProxy], Client],
) -> None:
    channel = uniq("cut-all")
    first = subscribed(clients, proxy, channel)
    second = subscribed(clients, proxy, channel)
    frame = message_frame(channel, b"x" * 20)
    assert proxy.cut(len(frame) + 5) == 2
    later = clients(proxy)  # connected after the cut was armed: not affected
    assert later.call("PING") == b"PONG"
    for _ in range(2):
        assert redis_server.command("PUBLISH", channel, b"x" * 20) == 2
    for client in (first, second):
        data, ending = client.read_to_end()
        assert data == (frame * 2)[: len(frame) + 5]
        assert_reset(ending)
    assert later.call("ECHO", "still here") == b"still here"
    poll(lambda: proxy.connections == 1)


def test_cut_now_resets_at_once(
    proxy: FaultProxy, redis_server: RedisServer, clients: Callable[[FaultProxy], Client]
) -> None:
    channel = uniq("cut-now")
    client = subscribed(clients, proxy, channel)
    assert proxy.cut() == 1
    # Nothing published: the reset comes by itself, and nothing before it.
    data, ending = client.read_to_end()
    assert data == b""
    assert_reset(ending)
    poll(lambda: proxy.connections == 0)
    poll(lambda: redis_server.pubsub_numsub(channel) == {channel.encode(): 0})
    # The proxy itself carries on.
    assert clients(proxy).call("PING") == b"PONG"
    assert proxy.cut() == 1  # (that new connection)
    assert proxy.cut(0) == 0


# ------------------------------------------------------------------ silence


def test_silence_keeps_the_socket_open_but_passes_nothing(
    proxy: FaultProxy, redis_server: RedisServer, clients: Callable[[FaultProxy], Client]
) -> None:
    channel = uniq("silent")
    client = subscribed(clients, proxy, channel)
    assert proxy.silence() == 1

    # Down: the server still counts the subscriber and sends to it; nothing arrives.
    assert redis_server.command("PUBLISH", channel, b"lost") == 1
    client.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):  # open (no EOF, no reset), and silent
        client.sock.recv(1)
    # Up: the client can still write (the proxy drains it; megabytes do not block),
    # and none of it reaches the server: a SUBSCRIBE sent ahead of 5 MB never counts.
    client.sock.settimeout(READ_TIMEOUT)
    unheard = uniq("unheard")
    client.send("SUBSCRIBE", unheard)
    client.sock.sendall(encode_command("PING", b"z" * 100) * 40_000)  # ~5 MB
    assert redis_server.pubsub_numsub(channel, unheard) == {
        channel.encode(): 1,  # the half-open subscriber, still there for the server
        unheard.encode(): 0,
    }
    client.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        client.sock.recv(1)
    assert proxy.connections == 1

    # New connections are not silenced.
    other = clients(proxy)
    assert other.call("PING") == b"PONG"
    assert proxy.silence() == 2
    other.sock.settimeout(0.3)
    other.send("PING")
    with pytest.raises(TimeoutError):
        other.sock.recv(1)

    # When the client finally leaves, the proxy notices and closes the upstream side.
    client.close()
    other.close()
    poll(lambda: proxy.connections == 0)
    poll(lambda: redis_server.pubsub_numsub(channel) == {channel.encode(): 0})


# ------------------------------------------------------------------ delay


def _round_trip(client: Client) -> float:
    started = time.monotonic()
    assert client.call("PING") == b"PONG"
    return time.monotonic() - started


def test_delay_holds_every_chunk(
    proxy: FaultProxy, clients: Callable[[FaultProxy], Client]
) -> None:
    delay = 0.15
    live = clients(proxy)
    assert _round_trip(live) < delay  # the baseline
    proxy.delay(delay)
    # The request and the reply are each held: a round trip takes at least twice the delay,
    # on a live connection and on a new one.
    fresh = clients(proxy)
    for client in (live, fresh):
        assert _round_trip(client) >= 2 * delay
    # Delayed is not reordered or lost.
    live.send("ECHO", "one")
    live.send("ECHO", "two")
    assert (live.reply(), live.reply()) == (b"one", b"two")
    proxy.delay(0)
    assert _round_trip(live) < delay
    assert _round_trip(fresh) < delay


# ------------------------------------------------------------------ refuse


def _ending_of_new_connection(port: int) -> tuple[bytes, BaseException | None]:
    """Connect, send a PING, read to the end: (bytes received, how it ended). The
    end may come as early as connect() or send()."""
    try:
        client = Client(port)
    except OSError as exc:
        return b"", exc
    try:
        client.send("PING")
    except OSError as exc:
        client.close()
        return b"", exc
    data, ending = client.read_to_end()
    client.close()
    return data, ending


def _attempt(port: int) -> bool:
    """One connection attempt: True if it was served (PING answered), False if it
    was cut before an answer (a refused attempt can fail as early as connect())."""
    try:
        client = Client(port)
    except ConnectionError:
        return False
    try:
        return bool(client.call("PING") == b"PONG")
    except ConnectionError:
        return False
    finally:
        client.close()


def test_refuse_for_a_while_then_accept_again(
    proxy: FaultProxy, clients: Callable[[FaultProxy], Client]
) -> None:
    live = clients(proxy)
    assert live.call("PING") == b"PONG"  # accepted by the proxy before the refusal starts
    refusal = 0.4
    proxy.refuse(refusal)
    refused_at = time.monotonic()

    # A new connection is accepted by the kernel, then reset before any answer.
    data, ending = _ending_of_new_connection(proxy.port)
    assert data == b""
    assert_reset(ending)
    assert proxy.refused == 1
    # The live connection is not affected.
    assert live.call("PING") == b"PONG"

    attempts = 1
    while not _attempt(proxy.port):
        attempts += 1
        assert time.monotonic() - refused_at < refusal + 2.0, "still refusing"
        time.sleep(0.02)
    served_after = time.monotonic() - refused_at
    assert served_after >= refusal
    assert proxy.refused == attempts
    assert proxy.accepted == 1 + attempts + 1  # live, the refused ones, the served one
    assert live.call("PING") == b"PONG"


def test_refuse_until_accept_again(proxy: FaultProxy) -> None:
    proxy.refuse()
    for _ in range(3):
        assert not _attempt(proxy.port)
    assert proxy.refused == 3
    proxy.accept_again()
    assert _attempt(proxy.port)
    assert (proxy.accepted, proxy.refused) == (4, 3)


# ------------------------------------------------------------------ unreachable upstream


def test_unreachable_upstream_resets_the_client(
    redis_server_factory: RedisServerFactory,
) -> None:
    server = redis_server_factory()
    with FaultProxy(server.host, server.port) as proxy:
        assert _attempt(proxy.port)
        server.kill()
        data, ending = _ending_of_new_connection(proxy.port)
        assert data == b""
        assert_reset(ending)
        assert proxy.connections == 0
        assert proxy.refused == 0  # not a refusal: the upstream failed
        assert proxy.accepted == 2

    with FaultProxy("127.0.0.1", free_port()) as proxy:  # nothing ever listened there
        assert not _attempt(proxy.port)
        assert proxy.accepted == 1


# ------------------------------------------------------------------ close


def test_close_resets_live_connections_and_is_idempotent(
    redis_server: RedisServer, clients: Callable[[FaultProxy], Client]
) -> None:
    proxy = FaultProxy(redis_server.host, redis_server.port).start()
    port = proxy.port
    channel = uniq("close")
    subs = [subscribed(clients, proxy, channel) for _ in range(2)]
    assert redis_server.pubsub_numsub(channel) == {channel.encode(): 2}

    proxy.close()
    proxy.close()  # idempotent
    for client in subs:
        data, ending = client.read_to_end()
        assert data == b""
        assert_reset(ending)
    assert proxy.connections == 0
    poll(lambda: redis_server.pubsub_numsub(channel) == {channel.encode(): 0})
    # No longer listening.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT).close()
    proxy.close()

    # As a context manager, closed on exit, even after an explicit close.
    with FaultProxy(redis_server.host, redis_server.port) as managed:
        assert _attempt(managed.port)
        managed.close()
    assert managed.connections == 0


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("method", "argument", "error"),
    [
        ("cut", -1, ValueError),
        ("cut", 1.5, (TypeError, ValueError)),  # (a float used to kill the pump thread)
        ("delay", -0.1, ValueError),
        ("delay", math.nan, ValueError),
        ("refuse", -1.0, ValueError),
        ("refuse", math.nan, ValueError),
    ],
    ids=[
        "cut-negative",
        "cut-float",
        "delay-negative",
        "delay-nan",
        "refuse-negative",
        "refuse-nan",
    ],
)
def test_bad_arguments_raise_and_change_nothing(
    proxy: FaultProxy,
    redis_server: RedisServer,
    clients: Callable[[FaultProxy], Client],
    method: str,
    argument: float,
    error: type[Exception] | tuple[type[Exception], ...],
) -> None:
    channel = uniq("bad")
    client = subscribed(clients, proxy, channel)
    with pytest.raises(error):
        getattr(proxy, method)(argument)
    # Nothing was armed, delayed or refused: the live connection passes messages...
    assert proxy.delay_seconds == 0
    started = time.monotonic()
    assert redis_server.command("PUBLISH", channel, b"still") == 1
    expected = message_frame(channel, b"still")
    assert client.read_exactly(len(expected)) == expected
    assert time.monotonic() - started < 0.5
    # ...and a new connection is served.
    assert _attempt(proxy.port)
    assert proxy.refused == 0
    poll(lambda: proxy.connections == 1)  # the attempt's link is gone, ours is not
