"""Real faults against real redis-server processes (SPEC 3.9 to 3.12, 3.15).

Each test provokes one fault the way it happens in production (the server drops its
Pub/Sub clients, crashes, freezes, refuses a password or a channel) and checks what
the contract promises: on_disconnect once per loss with messages already received
delivered first, promises interrupted at once, reconnection with backoff, every name
re-activated and counted once on the server, secrets kept out of logs and errors.

Every body uses only the driver's public names (``driver.module``) and waits on
conditions with deadlines, never on fixed sleeps. The only timed windows are the
measurements that need one (a rate of attempts over a second, a freeze that must
last longer than the health check).
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import hiredis
import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import AsyncLog, Log
from redis_servers import RedisServer, RedisServerFactory, acl_user, encode_command

#: Short timers, so that a fault is detected and repaired in well under a second.
FAST: dict[str, Any] = {
    "health_check_interval": 0.3,
    "health_check_timeout": 0.3,
    "backoff_base": 0.02,
    "backoff_cap": 0.2,
}
HEALTH_CHECK_BOUND = FAST["health_check_interval"] + FAST["health_check_timeout"]

PASSWORD = "Pa55-s3cret-7f3a91"
WRONG_PASSWORD = "wr0ng-Pa55-c4d2e8"


def count_is(n: int, items: Callable[[], list[Any]]) -> Callable[[], bool]:
    """A condition for wait_until: ``items()`` has ``n`` elements."""
    return lambda: len(items()) == n


def numsub(server: RedisServer, *names: str) -> dict[bytes, int]:
    return server.pubsub_numsub(*names)


def connections_received(server: RedisServer) -> int:
    return int(server.info("stats")["total_connections_received"])


async def restart_in_thread(server: RedisServer) -> None:
    """Restart on the same port without blocking the event loop the multiplexer runs on."""
    await anyio.to_thread.run_sync(server.restart)


# ------------------------------------------------------------------ 1. CLIENT KILL TYPE pubsub


def test_client_kill_pubsub_disconnects_once_delivers_first_and_resubscribes(
    driver: Driver, redis_server_factory: RedisServerFactory
) -> None:
    """SPEC 3.4, 3.8, 3.9, 3.10: the server drops the Pub/Sub connection."""
    server = redis_server_factory()
    m = driver.module
    before = [b"before-%d" % i for i in range(5)]

    async def body() -> None:
        sync_log, async_log, idle_log = Log(), AsyncLog(), Log()
        async with m.Multiplexer(server.url, **FAST) as mpx:
            sync_sub = mpx.new_channel_subscription(*sync_log.callbacks())
            sync_sub.add("kill:a", "kill:shared")
            async_sub = mpx.new_channel_subscription(*async_log.callbacks())
            async_sub.add("kill:b", "kill:shared")
            idle_sub = mpx.new_channel_subscription(*idle_log.callbacks())  # holds nothing
            promises = mpx.new_promise_subscription("kill:promise:")

            await wait_until(
                lambda: (
                    sorted(sync_log.activations) == [b"kill:a", b"kill:shared"]
                    and sorted(async_log.activations) == [b"kill:b", b"kill:shared"]
                )
            )
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            promise = promises.new_promise("x", 30)

            # Messages the multiplexer has read but the async subscription has not yet
            # handed over (its callback is held) when the connection is lost.
            async_log.gate = anyio.Event()
            received = mpx.statistics().messages_received
            for data in before:
                assert await mpx.publish("kill:shared", data) == 1  # one connection
            await wait_until(lambda: mpx.statistics().messages_received == received + len(before))
            assert len(sync_log.messages) == len(before)  # sync callbacks run inline
            assert async_log.messages == []

            stats = mpx.statistics()
            assert stats.connections_lost == 0
            assert server.kill_clients("pubsub") == 1  # only the subscriber connection

            # Pending promises fail at once: long before their 30 s timeout.
            with anyio.fail_after(2):
                with pytest.raises(m.PromiseInterrupted):
                    await promise

            await wait_until(lambda: len(sync_log.disconnects) == 1)
            async_log.gate.set()
            await wait_until(lambda: len(async_log.disconnects) == 1)

            # Reconnected: every name re-activated, for every holder.
            await wait_until(
                lambda: (
                    sorted(sync_log.activations) == sorted([b"kill:a", b"kill:shared"] * 2)
                    and sorted(async_log.activations) == sorted([b"kill:b", b"kill:shared"] * 2)
                )
            )
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            assert numsub(server, "kill:a", "kill:b", "kill:shared") == {
                b"kill:a": 1,
                b"kill:b": 1,
                b"kill:shared": 1,
            }
            assert server.command("PUBSUB", "NUMPAT") == 1

            # Messages published after the re-activation arrive.
            assert await mpx.publish("kill:shared", b"after") == 1
            assert await mpx.publish("kill:a", b"after-a") == 1
            assert await mpx.publish("kill:b", b"after-b") == 1
            promise = promises.new_promise("y", 5)
            assert await mpx.publish("kill:promise:y", b"kept") == 1
            with anyio.fail_after(5):
                assert await promise == b"kept"
            await wait_until(
                lambda: (
                    (b"kill:a", b"after-a") in sync_log.messages
                    and (b"kill:b", b"after-b") in async_log.messages
                )
            )

            stats = mpx.statistics()
            assert stats.connections_lost == 1
            assert stats.connections_made == 2
            assert stats.connected
            sync_sub.close()
            async_sub.close()
            idle_sub.close()
            promises.close()

        for log, own in ((sync_log, b"kill:a"), (async_log, b"kill:b")):
            # Exactly one on_disconnect, a ConnectionLost (the server closed the socket).
            assert len(log.disconnects) == 1, log.entries
            assert isinstance(log.disconnects[0], m.ConnectionLost)
            lost_at = log.index(("disconnect", log.disconnects[0]))
            # Everything received before the loss came first, in order, then the
            # disconnect, then the re-activations, then the new messages.
            pre = [data for channel, data in log.messages if data.startswith(b"before-")]
            assert pre == before, log.entries
            assert all(log.index(("msg", (b"kill:shared", data))) < lost_at for data in before), (
                log.entries
            )
            reactivated = [
                i for i, (kind, _) in enumerate(log.entries) if kind == "activate" and i > lost_at
            ]
            assert len(reactivated) == 2, log.entries
            assert log.index(("msg", (b"kill:shared", b"after"))) > max(reactivated)
            assert log.index(("msg", (own, b"after-" + own[-1:]))) > max(reactivated)
        # A subscription that holds no name is not told anything.
        assert idle_log.entries == []

    driver.run(body)


def test_client_kill_iterator_carries_on(
    driver: Driver, redis_server_factory: RedisServerFactory
) -> None:
    """SPEC 3.9, 3.10: an iterator keeps iterating across a reconnect."""
    server = redis_server_factory()
    m = driver.module

    async def body() -> None:
        async with m.Multiplexer(server.url, **FAST) as mpx, mpx.subscribe("kill:it") as it:
            assert await mpx.publish("kill:it", b"one") == 1
            with anyio.fail_after(5):
                msg = await it.__anext__()
            assert (msg.channel, msg.data, msg.pattern) == (b"kill:it", b"one", None)
            assert server.kill_clients("pubsub") == 1
            await wait_until(lambda: mpx.statistics().connections_lost == 1)
            await wait_until(lambda: numsub(server, "kill:it") == {b"kill:it": 1})
            await wait_until(lambda: mpx.statistics().active_channels == 1)
            assert await mpx.publish("kill:it", b"two") == 1
            with anyio.fail_after(5):
                msg = await it.__anext__()
            assert (msg.channel, msg.data) == (b"kill:it", b"two")

    driver.run(body)


def test_every_loss_is_one_notice(driver: Driver, redis_server_factory: RedisServerFactory) -> None:
    """SPEC 3.9: three losses in a row, three on_disconnect calls, three re-activations."""
    server = redis_server_factory()
    m = driver.module

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(server.url, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("again:1", "again:2")
            for loss in range(1, 4):
                await wait_until(count_is(2 * loss, lambda: log.activations))
                assert server.kill_clients("pubsub") == 1
                await wait_until(count_is(loss, lambda: log.disconnects))
            await wait_until(lambda: len(log.activations) == 8)
            assert numsub(server, "again:1", "again:2") == {b"again:1": 1, b"again:2": 1}
            assert mpx.statistics().connections_lost == 3
            assert len(log.disconnects) == 3, log.entries

    driver.run(body)


@pytest.mark.server_feature("sharded")
def test_client_kill_resubscribes_shard_channels(
    driver: Driver, redis_server_factory: RedisServerFactory
) -> None:
    """SPEC 3.4, 3.9: SSUBSCRIBE names are re-activated and counted once after a loss."""
    server = redis_server_factory()
    m = driver.module

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(server.url, **FAST) as mpx:
            sub = mpx.new_sharded_subscription(*log.callbacks())
            sub.add("kill:{s}:1", "kill:{s}:2")
            await wait_until(lambda: len(log.activations) == 2)
            assert server.kill_clients("pubsub") == 1
            await wait_until(lambda: len(log.activations) == 4)
            flat = server.command("PUBSUB", "SHARDNUMSUB", "kill:{s}:1", "kill:{s}:2")
            assert flat == [b"kill:{s}:1", 1, b"kill:{s}:2", 1]
            assert await mpx.spublish("kill:{s}:1", b"after") == 1
            await wait_until(lambda: log.messages == [(b"kill:{s}:1", b"after")])
            assert len(log.disconnects) == 1

    driver.run(body)


# ------------------------------------------------------------------ 2. crash and restart


def test_server_crash_and_restart_on_the_same_port(
    driver: Driver, redis_server_factory: RedisServerFactory
) -> None:
    """SPEC 3.9, 3.10: SIGKILL, refused attempts with backoff, restart, resubscribe."""
    server = redis_server_factory()
    port = server.port
    m = driver.module

    async def body() -> None:
        log, plog = Log(), Log()
        async with m.Multiplexer(server.url, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("crash:1", "crash:2")
            psub = mpx.new_pattern_subscription("crash:p:*", *plog.callbacks())
            await wait_until(lambda: len(log.activations) == 2 and len(plog.activations) == 1)
            with anyio.fail_after(5):
                await mpx.wait_connected()

            server.kill()
            await wait_until(lambda: not mpx.connected)
            await wait_until(lambda: len(log.disconnects) == 1 and len(plog.disconnects) == 1)
            # It keeps trying while the server is down (every attempt refused).
            await wait_until(lambda: mpx.statistics().reconnect_attempts >= 3)

            connected = anyio.Event()
            early: list[bool] = []

            async def wait_connected() -> None:
                await mpx.wait_connected()
                connected.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_connected)
                await wait_until(lambda: mpx.statistics().reconnect_attempts >= 5)
                early.append(connected.is_set() or mpx.connected)
                await restart_in_thread(server)
                with anyio.fail_after(5):
                    await connected.wait()
            assert early == [False], "wait_connected() returned while the server was down"
            assert server.port == port

            await wait_until(lambda: len(log.activations) == 4 and len(plog.activations) == 2)
            assert numsub(server, "crash:1", "crash:2") == {b"crash:1": 1, b"crash:2": 1}
            assert server.command("PUBSUB", "NUMPAT") == 1

            assert await mpx.publish("crash:2", b"back") == 1
            assert await mpx.publish("crash:p:x", b"back-p") == 1
            await wait_until(
                lambda: (
                    (b"crash:2", b"back") in log.messages
                    and (b"crash:p:x", b"back-p") in plog.messages
                )
            )
            stats = mpx.statistics()
            # One loss, however many refused attempts followed it.
            assert stats.connections_lost == 1
            assert stats.connected
            sub.close()
            psub.close()

        for lg in (log, plog):
            assert len(lg.disconnects) == 1, lg.entries
            assert isinstance(lg.disconnects[0], m.ConnectionLost)

    driver.run(body)


def _held_connection_command(sock: socket.socket, *args: str) -> Any:
    sock.sendall(encode_command(*args))
    reader = hiredis.Reader()
    while True:
        reply = reader.gets()
        if reply is not False:
            return reply
        data = sock.recv(65536)
        assert data, "the server closed our connection"
        reader.feed(data)


@pytest.mark.parametrize("password", [None, PASSWORD], ids=["no-handshake", "auth-handshake"])
def test_server_refusing_every_connection_is_one_outage_at_a_bounded_rate(
    driver: Driver, redis_server_factory: RedisServerFactory, password: str | None
) -> None:
    """SPEC 3.9, 3.10; docs/core.md "Disconnects" and "Reconnect backoff".

    A server at ``maxclients`` accepts each connection, answers
    ``-ERR max number of clients reached`` and closes it: "a server that rejects every
    attempt sees a bounded rate of attempts", and those failed attempts are one outage,
    so on_disconnect is called once and the multiplexer never reports itself connected.
    Once a slot frees up, it connects and activates its names.

    With a password the first reply due is AUTH's, so the refusal fails the handshake;
    without one there is no handshake, and the connection counts as made before the
    server has said anything."""
    server = redis_server_factory("--maxclients", "1", password=password)
    m = driver.module

    async def body() -> None:
        log = Log()
        with _the_only_slot(server) as held:  # the one client the server admits
            async with m.Multiplexer(server.url, password=password, **FAST) as mpx:
                sub = mpx.new_channel_subscription(*log.callbacks())
                sub.add("full:1")
                await wait_until(lambda: log.disconnects)
                seen_connected = 0
                start = _rejected(held)
                with anyio.move_on_after(1.0):  # the measurement window
                    while True:
                        seen_connected += mpx.connected
                        await anyio.sleep(0.005)
                attempts = _rejected(held) - start
                disconnects = list(log.disconnects)
                held.close()  # the slot frees up (for one client only: no publish here)
                await wait_until(lambda: log.activations == [b"full:1"])
                with anyio.fail_after(5):
                    await mpx.wait_connected()

        assert 2 <= attempts < 60, attempts
        assert isinstance(disconnects[0], m.ServerError | m.ConnectionLost), disconnects[0]
        problems = []
        if len(disconnects) != 1:
            problems.append(
                f"on_disconnect was called {len(disconnects)} times in one outage "
                f"({attempts} refused attempts in 1 s): {disconnects[:3]}..."
            )
        if seen_connected:
            problems.append(f"`connected` was True during the outage ({seen_connected} polls)")
        assert not problems, "\n".join(problems)

    driver.run(body)


def _the_only_slot(server: RedisServer, timeout: float = 5.0) -> socket.socket:
    """A connection that holds a ``--maxclients 1`` server's one slot. Redis 6.2 frees a
    closed client's slot a moment after the close (the fixture's own readiness probes),
    and meanwhile refuses the next one: try again until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:  # with a password, the refusal is the answer to the AUTH that connect() sends
            held = server.connect()
        except hiredis.ReplyError as refused:
            reply: Any = refused
        else:
            reply = _held_connection_command(held, "PING")
            if reply == b"PONG":
                return held
            held.close()
        assert isinstance(reply, hiredis.ReplyError), reply
        assert time.monotonic() < deadline, f"the server's one slot stayed taken: {reply}"
        time.sleep(0.01)


