"""The ceiling of ``benchmarks/peers.py``: an anyio socket on asyncio, ``hiredis.Reader``,
nothing else (no library, no task, no buffer).

``backlog``, ``live``, ``latency``
    One ``SUBSCRIBE``, then ``receive`` + ``feed`` + ``gets()`` until every message is
    parsed: the fastest any Python consumer on anyio can take messages off the socket.
``fanout``
    The same loop calling ``--subscribers`` plain Python callbacks for every message (the
    callbacks the library adapters register, one per subscriber): "the plain-callback
    loop", the baseline of fan-out with sync callbacks.
``churn``
    ``SUBSCRIBE`` of every name in commands of 1,024 names (what redismpx's core sends),
    all written at once, then every confirmation read; the same for ``UNSUBSCRIBE``.
``memory``
    The least a multiplexer must keep: the names subscribed on the connection and, in a
    ``dict``, one callback per name (the same function for all). Bytes per entry above
    the connected baseline.

    python benchmarks/_peers/raw.py backlog --port P --expected N
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import common
import hiredis

VARIANTS = ("loop",)
READ_SIZE = 64 * 1024  # the drivers' own read size
NAMES_PER_COMMAND = 1024  # as redismpx_core.MAX_NAMES_PER_COMMAND
NOTHING = object()


class Connection:
    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader(notEnoughData=NOTHING)

    async def next_reply(self) -> Any:
        while (reply := self.reader.gets()) is NOTHING:
            self.reader.feed(await self.stream.receive(READ_SIZE))
        return reply

    async def expect(self, kind: bytes, count: int) -> None:
        """Read ``count`` replies, each a ``kind`` confirmation."""
        for _ in range(count):
            reply = await self.next_reply()
            if not isinstance(reply, list) or reply[0] != kind:
                raise SystemExit(f"raw: expected a {kind!r} confirmation, got {reply!r}")

    async def send(self, command: bytes, names: list[bytes]) -> None:
        if not names:
            await self.stream.send(hiredis.pack_command((command,)))
            return
        packed = b"".join(
            hiredis.pack_command((command, *names[start : start + NAMES_PER_COMMAND]))
            for start in range(0, len(names), NAMES_PER_COMMAND)
        )
        await self.stream.send(packed)


def subscribers(count: int, expected: int, done: anyio.Event) -> list[Callable[..., None]]:
    """``count`` plain callbacks, the same code as the library adapters' sync callbacks."""
    delivered = 0

    def make() -> Callable[[bytes, bytes], None]:
        def on_message(channel: bytes, data: bytes) -> None:
            nonlocal delivered
            delivered += 1
            if delivered == expected:
                done.set()

        return on_message

    return [make() for _ in range(count)]


async def consume(args: Any) -> None:
    expected = args.expected
    latencies = common.Latencies() if args.measure == "latency" else None
    fan_out = args.measure == "fanout"
    done = anyio.Event()
    callbacks = subscribers(args.subscribers, expected, done) if fan_out else []
    async with await anyio.connect_tcp(args.host, args.port) as stream:
        connection = Connection(stream)
        await connection.send(b"SUBSCRIBE", [args.channel.encode()])
        await connection.expect(b"subscribe", 1)
        start = common.ready()
        receive, feed, gets = stream.receive, connection.reader.feed, connection.reader.gets
        count = 0
        if fan_out:
            while not done.is_set():
                feed(await receive(READ_SIZE))
                while (frame := gets()) is not NOTHING:
                    channel, data = frame[1], frame[2]
                    for callback in callbacks:
                        callback(channel, data)
            count = expected
        elif latencies is not None:
            add, latency_ns = latencies.add, common.latency_ns
            while count < expected:
                feed(await receive(READ_SIZE))
                while (frame := gets()) is not NOTHING:
                    add(latency_ns(frame[2]))
                    count += 1
        else:
            while count < expected:
                feed(await receive(READ_SIZE))
                while gets() is not NOTHING:
                    count += 1
        seconds = time.perf_counter() - start
    figures = latencies.figures() if latencies is not None else {}
    common.emit(deliveries=count, seconds=seconds, **figures)


async def churn(args: Any) -> None:
    names = [f"{args.channel}:{index}".encode() for index in range(args.names)]
    async with await anyio.connect_tcp(args.host, args.port) as stream:
        connection = Connection(stream)
        start = time.perf_counter()
        await connection.send(b"SUBSCRIBE", names)
        await connection.expect(b"subscribe", len(names))
        await connection.send(b"UNSUBSCRIBE", names)
        await connection.expect(b"unsubscribe", len(names))
        seconds = time.perf_counter() - start
    common.emit(names=2 * len(names), seconds=seconds)


def on_message(channel: bytes, data: bytes) -> None:
    pass


async def memory(args: Any) -> None:
    async with await anyio.connect_tcp(args.host, args.port) as stream:
        connection = Connection(stream)
        await connection.send(b"PING", [])
        await connection.next_reply()
        common.settle()
        baseline = common.rss_bytes()
        names = [f"{args.channel}:{index}".encode() for index in range(args.names)]
        callbacks = dict.fromkeys(names, on_message)
        await connection.send(b"SUBSCRIBE", names)
        await connection.expect(b"subscribe", len(names))
        del names  # the dict holds them
        common.settle()
        used = common.rss_bytes() - baseline
        assert len(callbacks) == args.names
    common.emit(bytes_per_subscription=used / args.names, subscriptions=args.names)


def main() -> None:
    args = common.parse(VARIANTS)
    run = {"churn": churn, "memory": memory}.get(args.measure, consume)
    anyio.run(run, args, backend="asyncio")


if __name__ == "__main__":
    main()
