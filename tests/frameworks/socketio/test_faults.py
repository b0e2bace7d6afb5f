"""The faults that break the stock ``AsyncRedisManager``, against it and against ours.

Each fault runs on a deployment of two Socket.IO servers (a client on each) sharing a
Redis server of the test's own: the server SIGKILLed and restarted on its port; the
subscribers' connections killed by ``client-output-buffer-limit`` (python-socketio
#1581); one server falling behind a flood (a slow consumer). Ours must recover and say
what was lost (a warning on the ``redismpx_socketio`` logger, and the counters of
``statistics()``); what the stock manager does is recorded with ``record_property``
(``stock_*`` properties in the JUnit XML; run with ``-s`` to see them printed) and
never asserted, and every wait on it is bounded, since it may never recover.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import hiredis
import pytest
import socketio

from frameworks.socketio.deploy import CHANNEL, ROOM, Nodes, deployment, eventually
from redis_servers import RedisServer, RedisServerFactory, encode_command
from redismpx_socketio import SEQUENCE_KEY, MultiplexerManager

pytestmark = pytest.mark.anyio

BACKENDS = ("stock", "redismpx")
#: How long ours may take to be back (a restart takes a fraction of a second; the
#: reconnect backoff stays under a second here).
RECOVERY_DEADLINE = 15.0
#: How long the stock manager is given before it is recorded as not recovered.
STOCK_DEADLINE = 6.0
#: The slow-consumer flood: events, each about this many bytes.
FLOOD_EVENTS = 6000
FLOOD_BYTES = 1000
OUR_BUFFER = 500


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def manager_factory(backend: str, url: str, **ours: Any) -> Callable[[], Any]:
    if backend == "stock":
        return lambda: socketio.AsyncRedisManager(url)
    return lambda: MultiplexerManager(url, publish_timeout=2.0, **ours)


def numsub(server: RedisServer) -> int:
    try:
        return server.pubsub_numsub(CHANNEL)[CHANNEL.encode()]
    except OSError:  # down, or not yet back
        return -1


def record(record_property: Callable[[str, object], None], backend: str, **found: object) -> None:
    for key, value in found.items():
        record_property(f"{backend}_{key}", value)
    print(f"\nsocketio fault, {backend}: " + ", ".join(f"{k}={v}" for k, v in found.items()))


async def probe(nodes: Nodes, first: int, deadline: float) -> tuple[float | None, list[int]]:
    """Server 0 emits numbered probes, one after another, until the client of server 1
    has one of them or ``deadline`` seconds pass. (How long it took, or ``None``; the
    probes sent.)"""
    start = time.monotonic()
    sent: list[int] = []
    number = first
    while time.monotonic() - start < deadline:
        with anyio.move_on_after(max(0.1, deadline - (time.monotonic() - start))):
            await nodes[0].broadcast(number, within=deadline)
            sent.append(number)
        if any(n in nodes[1].news for n in sent):
            return time.monotonic() - start, sent
        number += 1
        # Paced by the round trip of the acknowledged call, not by a sleep; a short
        # pause keeps a failing back end from spinning.
        await anyio.sleep(0.02)
    return None, sent


def lost_probes(nodes: Nodes, sent: list[int]) -> int:
    """Probes that never reached server 1's client (up to the last one that did)."""
    got = [n for n in sent if n in nodes[1].news]
    if not got:
        return len(sent)
    return sum(1 for n in sent if n < max(got) and n not in nodes[1].news)


def duplicates(nodes: Nodes) -> int:
    """Events that server 1's client got more than once."""
    seen = [repr(item) for item in nodes[1].news]
    return len(seen) - len(set(seen))


def our_lines(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "redismpx_socketio")


def stock_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("socketio")]


# --------------------------------------------------------------------------- faults


