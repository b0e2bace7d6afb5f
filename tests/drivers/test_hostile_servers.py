"""Hostile and odd servers, against every driver (SPEC 3.9, 3.10, 3.14, 3.15).

A scripted fake server (tests/hostile_server.py) sends what no Redis would: malformed
bytes after the handshake or as its answer, a bulk string that never ends, replies
nobody asked for; it refuses the handshake as a busy Redis does (``-ERR max number
of clients reached``, ``-LOADING``); and a real redis-server changes its password
under a live connection. What the contract promises in each case: the connection is
dropped (ProtocolError, or the server's error) and rebuilt with backoff; each
subscription hears of it once per outage; no subscription gets what it did not ask
for; memory stays bounded by ``max_frame_size``; no password is ever logged.

Bodies use only the driver's public names and wait on conditions with deadlines; the
only fixed sleeps are measurement windows (attempts counted over half a second).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import Log
from hostile_server import (
    Close,
    HostileServer,
    Reply,
    address_space_capped,
    like_redis,
    resident_bytes,
)
from redis_servers import RedisServerFactory

#: Short timers, so that a fault is detected and repaired in well under a second.
FAST: dict[str, Any] = {
    "health_check_interval": 0.3,
    "health_check_timeout": 0.3,
    "backoff_base": 0.02,
    "backoff_cap": 0.2,
}
#: Attempts are counted over this many seconds. With FAST's backoff (full jitter, cap
#: 0.2 s) expect about 5; a reconnect storm would make hundreds.
WINDOW = 0.5
MAX_ATTEMPTS_IN_WINDOW = 25

MiB = 1024 * 1024


def answering(command_reply: bytes) -> Callable[[int, list[bytes] | None], Reply]:
    """A script that answers every command with the same bytes."""

    def script(number: int, command: list[bytes] | None) -> Reply:
        return None if command is None else command_reply

    return script


async def attempts_in_window(server: HostileServer, mpx: Any) -> tuple[int, int]:
    """(connections the server accepted, polls that saw ``mpx.connected``) in WINDOW s."""
    start = server.connections
    seen_connected = 0
    with anyio.move_on_after(WINDOW):  # the measurement window
        while True:
            seen_connected += mpx.connected
            await anyio.sleep(0.005)
    return server.connections - start, seen_connected


def resp(*items: bytes | int) -> bytes:
    """A RESP2 array of bulk strings and integers, as Redis frames Pub/Sub traffic."""
    out = b"*%d\r\n" % len(items)
    for item in items:
        if isinstance(item, int):
            out += b":%d\r\n" % item
        else:
            out += b"$%d\r\n%s\r\n" % (len(item), item)
    return out


def message(channel: bytes, data: bytes) -> bytes:
    return resp(b"message", channel, data)


# ------------------------------------------------------------------ 1. malformed bytes

HOSTILE_BYTES = {
    "deep-nesting": b"*1\r\n" * 2000 + b":1\r\n",
    "garbage": b"\x00\xff\x13 not RESP at all\r\n\r\n",
    "array-2**40": b"*1099511627776\r\n",
    # hiredis allocates 32 GiB for this header: refused under the address-space cap
    "array-2**32-1": b"*4294967295\r\n",
}


@pytest.fixture
def capped() -> Iterator[None]:
    with address_space_capped():
        yield


@pytest.mark.usefixtures("capped")
@pytest.mark.parametrize("payload", list(HOSTILE_BYTES))
def test_malformed_bytes_are_one_protocol_error_and_a_bounded_rate_of_attempts(
    driver: Driver, payload: str
) -> None:
    """After the handshake, then as the answer to every handshake: one on_disconnect
    (ProtocolError) per subscription for the whole outage, attempts at a bounded rate,
    `connected` False throughout; a well-behaved server again re-activates every name."""
    data = HOSTILE_BYTES[payload]
    m = driver.module

    async def body() -> None:
        channels, patterns = Log(), Log()
        with HostileServer() as server:
            async with m.Multiplexer(server.url, **FAST) as mpx:
                sub = mpx.new_channel_subscription(*channels.callbacks())
                sub.add("h:1", "h:2")
                mpx.new_pattern_subscription("h:*", *patterns.callbacks())
                await wait_until(
                    lambda: len(channels.activations) == 2 and len(patterns.activations) == 1
                )
                server.script = answering(data)  # every later handshake gets it too
                assert server.send(data)
                await wait_until(lambda: channels.disconnects and patterns.disconnects)
                attempts, seen_connected = await attempts_in_window(server, mpx)
                outage = (list(channels.disconnects), list(patterns.disconnects))

                server.script = like_redis
                await wait_until(
                    lambda: len(channels.activations) == 4 and len(patterns.activations) == 2
                )
                with anyio.fail_after(5):
                    await mpx.wait_connected()

        for disconnects in outage:
            assert len(disconnects) == 1, disconnects
            assert isinstance(disconnects[0], m.ProtocolError), repr(disconnects[0])
        assert 2 <= attempts <= MAX_ATTEMPTS_IN_WINDOW, attempts
        assert seen_connected == 0
        assert channels.messages == []
        assert patterns.messages == []

    driver.run(body)


def test_a_never_ending_bulk_is_cut_at_max_frame_size(driver: Driver) -> None:
    """A bulk header of 2**40 bytes, then data as fast as the socket takes it: the
    client hangs up once the reply passes max_frame_size (1 MiB here), so the server
    cannot push more than that plus what the sockets buffer, and the process' memory
    does not grow with what the server sends."""
    m = driver.module
    limit = 1 * MiB
    offered = 256 * MiB
    samples: list[int] = []

    def endless() -> Iterator[bytes]:
        yield b"$1099511627776\r\n"
        chunk = b"x" * 65536
        for _ in range(offered // len(chunk)):
            yield chunk
            samples.append(resident_bytes())

    async def body() -> None:
        log = Log()
        with HostileServer() as server:
            async with m.Multiplexer(server.url, max_frame_size=limit, **FAST) as mpx:
                sub = mpx.new_channel_subscription(*log.callbacks())
                sub.add("big:1")
                await wait_until(lambda: log.activations == [b"big:1"])
                number = server.live()[-1]
                before = resident_bytes()
                with anyio.fail_after(10):
                    delivered = await anyio.to_thread.run_sync(server.send, endless())
                assert not delivered, "the client read all of an endless bulk"
                await wait_until(lambda: log.disconnects)
                sent = server.sent[number]
                await wait_until(lambda: log.activations == [b"big:1"] * 2)

        assert len(log.disconnects) == 1, log.entries
        error = log.disconnects[0]
        assert isinstance(error, m.ProtocolError), repr(error)
        assert "max_frame_size" in str(error)
        # What the client read before hanging up, plus at most the kernel's buffers.
        assert sent < 64 * MiB, sent
        if before:
            assert max(samples) - before < 64 * MiB, (before, max(samples))
        assert log.messages == []

    driver.run(body)


# ------------------------------------------------------------------ 2. a busy server

MAX_CLIENTS = b"-ERR max number of clients reached\r\n"
LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"


def refuse_on_accept(number: int, command: list[bytes] | None) -> Reply:
    """Redis at maxclients: the error as soon as the connection is accepted, then close."""
    return Close(MAX_CLIENTS) if command is None else None


BUSY: dict[str, tuple[Callable[[int, list[bytes] | None], Reply], str]] = {
    "max-clients": (refuse_on_accept, "ERR"),
    "loading": (answering(LOADING), "LOADING"),
}


@pytest.mark.parametrize("busy", list(BUSY))
def test_a_busy_server_is_a_failed_attempt_like_any_other(driver: Driver, busy: str) -> None:
    """SPEC 3.9, 3.10: "-ERR max number of clients reached" on accept, or "-LOADING"
    as the answer to the handshake, is a failed connection: the subscription is told
    once (the ServerError with the server's code, if it never had a connection), the
    attempts keep a bounded rate and never count as connected, and when the server
    answers properly the names are activated. A later outage of the same kind is one
    more notice, not one per attempt."""
    script, code = BUSY[busy]
    m = driver.module

    async def body() -> None:
        log = Log()
        with HostileServer(script) as server:
            async with m.Multiplexer(server.url, **FAST) as mpx:
                sub = mpx.new_channel_subscription(*log.callbacks())
                sub.add("busy:1")
                await wait_until(lambda: log.disconnects)
                attempts, seen_connected = await attempts_in_window(server, mpx)
                first = list(log.disconnects)

                server.script = like_redis
                await wait_until(lambda: log.activations == [b"busy:1"])
                with anyio.fail_after(5):
                    await mpx.wait_connected()

                # Busy again, with the connection up: dropped, then refused over and over.
                server.script = script
                refused_from = server.connections
                server.drop()
                await wait_until(lambda: server.connections >= refused_from + 3)
                second = list(log.disconnects)
                assert not mpx.connected
                server.script = like_redis
                await wait_until(lambda: log.activations == [b"busy:1"] * 2)

        assert len(first) == 1, first
        error = first[0]
        assert isinstance(error, m.ServerError), repr(error)
        assert not isinstance(error, m.AuthenticationError)
        assert error.code == code
        assert 2 <= attempts <= MAX_ATTEMPTS_IN_WINDOW, attempts
        assert seen_connected == 0
        assert len(second) == 2, second  # one more for the drop, none per refusal
        assert isinstance(second[1], m.ConnectionLost), repr(second[1])
        assert len(log.disconnects) == 2

    driver.run(body)


# ------------------------------------------------------------------ 3. a password changed


OLD_PASSWORD = "0ld-Pa55-9d71c4e2"
NEW_PASSWORD = "n3w-Pa55-51ab08f3"


def _logged_text(records: list[logging.LogRecord]) -> str:
    parts: list[str] = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
    return "\n".join(parts)


def test_a_password_changed_on_the_server_while_connected(
    driver: Driver, redis_server_factory: RedisServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC 3.9, 3.10, 3.15. ``CONFIG SET requirepass`` leaves the live connection
    alone; when it is lost, every attempt is refused (WRONGPASS). The subscription that
    was connected is told once (the loss); one opened during the outage is told once,
    with the AuthenticationError; attempts keep a bounded rate; once the old password
    is back, both are activated. Neither password is in any log record or error text."""
    server = redis_server_factory(password=OLD_PASSWORD)
    m = driver.module
    caplog.set_level(logging.DEBUG, logger="redismpx")
    errors: list[BaseException] = []

    def connections_received() -> int:
        return int(server.info("stats")["total_connections_received"])

    def set_password(password: str) -> None:
        server.command("CONFIG", "SET", "requirepass", password)
        server.password = password  # the admin connection's credentials from now on

    async def body() -> None:
        before, during = Log(), Log()
        url = f"redis://:{OLD_PASSWORD}@{server.host}:{server.port}"
        async with m.Multiplexer(url, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*before.callbacks())
            sub.add("pw:1")
            await wait_until(lambda: before.activations == [b"pw:1"])

            set_password(NEW_PASSWORD)
            assert server.kill_clients("pubsub") == 1
            await wait_until(lambda: before.disconnects)
            late = mpx.new_channel_subscription(*during.callbacks())
            late.add("pw:2")
            await wait_until(lambda: during.disconnects)

            start = connections_received()
            seen_connected = 0
            with anyio.move_on_after(WINDOW):  # the measurement window
                while True:
                    seen_connected += mpx.connected
                    await anyio.sleep(0.005)
            attempts = connections_received() - start - 1  # less our own INFO
            assert 2 <= attempts <= MAX_ATTEMPTS_IN_WINDOW, attempts
            assert seen_connected == 0
            assert "WRONGPASS" in _logged_text(caplog.records)

            set_password(OLD_PASSWORD)
            await wait_until(
                lambda: before.activations == [b"pw:1"] * 2 and during.activations == [b"pw:2"]
            )
            assert await mpx.publish("pw:2", b"back") == 1
            await wait_until(lambda: during.messages == [(b"pw:2", b"back")])

        assert len(before.disconnects) == 1, before.entries
        assert isinstance(before.disconnects[0], m.ConnectionLost)
        assert len(during.disconnects) == 1, during.entries
        refused = during.disconnects[0]
        assert isinstance(refused, m.AuthenticationError), repr(refused)
        assert refused.code == "WRONGPASS"
        errors.extend(before.disconnects + during.disconnects)

    driver.run(body)
    for error in errors:
        for text in (str(error), repr(error), "".join(traceback.format_exception(error))):
            assert OLD_PASSWORD not in text
            assert NEW_PASSWORD not in text
    logged = _logged_text(caplog.records)
    assert caplog.records
    assert OLD_PASSWORD not in logged
    assert NEW_PASSWORD not in logged


# ------------------------------------------------------------------ 4. unrequested replies


def test_replies_nobody_asked_for(driver: Driver) -> None:
    """Messages for names no subscription holds (or held in another name space) are
    dropped without a notice; the subscriptions that hold a name get exactly their own
    messages. A confirmation nobody asked for, or a plain reply with nothing in flight,
    breaks the command/reply pairing: a ProtocolError, one notice per subscription,
    and a reconnect that activates every name again and activates nothing else."""
    m = driver.module
    dropped = [
        message(b"u:never", b"no"),
        resp(b"pmessage", b"u:never*", b"u:nevera", b"no"),
        resp(b"smessage", b"u:a", b"no"),  # u:a is a channel, not a shard channel
        resp(b"pmessage", b"u:a", b"u:a", b"no"),  # nor a pattern
        message(b"u:p*", b"no"),  # and u:p* is a pattern, not a channel
    ]
    kept = [
        message(b"u:a", b"yes-a"),
        resp(b"pmessage", b"u:p*", b"u:px", b"yes-p"),
        message(b"u:a", b"marker"),
    ]

    # No health check: a PING in flight would make a stray reply look like its answer.
    options = {**FAST, "health_check_interval": None}

    async def body() -> None:
        a, p, idle = Log(), Log(), Log()
        with HostileServer() as server:
            async with m.Multiplexer(server.url, **options) as mpx:
                sub = mpx.new_channel_subscription(*a.callbacks())
                sub.add("u:a")
                mpx.new_pattern_subscription("u:p*", *p.callbacks())
                mpx.new_channel_subscription(*idle.callbacks())  # holds nothing
                await wait_until(lambda: a.activations == [b"u:a"] and p.activations == [b"u:p*"])

                assert server.send(b"".join(dropped[:3] + kept[:2] + dropped[3:] + kept[2:]))
                await wait_until(lambda: (b"u:a", b"marker") in a.messages)
                assert a.messages == [(b"u:a", b"yes-a"), (b"u:a", b"marker")]
                await wait_until(lambda: p.messages == [(b"u:px", b"yes-p")])
                assert mpx.statistics().messages_received == 3
                assert a.disconnects == p.disconnects == []

                unasked = [
                    resp(b"subscribe", b"u:bogus", 2),
                    b"+OK\r\n",
                    b":1\r\n",
                    resp(b"unsubscribe", b"u:a", 0),
                ]
                for n, reply in enumerate(unasked, start=1):
                    connection = server.live()[-1]
                    assert server.send(reply + message(b"u:a", b"after-%d" % n))
                    await wait_until(lambda n=n: len(a.disconnects) == len(p.disconnects) == n)
                    await wait_until(lambda n=n: len(a.activations) == len(p.activations) == n + 1)
                    assert connection not in server.live()
                with anyio.fail_after(5):
                    await mpx.wait_connected()

        for log in (a, p):
            assert all(isinstance(e, m.ProtocolError) for e in log.disconnects), log.entries
        assert set(a.activations) == {b"u:a"}
        assert set(p.activations) == {b"u:p*"}
        # Nothing after the broken pairing was delivered from the broken connection.
        assert [d for _, d in a.messages] == [b"yes-a", b"marker"]
        assert idle.entries == []

    driver.run(body)
