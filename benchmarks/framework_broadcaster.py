"""broadcaster on Starlette: messages/s delivered to N WebSocket clients, stock back end vs ours.

    python benchmarks/framework_broadcaster.py [--quick] [--clients 1,1000]

For each N and each back end, in the same run and against one redis-server that the
script starts:

* the app runs in a process of its own (uvicorn, websockets-sansio): a Starlette
  route ``/ws/{room}`` that subscribes the WebSocket to the room through
  ``broadcast.subscribe`` and forwards every event with ``send_text``. ``stock`` is
  ``broadcaster.Broadcast(url)`` (broadcaster's redis-py back end); ``redismpx`` is
  ``redismpx_broadcaster.Broadcast(url)`` (our back end, bounded subscribers, with
  ``--buffer-size`` events each). Each app first subscribes a channel of its own
  for its whole life: the stock back end often loses its very first subscription
  (docs/frameworks/broadcaster.md), and the benchmark measures it working;
* N clients run in another process (``_ws_swarm.py``: bare
  WebSocket connections that count frames without parsing them);
* this process publishes M messages through the framework's own path,
  ``Broadcast.publish`` of the same back end (32 publishing tasks at once).

Delivered/s is every frame the clients received, divided by the time from the first
publish to the last frame received. Peak RSS is the app process's VmHWM. The last
line checks the counts: every client must receive every message (``--buffer-size``
is at least M, so ours drops nothing here; drops would be reported).
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
PAYLOAD = 100  # bytes: one 102-byte text frame per delivery
ROOM = "room"
PUBLISHERS = 32


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


# ---------------------------------------------------------------- the driver


@dataclass
class Result:
    kind: str
    clients: int
    messages: int
    received: int
    seconds: float
    peak_rss_mib: float

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


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


async def publish(kind: str, url: str, messages: int) -> None:
    broadcast = make_broadcast(kind, url, 1)
    payloads = [f"{i:08d}".ljust(PAYLOAD, "x") for i in range(messages)]
    async with broadcast:

        async def publisher(start: int) -> None:
            for i in range(start, messages, PUBLISHERS):
                await broadcast.publish(ROOM, payloads[i])

        await asyncio.gather(*(publisher(start) for start in range(PUBLISHERS)))


def run_case(kind: str, url: str, clients: int, messages: int, buffer_size: int) -> Result:
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
        ]
        with _process(swarm_argv, stdout=subprocess.PIPE) as swarm:
            assert swarm.stdout is not None
            if swarm.stdout.readline().strip() != "ready":
                raise SystemExit(f"the clients did not connect ({kind}, N={clients})")
            started = time.time()
            asyncio.run(publish(kind, url, messages))
            report = json.loads(swarm.stdout.readline())
            swarm.wait(30)
        peak = _peak_rss_mib(app.pid)
    seconds = report["last"] - started if report["received"] else 0.0
    return Result(kind, clients, messages, report["received"], seconds, peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: seconds")
    parser.add_argument("--clients", default="1,1000", help="values of N, comma-separated")
    parser.add_argument("--messages", default=None, help="M per N, e.g. 20000,200")
    parser.add_argument("--buffer-size", type=int, default=None)
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.redis, args.port, args.buffer_size)
        return

    sizes = [int(n) for n in ("1,50" if args.quick else args.clients).split(",")]
    if args.messages is not None:
        counts = [int(m) for m in args.messages.split(",")]
    else:
        counts = (
            [2000 if n == 1 else 100 for n in sizes]
            if args.quick
            else [20000 if n == 1 else max(100, 200_000 // n) for n in sizes]
        )
    if len(counts) != len(sizes):
        parser.error("--messages needs one count per value of --clients")
    buffer_size = args.buffer_size or max(max(counts), 1000)
    raise_file_limit(max(sizes) + 256)

    results: list[Result] = []
    with RedisServer(["--client-output-buffer-limit", "pubsub", "0", "0", "0"]) as server:
        for clients, messages in zip(sizes, counts, strict=True):
            for kind in KINDS:
                result = run_case(kind, server.url, clients, messages, buffer_size)
                results.append(result)
                print(
                    f"{kind:9} N={clients:<5} M={messages:<6} delivered {result.received:>8} "
                    f"in {result.seconds:6.2f} s = {result.rate:>9,.0f}/s, "
                    f"app peak RSS {result.peak_rss_mib:6.1f} MiB",
                    flush=True,
                )

    print()
    print("| N | M | stock msg/s | redismpx msg/s | ratio | stock peak RSS | redismpx peak RSS |")
    print("|---|---|---|---|---|---|---|")
    lost = []
    for clients, messages in zip(sizes, counts, strict=True):
        stock, ours = (r for r in results if r.clients == clients)
        ratio = ours.rate / stock.rate if stock.rate else float("inf")
        print(
            f"| {clients:,} | {messages:,} | {stock.rate:,.0f} | {ours.rate:,.0f} | "
            f"{ratio:.2f}x | {stock.peak_rss_mib:.1f} MiB | {ours.peak_rss_mib:.1f} MiB |"
        )
        lost += [r for r in (stock, ours) if r.received != clients * messages]
    if lost:
        for r in lost:
            print(f"LOST: {r.kind} N={r.clients}: {r.received} of {r.clients * r.messages}")
        raise SystemExit(1)
    print("ok: every client received every message, with both back ends")


if __name__ == "__main__":
    main()
