"""Driver throughput: messages/s delivered to one subscription, against a raw read loop.

200,000 ``PUBLISH`` messages (64-byte payloads) are queued for one subscriber
before the clock starts, then read as fast as the consumer can:

* ``raw``: the ceiling, an anyio socket stream to Redis, ``SUBSCRIBE``, then
  ``receive`` + ``hiredis.Reader.feed`` + ``gets()`` until every message is parsed
  (reads of the driver's own size, ``redismpx_anyio._runner.READ_SIZE``);
* ``sync``: ``redismpx_anyio.Multiplexer`` with a plain callback;
* ``async``: the same with an ``async def`` callback (the queued path);
* ``iter``: ``async with mpx.subscribe(...) as it: async for msg in it``.

Each variant runs on asyncio, and again on trio (anyio on trio), where the raw
anyio loop on trio is the ceiling; and a third time with the trio driver
(``redismpx_trio``, rows ``trio-native``), whose ceiling is a raw loop written on
trio alone (``trio.open_tcp_stream`` + ``receive_some``).

How the backlog is queued: the benchmark starts its own redis-server with
``client-output-buffer-limit pubsub 0 0 0`` (Redis buffers any backlog for a
subscriber). Each measurement is a fresh consumer process that subscribes, waits
for the confirmation, tells this process "ready" and then blocks in a plain
``sys.stdin.readline()``: its event loop is stopped and nothing reads the socket.
This process publishes every message over a pipelined connection and reads every
PUBLISH reply (Redis has then queued all of them for the subscriber: in the
kernel's socket buffers and in its own output buffer, which it keeps writing
out as the consumer drains the socket), then says "go". The consumer times from
"go" until the last message, a sentinel payload, reaches the consumer, and
reports how many messages it got: exactly ``--messages`` or the run fails.

The driver's subscriptions get ``buffer_size=--messages`` so that the whole
backlog fits: the reader never waits for a consumer, so with a buffer smaller
than the backlog it outruns the iterator and drops (try ``--buffer-size 1000``).

Every driver measurement is paired with a raw measurement just before it (on the
same backend), and its ratio is taken to that one: on a shared machine the speed
drifts by tens of percent within seconds, and the two of a pair are likelier to
share it. On such a machine use more rounds (``--rounds 7``).
Prints a table (msg/s: medians; ratios: medians of the ``--rounds`` paired
ratios) and, last, one ratio line per driver variant, e.g.
``sync callback / raw: 0.62`` (goals: sync >= 0.5, async and iterator >= 0.3).
Those ratios are of wall-clock rates; the ``cpu`` column gives the same ratios
per second of the consumer process's CPU time (the raw loop's few tens of
milliseconds also depend on Redis getting a core to refill the socket).

    PYTHONPATH=src python benchmarks/driver_throughput.py [--messages N] [--rounds R]
    PYTHONPATH=src python benchmarks/driver_throughput.py --quick   # CI: counts only

Exits non-zero if any variant does not receive exactly the messages published.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
from _redis import HOST, RedisServer, read_reply

CHANNEL = b"bench"
PAYLOAD = b"x" * 64
SENTINEL = b"!" * 64  # the last message: same size, different bytes
PUBLISH_BATCH = 10_000
CONSUMER_TIMEOUT = 120.0

#: asyncio and trio: the anyio driver (and a raw anyio loop) on that backend;
#: trio-native: the trio driver, against a raw loop written on trio alone.
BACKENDS = ("asyncio", "trio", "trio-native")
VARIANTS = {  # name -> (label, goal as a ratio to the raw loop on the same backend)
    "raw": ("raw loop+hiredis", None),
    "sync": ("sync callback", 0.5),
    "async": ("async callback", 0.3),
    "iter": ("iterator", 0.3),
}
REDIS_ARGS = ("--client-output-buffer-limit", "pubsub", "0", "0", "0")


# ------------------------------------------------------------------ consumer process


class Clock:
    """Wall-clock and process CPU time from "go" to the last message."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def hold(self) -> None:
        """Subscribed: tell the parent, block (the event loop with us) until it says go."""
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        line = sys.stdin.readline()
        if line.strip() != "go":
            raise SystemExit(f"consumer: expected 'go', got {line!r}")
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


async def raw_loop(port: int, messages: int, buffer_size: int, clock: Clock) -> int:
    import anyio

    from redismpx_frontend._backend import READ_SIZE

    nothing = object()
    reader = hiredis.Reader(notEnoughData=nothing)
    async with await anyio.connect_tcp(HOST, port) as stream:
        await stream.send(hiredis.pack_command((b"SUBSCRIBE", CHANNEL)))  # type: ignore[arg-type]
        while (reply := reader.gets()) is nothing:
            reader.feed(await stream.receive(READ_SIZE))
        if reply[0] != b"subscribe":
            raise SystemExit(f"consumer: SUBSCRIBE answered {reply!r}")
        clock.hold()
        receive, feed, gets = stream.receive, reader.feed, reader.gets
        count = 0
        frame: Any = None
        while count < messages:
            feed(await receive(READ_SIZE))
            while (next_frame := gets()) is not nothing:
                frame = next_frame
                count += 1
        clock.stop()
    if frame is None or frame[2] != SENTINEL:
        return -1  # the last frame must be the sentinel
    return count


