"""Network faults between the multiplexer and a real redis-server (SPEC 3.4, 3.8 to 3.11).

The multiplexer connects through a fault-injecting TCP proxy (tests/fault_proxy.py)
that can cut the connection after an exact number of bytes (inside the handshake,
inside the SUBSCRIBE confirmations, inside a message frame), make it half-open,
delay it, or refuse new connections for a while. Each test checks what the contract
promises under that fault: one on_disconnect per loss for each subscription holding a
name, messages fully received before the loss delivered first, pending promises
interrupted, every name re-activated and counted once by the server, a bounded rate
of reconnection attempts, and a health check that finds a half-open connection but
is not fooled by a slow one.

The test process publishes straight to the server (not through the proxy), so that
the only connection through the proxy is the multiplexer's subscription connection
and every byte it receives is known in advance. Bodies use only the driver's public
names and wait on conditions with deadlines; the only timed windows are the
measurements that need one (a rate of attempts, latency under a delay).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import hiredis
import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import AsyncLog, Log, clients_named, numpat, wait_server
from fault_proxy import FaultProxy
from redis_servers import RedisServer, RedisServerFactory, encode_command

#: Short timers, so that a fault is detected and repaired in well under a second.
FAST: dict[str, Any] = {
    "health_check_interval": 0.3,
    "health_check_timeout": 0.3,
    "backoff_base": 0.02,
    "backoff_cap": 0.2,
}
HEALTH_CHECK_BOUND = FAST["health_check_interval"] + FAST["health_check_timeout"]

#: For the byte-offset cuts: quick reconnects, and no health-check PING (whose reply
#: would shift the offsets) during an iteration.
CUT_TIMERS: dict[str, Any] = {
    "health_check_interval": 10.0,
    "health_check_timeout": 2.0,
    "backoff_base": 0.005,
    "backoff_cap": 0.05,
}

# The names of the cut tests: every confirmation frame has the same length (40 bytes),
# so how many names a cut lets through depends on the offset only, not on the order in
# which the multiplexer subscribes them. A and S are held by the first subscription,
# S and B by the second (S is shared); PATTERN by a pattern subscription and by the
# promise subscription on PREFIX (one PSUBSCRIBE for both).
A, S, B = "cut:chan:a", "cut:chan:s", "cut:chan:b"
PREFIX = "cut:prm:"
PATTERN = PREFIX + "*"
HOLDERS = {"one": (A, S), "two": (S, B), "pat": (PATTERN,)}
CLIENT_NAME = "cut-test"


# ------------------------------------------------------------------ wire format


def confirmation_frame(kind: str, name: str, count: int) -> bytes:
    """What Redis (RESP2) answers for one name of a SUBSCRIBE or PSUBSCRIBE."""
    raw = name.encode()
    return b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n:%d\r\n" % (
        len(kind),
        kind.encode(),
        len(raw),
        raw,
        count,
    )


def message_frame(protocol: int, channel: str, data: bytes, pattern: str | None = None) -> bytes:
    """What Redis pushes for one message (RESP2 array, RESP3 push)."""
    head = b">" if protocol == 3 else b"*"
    parts = [b"message", channel.encode(), data]
    if pattern is not None:
        parts = [b"pmessage", pattern.encode(), channel.encode(), data]
    return head + b"%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


#: The reconnect handshake with db=1 and a client name: SELECT, then CLIENT SETNAME.
HANDSHAKE_REPLY = b"+OK\r\n+OK\r\n"
CONFIRMATIONS = [
    confirmation_frame("subscribe", A, 1),
    confirmation_frame("subscribe", S, 2),
    confirmation_frame("subscribe", B, 3),
    confirmation_frame("psubscribe", PATTERN, 4),
]
FRAME = len(CONFIRMATIONS[0])
assert all(len(frame) == FRAME for frame in CONFIRMATIONS)
#: Everything the server sends on a reconnect before any message: 10 + 4 * 40 bytes.
RECONNECT_STREAM_LENGTH = len(HANDSHAKE_REPLY) + len(CONFIRMATIONS) * FRAME

#: Cut points in that stream: inside and between the handshake's two replies, at every
#: confirmation boundary and inside confirmations, and right after the last one.
H = len(HANDSHAKE_REPLY)
HANDSHAKE_CUTS = [0, 1, 4, 5, 6, 9, H, H + 1, H + 17, H + FRAME - 1, H + FRAME, H + FRAME + 1]
HANDSHAKE_CUTS += [H + 2 * FRAME + 20, H + 4 * FRAME - 1, H + 4 * FRAME]


# ------------------------------------------------------------------ helpers


def publish_pipelined(server: RedisServer, messages: list[tuple[str, bytes]]) -> list[int]:
    """PUBLISH every message in one write on one connection, straight to the server:
    Redis handles them in one go, so all of them reach the subscriber connection
    before anything the subscriber sends afterwards is read."""
    with server.connect() as sock:
        sock.sendall(b"".join(encode_command("PUBLISH", ch, data) for ch, data in messages))
        reader = hiredis.Reader()
        replies: list[int] = []
        while len(replies) < len(messages):
            reply = reader.gets()
            if reply is False:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the publishing connection"
                reader.feed(chunk)
                continue
            replies.append(reply)
    return replies


def counts_once(server: RedisServer) -> bool:
    """PUBSUB counts every name of the cut tests exactly once."""
    flat = server.command("PUBSUB", "NUMSUB", A, S, B)
    return bool(flat[1::2] == [1, 1, 1] and numpat(server) == 1)


def ping_calls(server: RedisServer) -> int:
    """How many PINGs the server has answered (INFO commandstats)."""
    line = server.info("commandstats").get("cmdstat_ping", "calls=0")
    return int(line.split(",")[0].partition("=")[2])


@pytest.fixture
def proxied(redis_server_factory: RedisServerFactory) -> Iterator[tuple[RedisServer, FaultProxy]]:
    """A server of its own and a fault proxy in front of it."""
    server = redis_server_factory()
    with FaultProxy(server.host, server.port) as proxy:
        yield server, proxy


def split_on_disconnects(entries: list[tuple[str, Any]]) -> list[list[tuple[str, Any]]]:
    """``entries`` cut into the runs between disconnect notices (the first run is what
    came before the first notice)."""
    runs: list[list[tuple[str, Any]]] = [[]]
    for entry in entries:
        if entry[0] == "disconnect":
            runs.append([])
        else:
            runs[-1].append(entry)
    return runs


# ------------------------------------------------------------------ 1. cut at a byte offset


def test_cut_inside_the_handshake_and_the_confirmations(
    driver: Driver, proxied: tuple[RedisServer, FaultProxy]
) -> None:
    """SPEC 3.4, 3.8, 3.9, 3.10: a reconnect attempt cut at every interesting byte of
    what the server sends it (two handshake replies, four confirmations).

    Each iteration: the live connection is cut (one loss, the server frozen meanwhile so
    that nothing reaches the next attempt), the next attempt is armed to be cut after
    ``n`` bytes, the server thaws. An attempt cut before its handshake completed is part
    of the same outage (no second notice); one cut after it is a second loss. The names
    whose confirmation was complete before the cut are activated (and then lost); after
    the next reconnect every (subscription, name) is activated once more, the server
    counts each name once, a pending promise was interrupted, and messages flow again.
    """
    server, proxy = proxied
    m = driver.module

    async def body() -> None:
        logs = {"one": Log(), "two": AsyncLog(), "pat": Log()}
        async with m.Multiplexer(proxy.url, db=1, client_name=CLIENT_NAME, **CUT_TIMERS) as mpx:
            one = mpx.new_channel_subscription(*logs["one"].callbacks())
            one.add(A, S)
            two = mpx.new_channel_subscription(*logs["two"].callbacks())
            two.add(S, B)
            pat = mpx.new_pattern_subscription(PATTERN, *logs["pat"].callbacks())
            promises = mpx.new_promise_subscription(PREFIX)
            await wait_until(lambda: all(len(logs[t].activations) == 2 for t in ("one", "two")))
            await wait_until(lambda: logs["pat"].activations == [PATTERN.encode()])
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            assert proxy.connections == 1
            attempts = 1

            for i, n in enumerate(HANDSHAKE_CUTS):
                starts = {tag: len(log.entries) for tag, log in logs.items()}
                pending = promises.new_promise(f"pending-{i}", 30)

                server.pause()
                try:
                    assert proxy.cut() == 1  # loss 1: the live connection
                    # The next attempt reaches the (frozen) server through the proxy...
                    await wait_until(lambda: proxy.connections == 1)
                    # ...and is cut after n bytes of what the server will send it.
                    assert proxy.cut(n) == 1
                finally:
                    server.resume()

                with anyio.fail_after(2):  # long before its 30 s timeout
                    with pytest.raises(m.PromiseInterrupted):
                        await pending
                handshake_done = n >= H
                notices = 1 + handshake_done
                attempts += 2

                def recovered(notices: int = notices, starts: dict[str, int] = starts) -> bool:
                    for tag, log in logs.items():
                        runs = split_on_disconnects(log.entries[starts[tag] :])
                        if len(runs) != notices + 1 or len(runs[-1]) < len(HOLDERS[tag]):
                            return False
                    return True

                await wait_until(recovered)
                with anyio.fail_after(5):
                    await promises.wait_for_activation()
                await wait_server(lambda: counts_once(server))
                await wait_server(lambda: len(clients_named(server, CLIENT_NAME)) == 1)

                # What each subscription saw: the notices, what was confirmed before the
                # cut, then every one of its names again.
                confirmed_before_cut = max(0, n - H) // FRAME
                seen_before_cut: set[bytes] = set()
                for tag, log in logs.items():
                    entries = log.entries[starts[tag] :]
                    runs = split_on_disconnects(entries)
                    context = f"cut after {n} bytes, {tag}: {entries}"
                    assert len(runs) == notices + 1, context
                    assert runs[0] == [], context  # the first notice comes first
                    errors = [v for k, v in entries if k == "disconnect"]
                    assert all(isinstance(e, m.ConnectionLost) for e in errors), context
                    if handshake_done:
                        assert all(k == "activate" for k, _ in runs[1]), context
                        seen_before_cut.update(name for _, name in runs[1])
                    names = sorted(name.encode() for name in HOLDERS[tag])
                    assert sorted(name for _, name in runs[-1]) == names, context
                assert len(seen_before_cut) == confirmed_before_cut, (n, seen_before_cut)

                # Messages flow again, to every holder, and promises work.
                data = b"after-%d" % i
                assert publish_pipelined(server, [(S, data), (PREFIX + "x", data)]) == [1, 1]
                promise = promises.new_promise(f"ok-{i}", 5)
                assert publish_pipelined(server, [(PREFIX + f"ok-{i}", data)]) == [1]
                with anyio.fail_after(5):
                    assert await promise == data
                await wait_until(
                    lambda data=data: (
                        (S.encode(), data) in logs["one"].messages
                        and (S.encode(), data) in logs["two"].messages
                        and (f"{PREFIX}x".encode(), data) in logs["pat"].messages
                    )
                )

            # Two connections per iteration, no more: the cut one, and the attempt cut
            # after n bytes. The multiplexer counts that attempt as a connection made
            # (and lost) once its socket is open; cut at n = 0 it may be reset before
            # the driver sees it open, and then it is a failed attempt, not a loss.
            stats = mpx.statistics()
            assert proxy.accepted == attempts
            assert stats.connections_made == stats.connections_lost + 1
            at_once = HANDSHAKE_CUTS.count(0)
            assert attempts - 1 - at_once <= stats.connections_lost <= attempts - 1, stats
            assert stats.connected
            for sub in (one, two, pat, promises):
                sub.close()

        total_notices = sum(1 + (n >= H) for n in HANDSHAKE_CUTS)
        for tag, log in logs.items():
            assert len(log.disconnects) == total_notices, (tag, log.entries)

    driver.run(body)


#: Cut points inside a batch of four message frames (F0..F3), as functions of the
#: frame lengths: inside the first header, at and around frame boundaries, in the
#: middle of a payload, one byte short of the end, and right after the last frame.
MESSAGE_CUTS: dict[str, Callable[[list[int]], int]] = {
    "1": lambda f: 1,
    "mid-F0": lambda f: f[0] // 2,
    "F0": lambda f: f[0],
    "F0+1": lambda f: f[0] + 1,
    "end-F1-1": lambda f: f[0] + f[1] - 1,
    "mid-F2": lambda f: f[0] + f[1] + f[2] // 2,
    "F0..F2": lambda f: f[0] + f[1] + f[2],
    "end-1": lambda f: sum(f) - 1,
    "end": lambda f: sum(f),
}


@pytest.mark.parametrize("protocol", [2, 3])
def test_cut_inside_message_frames(
    driver: Driver, proxied: tuple[RedisServer, FaultProxy], protocol: int
) -> None:
    """SPEC 3.5, 3.8, 3.9: the connection cut in the middle of a batch of messages.

    Exactly the messages whose frame arrived whole are delivered, in order, before the
    one on_disconnect of each subscription holding a name (sync and async callbacks,
    channels and a pattern); the rest are lost with the connection. A pending promise
    fails with PromiseInterrupted; every name re-activates, the server counts each once,
    and messages published afterwards arrive. RESP2 arrays and RESP3 push frames."""
    server, proxy = proxied
    m = driver.module
    batch: list[tuple[str, str | None, bytes]] = [  # (channel, pattern, data)
        (A, None, b"first" * 3),
        (S, None, b"second" * 9),
        (PREFIX + "z", PATTERN, b"third" * 20),
        (B, None, b"fourth" * 2),
    ]

    async def body() -> None:
        logs = {"one": Log(), "two": AsyncLog(), "pat": Log()}
        async with m.Multiplexer(proxy.url, protocol=protocol, **CUT_TIMERS) as mpx:
            one = mpx.new_channel_subscription(*logs["one"].callbacks())
            one.add(A, S)
            two = mpx.new_channel_subscription(*logs["two"].callbacks())
            two.add(S, B)
            mpx.new_pattern_subscription(PATTERN, *logs["pat"].callbacks())
            promises = mpx.new_promise_subscription(PREFIX)
            await wait_until(lambda: all(len(logs[t].activations) == 2 for t in ("one", "two")))
            await wait_until(lambda: len(logs["pat"].activations) == 1)
            with anyio.fail_after(5):
                await promises.wait_for_activation()

            for i, (where, offset) in enumerate(MESSAGE_CUTS.items()):
                starts = {tag: len(log.entries) for tag, log in logs.items()}
                pending = promises.new_promise(f"pending-{i}", 30)
                tagged = [(ch, pat, data + b"-%d" % i) for ch, pat, data in batch]
                lengths = [len(message_frame(protocol, ch, d, pat)) for ch, pat, d in tagged]
                n = offset(lengths)
                whole = 0  # frames that arrive whole
                while whole < len(lengths) and sum(lengths[: whole + 1]) <= n:
                    whole += 1

                assert proxy.cut(n) == 1
                publish_pipelined(server, [(ch, data) for ch, _, data in tagged])
                with anyio.fail_after(2):
                    with pytest.raises(m.PromiseInterrupted):
                        await pending

                def recovered(starts: dict[str, int] = starts) -> bool:
                    for tag, log in logs.items():
                        runs = split_on_disconnects(log.entries[starts[tag] :])
                        if len(runs) != 2 or len(runs[1]) < len(HOLDERS[tag]):
                            return False
                    return True

                await wait_until(recovered)
                await wait_server(lambda: counts_once(server))
                with anyio.fail_after(5):
                    await promises.wait_for_activation()

                arrived = tagged[:whole]
                for tag, log in logs.items():
                    entries = log.entries[starts[tag] :]
                    context = f"cut at {where} ({n} of {sum(lengths)} bytes), {tag}: {entries}"
                    before, after = split_on_disconnects(entries)
                    expected = [
                        ("msg", (ch.encode(), data))
                        for ch, pat, data in arrived
                        if (pat or ch) in HOLDERS[tag]
                    ]
                    assert before == expected, context
                    names = sorted(name.encode() for name in HOLDERS[tag])
                    assert sorted(v for k, v in after if k == "activate") == names, context
                    assert [k for k, _ in after] == ["activate"] * len(names), context
                    error = next(v for k, v in entries if k == "disconnect")
                    assert isinstance(error, m.ConnectionLost), context

                # After the re-activation: messages arrive again, after the notices.
                data = b"after-%d" % i
                replies = publish_pipelined(server, [(A, data), (B, data), (PREFIX + "y", data)])
                assert replies == [1, 1, 1]
                await wait_until(
                    lambda data=data: (
                        logs["one"].messages[-1:] == [(A.encode(), data)]
                        and logs["two"].messages[-1:] == [(B.encode(), data)]
                        and logs["pat"].messages[-1:] == [(f"{PREFIX}y".encode(), data)]
                    )
                )

            stats = mpx.statistics()
            assert stats.connections_lost == len(MESSAGE_CUTS)
            assert stats.connections_made == len(MESSAGE_CUTS) + 1
            assert proxy.accepted == len(MESSAGE_CUTS) + 1

        for tag, log in logs.items():
            assert len(log.disconnects) == len(MESSAGE_CUTS), (tag, log.entries)

    driver.run(body)


# ------------------------------------------------------------------ 2. half-open


def test_half_open_connection_is_a_health_check_timeout(
    driver: Driver, proxied: tuple[RedisServer, FaultProxy]
) -> None:
    """SPEC 3.11: the peer vanishes without a FIN or a reset (the proxy keeps the socket
    open and passes nothing): detected as HealthCheckTimeout within interval + timeout,
    then a reconnect, re-activation, and one count per name on the server."""
    server, proxy = proxied
    m = driver.module

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(proxy.url, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("half:1", "half:2")
            promises = mpx.new_promise_subscription("half:promise:")
            await wait_until(lambda: len(log.activations) == 2)
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            pending = promises.new_promise("x", 30)
            assert publish_pipelined(server, [("half:1", b"before")]) == [1]
            await wait_until(lambda: log.messages == [(b"half:1", b"before")])

            silenced_at = anyio.current_time()
            assert proxy.silence() == 1
            # The server still sees its subscriber and sends to it: lost in the void.
            assert publish_pipelined(server, [("half:2", b"into-the-void")]) == [1]
            await wait_until(lambda: log.disconnects, timeout=HEALTH_CHECK_BOUND + 2)
            detected_after = log.times[log.entries.index(("disconnect", log.disconnects[0]))]
            detected_after -= silenced_at
            error = log.disconnects[0]
            assert isinstance(error, m.HealthCheckTimeout), repr(error)
            assert isinstance(error, m.ConnectionLost)
            # Not before a PING went unanswered for the timeout; not after one full period.
            assert FAST["health_check_timeout"] <= detected_after, detected_after
            assert detected_after <= HEALTH_CHECK_BOUND + 0.4, detected_after
            with anyio.fail_after(1):
                with pytest.raises(m.PromiseInterrupted):
                    await pending

            await wait_until(lambda: len(log.activations) == 4)
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            # The abandoned connection is closed on both sides: one subscriber per name.
            await wait_until(lambda: proxy.connections == 1)
            await wait_server(
                lambda: server.pubsub_numsub("half:1", "half:2") == {b"half:1": 1, b"half:2": 1}
            )
            assert numpat(server) == 1
            assert publish_pipelined(server, [("half:2", b"after")]) == [1]
            await wait_until(lambda: (b"half:2", b"after") in log.messages)
            promise = promises.new_promise("y", 5)
            assert publish_pipelined(server, [("half:promise:y", b"kept")]) == [1]
            with anyio.fail_after(5):
                assert await promise == b"kept"

            assert log.messages == [(b"half:1", b"before"), (b"half:2", b"after")]
            assert len(log.disconnects) == 1, log.entries
            stats = mpx.statistics()
            assert (stats.connections_lost, stats.connections_made) == (1, 2)
            assert stats.connected

    driver.run(body)


# ------------------------------------------------------------------ 3. delay


def test_delay_below_the_health_check_timeout_is_no_disconnect(
    driver: Driver, proxied: tuple[RedisServer, FaultProxy]
) -> None:
    """SPEC 3.5, 3.11: a slow link (every chunk held 0.15 s each way, a PING round
    trip of about twice that, below the health-check timeout) is not a lost one: the
    health check's PINGs are answered in time on the one connection, and every message
    arrives, late but in order."""
    server, proxy = proxied
    m = driver.module
    delay = 0.15
    timers = {**FAST, "health_check_timeout": 0.6}  # > 2 * delay, with room to spare

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(proxy.url, **timers) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("slow:1", "slow:2")
            await wait_until(lambda: len(log.activations) == 2)
            proxy.delay(delay)
            pings = ping_calls(server)
            sent: list[tuple[bytes, bytes]] = []
            latencies: list[float] = []
            for burst in range(3):
                # The health check's next PING reaches the server (after an idle interval)...
                await wait_server(lambda burst=burst: ping_calls(server) > pings + burst, 5)
                # ...and a burst follows it, behind its reply, on the same slow link.
                messages = [(f"slow:{1 + k % 2}", b"%d-%d" % (burst, k)) for k in range(5)]
                published_at = anyio.current_time()
                assert publish_pipelined(server, messages) == [1] * 5
                sent += [(ch.encode(), data) for ch, data in messages]
                total = len(sent)
                await wait_until(lambda total=total: len(log.messages) >= total)
                latencies.append(log.times[-5] - published_at)
            # One more PING on the same connection: the last one was answered in time too.
            await wait_server(lambda: ping_calls(server) > pings + 3, 5)

            assert log.messages == sent  # all of them, in order
            assert min(latencies) >= delay, latencies  # the link really was slow
            assert log.disconnects == [], log.entries
            stats = mpx.statistics()
            assert (stats.connections_made, stats.connections_lost) == (1, 0)
            assert stats.connected
            assert proxy.accepted == 1
            assert len(log.activations) == 2

            proxy.delay(0)
            assert publish_pipelined(server, [("slow:1", b"fast again")]) == [1]
            await wait_until(lambda: log.messages[-1:] == [(b"slow:1", b"fast again")])

    driver.run(body)


# ------------------------------------------------------------------ 4. refused connections


def test_refused_connections_are_one_outage_at_a_bounded_rate(
    driver: Driver, proxied: tuple[RedisServer, FaultProxy]
) -> None:
    """SPEC 3.9, 3.10: while every new connection is reset on accept, the multiplexer
    keeps trying at a bounded rate (never a storm: at most about two attempts per
    ``backoff_cap`` on average), reports one on_disconnect for the whole outage, never
    looks connected, and recovers once connections are accepted again: after
    ``accept_again()``, and on its own after a timed refusal. Names removed and added
    during the outage (SPEC 3.3) end up as asked on the server."""
    server, proxy = proxied
    m = driver.module
    window = 1.0

    async def body() -> None:
        log, plog, mlog = Log(), Log(), Log()
        async with m.Multiplexer(proxy.url, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("refuse:1")
            mpx.new_pattern_subscription("refuse:p:*", *plog.callbacks())
            moving = mpx.new_channel_subscription(*mlog.callbacks())
            moving.add("refuse:old")
            await wait_until(lambda: [len(lg.activations) for lg in (log, plog, mlog)] == [1, 1, 1])

            # Outage 1: refused until accept_again(); the attempt rate over a window.
            proxy.refuse()
            assert proxy.cut() == 1
            await wait_until(lambda: log.disconnects and plog.disconnects)
            start = proxy.accepted
            seen_connected = 0
            with anyio.move_on_after(window):  # the measurement window
                while True:
                    seen_connected += mpx.connected
                    await anyio.sleep(0.005)
            attempts = proxy.accepted - start
            assert proxy.refused >= attempts
            # Bounded: delays are drawn up to backoff_cap (0.2 s), so about 10 a second;
            # and it keeps trying (every delay is at most the cap).
            assert 3 <= attempts <= 40, attempts
            assert seen_connected == 0
            assert not mpx.statistics().connected
            assert len(log.disconnects) == 1  # once for the outage, not once per attempt
            assert len(plog.disconnects) == 1
            assert len(mlog.disconnects) == 1
            moving.remove("refuse:old")  # changes made while every attempt fails
            moving.add("refuse:new")
            proxy.accept_again()
            await wait_until(lambda: len(log.activations) == 2 and len(plog.activations) == 2)
            await wait_until(lambda: mlog.activations == [b"refuse:old", b"refuse:new"])
            await wait_server(
                lambda: (
                    server.pubsub_numsub("refuse:1", "refuse:old", "refuse:new")
                    == {b"refuse:1": 1, b"refuse:old": 0, b"refuse:new": 1}
                )
            )
            assert numpat(server) == 1
            assert publish_pipelined(server, [("refuse:old", b"x"), ("refuse:new", b"y")]) == [0, 1]
            await wait_until(lambda: mlog.messages == [(b"refuse:new", b"y")])
            assert proxy.accepted == proxy.refused + 2  # the first one and the last one

            # Outage 2: a timed refusal ends by itself.
            refusal = 0.4
            refused_at = anyio.current_time()  # (before: the refusal ends after refused_at + 0.4)
            proxy.refuse(refusal)
            refused_before = proxy.refused
            assert proxy.cut() == 1
            await wait_until(lambda: len(log.activations) == 3, timeout=refusal + 3)
            recovered_after = anyio.current_time() - refused_at
            assert proxy.refused > refused_before  # it did try during the refusal
            # Back within a backoff delay of the refusal's end (plus scheduling slack).
            assert refusal <= recovered_after <= refusal + FAST["backoff_cap"] + 1.0
            await wait_until(lambda: len(plog.activations) == 3)
            await wait_server(lambda: server.pubsub_numsub("refuse:1") == {b"refuse:1": 1})

            replies = publish_pipelined(server, [("refuse:1", b"back"), ("refuse:p:x", b"p")])
            assert replies == [1, 1]
            await wait_until(
                lambda: (
                    log.messages == [(b"refuse:1", b"back")]
                    and plog.messages == [(b"refuse:p:x", b"p")]
                )
            )
            # One notice per outage, however many attempts each one took.
            for lg in (log, plog):
                assert len(lg.disconnects) == 2, lg.entries
                assert all(isinstance(e, m.ConnectionLost) for e in lg.disconnects)
                kinds = [k for k, _ in lg.entries]
                assert kinds == ["activate"] + ["disconnect", "activate"] * 2 + ["msg"], kinds

    driver.run(body)
