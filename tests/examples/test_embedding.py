"""The two embedding examples (examples/embedding, docs/embedding.md) against real Redis.

A subset of the conformance suite (tests/drivers), run over both example drivers:
subscribe and activation, delivery in order (channels and a pattern), names removed
(also by a callback in the middle of a read), a promise fulfilled and one expiring, and
reconnection after ``CLIENT KILL TYPE pubsub``, a server crash and restart, a frozen
server (the health check) and malformed bytes after messages in the same read. Both
demos also run as scripts.

The examples are loaded from their files (``examples/`` is no package). Each test body
is plain synchronous code over a :class:`Harness`, which runs the driver's loop until a
condition holds, with a deadline:

* the selectors driver is blocking: ``BlockingMultiplexer.run_until`` runs in the test
  thread;
* the asyncio driver runs in an ``asyncio.Runner`` (what ``asyncio.run`` is made of):
  each wait is one ``runner.run()`` of a coroutine that polls the condition, so the
  loop, its transport and its timers live on between the test's steps.

No fixed sleeps: every wait is for a condition, and the only timings asserted are
bounds the contract gives (a promise does not expire before its timeout).
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import pytest

from hostile_server import HostileServer, Reply, like_redis
from redis_servers import RedisServer, RedisServerFactory
from redismpx_core import (
    ConnectionLost,
    HealthCheckTimeout,
    InactiveSubscription,
    PromiseInterrupted,
    ProtocolError,
    SubscriptionClosed,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "embedding"

#: Short timers: a fault is detected and repaired in well under a second.
FAST: dict[str, Any] = {
    "backoff_base": 0.02,
    "backoff_cap": 0.2,
    "connect_timeout": 1.0,
}
WAIT = 5.0


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"embedding_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


asyncio_protocol = load("asyncio_protocol")
selectors_driver = load("selectors_driver")


# ----------------------------------------------------------------------------- harness


class Harness(Protocol):
    mpx: Any

    def run_until(self, condition: Callable[[], object], timeout: float = WAIT) -> None:
        """Run the driver's loop until ``condition()``; fail the test after ``timeout``."""

    def close(self) -> None: ...


class SelectorsHarness:
    def __init__(self, host: str, port: int, **options: Any) -> None:
        self.mpx = selectors_driver.BlockingMultiplexer(host, port, **options)

    def run_until(self, condition: Callable[[], object], timeout: float = WAIT) -> None:
        assert self.mpx.run_until(condition, timeout), f"not within {timeout} s"

    def close(self) -> None:
        self.mpx.close()


class AsyncioHarness:
    def __init__(self, host: str, port: int, **options: Any) -> None:
        self.runner = asyncio.Runner()
        self.mpx = asyncio_protocol.ProtocolMultiplexer(host, port, **options)
        self.runner.run(self._start())

    async def _start(self) -> None:
        self.mpx.start()  # in the running loop

    def run_until(self, condition: Callable[[], object], timeout: float = WAIT) -> None:
        try:
            self.runner.run(self._until(condition, timeout))
        except TimeoutError:
            pytest.fail(f"not within {timeout} s")

    @staticmethod
    async def _until(condition: Callable[[], object], timeout: float) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - the conditions are plain state
                await asyncio.sleep(0.002)

    def close(self) -> None:
        self.mpx.close()
        self.runner.close()  # runs the loop until the transport has closed its socket


HARNESSES: dict[str, type[SelectorsHarness] | type[AsyncioHarness]] = {
    "selectors": SelectorsHarness,
    "asyncio": AsyncioHarness,
}

Connect = Callable[..., Harness]


@pytest.fixture(params=sorted(HARNESSES))
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """``connect(port, **core_options) -> Harness`` for the driver under test."""
    made: list[Harness] = []

    def connect(port: int, **options: Any) -> Harness:
        harness = HARNESSES[request.param]("127.0.0.1", port, **{**FAST, **options})
        made.append(harness)
        return harness

    yield connect
    for harness in made:
        harness.close()


