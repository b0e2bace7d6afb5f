"""The two embedding examples (examples/embedding, docs/embedding.md) against real Redis.

Each example is a backend for the front end: ``asyncio_backend.py`` on plain asyncio,
``selectors_backend.py`` a scheduler of its own on ``selectors`` with no event loop.
This file runs a subset of the drivers' conformance suite over both, through the
front end's public API (``redismpx_frontend.Multiplexer(url, backend=...)``):
subscribe and activation, delivery in order (channels and a pattern), names removed
(also by a callback in the middle of a read), a promise fulfilled and one expiring,
an iterator, and reconnection after ``CLIENT KILL TYPE pubsub``, a server crash and
restart, a frozen server (the health check) and malformed bytes after messages in
the same read. Both demos also run as scripts.

The examples are loaded from their files (``examples/`` is no package). Each test
body is a coroutine that uses the backend it is given and nothing else (no anyio, no
asyncio), so that the same body runs on both; ``run(body)`` runs it the example's way
(``asyncio.run``, or ``SelectorLoop().run``). Waits are for conditions, with a
deadline; the only timings asserted are bounds the contract gives (a promise does
not expire before its timeout).
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

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
from redismpx_frontend import Backend, Multiplexer

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


asyncio_backend = load("asyncio_backend")
selectors_backend = load("selectors_backend")

Body = Callable[[Backend], Awaitable[None]]


def run_on_asyncio(body: Body) -> None:
    asyncio.run(body(asyncio_backend.AsyncioBackend()))  # type: ignore[arg-type]


def run_on_selectors(body: Body) -> None:
    loop = selectors_backend.SelectorLoop()
    loop.run(body(loop))


RUNNERS = {"asyncio": run_on_asyncio, "selectors": run_on_selectors}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Callable[[Body], None]:
    """``run(body)``: the test's body on the example under test."""
    return RUNNERS[request.param]


async def until(backend: Backend, condition: Callable[[], object], timeout: float = WAIT) -> None:  # noqa: ASYNC109
    """Poll ``condition`` (plain state) until it holds; fail after ``timeout`` seconds."""
    deadline = backend.now() + timeout
    while not condition():
        if backend.now() >= deadline:
            pytest.fail(f"not within {timeout} s")
        with backend.cancel_scope(deadline=backend.now() + 0.002):
            await backend.new_signal().wait()


def mpx_for(backend: Backend, port: int, **options: Any) -> Multiplexer:
    return Multiplexer(f"redis://127.0.0.1:{port}/0", backend=backend, **{**FAST, **options})


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
        return self.on_message, self.on_disconnect, self.on_activation

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


# ----------------------------------------------------------------------------- subscribe, deliver


def test_subscribe_activates_then_delivers_in_order(
    run: Callable[[Body], None], redis_server: RedisServer
) -> None:
    tag = uniq("order")
    names = [f"{tag}:a", f"{tag}:b", f"{tag}:c"]

    async def body(backend: Backend) -> None:
        channels, pattern = Log(), Log()
        async with mpx_for(backend, redis_server.port) as mpx:
            sub = mpx.new_channel_subscription(*channels.callbacks())
            sub.add(*names)
            mpx.new_pattern_subscription(f"{tag}:*", *pattern.callbacks())
            await until(
                backend, lambda: len(channels.activations) == 3 and len(pattern.activations) == 1
            )
            assert sorted(channels.activations) == [n.encode() for n in names]  # each once
            assert pattern.activations == [f"{tag}:*".encode()]
            assert redis_server.pubsub_numsub(*names) == {n.encode(): 1 for n in names}
            assert mpx.connected

            sent = [(names[i % 3].encode(), b"m%d" % i) for i in range(60)]
            # One connection, counted twice by Redis: once for the channel, once for the
            # pattern.
            assert [await mpx.publish(channel, data) for channel, data in sent] == [2] * 60
            await until(backend, lambda: len(pattern.messages) == 60 == len(channels.messages))
            assert channels.messages == sent  # in publish order, across names
            assert pattern.messages == sent
            for log in (channels, pattern):  # nothing before the activations
                assert log.kinds() == ["activate"] * len(log.activations) + ["msg"] * 60

            # A removed name delivers nothing more; the others carry on.
            sub.remove(names[0])
            await until(
                backend, lambda: redis_server.pubsub_numsub(names[0])[names[0].encode()] == 0
            )
            assert await mpx.publish(names[0], b"gone") == 1
            assert await mpx.publish(names[1], b"kept") == 2
            await until(backend, lambda: len(pattern.messages) == 62)
            assert channels.messages[60:] == [(names[1].encode(), b"kept")]

    run(body)