def _rejected(held: socket.socket) -> int:
    """``rejected_connections`` from INFO stats, asked over our own held connection."""
    raw = _held_connection_command(held, "INFO", "stats")
    for line in raw.decode().splitlines():
        if line.startswith("rejected_connections:"):
            return int(line.split(":", 1)[1])
    raise AssertionError("INFO stats has no rejected_connections")


# ------------------------------------------------------------------ 3. frozen server


def test_frozen_server_is_detected_within_the_health_check(
    driver: Driver, redis_server_factory: RedisServerFactory
) -> None:
    """SPEC 3.11: SIGSTOP is a HealthCheckTimeout within interval + timeout; then reconnect."""
    server = redis_server_factory()
    m = driver.module

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(server.url, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("frozen:1")
            await wait_until(lambda: log.activations == [b"frozen:1"])
            paused_at = anyio.current_time()
            server.pause()
            try:
                await wait_until(lambda: log.disconnects, timeout=HEALTH_CHECK_BOUND + 2)
                detected_after = log.times[log.index(("disconnect", log.disconnects[0]))]
                detected_after -= paused_at
            finally:
                server.resume()
            error = log.disconnects[0]
            assert isinstance(error, m.HealthCheckTimeout), repr(error)
            assert isinstance(error, m.ConnectionLost)
            assert detected_after <= HEALTH_CHECK_BOUND + 0.4, detected_after

            await wait_until(lambda: log.activations == [b"frozen:1"] * 2)
            assert numsub(server, "frozen:1") == {b"frozen:1": 1}
            assert await mpx.publish("frozen:1", b"thawed") == 1
            await wait_until(lambda: (b"frozen:1", b"thawed") in log.messages)
            assert len(log.disconnects) == 1, log.entries

    driver.run(body)


@pytest.mark.parametrize("password", [None, PASSWORD], ids=["no-handshake", "auth-handshake"])
def test_long_freeze_is_one_outage(
    driver: Driver, redis_server_factory: RedisServerFactory, password: str | None
) -> None:
    """SPEC 3.9 ("exactly once per loss"), docs/core.md "Disconnects" ("failed attempts
    during the same outage do not repeat the notice"), docs/statistics ("connected: the
    handshake completed and is up").

    A freeze several health checks long is one outage. While redis-server is stopped
    the kernel still accepts TCP connections, but the server answers nothing: such an
    attempt is a failed attempt, not a connection. So on_disconnect is called once,
    wait_connected() does not return and `connected` stays False until the server
    answers again. (With a password, the AUTH reply that never comes keeps the attempt
    in its handshake; without one, nothing waits for the server.)"""
    server = redis_server_factory(password=password)
    m = driver.module

    async def body() -> None:
        log = Log()
        seen_connected: list[float] = []
        returned_while_frozen = False
        async with m.Multiplexer(server.url, password=password, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("freeze:1")
            await wait_until(lambda: log.activations == [b"freeze:1"])
            returned = anyio.Event()

            async def wait_connected() -> None:
                await mpx.wait_connected()
                returned.set()

            async with anyio.create_task_group() as tg:
                server.pause()
                try:
                    await wait_until(lambda: log.disconnects, timeout=HEALTH_CHECK_BOUND + 2)
                    frozen_at = anyio.current_time()
                    tg.start_soon(wait_connected)
                    # Stay frozen for three more health-check periods, watching.
                    with anyio.move_on_after(3 * HEALTH_CHECK_BOUND):
                        while True:
                            if mpx.connected:
                                seen_connected.append(anyio.current_time() - frozen_at)
                            await anyio.sleep(0.01)
                    returned_while_frozen = returned.is_set()
                    disconnects_while_frozen = list(log.disconnects)
                finally:
                    server.resume()
                with anyio.fail_after(5):
                    await returned.wait()
            await wait_until(lambda: log.activations == [b"freeze:1"] * 2)
            assert await mpx.publish("freeze:1", b"thawed") == 1
            await wait_until(lambda: (b"freeze:1", b"thawed") in log.messages)

        problems = []
        if len(disconnects_while_frozen) != 1:
            problems.append(
                f"on_disconnect was called {len(disconnects_while_frozen)} times during one "
                f"freeze: {disconnects_while_frozen}"
            )
        if returned_while_frozen:
            problems.append("wait_connected() returned while the server was frozen")
        if seen_connected:
            problems.append(
                f"`connected` was True while frozen in {len(seen_connected)} of the polls "
                f"(every 10 ms over {3 * HEALTH_CHECK_BOUND:g} s), "
                f"the first {seen_connected[0]:.2f} s after the first detection"
            )
        assert not problems, "\n".join(problems)
        assert len(log.disconnects) == 1, log.entries

    driver.run(body)


# ------------------------------------------------------------------ 4. passwords


@pytest.mark.parametrize("where", ["url", "option"])
@pytest.mark.parametrize("protocol", [2, 3])
def test_right_password_works(
    driver: Driver, redis_server_factory: RedisServerFactory, where: str, protocol: int
) -> None:
    """SPEC 2: the password in the URL or as ``password=``, under RESP2 and RESP3."""
    server = redis_server_factory(password=PASSWORD)
    m = driver.module
    if where == "url":
        url, options = f"redis://:{PASSWORD}@{server.host}:{server.port}", {}
    else:
        url, options = server.url, {"password": PASSWORD}

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(url, protocol=protocol, **options, **FAST) as mpx:
            assert PASSWORD not in repr(mpx)
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("auth:1")
            await wait_until(lambda: log.activations == [b"auth:1"])
            assert await mpx.publish("auth:1", b"hello") == 1
            await wait_until(lambda: log.messages == [(b"auth:1", b"hello")])
            assert log.disconnects == []
            assert mpx.statistics().connections_lost == 0

    driver.run(body)


def _logged_text(records: list[logging.LogRecord]) -> str:
    parts: list[str] = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        if record.exc_text:
            parts.append(record.exc_text)
    return "\n".join(parts)


@pytest.mark.parametrize("protocol", [2, 3])
def test_wrong_password_is_one_notice_a_bounded_rate_and_no_leak(
    driver: Driver,
    redis_server_factory: RedisServerFactory,
    caplog: pytest.LogCaptureFixture,
    protocol: int,
) -> None:
    """SPEC 3.9, 3.10, 3.15: a refused password reaches on_disconnect once as an
    AuthenticationError; the server sees a bounded rate of attempts; the password is
    in no log record and no error text."""
    server = redis_server_factory(password=PASSWORD)
    m = driver.module
    caplog.set_level(logging.DEBUG, logger="redismpx")
    errors: list[BaseException] = []

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(
            f"redis://:{WRONG_PASSWORD}@{server.host}:{server.port}",
            protocol=protocol,
            health_check_interval=0.3,
            health_check_timeout=0.3,
            backoff_base=0.05,
            backoff_cap=0.2,
        ) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("auth:denied")
            await wait_until(lambda: log.disconnects)
            start = connections_received(server)
            await anyio.sleep(1.0)  # the measurement window
            attempts = connections_received(server) - start
            stats = mpx.statistics()
            assert not mpx.connected
            assert stats.reconnect_attempts >= 2  # it keeps trying
            assert 2 <= attempts < 60, attempts
            assert log.activations == []
            assert len(log.disconnects) == 1, log.entries  # once per outage, not per attempt
            error = log.disconnects[0]
            assert isinstance(error, m.AuthenticationError), repr(error)
            assert isinstance(error, m.ServerError)
            assert error.code == "WRONGPASS"
            errors.append(error)
            text = repr(mpx) + repr(mpx.settings) + str(mpx.settings)
            assert PASSWORD not in text
            assert WRONG_PASSWORD not in text
            # publish waits for a connection, which the wrong password never gets.
            with anyio.move_on_after(0.3):
                await mpx.publish("auth:denied", b"x")
                pytest.fail("publish succeeded with a wrong password")

    driver.run(body)
    for error in errors:
        for text in (str(error), repr(error), "".join(traceback.format_exception(error))):
            assert WRONG_PASSWORD not in text
            assert PASSWORD not in text
    logged = _logged_text(caplog.records)
    assert caplog.records, "nothing was logged about the refused connection"
    assert WRONG_PASSWORD not in logged
    assert PASSWORD not in logged


def test_password_sent_to_a_server_without_one_is_an_authentication_error(
    driver: Driver, redis_server_factory: RedisServerFactory
) -> None:
    """Redis 6+ answers "ERR AUTH <password> called without any password configured"."""
    server = redis_server_factory()
    m = driver.module

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(server.url, password=WRONG_PASSWORD, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("auth:none")
            await wait_until(lambda: log.disconnects)
            error = log.disconnects[0]
            assert isinstance(error, m.AuthenticationError), repr(error)
            assert WRONG_PASSWORD not in str(error) + repr(error)
            assert not mpx.connected

    driver.run(body)


# ------------------------------------------------------------------ 5. ACL: a denied channel


def test_acl_denied_channel_is_rejected_alone_without_reconnect(
    driver: Driver, redis_server_factory: RedisServerFactory
) -> None:
    """SPEC 3.12: NOPERM for one name drops that name only; no reconnect."""
    # alice may use channels that start with "allowed:"; the default user keeps every right.
    server = redis_server_factory(
        *acl_user("alice", "on", ">alice-pw", "~*", "resetchannels", "&allowed:*", "+@all")
    )
    m = driver.module
    url = f"redis://alice:alice-pw@{server.host}:{server.port}"

    async def body() -> None:
        mixed, other = Log(), Log()
        async with m.Multiplexer(url, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*mixed.callbacks())
            sub.add("allowed:a", "denied:a")  # one call: one SUBSCRIBE with both names
            other_sub = mpx.new_channel_subscription(*other.callbacks())
            other_sub.add("allowed:b")

            await wait_until(lambda: mixed.activations == [b"allowed:a"] and mixed.disconnects)
            await wait_until(lambda: other.activations == [b"allowed:b"])
            error = mixed.disconnects[0]
            assert isinstance(error, m.ServerError), repr(error)
            assert not isinstance(error, m.AuthenticationError)
            assert error.code == "NOPERM"
            assert sub.names == frozenset({b"allowed:a"})
            assert other_sub.names == frozenset({b"allowed:b"})
            assert numsub(server, "allowed:a", "denied:a", "allowed:b") == {
                b"allowed:a": 1,
                b"denied:a": 0,
                b"allowed:b": 1,
            }

            assert await mpx.publish("allowed:a", b"a1") == 1
            assert await mpx.publish("allowed:b", b"b1") == 1
            await wait_until(
                lambda: (
                    mixed.messages == [(b"allowed:a", b"a1")]
                    and other.messages == [(b"allowed:b", b"b1")]
                )
            )
            # Publishing on the denied channel is refused at the call site.
            with anyio.fail_after(5), pytest.raises(m.ServerError) as refused:
                await mpx.publish("denied:a", b"no")
            assert refused.value.code == "NOPERM"

            stats = mpx.statistics()
            assert stats.connections_lost == 0
            assert stats.connections_made == 1
            assert stats.connected
            assert len(mixed.disconnects) == 1, mixed.entries
            assert other.disconnects == []

            # The iterator form raises the refusal on entering.
            with anyio.fail_after(5), pytest.raises(m.ServerError) as entered:
                async with mpx.subscribe("allowed:it", "denied:it"):
                    pass
            assert entered.value.code == "NOPERM"
            assert mpx.statistics().connections_lost == 0

    driver.run(body)


# ------------------------------------------------------------------ 6. publish and outages


def test_first_publish_while_the_server_is_down_waits_for_it(
    driver: Driver, redis_server_factory: RedisServerFactory
) -> None:
    """RESP2: the publisher connection is opened by a publish made during the outage."""
    server = redis_server_factory()
    m = driver.module

    async def body() -> None:
        async with m.Multiplexer(server.url, **FAST) as mpx:
            with anyio.fail_after(5):
                await mpx.wait_connected()
            server.kill()
            await wait_until(lambda: not mpx.connected)
            result: list[int] = []
            early: list[int] = []

            async def publish() -> None:
                result.append(await mpx.publish("down:1", b"x"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                await wait_until(lambda: mpx.statistics().reconnect_attempts >= 3)
                early += result
                await restart_in_thread(server)
                with anyio.fail_after(5):
                    await wait_until(lambda: result)
            assert early == [], "publish returned while the server was down"
            assert result == [0]

    driver.run(body)


@pytest.mark.parametrize("protocol", [2, 3])
def test_publish_during_an_outage_waits_for_the_restart(
    driver: Driver, redis_server_factory: RedisServerFactory, protocol: int
) -> None:
    """A publish made while the (already used) connection is down waits for the
    reconnect and then succeeds; the subscriber gets a message published after its
    re-activation. Under RESP3 publish shares the subscription connection."""
    server = redis_server_factory()
    m = driver.module

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(server.url, protocol=protocol, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("outage:1")
            await wait_until(lambda: log.activations == [b"outage:1"])
            assert await mpx.publish("outage:1", b"before") == 1

            server.kill()
            await wait_until(lambda: not mpx.connected)
            await wait_until(lambda: log.disconnects)
            result: list[int] = []
            failures: list[BaseException] = []

            async def publish() -> None:
                try:
                    result.append(await mpx.publish("outage:1", b"during"))
                except Exception as exc:  # reported below, with its type
                    failures.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                await wait_until(lambda: mpx.statistics().reconnect_attempts >= 3)
                early = result + failures
                await restart_in_thread(server)
                with anyio.fail_after(5):
                    await wait_until(lambda: result or failures)
            assert early == [], "publish ended while the server was down"
            assert failures == [], failures
            assert result[0] in (0, 1)  # before or after the resubscription
            await wait_until(lambda: log.activations == [b"outage:1"] * 2)
            assert await mpx.publish("outage:1", b"after") == 1
            await wait_until(lambda: (b"outage:1", b"after") in log.messages)

    driver.run(body)


def test_publish_to_a_full_server_waits_for_a_slot(
    driver: Driver, redis_server_factory: RedisServerFactory
) -> None:
    """SPEC 2 ("publish ... waits for the connection"): under RESP2 publish opens its own
    connection. While the server is at ``maxclients`` it refuses that connection
    (``-ERR max number of clients reached``, then close): the publish has no connection
    yet, so it waits, and succeeds once a slot frees up. The refusal is not an answer
    to the PUBLISH."""
    server = redis_server_factory("--maxclients", "2")
    m = driver.module

    async def body() -> None:
        log = Log()
        result: list[int] = []
        failures: list[BaseException] = []
        async with m.Multiplexer(server.url, **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("full:pub")  # the subscriber holds slot 1
            await wait_until(lambda: log.activations == [b"full:pub"])

            async def publish() -> None:
                try:
                    result.append(await mpx.publish("full:pub", b"eventually"))
                except Exception as exc:  # reported below, with its type
                    failures.append(exc)

            with server.connect() as held:  # slot 2: the server is full now
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publish)
                    await wait_until(lambda: _rejected(held) >= 3 or result or failures)
                    early = result + failures
                    held.close()  # a slot frees up
                    with anyio.fail_after(5):
                        await wait_until(lambda: result or failures)
            assert early == [], f"publish ended while the server was full: {early!r}"
            assert failures == [], failures
            assert result == [1]
            await wait_until(lambda: log.messages == [(b"full:pub", b"eventually")])
            assert log.disconnects == []

    driver.run(body)


# ------------------------------------------------------------------ 7. unix socket


def test_unix_socket(driver: Driver, redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory(unix_socket=True)
    assert server.unix_path is not None
    m = driver.module

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(f"unix://{server.unix_path}", **FAST) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("unix:1")
            await wait_until(lambda: log.activations == [b"unix:1"])
            assert await mpx.publish("unix:1", b"over-unix") == 1
            server.command("PUBLISH", "unix:1", b"from-tcp")
            await wait_until(
                lambda: log.messages == [(b"unix:1", b"over-unix"), (b"unix:1", b"from-tcp")]
            )
            # A fault on the unix socket is repaired the same way.
            assert server.kill_clients("pubsub") == 1
            await wait_until(lambda: log.activations == [b"unix:1"] * 2)
            assert numsub(server, "unix:1") == {b"unix:1": 1}
            assert len(log.disconnects) == 1

    driver.run(body)