async def test_redis_killed_and_restarted(
    backend: str,
    redis_server_factory: RedisServerFactory,
    caplog: pytest.LogCaptureFixture,
    record_property: Callable[[str, object], None],
) -> None:
    caplog.set_level(logging.INFO, logger="redismpx_socketio")
    server = redis_server_factory()
    async with deployment(manager_factory(backend, server.url)) as nodes:
        await nodes.wait_subscribed(lambda: numsub(server))
        await nodes.delivered(0)
        server.kill()
        server.restart()
        recovered, sent = await probe(
            nodes, 1, RECOVERY_DEADLINE if backend == "redismpx" else STOCK_DEADLINE
        )
        lost = lost_probes(nodes, sent)
        if backend == "stock":
            record_stock(record_property, caplog, server, nodes, recovered, lost)
            return
        assert recovered is not None, "our manager did not recover from the restart"
        receiver = nodes[1].manager.statistics()
        sender = nodes[0].manager.statistics()
        record(
            record_property,
            backend,
            recovered_after_s=round(recovered, 2),
            probes_lost=lost,
            counted_missed=receiver.events_missed,
            emits_failed=sender.emits_failed,
        )
        assert duplicates(nodes) == 0
        assert receiver.outages >= 1
        assert receiver.resubscriptions >= 1
        assert receiver.subscribed
        # Every probe that did not arrive is counted by the receiver, from the gap in
        # server 0's sequence numbers; none that did is.
        assert receiver.events_missed == lost
        lines = our_lines(caplog)
        assert "lost the subscription to channel 'socketio'" in lines
        assert "again after" in lines
        assert "Redis Pub/Sub does not replay them" in lines
        if lost:
            assert f"missed {lost} event(s)" in lines
        await wait_until_numsub(server, 2)


def record_stock(
    record_property: Callable[[str, object], None],
    caplog: pytest.LogCaptureFixture,
    server: RedisServer,
    nodes: Nodes,
    recovered: float | None,
    lost: int,
    **extra: object,
) -> None:
    """What the stock manager did under a fault: recorded, never asserted."""
    lines = stock_lines(caplog)
    record(
        record_property,
        "stock",
        recovered_after_s=None if recovered is None else round(recovered, 2),
        probes_lost=lost,
        **extra,
        subscribers_after=numsub(server),
        duplicates=duplicates(nodes),
        log_lines=len(lines),
        log_says_lost=any("lost" in line for line in lines),
    )


async def wait_until_numsub(server: RedisServer, count: int) -> None:
    await eventually(lambda: numsub(server) == count, 5.0)
    assert numsub(server) == count


async def test_output_buffer_limit_kills_the_subscribers(
    backend: str,
    redis_server_factory: RedisServerFactory,
    caplog: pytest.LogCaptureFixture,
    record_property: Callable[[str, object], None],
) -> None:
    """python-socketio #1581: Redis drops the subscribers when one event is larger than
    the pubsub output buffer limit (here 64 KB; 32 MB by default)."""
    caplog.set_level(logging.INFO, logger="redismpx_socketio")
    server = redis_server_factory()
    async with deployment(manager_factory(backend, server.url)) as nodes:
        await nodes.wait_subscribed(lambda: numsub(server))
        await nodes.delivered(0)
        server.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 64kb 0 0")
        big = "x" * 200_000
        await nodes[0].broadcast(big)
        killed = await eventually(
            lambda: "output buffer limits" in server.log_path.read_text(errors="replace"), 5.0
        )
        assert killed is not None, "Redis did not drop the subscribers"
        recovered, sent = await probe(
            nodes, 1, RECOVERY_DEADLINE if backend == "redismpx" else STOCK_DEADLINE
        )
        lost = lost_probes(nodes, sent)
        if backend == "stock":
            record_stock(
                record_property,
                caplog,
                server,
                nodes,
                recovered,
                lost,
                big_event_delivered=big in nodes[1].news,
            )
            return
        assert recovered is not None, "our manager did not recover from the kill"
        receiver = nodes[1].manager.statistics()
        record(
            record_property,
            backend,
            recovered_after_s=round(recovered, 2),
            probes_lost=lost,
            counted_missed=receiver.events_missed,
        )
        assert big not in nodes[1].news
        assert duplicates(nodes) == 0
        assert receiver.outages >= 1
        # The big event was published (Redis counted the receivers, then dropped them)
        # but never delivered: it is missed, with every probe lost after it.
        assert receiver.events_missed == lost + 1
        lines = our_lines(caplog)
        assert "lost the subscription to channel 'socketio'" in lines
        assert "again after" in lines
        assert f"missed {lost + 1} event(s)" in lines
        await wait_until_numsub(server, 2)