def test_an_iterator_and_a_lone_name(
    run: Callable[[Body], None], redis_server: RedisServer
) -> None:
    name = uniq("lone")

    async def body(backend: Backend) -> None:
        log = Log()
        async with mpx_for(backend, redis_server.port) as mpx:
            mpx.new_channel_subscription(*log.callbacks()).add(name)
            await until(backend, lambda: log.activations)
            assert log.activations == [name.encode()]  # one name, not its letters
            async with mpx.subscribe(name) as it:
                assert await mpx.publish(name, b"one") == 1  # one connection, one name
                message = await it.__anext__()
                assert (message.channel, message.data, message.pattern) == (
                    name.encode(),
                    b"one",
                    None,
                )
            await until(backend, lambda: redis_server.pubsub_numsub(name)[name.encode()] == 1)

    run(body)


# ----------------------------------------------------------------------------- promises


def test_promise_fulfilled_and_promise_expired(
    run: Callable[[Body], None], redis_server: RedisServer
) -> None:
    prefix = uniq("promise") + ":"

    async def body(backend: Backend) -> None:
        async with mpx_for(backend, redis_server.port) as mpx:
            promises = mpx.new_promise_subscription(prefix)
            with pytest.raises(InactiveSubscription):  # not before Redis confirmed it
                promises.new_promise("early", 5)
            await promises.wait_for_activation()

            kept = promises.new_promise("1", timeout=5)
            started = backend.now()
            lapsed = promises.new_promise("2", timeout=0.3)
            assert await mpx.publish(prefix + "1", b"one") == 1  # one pattern, one receiver
            assert await kept == b"one"
            assert not lapsed.done  # a message on another suffix does not settle it
            with pytest.raises(TimeoutError):
                await lapsed
            assert backend.now() - started >= 0.3  # not before its deadline
            pending = promises.new_promise("3", timeout=30)
        # Closing the multiplexer fails what is still pending.
        assert pending.done
        with pytest.raises(SubscriptionClosed):
            await pending

    run(body)


# ----------------------------------------------------------------------------- reconnect


def test_client_kill_disconnects_once_interrupts_promises_and_resubscribes(
    run: Callable[[Body], None], redis_server_factory: RedisServerFactory
) -> None:
    server = redis_server_factory()

    async def body(backend: Backend) -> None:
        log = Log()
        async with mpx_for(backend, server.port) as mpx:
            mpx.new_channel_subscription(*log.callbacks()).add("kill:a", "kill:b")
            promises = mpx.new_promise_subscription("kill:promise:")
            await until(backend, lambda: len(log.activations) == 2)
            promise = await promises.wait_for_new_promise("x", 30)

            before = [(b"kill:a", b"before-%d" % i) for i in range(5)]
            for channel, data in before:
                await mpx.publish(channel, data)
            await until(backend, lambda: len(log.messages) == 5)

            assert server.kill_clients("pubsub") == 1
            await until(backend, lambda: log.disconnects and promise.done)  # at once
            with pytest.raises(PromiseInterrupted):
                await promise

            await until(backend, lambda: len(log.activations) == 4)
            await promises.wait_for_activation()
            assert server.pubsub_numsub("kill:a", "kill:b") == {b"kill:a": 1, b"kill:b": 1}
            assert server.command("PUBSUB", "NUMPAT") == 1
            assert await mpx.publish("kill:b", b"after") == 1
            promise = promises.new_promise("y", timeout=5)
            await mpx.publish("kill:promise:y", b"kept")
            assert await promise == b"kept"
            await until(backend, lambda: (b"kill:b", b"after") in log.messages)

            assert len(log.disconnects) == 1
            assert isinstance(log.disconnects[0], ConnectionLost)
            assert log.kinds() == (
                ["activate"] * 2 + ["msg"] * 5 + ["disconnect"] + ["activate"] * 2 + ["msg"]
            )
            assert log.messages == [*before, (b"kill:b", b"after")]
            statistics = mpx.statistics()
            assert statistics.connections_lost == 1  # the subscriber's; the publisher stayed

    run(body)


