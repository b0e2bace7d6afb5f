"""python-socketio through Redis: events/s delivered to N WebSocket clients, with the
stock ``AsyncRedisManager`` and with ``redismpx_socketio.MultiplexerManager``.

    python benchmarks/framework_socketio.py [--quick] [--clients 1,1000] [--events 5000,200]

For each back end and each N, in the same run and against one redis-server the script
starts:

* the app: a ``socketio.AsyncServer`` (ASGI, under uvicorn) in a process of its own, with
  the back end's manager; every client that connects joins one room;
* the clients: N ``socketio.AsyncClient`` over WebSockets, in another process, counting
  the ``news`` events they get;
* the publishing, here: a write-only manager of the same back end (python-socketio's own
  path for emitting from outside the servers) emits M events to the room, from a few
  concurrent tasks.

Delivered events/s is N x M over the time from the first emit to the last event a
client got; the app's peak RSS is its VmHWM. The table gives ours/stock per N. Every run
checks that each client got exactly M events, and the script exits 1 if one did not.
M stays under the manager's buffer (10,000 events), so no run is allowed to drop.

The same file is the app and the clients (``--role app|clients``), so that the
benchmark needs nothing but ``_redis.py`` and ``_peers/common.py``.
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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "_peers")]

from _redis import HOST, RedisServer  # noqa: E402
from common import raise_file_limit  # noqa: E402

ROOM = "bench"
BACKENDS = ("stock", "redismpx")
EMITTERS = 16  # concurrent emitting tasks in the publishing process
PAYLOAD = "x" * 100
CONNECT_BATCH = 50
DEADLINE = 300.0


def make_manager(backend: str, url: str, channel: str, write_only: bool = False) -> Any:
    if backend == "stock":
        import socketio

        return socketio.AsyncRedisManager(url, channel=channel, write_only=write_only)
    from redismpx_socketio import MultiplexerManager

    return MultiplexerManager(url, channel=channel, write_only=write_only)


# --------------------------------------------------------------------------- roles


def run_app(backend: str, redis_url: str, channel: str, port: int) -> None:
    import socketio
    import uvicorn

    manager = make_manager(backend, redis_url, channel)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, logger=False)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.enter_room(sid, ROOM)

    app = socketio.ASGIApp(sio, on_shutdown=getattr(manager, "close", None))
    raise_file_limit(4096)
    uvicorn.run(app, host=HOST, port=port, log_level="warning", lifespan="on")


async def run_clients(url: str, count: int, expected: int) -> None:
    import socketio

    raise_file_limit(count + 256)
    received = [0]
    last = [0.0]
    total = count * expected
    done = asyncio.Event()
    clients = []

    def on_news(data: Any) -> None:
        received[0] += 1
        last[0] = time.monotonic()
        if received[0] >= total:
            done.set()

    async def one() -> Any:
        client = socketio.AsyncClient(reconnection=False)
        client.on("news", on_news)
        await client.connect(url, transports=["websocket"], wait_timeout=30)
        return client

    for start in range(0, count, CONNECT_BATCH):
        batch = min(CONNECT_BATCH, count - start)
        clients.extend(await asyncio.gather(*(one() for _ in range(batch))))
    print("READY", flush=True)
    with contextlib.suppress(TimeoutError):  # the count tells what was missing
        await asyncio.wait_for(done.wait(), DEADLINE)
    print(json.dumps({"received": received[0], "last": last[0]}), flush=True)
    await asyncio.gather(*(client.disconnect() for client in clients))


# --------------------------------------------------------------------------- driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the app exited before it listened")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("the app did not listen in time")


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def numsub(redis: RedisServer, channel: str) -> int:
    reply = redis.command(b"PUBSUB", b"NUMSUB", channel.encode())
    return int(reply[1])


async def publish(backend: str, url: str, channel: str, events: int) -> float:
    """Emit ``events`` events to the room from EMITTERS tasks; the time of the first."""
    emitter = make_manager(backend, url, channel, write_only=True)
    await emitter.emit("warmup-not-counted", None, room="nobody")
    queue = iter(range(events))

    async def worker() -> None:
        for number in queue:
            await emitter.emit("news", [number, PAYLOAD], room=ROOM)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(EMITTERS)))
    close = getattr(emitter, "close", None)
    if close is not None:
        await close()
    return start


def measure(backend: str, redis: RedisServer, clients: int, events: int) -> dict[str, Any]:
    port = free_port()
    # A channel per measurement: the previous app's subscription may not be gone yet.
    channel = f"socketio-{backend}-{clients}"
    me = [sys.executable, __file__]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE)]))
    role = ["--role", "app", "--backend", backend, "--channel", channel]
    app = subprocess.Popen([*me, *role, "--redis", redis.url, "--port", str(port)], env=env)
    swarm = None
    try:
        wait_port(port, app)
        role = ["--role", "clients", "--url", f"http://{HOST}:{port}"]
        swarm = subprocess.Popen(
            [*me, *role, "--count", str(clients), "--expected", str(events)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert swarm.stdout is not None
        if swarm.stdout.readline().strip() != "READY":
            raise SystemExit("the clients did not connect")
        deadline = time.monotonic() + 30
        while numsub(redis, channel) < 1:  # the app's manager listens from its first client on
            if time.monotonic() > deadline:
                raise SystemExit("the app's manager did not subscribe")
            time.sleep(0.01)
        start = asyncio.run(publish(backend, redis.url, channel, events))
        result = json.loads(swarm.stdout.readline())
        rss = peak_rss(app.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            swarm.wait(30)  # its clients disconnect before the app stops
    finally:
        for proc in (swarm, app):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    delivered = result["received"]
    seconds = max(result["last"] - start, 1e-9)
    return {
        "backend": backend,
        "clients": clients,
        "events": events,
        "delivered": delivered,
        "expected": clients * events,
        "per_second": delivered / seconds,
        "seconds": seconds,
        "rss_peak": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("bench", "app", "clients"), default="bench")
    parser.add_argument("--quick", action="store_true", help="small counts (seconds)")
    parser.add_argument("--clients", default=None, help="comma-separated N (default 1,1000)")
    parser.add_argument("--events", default=None, help="comma-separated M, one per N")
    parser.add_argument("--backend", choices=BACKENDS)
    parser.add_argument("--redis")
    parser.add_argument("--channel")
    parser.add_argument("--port", type=int)
    parser.add_argument("--url")
    parser.add_argument("--count", type=int)
    parser.add_argument("--expected", type=int)
    args = parser.parse_args()
    if args.role == "app":
        run_app(args.backend, args.redis, args.channel, args.port)
        return
    if args.role == "clients":
        asyncio.run(run_clients(args.url, args.count, args.expected))
        return
    sizes = [int(n) for n in (args.clients or ("1,50" if args.quick else "1,1000")).split(",")]
    counts = [int(m) for m in (args.events or ("300,20" if args.quick else "5000,200")).split(",")]
    if len(counts) != len(sizes):
        raise SystemExit("--events needs one count per --clients size")
    rows = []
    with RedisServer() as redis:
        for clients, events in zip(sizes, counts, strict=True):
            for backend in BACKENDS:
                row = measure(backend, redis, clients, events)
                rows.append(row)
                print(
                    f"{backend:<9} N={clients:<5} {row['delivered']:>9,} / {row['expected']:,} "
                    f"in {row['seconds']:.2f} s: {row['per_second']:>10,.0f} events/s, "
                    f"app peak RSS {row['rss_peak'] / 2**20:.1f} MiB",
                    flush=True,
                )
    print()
    print(f"{'N':>5} {'stock ev/s':>12} {'ours ev/s':>12} {'ratio':>6} "
          f"{'stock RSS':>10} {'ours RSS':>10} {'ratio':>6}")  # fmt: skip
    for clients in sizes:
        stock, ours = (next(r for r in rows if r["clients"] == clients and r["backend"] == b)
                       for b in BACKENDS)  # fmt: skip
        print(
            f"{clients:>5} {stock['per_second']:>12,.0f} {ours['per_second']:>12,.0f} "
            f"{ours['per_second'] / stock['per_second']:>6.2f} "
            f"{stock['rss_peak'] / 2**20:>8.1f} M {ours['rss_peak'] / 2**20:>8.1f} M "
            f"{ours['rss_peak'] / stock['rss_peak']:>6.2f}"
        )
    short = [r for r in rows if r["delivered"] != r["expected"]]
    if short:
        for row in short:
            print(f"FAIL: {row['backend']} N={row['clients']} delivered {row['delivered']:,} "
                  f"of {row['expected']:,}")  # fmt: skip
        raise SystemExit(1)
    print("ok: every client got every event, on both back ends")


if __name__ == "__main__":
    main()
