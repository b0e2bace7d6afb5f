"""broadcaster: messages/s to N recipients, stock back end vs ours, through WebSockets and alone.

    python benchmarks/framework_broadcaster.py [--quick] [--clients 1,1000]
        [--messages 20000,200] [--alone-messages 20000,2000]

For each N and each back end, in the same run and against one redis-server that the
script starts, two kinds of rows:

``through WebSockets`` (the framework end to end)
    the app runs in a process of its own (uvicorn, websockets-sansio): a Starlette
    route ``/ws/{room}`` that subscribes the WebSocket to the room through
    ``broadcast.subscribe`` and forwards every event with ``send_text``; N clients run
    in another process (``_ws_swarm.py``: bare WebSocket connections that count frames
    without parsing them).
``back end alone`` (no WebSockets)
    one process holds the ``Broadcast`` and N subscribers, each a task doing
    ``async for event in subscriber`` and counting: what the app does up to
    ``send_text``, which it leaves out.

``stock`` is ``broadcaster.Broadcast(url)`` (broadcaster's redis-py back end);
``redismpx`` is ``redismpx_broadcaster.Broadcast(url)`` (our back end, bounded
subscribers, with ``--buffer-size`` events each): the one-line change swaps all that
the ``back end alone`` rows run. Each process first subscribes a channel of its own
for its whole life (the stock back end often loses its very first subscription,
docs/frameworks/broadcaster.md, and the benchmark measures it working); publishing
starts once Redis counts the room's subscription. In both kinds, this process
publishes M messages of 100 bytes through the framework's own path,
``Broadcast.publish`` of a second ``Broadcast`` on the same back end (32 publishing
tasks at once).

Delivered/s is every message the N recipients received, divided by the time from the
first publish to the last message received. Peak RSS is the VmHWM of the process that
holds the subscribers (the app, or the back-end-alone process). Every row's counts are
checked: every recipient must receive every message (``--buffer-size`` is at least M,
so ours drops nothing here; drops would be reported). The lines after the table give
each N's time per delivery in both kinds of rows, and the back end alone's as a share
of stock's through WebSockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE / "_peers"))  # last: _peers/broadcaster.py must not shadow broadcaster
from _redis import RedisServer  # noqa: E402
from common import raise_file_limit  # noqa: E402

KINDS = ("stock", "redismpx")
WEBSOCKETS, ALONE = "through WebSockets", "back end alone"
PATHS = (WEBSOCKETS, ALONE)
PAYLOAD = 100  # bytes: one 102-byte text frame per delivery
ROOM = "room"
PUBLISHERS = 32
IDLE = 3.0  # seconds without a delivery before a recipient's missing messages are lost


def make_broadcast(kind: str, url: str, buffer_size: int) -> Any:
    if kind == "stock":
        import broadcaster

        return broadcaster.Broadcast(url)
    import redismpx_broadcaster

    return redismpx_broadcaster.Broadcast(url, buffer_size=buffer_size)


# ---------------------------------------------------------------- the app process


def serve(kind: str, url: str, port: int, buffer_size: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    raise_file_limit(8192)
    broadcast = make_broadcast(kind, url, buffer_size)

    async def room(websocket: WebSocket) -> None:
        await websocket.accept()
        async with broadcast.subscribe(websocket.path_params["room"]) as subscriber:
            await websocket.send_text("joined")
            async for event in subscriber:
                await websocket.send_text(event.message)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broadcast, broadcast.subscribe("app-warm-up"):
            yield

    app = Starlette(routes=[WebSocketRoute("/ws/{room}", room)], lifespan=lifespan)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        ws_ping_interval=None,
        log_level="warning",
        backlog=4096,
    )


# ---------------------------------------------------------------- the back end alone


async def alone(kind: str, url: str, recipients: int, expect: int, buffer_size: int) -> None:
    """N subscribers in this process, counting; prints ``ready``, then one JSON line."""
    broadcast = make_broadcast(kind, url, buffer_size)
    counts = [0] * recipients
    finished = [0.0] * recipients

    async def count(index: int, subscriber: Any) -> None:
        received = 0
        async for _event in subscriber:
            received += 1
            counts[index] = received
            if received == expect:
                finished[index] = time.time()
                return

    async with broadcast, broadcast.subscribe("app-warm-up"), contextlib.AsyncExitStack() as stack:
        # One at a time: the stock Broadcast keeps only one of the subscribers that
        # arrive together on a new channel (joining is not measured).
        subscribers = [
            await stack.enter_async_context(broadcast.subscribe(ROOM)) for _ in range(recipients)
        ]
        tasks = [
            asyncio.create_task(count(index, subscriber))
            for index, subscriber in enumerate(subscribers)
        ]
        print("ready", flush=True)
        last_change, seen = time.time(), -1
        while not all(task.done() for task in tasks):
            total = sum(counts)
            if total != seen:
                seen, last_change = total, time.time()
            elif time.time() - last_change > IDLE:
                break
            await asyncio.sleep(0.02)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        dropped = sum(getattr(subscriber, "dropped", 0) for subscriber in subscribers)
        report = {
            "received": sum(counts),
            "last": max(finished) if all(finished) else last_change,
            "dropped": dropped,
            "peak_rss_mib": _peak_rss_mib(os.getpid()),
        }
        print(json.dumps(report), flush=True)


# ---------------------------------------------------------------- the driver


@dataclass
class Result:
    path: str
    kind: str
    clients: int
    messages: int
    received: int
    seconds: float
    peak_rss_mib: float
    dropped: int = 0

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def microseconds(self) -> float:
        """Per delivery."""
        return 1e6 * self.seconds / self.received if self.received else float("inf")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[Any], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit("the app did not start")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def _process(argv: list[str], **options: Any) -> Iterator[subprocess.Popen[str]]:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    process = subprocess.Popen(argv, env=env, text=True, **options)
    try:
        yield process
    finally:
        # Killed, not stopped: uvicorn's graceful shutdown would wait for handlers
        # that sit in `async for event in subscriber` until a next event comes.
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _wait_subscribed(server: RedisServer, within: float = 30.0) -> None:
    """Until Redis counts a subscription to the room (the stock back end does not wait)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.command("PUBSUB", "NUMSUB", ROOM)[1] >= 1:
            return
        time.sleep(0.01)
    raise SystemExit("the room has no subscription in Redis")


