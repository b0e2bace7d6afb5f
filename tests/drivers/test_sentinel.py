"""Sentinel mode against real sentinels (SPEC 4: the master is found through the
sentinels and found again after a failover), for every driver.

The tests that do not fault the set-up share one (module scope): one master, one
replica and three sentinels, with passwords on both the data nodes and the
sentinels. The failover tests take a fresh set-up each from
``redis_sentinel_factory``; a failover takes a second or two, and the sentinels
demote the old master (dropping its clients) about three seconds after that (see
tests/redis_sentinel.py), so those tests wait with generous deadlines. A
multiplexer hears of a failover before that demotion: it listens to a sentinel's
``+switch-master`` announcements (docs/sentinel.md), and the failover tests check
that it moved on the announcement, while the old master still says it is one.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import hiredis
import pytest
import trustme
from anyio.abc import SocketAttribute

from drivers.conftest import Driver, wait_until
from drivers.helpers import Log, clients_named, wait_server
from drivers.tls_certs import client_context, start_tls_server
from redis_sentinel import MASTER_NAME, RedisSentinel, RedisSentinelFactory, SentinelServer
from redis_servers import RedisServer, RedisServerFactory, encode_command, free_port

FAST: dict[str, Any] = {
    "health_check_interval": 0.3,
    "health_check_timeout": 0.3,
    "backoff_base": 0.02,
    "backoff_cap": 0.2,
    "connect_timeout": 2.0,
}
#: A failover, then the demotion of the old master that drops our connections.
FAILOVER_DEADLINE = 20.0

DATA_SECRET = "d4ta-Pa55-6b1f"
SENTINEL_SECRET = "s3ntinel-Pa55-91ab"


def client_name() -> str:
    return f"sentinel-{uuid.uuid4().hex[:10]}"


def logged_text(records: list[logging.LogRecord]) -> str:
    parts: list[str] = []
    for record in records:
        parts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def shared(redis_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """A set-up no test faults: passwords on the data nodes and on the sentinels."""
    setup = RedisSentinel(
        redis_binary,
        tmp_path_factory.mktemp("sentinel-shared"),
        password=DATA_SECRET,
        sentinel_password=SENTINEL_SECRET,
    )
    with setup:
        yield setup


def shared_url(setup: RedisSentinel) -> str:
    return setup.url.replace("redis+sentinel://", f"redis+sentinel://:{DATA_SECRET}@")


# ------------------------------------------------------------------ finding the master


@pytest.mark.parametrize("protocol", [2, 3])
def test_subscribe_and_publish_through_the_sentinels(
    driver: Driver, shared: RedisSentinel, caplog: pytest.LogCaptureFixture, protocol: int
) -> None:
    m = driver.module
    master = shared.master()
    replica = shared.replica()
    name = client_name()
    caplog.set_level(logging.INFO, logger="redismpx")

    async def body() -> None:
        log, pattern_log = Log(), Log()
        async with m.Multiplexer(
            shared_url(shared),
            sentinel_password=SENTINEL_SECRET,
            client_name=name,
            protocol=protocol,
            **FAST,
        ) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("found:a")
            psub = mpx.new_pattern_subscription("found:p:*", *pattern_log.callbacks())
            await wait_until(lambda: log.activations == [b"found:a"])
            await wait_until(lambda: pattern_log.activations == [b"found:p:*"])
            assert mpx.connected
            # The connection is to the master, not to the replica next to it.
            assert clients_named(master, name)
            assert clients_named(replica, name) == []
            assert await mpx.publish("found:a", b"one") == 1
            assert master.command("PUBLISH", "found:a", b"two") == 1
            assert master.command("PUBLISH", "found:p:x", b"three") == 1
            await wait_until(lambda: len(log.messages) == 2)
            await wait_until(lambda: pattern_log.messages == [(b"found:p:x", b"three")])
            assert log.messages == [(b"found:a", b"one"), (b"found:a", b"two")]
            assert log.disconnects == []
            text = repr(mpx) + repr(mpx.settings)
            psub.close()
        assert DATA_SECRET not in text
        assert SENTINEL_SECRET not in text

    driver.run(body)
    logged = logged_text(caplog.records)
    assert f"gives master '{MASTER_NAME}' at {master.host}:{master.port}" in logged
    assert DATA_SECRET not in logged
    assert SENTINEL_SECRET not in logged


def test_sentinels_that_cannot_answer_are_skipped(
    driver: Driver, shared: RedisSentinel, caplog: pytest.LogCaptureFixture
) -> None:
    """Keyword form. The first "sentinel" refuses connections, the second is a data
    node (it refuses the sentinel password), the third answers."""
    m = driver.module
    master = shared.master()
    answering = shared.sentinel_addresses[2]
    caplog.set_level(logging.INFO, logger="redismpx")

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(
            sentinels=[("127.0.0.1", free_port()), (master.host, master.port), answering],
            master_name=MASTER_NAME,
            password=DATA_SECRET,
            sentinel_password=SENTINEL_SECRET,
            **FAST,
        ) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("skip:a")
            await wait_until(lambda: log.activations == [b"skip:a"])
            assert master.command("PUBLISH", "skip:a", b"x") == 1
            await wait_until(lambda: log.messages == [(b"skip:a", b"x")])
            assert log.disconnects == []

    driver.run(body)
    logged = logged_text(caplog.records)
    assert f"sentinel {answering[0]}:{answering[1]} gives master" in logged
    assert SENTINEL_SECRET not in logged


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (
            {"master_name": "nosuch", "sentinel_password": SENTINEL_SECRET},
            "the sentinel monitors no master named 'nosuch'",
        ),
        (
            {"master_name": MASTER_NAME, "sentinel_password": "wr0ng-" + SENTINEL_SECRET},
            "the sentinel refused AUTH: WRONGPASS",
        ),
        ({"master_name": MASTER_NAME}, "the sentinel refused the query: NOAUTH"),
    ],
    ids=["unknown-master", "wrong-sentinel-password", "no-sentinel-password"],
)
def test_sentinels_that_cannot_help_are_one_notice_and_retried(
    driver: Driver,
    shared: RedisSentinel,
    caplog: pytest.LogCaptureFixture,
    options: dict[str, Any],
    reason: str,
) -> None:
    m = driver.module
    caplog.set_level(logging.DEBUG, logger="redismpx")
    errors: list[BaseException] = []

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(
            sentinels=shared.sentinel_addresses, password=DATA_SECRET, **options, **FAST
        ) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("nohelp:a")
            await wait_until(lambda: log.disconnects)
            # It keeps asking, with backoff, and tells the subscription once.
            await wait_until(lambda: mpx.statistics().reconnect_attempts >= 3)
            assert not mpx.connected
            assert log.activations == []
            assert len(log.disconnects) == 1
            errors.extend(log.disconnects)

    driver.run(body)
    (error,) = errors
    assert type(error) is m.ConnectionLost
    message = str(error)
    assert message.startswith(f"no sentinel gave the address of master {options['master_name']!r}")
    for host, port in shared.sentinel_addresses:
        assert f"{host}:{port}: {reason}" in message
    logged = logged_text(caplog.records)
    assert "could not connect to redis+sentinel://" in logged
    for secret in (DATA_SECRET, SENTINEL_SECRET):
        assert secret not in message
        assert secret not in logged


class FakeSentinel:
    """Answers every GET-MASTER-ADDR-BY-NAME with ``address``: a sentinel whose view
    lags a failover, on demand. Any other command (the multiplexer's listener for
    announced failovers connects too) gets an error."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.queries = 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        task_status.started(listener.extra(SocketAttribute.local_port))
        await listener.serve(self._answer)

    async def _answer(self, stream: anyio.abc.SocketStream) -> None:
        reader = hiredis.Reader()
        async with stream:
            while True:
                try:
                    reader.feed(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                while (request := reader.gets()) is not False:
                    if [arg.upper() for arg in request[:2]] != [
                        b"SENTINEL",
                        b"GET-MASTER-ADDR-BY-NAME",
                    ]:
                        await stream.send(b"-ERR unknown command\r\n")
                        continue
                    self.queries += 1
                    host, port = self.address
                    await stream.send(encode_command(host, port))


def test_a_node_that_is_not_the_master_is_dropped(driver: Driver, shared: RedisSentinel) -> None:
    """The ROLE check: a sentinel that names the replica (its view lagging a failover)
    gets a connection that is dropped before it counts as up, and asked again."""
    m = driver.module
    master, replica = shared.master(), shared.replica()
    fake = FakeSentinel((replica.host, replica.port))

    async def body() -> None:
        log = Log()
        async with anyio.create_task_group() as tg:
            port = await tg.start(fake.serve)
            async with m.Multiplexer(
                f"redis+sentinel://127.0.0.1:{port}/{MASTER_NAME}", password=DATA_SECRET, **FAST
            ) as mpx:
                sub = mpx.new_channel_subscription(*log.callbacks())
                sub.add("role:a")
                await wait_until(lambda: log.disconnects)
                await wait_until(lambda: fake.queries >= 3)  # asked again and again
                assert not mpx.connected
                assert log.activations == []
                (error,) = log.disconnects
                assert type(error) is m.ConnectionLost
                assert "is a 'slave', not the master" in str(error)

                fake.address = (master.host, master.port)  # the sentinel catches up
                await wait_until(lambda: log.activations == [b"role:a"])
                assert master.command("PUBLISH", "role:a", b"x") == 1
                await wait_until(lambda: log.messages == [(b"role:a", b"x")])
                assert len(log.disconnects) == 1  # one outage, one notice
            tg.cancel_scope.cancel()

    driver.run(body)


@pytest.mark.parametrize(
    ("url", "options", "error", "message"),
    [
        ("redis+sentinel://s1,,s2/m", {}, ValueError, "sentinel 2 of the list is empty"),
        ("redis+sentinel://s1", {}, ValueError, "needs a 'master_name'"),
        ("redis+sentinel://s1:99999/m", {}, ValueError, "the port must be a number"),
        ("redis://h", {"sentinels": [("s1", 26379)]}, ValueError, "this redis:// URL names"),
        ("redis+sentinel://s1/m", {"sentinels": [("s2", 1)]}, ValueError, "given twice"),
        (None, {"sentinels": "s1:26379", "master_name": "m"}, TypeError, "not str"),
        (None, {"sentinels": [("s1", 26379)]}, ValueError, "needs a 'master_name'"),
    ],
)
def test_bad_sentinel_configuration_fails_at_construction(
    driver: Driver, url: str | None, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    args = () if url is None else (url,)
    with pytest.raises(error) as raised:
        driver.Multiplexer(*args, **options)
    assert type(raised.value) is error
    assert message in str(raised.value)


# ------------------------------------------------------------------ TLS to the data nodes


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.server_feature("tls")
def test_tls_to_the_master_the_sentinel_names(
    driver: Driver,
    redis_binary: str,
    redis_server_factory: RedisServerFactory,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    """``rediss+sentinel://``: the sentinel is asked over plain TCP, the master it names
    (its TLS port: the sentinel monitors it with ``tls-replication yes``) over TLS."""
    m = driver.module
    tls = start_tls_server(redis_server_factory, ca, tmp_path, "127.0.0.1")
    sentinel = SentinelServer(
        redis_binary,
        master_port=tls.tls_port,
        work_dir=tmp_path / "sentinel",
        extra_conf=[
            "tls-replication yes",
            f"tls-cert-file {tmp_path / '127.0.0.1.crt'}",
            f"tls-key-file {tmp_path / '127.0.0.1.key'}",
            f"tls-ca-cert-file {tmp_path / 'ca.pem'}",
        ],
    )
    name = client_name()

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(
            f"rediss+sentinel://127.0.0.1:{sentinel.port}/{MASTER_NAME}",
            ssl=client_context(ca),
            client_name=name,
            **FAST,
        ) as mpx:
            sub = mpx.new_channel_subscription(*log.callbacks())
            sub.add("tls:a")
            await wait_until(lambda: log.activations == [b"tls:a"])
            (client,) = clients_named(tls.server, name)
            assert client["laddr"].endswith(f":{tls.tls_port}")  # over the TLS port
            assert await mpx.publish("tls:a", b"x") == 1
            await wait_until(lambda: log.messages == [(b"tls:a", b"x")])

    with sentinel:
        assert sentinel.master_address() == ("127.0.0.1", tls.tls_port)
        driver.run(body)


# ------------------------------------------------------------------ failovers


async def subscribed(mpx: Any, log: Log, *names: str) -> None:
    sub = mpx.new_channel_subscription(*log.callbacks())
    sub.add(*names)
    await wait_until(lambda: sorted(log.activations) == sorted(n.encode() for n in names))


def listening(setup: RedisSentinel, name: str) -> SentinelServer | None:
    """The running sentinel on which the multiplexer named ``name`` has its
    subscription to ``+switch-master``, if any."""
    for sentinel in setup.sentinels:
        if sentinel.running and any(
            client["sub"] == "1" for client in clients_named(sentinel, name)
        ):
            return sentinel
    return None


async def recovered_on(
    mpx: Any, new: RedisServer, old: RedisServer, name: str, log: Log, *names: str
) -> None:
    """After the one notice: every name active again, on the new master only, and
    messages published there delivered."""
    await wait_until(lambda: len(log.disconnects) == 1, timeout=FAILOVER_DEADLINE)
    again = sorted(n.encode() for n in names) * 2
    await wait_until(lambda: sorted(log.activations) == sorted(again), timeout=10)
    assert mpx.connected
    assert new.command("ROLE")[0] == b"master"
    assert clients_named(new, name)
    if old.running:
        await wait_server(lambda: clients_named(old, name) == [])
    assert new.pubsub_numsub(*names) == {n.encode(): 1 for n in names}
    for n in names:
        assert new.command("PUBLISH", n, b"after:" + n.encode()) == 1
    # Publishing goes through its own connection (RESP2): it found the new master too.
    assert await mpx.publish(names[0], b"published") == 1
    expected = [(n.encode(), b"after:" + n.encode()) for n in names]
    expected.append((names[0].encode(), b"published"))
    await wait_until(lambda: log.messages[-len(expected) :] == expected)
    assert len(log.disconnects) == 1


class RoleLog(Log):
    """A Log that also notes, as each name is activated again after a disconnect, what
    ``old`` (the master before a failover) says its role is at that moment."""

    def __init__(self, old: RedisServer) -> None:
        super().__init__()
        self.old = old
        self.roles: list[bytes] = []

    def on_activation(self, name: bytes) -> None:
        if self.disconnects:
            self.roles.append(self.old.command("ROLE")[0])
        super().on_activation(name)


def check_announced(error: Exception, m: Any, new: RedisServer) -> None:
    """``error`` is the notice of a move on a sentinel's announcement."""
    assert type(error) is m.ConnectionLost
    assert "announced a failover" in str(error)
    assert f"master '{MASTER_NAME}' moved to {new.host}:{new.port}" in str(error)


def test_a_failover_is_heard_from_the_sentinels_before_the_old_master_drops_us(
    driver: Driver, redis_sentinel_factory: RedisSentinelFactory
) -> None:
    """SENTINEL FAILOVER: a sentinel announces ``+switch-master`` once the replica is
    promoted, and the multiplexer, listening, ends its connections to the old master
    at once and connects to the new one: one on_disconnect saying so, pending promises
    interrupted, every name activated again there, all while the old master still
    says it is the master (the sentinels demote it, and drop its clients, about three
    seconds later with the fixture's timers: that drop is what the multiplexer
    used to wait for). The demotion, when it comes, is not felt."""
    setup = redis_sentinel_factory()
    old = setup.master()
    m = driver.module
    name = client_name()

    async def body() -> None:
        log = RoleLog(old)
        async with m.Multiplexer(setup.url, client_name=name, **FAST) as mpx:
            await subscribed(mpx, log, "fo:a", "fo:b")
            promises = mpx.new_promise_subscription("fo:promise:")
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            promise = promises.new_promise("1", 60)
            assert await mpx.publish("fo:a", b"before") == 1
            await wait_until(lambda: log.messages == [(b"fo:a", b"before")])
            await wait_server(lambda: listening(setup, name) is not None)

            new = await anyio.to_thread.run_sync(setup.failover)
            assert new is not old
            with anyio.fail_after(FAILOVER_DEADLINE), pytest.raises(m.PromiseInterrupted):
                await promise
            await recovered_on(mpx, new, old, name, log, "fo:a", "fo:b")
            kinds = [kind for kind, _ in log.entries[:6]]
            assert kinds == ["activate", "activate", "msg", "disconnect", "activate", "activate"]
            check_announced(log.disconnects[0], m, new)
            # Moved before the old master was demoted: on the announcement, not on the drop.
            assert log.roles == [b"master", b"master"]

            with anyio.fail_after(5):
                await promises.wait_for_activation()
            promise = promises.new_promise("2", 10)
            assert new.command("PUBLISH", "fo:promise:2", b"kept") == 1
            with anyio.fail_after(5):
                assert await promise == b"kept"

            # The sentinels demote the old master: nothing of ours was on it any more.
            await anyio.to_thread.run_sync(setup.wait_demoted, old)
            assert new.command("PUBLISH", "fo:a", b"still") == 1
            await wait_until(lambda: log.messages[-1] == (b"fo:a", b"still"))
            assert len(log.disconnects) == 1

    driver.run(body)


def test_the_listener_turns_to_another_sentinel_when_its_own_dies(
    driver: Driver, redis_sentinel_factory: RedisSentinelFactory
) -> None:
    """The sentinel that the multiplexer listens to is killed: the data connection
    does not notice (no on_disconnect, messages keep coming), the listener connects
    to another sentinel, and the next failover is heard from that one."""
    setup = redis_sentinel_factory()
    old = setup.master()
    m = driver.module
    name = client_name()

    async def body() -> None:
        log = RoleLog(old)
        async with m.Multiplexer(setup.url, client_name=name, **FAST) as mpx:
            await subscribed(mpx, log, "sl:a")
            await wait_server(lambda: listening(setup, name) is not None)
            first = listening(setup, name)
            assert first is not None
            first.kill()
            await wait_server(lambda: listening(setup, name) not in (None, first))

            assert mpx.connected
            assert old.command("PUBLISH", "sl:a", b"1") == 1
            await wait_until(lambda: log.messages == [(b"sl:a", b"1")])
            assert log.disconnects == []

            new = await anyio.to_thread.run_sync(setup.failover)
            await recovered_on(mpx, new, old, name, log, "sl:a")
            check_announced(log.disconnects[0], m, new)
            assert log.roles == [b"master"]

    driver.run(body)


def test_an_announcement_for_another_master_changes_nothing(
    driver: Driver,
    redis_sentinel_factory: RedisSentinelFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sentinels also monitor 'othermaster', which fails over: the sentinel the
    multiplexer listens to announces it, and the multiplexer stays where it is (the
    same connection to the same master: no on_disconnect, messages keep coming)."""
    setup = redis_sentinel_factory(other_masters=["othermaster"])
    master = setup.master()
    other = setup.master("othermaster")
    m = driver.module
    name = client_name()
    caplog.set_level(logging.DEBUG, logger="redismpx")

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(setup.url, client_name=name, **FAST) as mpx:
            await subscribed(mpx, log, "om:a")
            await wait_server(lambda: listening(setup, name) is not None)
            (before,) = [client["id"] for client in clients_named(master, name)]

            new_other = await anyio.to_thread.run_sync(setup.failover, "othermaster")
            assert new_other is not other
            await wait_until(
                lambda: "announces another master's switch" in caplog.text,
                timeout=FAILOVER_DEADLINE,
            )
            assert setup.master() is master
            assert master.command("PUBLISH", "om:a", b"1") == 1
            await wait_until(lambda: log.messages == [(b"om:a", b"1")])
            assert [client["id"] for client in clients_named(master, name)] == [before]
            assert log.disconnects == []
            assert log.activations == [b"om:a"]

    driver.run(body)


def test_master_crash_fails_over_and_reconnects(
    driver: Driver, redis_sentinel_factory: RedisSentinelFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL of the master: the connection drops at once; while the sentinels still
    name the dead master every attempt is refused (with backoff); once they promote
    the replica, the multiplexer finds it and re-activates every name."""
    setup = redis_sentinel_factory()
    old = setup.master()
    m = driver.module
    name = client_name()
    caplog.set_level(logging.INFO, logger="redismpx")

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(setup.url, client_name=name, **FAST) as mpx:
            await subscribed(mpx, log, "crash:a", "crash:b")
            new = await anyio.to_thread.run_sync(setup.kill_master)
            await recovered_on(mpx, new, old, name, log, "crash:a", "crash:b")

    driver.run(body)
    dead = f"(master '{MASTER_NAME}' at 127.0.0.1:{old.port}: "
    refused = [r.getMessage() for r in caplog.records if dead in r.getMessage()]
    assert refused, "no attempt was refused while the sentinels named the dead master"


def test_all_sentinels_down_is_retried_until_one_returns(
    driver: Driver, redis_sentinel_factory: RedisSentinelFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The sentinels are not on the data path: with all of them down an established
    connection carries on. A lost one is retried, with backoff, for as long as no
    sentinel answers, and recovers when one comes back; so does the listener for
    announced failovers, which connects to the sentinel that came back."""
    setup = redis_sentinel_factory()
    master = setup.master()
    m = driver.module
    name = client_name()
    caplog.set_level(logging.INFO, logger="redismpx")

    async def body() -> None:
        log = Log()
        async with m.Multiplexer(setup.url, client_name=name, **FAST) as mpx:
            await subscribed(mpx, log, "down:a")
            for sentinel in setup.sentinels:
                sentinel.kill()
            assert master.command("PUBLISH", "down:a", b"1") == 1
            await wait_until(lambda: log.messages == [(b"down:a", b"1")])

            assert master.kill_clients("pubsub") == 1
            await wait_until(lambda: log.disconnects)
            await wait_until(lambda: mpx.statistics().reconnect_attempts >= 3)
            assert not mpx.connected
            await anyio.to_thread.run_sync(setup.sentinels[1].restart)
            await wait_until(lambda: log.activations == [b"down:a", b"down:a"])
            assert master.command("PUBLISH", "down:a", b"2") == 1
            await wait_until(lambda: log.messages[-1] == (b"down:a", b"2"))
            assert len(log.disconnects) == 1
            await wait_server(lambda: listening(setup, name) is setup.sentinels[1])

    driver.run(body)
    logged = logged_text(caplog.records)
    assert f"no sentinel gave the address of master '{MASTER_NAME}'" in logged
    assert "redismpx sentinel listener could not connect to" in logged
    assert "no sentinel could be reached" in logged
    for host, port in setup.sentinel_addresses:
        assert f"{host}:{port}: " in logged