async def raw_trio_loop(port: int, messages: int, buffer_size: int, clock: Clock) -> int:
    """The ceiling of the trio driver: trio's own stream, hiredis, nothing else."""
    import trio

    from redismpx_frontend._backend import READ_SIZE

    nothing = object()
    reader = hiredis.Reader(notEnoughData=nothing)
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(hiredis.pack_command((b"SUBSCRIBE", CHANNEL)))  # type: ignore[arg-type]
        while (reply := reader.gets()) is nothing:
            reader.feed(await stream.receive_some(READ_SIZE))
        if reply[0] != b"subscribe":
            raise SystemExit(f"consumer: SUBSCRIBE answered {reply!r}")
        clock.hold()
        receive, feed, gets = stream.receive_some, reader.feed, reader.gets
        count = 0
        frame: Any = None
        while count < messages:
            feed(await receive(READ_SIZE))
            while (next_frame := gets()) is not nothing:
                frame = next_frame
                count += 1
        clock.stop()
    if frame is None or frame[2] != SENTINEL:
        return -1
    return count


def _driver(native_trio: bool) -> tuple[Any, Any]:
    """The Multiplexer class under test and the matching Event class."""
    if native_trio:
        import trio

        from redismpx_trio import Multiplexer as TrioMultiplexer

        return TrioMultiplexer, trio.Event
    import anyio

    from redismpx_anyio import Multiplexer as AnyioMultiplexer

    return AnyioMultiplexer, anyio.Event


async def driver_callback(
    port: int,
    messages: int,
    buffer_size: int,
    clock: Clock,
    *,
    is_async: bool,
    native_trio: bool,
) -> int:
    Multiplexer, Event = _driver(native_trio)
    count = 0
    done = Event()
    active = Event()

    def on_sync(channel: bytes, data: bytes) -> None:
        nonlocal count
        count += 1
        if data == SENTINEL:
            clock.stop()
            done.set()

    async def on_async(channel: bytes, data: bytes) -> None:
        nonlocal count
        count += 1
        if data == SENTINEL:
            clock.stop()
            done.set()

    on_message: Callable[[bytes, bytes], Any] = on_async if is_async else on_sync
    async with Multiplexer(f"redis://{HOST}:{port}/0") as mpx:
        sub = mpx.new_channel_subscription(
            on_message, on_activation=lambda name: active.set(), buffer_size=buffer_size
        )
        sub.add(CHANNEL)
        await active.wait()
        clock.hold()
        await done.wait()
    return count


async def driver_sync(
    port: int, messages: int, buffer_size: int, clock: Clock, native_trio: bool = False
) -> int:
    return await driver_callback(
        port, messages, buffer_size, clock, is_async=False, native_trio=native_trio
    )


async def driver_async(
    port: int, messages: int, buffer_size: int, clock: Clock, native_trio: bool = False
) -> int:
    return await driver_callback(
        port, messages, buffer_size, clock, is_async=True, native_trio=native_trio
    )


async def driver_iterator(
    port: int, messages: int, buffer_size: int, clock: Clock, native_trio: bool = False
) -> int:
    Multiplexer, _ = _driver(native_trio)
    count = 0
    async with (
        Multiplexer(f"redis://{HOST}:{port}/0") as mpx,
        mpx.subscribe(CHANNEL, buffer_size=buffer_size) as iterator,
    ):
        clock.hold()
        async for message in iterator:
            count += 1
            if message.data == SENTINEL:
                clock.stop()
                break
    return count


CONSUMERS: dict[str, Callable[..., Awaitable[int]]] = {
    "raw": raw_loop,
    "sync": driver_sync,
    "async": driver_async,
    "iter": driver_iterator,
}