def test_server_crash_and_restart_is_one_outage(
    run: Callable[[Body], None], redis_server_factory: RedisServerFactory
) -> None:
    server = redis_server_factory()
    port = server.port

    async def body(backend: Backend) -> None:
        log, plog = Log(), Log()
        async with mpx_for(backend, port, protocol=3) as mpx:
            mpx.new_channel_subscription(*log.callbacks()).add("crash:1", "crash:2")
            mpx.new_pattern_subscription("crash:p:*", *plog.callbacks())
            await until(backend, lambda: len(log.activations) == 2 == len(plog.activations) * 2)

            server.kill()
            await until(backend, lambda: log.disconnects and plog.disconnects)
            assert not mpx.connected
            # It keeps trying, with backoff, while every attempt is refused.
            await until(backend, lambda: mpx.statistics().reconnect_attempts >= 4)
            outcome: list[object] = []

            async def publish_during() -> None:  # held until a connection is up
                outcome.append(await mpx.publish("crash:2", b"during"))

            async with backend.open_task_group() as tasks:
                tasks.start_soon(publish_during)
                server.restart()
                assert server.port == port
                await until(backend, lambda: len(log.activations) == 4)
            assert outcome == [1]  # sent after the resubscription, on the same connection
            await until(backend, lambda: len(plog.activations) == 2)
            assert await mpx.publish("crash:p:x", b"back") == 1
            await until(backend, lambda: (b"crash:2", b"during") in log.messages and plog.messages)
            assert plog.messages == [(b"crash:p:x", b"back")]

            # One notice each, however many refused attempts the outage took.
            assert len(log.disconnects) == len(plog.disconnects) == 1
            assert mpx.statistics().connections_lost == 1
            assert log.kinds() == ["activate"] * 2 + ["disconnect"] + ["activate"] * 2 + ["msg"]

    run(body)


def test_frozen_server_is_detected_by_the_health_check(
    run: Callable[[Body], None], redis_server_factory: RedisServerFactory
) -> None:
    server = redis_server_factory()

    async def body(backend: Backend) -> None:
        log = Log()
        options = {"health_check_interval": 0.2, "health_check_timeout": 0.2}
        async with mpx_for(backend, server.port, **options) as mpx:
            mpx.new_channel_subscription(*log.callbacks()).add("frozen:1")
            await until(backend, lambda: log.activations)

            server.pause()  # the kernel still holds the socket open: only the timer can tell
            try:
                started = backend.now()
                await until(backend, lambda: log.disconnects)
                assert backend.now() - started < 2.0
                assert isinstance(log.disconnects[0], HealthCheckTimeout)
            finally:
                server.resume()
            await until(backend, lambda: len(log.activations) == 2)
            assert await mpx.publish("frozen:1", b"thawed") == 1
            await until(backend, lambda: log.messages == [(b"frozen:1", b"thawed")])
            assert len(log.disconnects) == 1

    run(body)


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


def test_messages_read_with_malformed_bytes_come_before_the_notice(
    run: Callable[[Body], None],
) -> None:
    """The core holds the events of a chunk that ended in garbage; the runner gets them
    back from connection_lost() and dispatches them before the disconnect notices."""
    with HostileServer(_resp3_redis) as server:

        async def body(backend: Backend) -> None:
            log = Log()
            async with mpx_for(backend, server.port, protocol=3) as mpx:
                mpx.new_channel_subscription(*log.callbacks()).add("bad:1")
                await until(backend, lambda: log.activations)
                chunk = b"".join(push(b"message", b"bad:1", b"m%d" % i) for i in range(3))
                assert server.send(chunk + b"?not RESP\r\n")  # one write: read in one chunk

                await until(backend, lambda: log.disconnects)
                assert isinstance(log.disconnects[0], ProtocolError)
                assert log.kinds()[:5] == ["activate", "msg", "msg", "msg", "disconnect"]
                assert log.messages == [(b"bad:1", b"m%d" % i) for i in range(3)]
                await until(backend, lambda: len(log.activations) == 2)  # and it reconnects
                assert server.connections == 2

        run(body)


def test_a_callback_that_unsubscribes_gets_nothing_more_of_its_chunk(
    run: Callable[[Body], None],
) -> None:
    """The events of one read are built before any callback runs: the front end checks
    that a message's name is still held before each hand-over."""
    with HostileServer(_resp3_redis) as server:

        async def body(backend: Backend) -> None:
            got: list[bytes] = []
            watcher = Log()  # another holder of the name: it gets every message
            async with mpx_for(backend, server.port, protocol=3) as mpx:

                def once(channel: bytes, data: bytes) -> None:
                    got.append(data)
                    sub.remove(channel)

                sub = mpx.new_channel_subscription(once)
                sub.add("chunk:1")
                mpx.new_channel_subscription(*watcher.callbacks()).add("chunk:1", "chunk:2")
                await until(backend, lambda: len(watcher.activations) == 2)
                # Two runs of chunk:1 in one write (another channel's message ends the first).
                m0, m1, m2 = (push(b"message", b"chunk:1", b"m%d" % i) for i in range(3))
                assert server.send(m0 + m1 + push(b"message", b"chunk:2", b"x") + m2)
                await until(backend, lambda: len(watcher.messages) == 4)
                assert got == [b"m0"]
                assert [data for _, data in watcher.messages] == [b"m0", b"m1", b"x", b"m2"]

        run(body)


# ----------------------------------------------------------------------------- as shipped


@pytest.mark.parametrize("name", ["asyncio_backend", "selectors_backend"])
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
    assert "alert: fire drill" in lines
    assert lines[-1] == "promise: the answer"


def test_selectors_example_imports_no_event_loop() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import selectors_backend; "
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