async def publish(kind: str, url: str, messages: int) -> None:
    broadcast = make_broadcast(kind, url, 1)
    payloads = [f"{i:08d}".ljust(PAYLOAD, "x") for i in range(messages)]
    async with broadcast:

        async def publisher(start: int) -> None:
            for i in range(start, messages, PUBLISHERS):
                await broadcast.publish(ROOM, payloads[i])

        await asyncio.gather(*(publisher(start) for start in range(PUBLISHERS)))


def run_websockets(
    kind: str, server: RedisServer, clients: int, messages: int, buffer_size: int
) -> Result:
    url = server.url
    port = _free_port()
    app_argv = [sys.executable, __file__, "--serve", kind, "--redis", url, "--port", str(port)]
    app_argv += ["--buffer-size", str(buffer_size)]
    with _process(app_argv) as app:
        _wait_port(port, app)
        swarm_argv = [
            sys.executable,
            str(HERE / "_ws_swarm.py"),
            "--url",
            f"ws://127.0.0.1:{port}/ws/{ROOM}",
            "--clients",
            str(clients),
            "--payload",
            str(PAYLOAD),
            "--expect",
            str(messages),
            "--idle",
            str(IDLE),
        ]
        with _process(swarm_argv, stdout=subprocess.PIPE) as swarm:
            assert swarm.stdout is not None
            if swarm.stdout.readline().strip() != "ready":
                raise SystemExit(f"the clients did not connect ({kind}, N={clients})")
            _wait_subscribed(server)
            started = time.time()
            asyncio.run(publish(kind, url, messages))
            report = json.loads(swarm.stdout.readline())
            swarm.wait(30)
        peak = _peak_rss_mib(app.pid)
    seconds = report["last"] - started if report["received"] else 0.0
    return Result(WEBSOCKETS, kind, clients, messages, report["received"], seconds, peak)