def consumer_main(variant: str, backend: str, port: int, messages: int, buffer_size: int) -> None:
    clock = Clock()
    if backend == "trio-native":
        import trio

        if variant == "raw":
            count = trio.run(raw_trio_loop, port, messages, buffer_size, clock)
        else:
            count = trio.run(CONSUMERS[variant], port, messages, buffer_size, clock, True)
    else:
        import anyio

        count = anyio.run(CONSUMERS[variant], port, messages, buffer_size, clock, backend=backend)
    sys.stdout.write(json.dumps({"count": count, "wall": clock.wall, "cpu": clock.cpu}) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ the parent: publisher


class Publisher:
    """A pipelined PUBLISH connection; ``publish_all`` returns when Redis has queued all."""

    def __init__(self, server: RedisServer) -> None:
        self.sock = server.connect()
        self.reader = hiredis.Reader()
        self.command = hiredis.pack_command((b"PUBLISH", CHANNEL, PAYLOAD))  # type: ignore[arg-type]
        self.last = hiredis.pack_command((b"PUBLISH", CHANNEL, SENTINEL))  # type: ignore[arg-type]

    def publish_all(self, messages: int) -> None:
        sent = 0
        while sent < messages:
            batch = min(PUBLISH_BATCH, messages - sent)
            sent += batch
            if sent == messages:
                self.sock.sendall(self.command * (batch - 1) + self.last)
            else:
                self.sock.sendall(self.command * batch)
            for _ in range(batch):
                receivers = read_reply(self.sock, self.reader)
                if receivers != 1:
                    raise SystemExit(f"PUBLISH reached {receivers!r} subscribers, not 1")

    def close(self) -> None:
        self.sock.close()


def measure(
    server: RedisServer,
    publisher: Publisher,
    variant: str,
    backend: str,
    messages: int,
    buffer_size: int,
) -> dict[str, Any]:
    """One fresh consumer process: {"count": received, "wall": seconds, "cpu": seconds}."""
    argv = [sys.executable, __file__, "--consumer", variant, backend, str(server.port)]
    argv += [str(messages), str(buffer_size)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    name = f"{backend} {VARIANTS[variant][0]}"
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"{name}: the consumer failed to subscribe")
        publisher.publish_all(messages)
        try:
            out, _ = proc.communicate("go\n", timeout=CONSUMER_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{name}: no sentinel after {CONSUMER_TIMEOUT:g} s") from None
        if proc.returncode != 0 or not out.strip():
            raise SystemExit(f"{name}: the consumer exited with {proc.returncode}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="CI: 20,000 messages, 1 round, check the counts"
    )
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=None,
        help="buffer_size of the driver's subscriptions (default: --messages, so that the "
        "backlog fits and no message is dropped)",
    )
    parser.add_argument("--consumer", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consumer:
        variant, backend, port, messages, buffer_size = args.consumer
        consumer_main(variant, backend, int(port), int(messages), int(buffer_size))
        return
    if args.quick:
        args.messages, args.rounds = 20_000, 1
    if args.messages < 1 or args.rounds < 1:
        parser.error("--messages and --rounds must be >= 1")
    buffer_size = args.buffer_size or args.messages

    rows = [(backend, variant) for backend in BACKENDS for variant in VARIANTS]
    drivers = [(backend, variant) for backend, variant in rows if variant != "raw"]
    wall: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
    # Each driver measurement is paired with a raw one just before it, and its ratio is
    # taken to that: the machine's speed drifts (other tenants), and a pair shares most
    # of it. The ratios reported are medians of the paired ratios.
    ratios: dict[tuple[str, str], list[float]] = {row: [] for row in drivers}
    cpu_ratios: dict[tuple[str, str], list[float]] = {row: [] for row in drivers}
    failures: list[str] = []

    def run(backend: str, variant: str) -> tuple[float, float]:
        result = measure(server, publisher, variant, backend, args.messages, buffer_size)
        if result["count"] != args.messages:
            failures.append(
                f"{backend} {VARIANTS[variant][0]}: received {result['count']} "
                f"of {args.messages} messages"
            )
        wall[backend, variant].append(args.messages / result["wall"])
        return args.messages / result["wall"], args.messages / result["cpu"]

    with RedisServer(REDIS_ARGS) as server:
        publisher = Publisher(server)
        try:
            for _ in range(args.rounds):
                for backend, variant in drivers:
                    raw_wall, raw_cpu = run(backend, "raw")
                    driver_wall, driver_cpu = run(backend, variant)
                    ratios[backend, variant].append(driver_wall / raw_wall)
                    cpu_ratios[backend, variant].append(driver_cpu / raw_cpu)
        finally:
            publisher.close()

    ratio = {row: statistics.median(values) for row, values in ratios.items()}
    cpu_ratio = {row: statistics.median(values) for row, values in cpu_ratios.items()}
    print(
        f"driver throughput: {args.messages:,} queued messages of {len(PAYLOAD)} bytes, "
        f"one subscription, median of {args.rounds} round(s)"
    )
    print(f"{'backend':11} {'variant':20} {'msg/s':>12} {'/ raw':>6} {'cpu':>6} {'goal':>6}")
    for backend, variant in rows:
        label, goal = VARIANTS[variant]
        shown = (
            f"{ratio[backend, variant]:6.2f} {cpu_ratio[backend, variant]:6.2f}"
            if variant != "raw"
            else f"{1:6.2f} {1:6.2f}"
        )
        shown_goal = f">={goal}" if goal is not None else ""
        print(
            f"{backend:11} {label:20} {statistics.median(wall[backend, variant]):12,.0f} "
            f"{shown} {shown_goal:>6}"
        )
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if failures:
        raise SystemExit(1)
    if args.quick:
        print(f"ok: every variant received exactly {args.messages:,} messages")
        return
    for backend, variant in drivers:
        prefix = "" if backend == "asyncio" else f"{backend} "
        print(f"{prefix}{VARIANTS[variant][0]} / {prefix}raw: {ratio[backend, variant]:.2f}")


if __name__ == "__main__":
    main()