def flood_events(count: int, size: int) -> bytes:
    """``count`` emits to the room as an external emitter publishes them (the stock
    manager's JSON), numbered for the gap count, pipelined in one buffer."""
    filler = "y" * size
    commands = []
    for number in range(1, count + 1):
        event = json.dumps(
            {
                "method": "emit",
                "event": "news",
                "data": [f"flood {number} {filler}"],
                "binary": False,
                "namespace": "/",
                "room": ROOM,
                "skip_sid": None,
                "callback": None,
                "host_id": "flood",
                SEQUENCE_KEY: number,
            }
        )
        commands.append(encode_command("PUBLISH", CHANNEL, event))
    return b"".join(commands)


def publish_flood(server: RedisServer, buffer: bytes, count: int) -> list[int]:
    """Send the pipelined flood and read its ``count`` replies (receivers per publish)."""
    sock = server.connect(timeout=30)
    reader = hiredis.Reader()
    replies: list[int] = []
    try:
        sender = threading.Thread(target=sock.sendall, args=(buffer,))
        sender.start()
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:
                reader.feed(sock.recv(1 << 16))
                continue
            replies.append(int(reply))
        sender.join()
    finally:
        sock.close()
    return replies


def biggest_output_buffer(server: RedisServer) -> int:
    """The largest ``omem`` of the server's pubsub clients now."""
    try:
        listing = server.command("CLIENT", "LIST", "TYPE", "pubsub", timeout=2)
    except OSError:  # TimeoutError included
        return 0
    sizes = [0]
    for line in bytes(listing).decode().splitlines():
        for part in line.split():
            if part.startswith("omem="):
                sizes.append(int(part[5:]))
    return max(sizes)


async def test_slow_consumer_falls_behind_a_flood(
    backend: str,
    redis_server_factory: RedisServerFactory,
    caplog: pytest.LogCaptureFixture,
    record_property: Callable[[str, object], None],
) -> None:
    """A server that handles events slower than they are published: the stock manager
    reads only as fast as it handles, so the backlog grows in Redis (up to the output
    buffer limit, which then drops it); ours reads everything at once into a bounded
    buffer and drops the oldest, counted and logged."""
    caplog.set_level(logging.INFO, logger="redismpx_socketio")
    server = redis_server_factory()
    make = manager_factory(backend, server.url, buffer_size=OUR_BUFFER)
    async with deployment(make) as nodes:
        await nodes.wait_subscribed(lambda: numsub(server))
        await nodes.delivered(0)
        buffer = flood_events(FLOOD_EVENTS, FLOOD_BYTES)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, biggest_output_buffer(server))
                done.wait(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.monotonic()
        try:
            receivers = await anyio.to_thread.run_sync(publish_flood, server, buffer, FLOOD_EVENTS)

            def flood_got() -> int:
                return sum(1 for item in nodes[1].news if str(item).startswith("flood "))

            if backend == "stock":
                finished = await eventually(lambda: flood_got() == FLOOD_EVENTS, 20.0)
                record(
                    record_property,
                    backend,
                    flood_events=FLOOD_EVENTS,
                    delivered_to_client=flood_got(),
                    seconds_to_drain=None if finished is None else round(finished, 2),
                    redis_output_buffer_peak_bytes=peak,
                    dropped_by_redis="output buffer limits"
                    in server.log_path.read_text(errors="replace"),
                )
                return
            manager = nodes[1].manager
            before = manager.statistics()

            def accounted() -> bool:
                stats = manager.statistics()
                return stats.events_received - 1 + stats.events_dropped >= FLOOD_EVENTS

            await eventually(accounted, 30.0)
        finally:
            done.set()
            sampler.join()
        stats = manager.statistics()
        elapsed = time.monotonic() - start
        record(
            record_property,
            backend,
            flood_events=FLOOD_EVENTS,
            delivered_to_client=flood_got(),
            dropped=stats.events_dropped,
            seconds_to_drain=round(elapsed, 2),
            redis_output_buffer_peak_bytes=peak,
        )
        assert all(count == 2 for count in receivers)
        assert stats.outages == 0, "the flood cost our manager its connection"
        assert stats.events_received - 1 + stats.events_dropped == FLOOD_EVENTS
        assert stats.events_dropped > 0, "the consumer did not fall behind: no test"
        # Every event it dropped shows as a gap in the flood's numbers, and no other.
        assert stats.events_missed == stats.events_dropped
        assert before.events_dropped <= stats.events_dropped
        assert "fell behind the events on channel 'socketio'" in our_lines(caplog)
        # Still serving, on the same connection.
        await nodes.delivered("after the flood")
        assert numsub(server) == 2