def run_alone(
    kind: str, server: RedisServer, clients: int, messages: int, buffer_size: int
) -> Result:
    url = server.url
    argv = [sys.executable, __file__, "--alone", kind, "--redis", url, "--clients", str(clients)]
    argv += ["--messages", str(messages), "--buffer-size", str(buffer_size)]
    with _process(argv, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit(f"the subscribers did not start ({kind}, N={clients})")
        _wait_subscribed(server)
        started = time.time()
        asyncio.run(publish(kind, url, messages))
        report = json.loads(process.stdout.readline())
        process.wait(30)
    seconds = report["last"] - started if report["received"] else 0.0
    return Result(
        ALONE,
        kind,
        clients,
        messages,
        report["received"],
        seconds,
        report["peak_rss_mib"],
        report["dropped"],
    )


def _counts(
    parser: argparse.ArgumentParser, given: str | None, sizes: list[int], quick: bool, total: int
) -> list[int]:
    """M for each N: as given; else 20,000 at N = 1 and ``total / N`` (at least 100) above,
    or with ``quick`` 2,000 and 100."""
    if given is not None:
        counts = [int(m) for m in given.split(",")]
        if len(counts) != len(sizes):
            parser.error("--messages and --alone-messages need one count per value of --clients")
        return counts
    if quick:
        return [2000 if n == 1 else 100 for n in sizes]
    return [20_000 if n == 1 else max(100, total // n) for n in sizes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: seconds")
    parser.add_argument("--clients", default="1,1000", help="values of N, comma-separated")
    parser.add_argument(
        "--messages", default=None, help="M per N through WebSockets, e.g. 20000,200"
    )
    parser.add_argument(
        "--alone-messages", default=None, help="M per N for the back end alone, e.g. 20000,2000"
    )
    parser.add_argument("--buffer-size", type=int, default=None)
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--alone", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.redis, args.port, args.buffer_size)
        return
    if args.alone:
        raise_file_limit(8192)
        recipients, expect = int(args.clients), int(args.messages)
        asyncio.run(alone(args.alone, args.redis, recipients, expect, args.buffer_size))
        return

    sizes = [int(n) for n in ("1,50" if args.quick else args.clients).split(",")]
    messages = {
        WEBSOCKETS: _counts(parser, args.messages, sizes, args.quick, 200_000),
        # A delivery costs far less without WebSockets: more messages, a few seconds' run.
        ALONE: _counts(parser, args.alone_messages, sizes, args.quick, 2_000_000),
    }
    buffer_size = args.buffer_size or max(*messages[WEBSOCKETS], *messages[ALONE], 1000)
    raise_file_limit(max(sizes) + 256)

    runners = {WEBSOCKETS: run_websockets, ALONE: run_alone}
    results: dict[tuple[str, int, str], Result] = {}
    with RedisServer(["--client-output-buffer-limit", "pubsub", "0", "0", "0"]) as server:
        for index, clients in enumerate(sizes):
            for path in PATHS:
                count = messages[path][index]
                for kind in KINDS:
                    result = runners[path](kind, server, clients, count, buffer_size)
                    results[path, clients, kind] = result
                    print(
                        f"{kind:9} {path:18} N={clients:<5} M={count:<6} "
                        f"delivered {result.received:>8} in {result.seconds:6.2f} s = "
                        f"{result.rate:>9,.0f}/s, peak RSS {result.peak_rss_mib:6.1f} MiB",
                        flush=True,
                    )

    print()
    print(
        "| path | N | M | stock msg/s | redismpx msg/s | ratio "
        "| stock peak RSS | redismpx peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for clients in sizes:
        for path in PATHS:
            stock, ours = results[path, clients, "stock"], results[path, clients, "redismpx"]
            ratio = ours.rate / stock.rate if stock.rate else float("inf")
            print(
                f"| {path} | {clients:,} | {stock.messages:,} | {stock.rate:,.0f} | "
                f"{ours.rate:,.0f} | {ratio:.2f}x | {stock.peak_rss_mib:.1f} MiB | "
                f"{ours.peak_rss_mib:.1f} MiB |"
            )
    print()
    for clients in sizes:
        ws_stock = results[WEBSOCKETS, clients, "stock"]
        ws_ours = results[WEBSOCKETS, clients, "redismpx"]
        stock, ours = results[ALONE, clients, "stock"], results[ALONE, clients, "redismpx"]
        print(
            f"N={clients:,}: per delivery, through WebSockets {ws_stock.microseconds:.2f} µs "
            f"stock, {ws_ours.microseconds:.2f} µs redismpx; back end alone "
            f"{stock.microseconds:.2f} µs stock, {ours.microseconds:.2f} µs redismpx "
            f"({100 * stock.microseconds / ws_stock.microseconds:.1f}% and "
            f"{100 * ours.microseconds / ws_stock.microseconds:.1f}% of stock's through "
            "WebSockets)"
        )

    lost = [r for r in results.values() if r.received != r.clients * r.messages]
    if lost:
        for r in lost:
            dropped = f" ({r.dropped} dropped by full buffers)" if r.dropped else ""
            print(
                f"LOST: {r.kind} {r.path} N={r.clients}: {r.received} of "
                f"{r.clients * r.messages}{dropped}"
            )
        raise SystemExit(1)
    print("ok: every recipient received every message, in every row")


if __name__ == "__main__":
    main()