class Log:
    """One subscription's callbacks, recorded as one ordered log."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Any]] = []

    def on_message(self, channel: bytes, data: bytes) -> None:
        self.entries.append(("msg", (channel, data)))

    def on_activation(self, name: bytes) -> None:
        self.entries.append(("activate", name))

    def on_disconnect(self, error: Exception) -> None:
        self.entries.append(("disconnect", error))

    def callbacks(self) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
        return self.on_message, self.on_activation, self.on_disconnect

    def of(self, kind: str) -> list[Any]:
        return [value for k, value in self.entries if k == kind]

    @property
    def messages(self) -> list[tuple[bytes, bytes]]:
        return self.of("msg")

    @property
    def activations(self) -> list[bytes]:
        return self.of("activate")

    @property
    def disconnects(self) -> list[Exception]:
        return self.of("disconnect")

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.entries]


def uniq(tag: str) -> str:
    """A name no other test uses (the shared server outlives every test)."""
    return f"emb:{tag}:{uuid.uuid4().hex[:12]}"


def result(harness: Harness, future: Any, timeout: float = WAIT) -> Any:
    """Run until ``future`` is done; its result (or its exception, raised)."""
    harness.run_until(future.done, timeout)
    return future.result()


# ----------------------------------------------------------------------------- subscribe, deliver


def test_subscribe_activates_then_delivers_in_order(
    connect: Connect, redis_server: RedisServer
) -> None:
    h = connect(redis_server.port)
    tag = uniq("order")
    names = [f"{tag}:a", f"{tag}:b", f"{tag}:c"]
    channels, pattern = Log(), Log()
    sub = h.mpx.subscribe(names, *channels.callbacks())
    h.mpx.psubscribe(f"{tag}:*", *pattern.callbacks())

    h.run_until(lambda: len(channels.activations) == 3 and len(pattern.activations) == 1)
    assert sorted(channels.activations) == [n.encode() for n in names]  # each name once
    assert pattern.activations == [f"{tag}:*".encode()]
    assert redis_server.pubsub_numsub(*names) == {n.encode(): 1 for n in names}
    assert h.mpx.connected

    sent = [(names[i % 3].encode(), b"m%d" % i) for i in range(60)]
    receivers = [h.mpx.publish(channel, data) for channel, data in sent]
    h.run_until(lambda: all(f.done() for f in receivers) and len(pattern.messages) == 60)
    # One connection, counted twice by Redis: once for the channel, once for the pattern.
    assert [f.result() for f in receivers] == [2] * 60
    assert channels.messages == sent  # in publish order, across names
    assert pattern.messages == sent
    for log in (channels, pattern):  # nothing before the activations
        assert log.kinds() == ["activate"] * len(log.activations) + ["msg"] * 60

    # A removed name delivers nothing more; the others carry on.
    h.mpx.unsubscribe(sub, names[0])
    h.run_until(lambda: redis_server.pubsub_numsub(names[0]) == {names[0].encode(): 0})
    after = [h.mpx.publish(names[0], b"gone"), h.mpx.publish(names[1], b"kept")]
    h.run_until(lambda: all(f.done() for f in after) and len(pattern.messages) == 62)
    assert [f.result() for f in after] == [1, 2]
    assert channels.messages[60:] == [(names[1].encode(), b"kept")]


def test_a_lone_name_is_one_name_not_its_letters(
    connect: Connect, redis_server: RedisServer
) -> None:
    h = connect(redis_server.port)
    name = uniq("lone")
    log = Log()
    h.mpx.subscribe(name, *log.callbacks())
    h.run_until(lambda: log.activations)
    assert log.activations == [name.encode()]


# ----------------------------------------------------------------------------- promises


def test_promise_fulfilled_and_promise_expired(connect: Connect, redis_server: RedisServer) -> None:
    h = connect(redis_server.port)
    prefix = uniq("promise") + ":"
    log = Log()
    promises = h.mpx.promises(prefix, on_activation=log.on_activation)
    with pytest.raises(InactiveSubscription):  # not before Redis confirmed the pattern
        h.mpx.promise(promises, "early", 5)
    h.run_until(lambda: log.activations)
    assert log.activations == [prefix.encode() + b"*"]

    kept = h.mpx.promise(promises, "1", timeout=5)
    started = time.monotonic()
    lapsed = h.mpx.promise(promises, "2", timeout=0.3)
    assert result(h, h.mpx.publish(prefix + "1", b"one")) == 1  # one pattern, one receiver
    assert result(h, kept) == b"one"
    assert not lapsed.done()  # a message on another suffix does not settle it

    with pytest.raises(TimeoutError):
        result(h, lapsed, timeout=3)
    assert time.monotonic() - started >= 0.3  # not before its deadline

    # Closing the multiplexer fails what is still pending.
    pending = h.mpx.promise(promises, "3", timeout=30)
    h.mpx.close()
    assert pending.done()
    with pytest.raises(SubscriptionClosed):
        pending.result()


# ----------------------------------------------------------------------------- reconnect


def test_client_kill_disconnects_once_interrupts_promises_and_resubscribes(
    connect: Connect, redis_server_factory: RedisServerFactory
) -> None:
    server = redis_server_factory()
    h = connect(server.port)
    log, plog = Log(), Log()
    h.mpx.subscribe(["kill:a", "kill:b"], *log.callbacks())
    promises = h.mpx.promises("kill:promise:", *plog.callbacks()[1:])
    h.run_until(lambda: len(log.activations) == 2 and plog.activations)
    promise = h.mpx.promise(promises, "x", timeout=30)

    before = [(b"kill:a", b"before-%d" % i) for i in range(5)]
    for channel, data in before:
        h.mpx.publish(channel, data)
    h.run_until(lambda: len(log.messages) == 5)

    assert server.kill_clients("pubsub") == 1
    h.run_until(lambda: log.disconnects and promise.done())  # at once, not in 30 s
    with pytest.raises(PromiseInterrupted):
        promise.result()

    h.run_until(lambda: len(log.activations) == 4 and len(plog.activations) == 2)
    assert server.pubsub_numsub("kill:a", "kill:b") == {b"kill:a": 1, b"kill:b": 1}
    assert server.command("PUBSUB", "NUMPAT") == 1
    assert result(h, h.mpx.publish("kill:b", b"after")) == 1
    promise = h.mpx.promise(promises, "y", timeout=5)
    h.mpx.publish("kill:promise:y", b"kept")
    assert result(h, promise) == b"kept"
    h.run_until(lambda: (b"kill:b", b"after") in log.messages)

    assert len(log.disconnects) == len(plog.disconnects) == 1
    assert isinstance(log.disconnects[0], ConnectionLost)
    assert log.kinds() == ["activate"] * 2 + ["msg"] * 5 + ["disconnect"] + ["activate"] * 2 + [
        "msg"
    ]
    assert log.messages == [*before, (b"kill:b", b"after")]
    assert (h.mpx.core.connections_made, h.mpx.core.connections_lost) == (2, 1)


def test_server_crash_and_restart_is_one_outage(
    connect: Connect, redis_server_factory: RedisServerFactory
) -> None:
    server = redis_server_factory()
    port = server.port
    h = connect(port)
    log, plog = Log(), Log()
    h.mpx.subscribe(["crash:1", "crash:2"], *log.callbacks())
    h.mpx.psubscribe("crash:p:*", *plog.callbacks())
    h.run_until(lambda: len(log.activations) == 2 and len(plog.activations) == 1)

    server.kill()
    h.run_until(lambda: log.disconnects and plog.disconnects)
    assert not h.mpx.connected
    # It keeps trying, with backoff, while every attempt is refused.
    h.run_until(lambda: h.mpx.core.backoff.attempts >= 4)
    during = h.mpx.publish("crash:2", b"during")  # held until a connection is up
    assert not during.done()

    server.restart()
    assert server.port == port
    h.run_until(lambda: len(log.activations) == 4 and len(plog.activations) == 2)
    # The held PUBLISH went out after the resubscription, on the same connection.
    assert result(h, during) == 1
    assert result(h, h.mpx.publish("crash:p:x", b"back")) == 1
    h.run_until(lambda: (b"crash:2", b"during") in log.messages and plog.messages)
    assert plog.messages == [(b"crash:p:x", b"back")]

    # One notice each, however many refused attempts the outage took.
    assert len(log.disconnects) == len(plog.disconnects) == 1
    assert h.mpx.core.connections_lost == 1
    assert log.kinds() == ["activate"] * 2 + ["disconnect"] + ["activate"] * 2 + ["msg"]


def test_frozen_server_is_detected_by_the_health_check(
    connect: Connect, redis_server_factory: RedisServerFactory
) -> None:
    server = redis_server_factory()
    h = connect(server.port, health_check_interval=0.2, health_check_timeout=0.2)
    log = Log()
    h.mpx.subscribe("frozen:1", *log.callbacks())
    h.run_until(lambda: log.activations)

    server.pause()  # the kernel still holds the socket open: only the timer can tell
    try:
        started = time.monotonic()
        h.run_until(lambda: log.disconnects)
        assert time.monotonic() - started < 2.0
        assert isinstance(log.disconnects[0], HealthCheckTimeout)
    finally:
        server.resume()
    h.run_until(lambda: len(log.activations) == 2)
    assert result(h, h.mpx.publish("frozen:1", b"thawed")) == 1
    h.run_until(lambda: log.messages == [(b"frozen:1", b"thawed")])
    assert len(log.disconnects) == 1


def _resp3_redis(number: int, command: list[bytes] | None) -> Reply:
    """Enough of a Redis 7 under RESP3 for channel subscriptions."""
    verb = b"" if command is None else command[0].upper()
    if verb == b"HELLO":
        return b"%1\r\n+proto\r\n:3\r\n"
    if command is not None and verb in (b"SUBSCRIBE", b"UNSUBSCRIBE"):
        count = len(command) - 1 if verb == b"SUBSCRIBE" else 0
        return b"".join(push(verb.lower(), name, count) for name in command[1:])
    return like_redis(number, command)


def push(kind: bytes, name: bytes, last: bytes | int) -> bytes:
    tail = b":%d\r\n" % last if isinstance(last, int) else b"$%d\r\n%s\r\n" % (len(last), last)
    return b">3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n%s" % (len(kind), kind, len(name), name, tail)


def test_messages_read_with_malformed_bytes_come_before_the_notice(connect: Connect) -> None:
    """The core holds the events of a chunk that ended in garbage; the driver gets them
    back from connection_lost() and dispatches them before the disconnect notices."""
    with HostileServer(_resp3_redis) as server:
        h = connect(server.port)
        log = Log()
        h.mpx.subscribe("bad:1", *log.callbacks())
        h.run_until(lambda: log.activations)
        chunk = b"".join(push(b"message", b"bad:1", b"m%d" % i) for i in range(3))
        assert server.send(chunk + b"?not RESP\r\n")  # one write: read in one chunk

        h.run_until(lambda: log.disconnects)
        assert isinstance(log.disconnects[0], ProtocolError)
        assert log.kinds()[:5] == ["activate", "msg", "msg", "msg", "disconnect"]
        assert log.messages == [(b"bad:1", b"m%d" % i) for i in range(3)]
        h.run_until(lambda: len(log.activations) == 2)  # and it reconnects
        assert server.connections == 2


# ----------------------------------------------------------------------------- as shipped


@pytest.mark.parametrize("name", ["asyncio_protocol", "selectors_driver"])
def test_example_runs_as_a_script(name: str, redis_server: RedisServer) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "127.0.0.1", str(redis_server.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "news: hello" in lines
    assert "receivers: 1" in lines
    assert lines[-1] == "promise: the answer"


def test_selectors_example_imports_no_event_loop() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import selectors_driver; "
        "print(sorted(m for m in ('asyncio', 'anyio', 'trio') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_a_callback_that_unsubscribes_gets_nothing_more_of_its_chunk(connect: Connect) -> None:
    """The events of one read are built before any callback runs: a driver checks that a
    message's name is still held before each hand-over."""
    with HostileServer(_resp3_redis) as server:
        h = connect(server.port)
        got: list[bytes] = []

        def once(channel: bytes, data: bytes) -> None:
            got.append(data)
            h.mpx.unsubscribe(sub, channel)

        sub = h.mpx.subscribe("chunk:1", once)
        watcher = Log()  # another holder of the name: it gets every message
        h.mpx.subscribe(["chunk:1", "chunk:2"], *watcher.callbacks())
        h.run_until(lambda: len(watcher.activations) == 2)
        # Two runs of chunk:1 in one write (another channel's message ends the first).
        m0, m1, m2 = (push(b"message", b"chunk:1", b"m%d" % i) for i in range(3))
        assert server.send(m0 + m1 + push(b"message", b"chunk:2", b"x") + m2)
        h.run_until(lambda: len(watcher.messages) == 4)
        assert got == [b"m0"]
        assert [data for _, data in watcher.messages] == [b"m0", b"m1", b"x", b"m2"]
