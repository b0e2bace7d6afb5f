"""This library in ``benchmarks/peers.py``: three driver rows, three kinds of consumer.

Variants are ``ROW:KIND``. Rows: ``anyio-asyncio`` and ``anyio-trio`` (``redismpx_anyio``
under ``anyio.run(..., backend=...)``), ``trio`` (``redismpx_trio`` under ``trio.run``).
Kinds: ``sync`` (a plain callback, run inline on the reader's path), ``iter``
(``async with mpx.subscribe(...) as it: async for msg in it``, one task per iterator),
``async`` (an ``async def`` callback, run by the subscription's own task).

``backlog``, ``live``, ``latency``, ``fanout``
    ``--subscribers`` subscriptions (or iterators) on the one channel of one multiplexer;
    their buffers hold every message of the run (``buffer_size`` = messages per
    subscriber, at least the default 10,000), as the peers' unbounded queues do, so the
    reader, which never waits for a consumer, cannot outrun one into drops.
``churn``
    One subscription; ``add`` of every name at once (the core batches them, 1,024 names
    a ``SUBSCRIBE``), until ``on_activation`` has fired for each; then ``remove`` of all,
    until one more name, subscribed in the same tick after them, is confirmed (so every
    UNSUBSCRIBE confirmation has been read: Redis answers in order).
``memory``
    ``--names`` subscriptions of one name each (one shared ``on_message``), until each has
    been activated; bytes above the connected multiplexer's baseline.

    PYTHONPATH=src python benchmarks/_peers/redismpx.py backlog --port P --expected N \\
        --variant anyio-trio:iter
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import common

ROWS = ("anyio-asyncio", "anyio-trio", "trio")
KINDS = ("sync", "iter", "async")
VARIANTS = tuple(f"{row}:{kind}" for row in ROWS for kind in KINDS)
DEFAULT_BUFFER = 10_000


@dataclass
class Driver:
    """What the adapter needs of one driver row."""

    multiplexer: Any
    event: Callable[[], Any]
    sleep: Callable[[float], Awaitable[None]]
    move_on_after: Callable[[float], Any]
    task_group: Callable[[], Any]
    run: Callable[..., Any]


def driver(row: str) -> Driver:
    if row == "trio":
        import trio

        from redismpx_trio import Multiplexer as TrioMultiplexer

        return Driver(
            TrioMultiplexer, trio.Event, trio.sleep, trio.move_on_after, trio.open_nursery, trio.run
        )
    import anyio

    from redismpx_anyio import Multiplexer as AnyioMultiplexer

    backend = row.removeprefix("anyio-")

    def run(fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        anyio.run(fn, *args, backend=backend)

    return Driver(
        AnyioMultiplexer,
        anyio.Event,
        anyio.sleep,
        anyio.move_on_after,
        anyio.create_task_group,
        run,
    )


class Consumers:
    """The callbacks (the same code as the raw loop's) and the iterator bodies, counting
    deliveries in one closure cell."""

    def __init__(self, expected: int, per_subscriber: int, done: Any, latency: bool) -> None:
        delivered = 0
        latencies = self.latencies = common.Latencies() if latency else None
        add, latency_ns = (latencies.add, common.latency_ns) if latencies else (None, None)

        def sync_callback() -> Callable[[bytes, bytes], None]:
            if add is not None and latency_ns is not None:

                def on_latency(channel: bytes, data: bytes) -> None:
                    nonlocal delivered
                    add(latency_ns(data))
                    delivered += 1
                    if delivered == expected:
                        done.set()

                return on_latency

            def on_message(channel: bytes, data: bytes) -> None:
                nonlocal delivered
                delivered += 1
                if delivered == expected:
                    done.set()

            return on_message

        def async_callback() -> Callable[[bytes, bytes], Awaitable[None]]:
            if add is not None and latency_ns is not None:

                async def on_latency(channel: bytes, data: bytes) -> None:
                    nonlocal delivered
                    add(latency_ns(data))
                    delivered += 1
                    if delivered == expected:
                        done.set()

                return on_latency

            async def on_message(channel: bytes, data: bytes) -> None:
                nonlocal delivered
                delivered += 1
                if delivered == expected:
                    done.set()

            return on_message

        async def drain(iterator: Any) -> None:
            nonlocal delivered
            own = 0
            if add is not None and latency_ns is not None:
                async for message in iterator:
                    add(latency_ns(message.data))
                    delivered += 1
                    if delivered == expected:
                        done.set()
                    own += 1
                    if own == per_subscriber:
                        return
                return
            async for _message in iterator:
                delivered += 1
                if delivered == expected:
                    done.set()
                own += 1
                if own == per_subscriber:
                    return

        def count() -> int:
            return delivered

        self.sync_callback, self.async_callback, self.drain = sync_callback, async_callback, drain
        self.count = count


async def consume(args: Any, row: str, kind: str) -> None:
    lib = driver(row)
    subscribers = max(1, args.subscribers)
    per_subscriber = args.expected // subscribers
    buffer_size = max(per_subscriber, DEFAULT_BUFFER)
    done = lib.event()
    consumers = Consumers(args.expected, per_subscriber, done, args.measure == "latency")
    async with (
        lib.multiplexer(f"redis://{args.host}:{args.port}/0") as mpx,
        contextlib.AsyncExitStack() as stack,
    ):
        iterators = []
        if kind == "iter":
            for _ in range(subscribers):
                iterator = mpx.subscribe(args.channel, buffer_size=buffer_size)
                iterators.append(await stack.enter_async_context(iterator))
        else:
            active = 0
            all_active = lib.event()

            def on_activation(name: bytes) -> None:
                nonlocal active
                active += 1
                if active == subscribers:
                    all_active.set()

            for _ in range(subscribers):
                callback = (
                    consumers.sync_callback() if kind == "sync" else consumers.async_callback()
                )
                sub = mpx.new_channel_subscription(
                    callback, on_activation=on_activation, buffer_size=buffer_size
                )
                sub.add(args.channel)
            await all_active.wait()
        async with lib.task_group() as group:
            start = common.ready()
            for iterator in iterators:
                group.start_soon(consumers.drain, iterator)
            with lib.move_on_after(args.timeout):
                await done.wait()
            seconds = time.perf_counter() - start
            group.cancel_scope.cancel()
        dropped = mpx.statistics().messages_dropped
    figures = consumers.latencies.figures() if consumers.latencies is not None else {}
    common.emit(deliveries=consumers.count(), seconds=seconds, dropped=dropped, **figures)


def on_message(channel: bytes, data: bytes) -> None:
    pass


async def churn(args: Any, row: str, kind: str) -> None:
    lib = driver(row)
    names = [f"{args.channel}:{index}".encode() for index in range(args.names)]
    active = 0
    all_active = lib.event()

    def on_activation(name: bytes) -> None:
        nonlocal active
        active += 1
        if active == len(names):
            all_active.set()

    async with lib.multiplexer(f"redis://{args.host}:{args.port}/0") as mpx:
        await mpx.wait_connected()
        sub = mpx.new_channel_subscription(on_message, on_activation=on_activation)
        start = time.perf_counter()
        sub.add(*names)
        await all_active.wait()
        sub.remove(*names)
        # A round trip tells when every UNSUBSCRIBE confirmation has been read: the core
        # writes the names changed in one tick in the order they changed, so this
        # SUBSCRIBE goes out after the UNSUBSCRIBE commands, and Redis answers in order.
        async with mpx.subscribe(f"{args.channel}:round-trip"):
            seconds = time.perf_counter() - start
            if sub.names or mpx.statistics().active_channels != 1:
                raise SystemExit("redismpx: names left after the churn")
    common.emit(names=2 * len(names), seconds=seconds)


async def memory(args: Any, row: str, kind: str) -> None:
    lib = driver(row)
    active = 0
    all_active = lib.event()

    def on_activation(name: bytes) -> None:
        nonlocal active
        active += 1
        if active == args.names:
            all_active.set()

    async with lib.multiplexer(f"redis://{args.host}:{args.port}/0") as mpx:
        await mpx.wait_connected()
        common.settle()
        baseline = common.rss_bytes()
        names = [f"{args.channel}:{index}".encode() for index in range(args.names)]
        subscriptions = []
        for name in names:
            sub = mpx.new_channel_subscription(on_message, on_activation=on_activation)
            sub.add(name)
            subscriptions.append(sub)
        await all_active.wait()
        del names  # the subscriptions hold them
        common.settle()
        used = common.rss_bytes() - baseline
        if mpx.statistics().active_channels != args.names:
            raise SystemExit("redismpx: not every name is active")
    common.emit(bytes_per_subscription=used / args.names, subscriptions=len(subscriptions))


def main() -> None:
    args = common.parse(VARIANTS)
    row, kind = args.variant.split(":")
    run = {"churn": churn, "memory": memory}.get(args.measure, consume)
    driver(row).run(run, args, row, kind)


if __name__ == "__main__":
    main()
