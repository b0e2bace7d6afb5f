"""python-socketio through Redis: events/s delivered to N recipients, with the stock
``AsyncRedisManager`` and with ``redismpx_socketio.MultiplexerManager``, through
WebSockets and for the back end alone.

    python benchmarks/framework_socketio.py [--quick] [--clients 1,1000] [--events 5000,200]
                                            [--profile DIR]

For each N, each back end, and each of the two paths, in the same run and against one
redis-server the script starts, M events are emitted to a room of N recipients by a
write-only manager of the same back end (python-socketio's own path for emitting from
outside the servers), from 16 concurrent tasks.

"through WebSockets" (end to end):

* the app: a ``socketio.AsyncServer`` (ASGI, under uvicorn) in a process of its own, with
  the back end's manager; every client that connects joins the room;
* the clients: N ``socketio.AsyncClient`` over WebSockets, in another process, each
  counting the ``news`` events it gets;
* the publishing: here, in the benchmark's process.

Events/s is N x M over the time from the first emit to the last event a client got; the
app's peak RSS is its VmHWM. Engine.IO's ping interval and timeout are set beyond the
deadline, so that no keepalive falls due during a measurement (a client whose pong waits
behind the events it has yet to read drops its own connection after 30 s by default).

"back end alone": one process (this one) and one event loop, no Engine.IO transport.
An ``AsyncServer`` that never serves has the back end's listening manager; N recipients
are registered through the manager's own API (``connect`` and ``enter_room``, as the
server does for a client, with made-up Engine.IO sids); the manager's listening task is
started as the server starts it at its first connection (``initialize``); and
``AsyncServer._send_eio_packet``, which would put the packet on the client's Engine.IO
queue for its WebSocket, is replaced by a counter per recipient. The write-only manager
publishes from the same event loop. So a row's time covers the publishing manager,
Redis, the listening manager's receive and decode, and python-socketio's dispatch and
local fan-out (``AsyncManager.emit``, which the managers inherit: one asyncio task per
recipient per event), and nothing of Engine.IO, uvicorn or the clients. Events/s is
N x M over the time from the first emit to the last packet counted; no RSS (the process
is the benchmark's).

Every row checks that each recipient got exactly M events, and reports the events our
manager dropped on the back-end-alone rows (the app's own log says so on the other
path); the script exits 1 if a recipient did not get exactly M. M stays under the
manager's buffer (10,000 events), so no run is allowed to drop.

``--profile DIR``: each app of the "through WebSockets" rows runs under cProfile and
writes ``DIR/app-<back end>-<N>.prof`` when it stops (read it with ``pstats``).

The same file is the app and the clients (``--role app|clients``), so that the
benchmark needs nothing but ``_redis.py`` and ``_peers/common.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import signal
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
WEBSOCKETS = "through WebSockets"
ALONE = "back end alone"


def make_manager(backend: str, url: str, channel: str, write_only: bool = False) -> Any:
    if backend == "stock":
        import socketio

        return socketio.AsyncRedisManager(url, channel=channel, write_only=write_only)
    from redismpx_socketio import MultiplexerManager

    return MultiplexerManager(url, channel=channel, write_only=write_only)


# --------------------------------------------------------------------------- roles


def run_app(backend: str, redis_url: str, channel: str, port: int, profile: str | None) -> None:
    import socketio
    import uvicorn

    manager = make_manager(backend, redis_url, channel)
    # Engine.IO's keepalive beyond the deadline: a client sends its pong only when the
    # ping reaches it behind the flood of events, and its write loop gives up after 30 s
    # without sending (ping interval + 5 s), which a loaded machine can exceed at N = 1,000.
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=manager,
        logger=False,
        ping_interval=DEADLINE,
        ping_timeout=DEADLINE,
    )

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.enter_room(sid, ROOM)

    sio.on("connect", connect)

    app = socketio.ASGIApp(sio, on_shutdown=getattr(manager, "close", None))
    raise_file_limit(4096)
    if profile is None:
        uvicorn.run(app, host=HOST, port=port, log_level="warning", lifespan="on")
        return
    # uvicorn stops at the benchmark's SIGTERM, then raises it again once it has shut
    # down: a handler that returns lets the process write its profile.
    signal.signal(signal.SIGTERM, lambda number, frame: None)
    with cProfile.Profile() as profiler:
        uvicorn.run(app, host=HOST, port=port, log_level="warning", lifespan="on")
    profiler.dump_stats(profile)


async def run_clients(url: str, count: int, expected: int) -> None:
    import socketio

    raise_file_limit(count + 256)
    received = [0]
    last = [0.0]
    total = count * expected
    done = asyncio.Event()
    clients = []
    tallies: list[list[int]] = []  # one per client: the events it got

    def on_news(tally: list[int]) -> None:
        tally[0] += 1
        received[0] += 1
        last[0] = time.monotonic()
        if received[0] >= total:
            done.set()

    async def one() -> Any:
        client = socketio.AsyncClient(reconnection=False)
        tally = [0]
        tallies.append(tally)
        client.on("news", lambda data: on_news(tally))
        await client.connect(url, transports=["websocket"], wait_timeout=30)
        return client

    for start in range(0, count, CONNECT_BATCH):
        batch = min(CONNECT_BATCH, count - start)
        clients.extend(await asyncio.gather(*(one() for _ in range(batch))))
    print("READY", flush=True)
    with contextlib.suppress(TimeoutError):  # the count tells what was missing
        await asyncio.wait_for(done.wait(), DEADLINE)
    short = sum(1 for tally in tallies if tally[0] != expected)
    print(json.dumps({"received": received[0], "last": last[0], "short": short}), flush=True)
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


def measure(
    backend: str, redis: RedisServer, clients: int, events: int, profile: str | None = None
) -> dict[str, Any]:
    port = free_port()
    # A channel per measurement: the previous app's subscription may not be gone yet.
    channel = f"socketio-{backend}-{clients}"
    me = [sys.executable, __file__]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE)]))
    role = ["--role", "app", "--backend", backend, "--channel", channel]
    if profile is not None:
        os.makedirs(profile, exist_ok=True)
        role += ["--profile", os.path.join(profile, f"app-{backend}-{clients}.prof")]
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
        "path": WEBSOCKETS,
        "backend": backend,
        "clients": clients,
        "events": events,
        "delivered": delivered,
        "expected": clients * events,
        "short": result["short"],
        "dropped": None,  # the app's own count; its log says if it dropped
        "per_second": delivered / seconds,
        "seconds": seconds,
        "rss_peak": rss,
    }


# --------------------------------------------------------------------------- back end alone


async def _alone(backend: str, redis: RedisServer, recipients: int, events: int) -> dict[str, Any]:
    import socketio

    channel = f"socketio-alone-{backend}-{recipients}"
    manager = make_manager(backend, redis.url, channel)
    server = socketio.AsyncServer(async_mode="asgi", client_manager=manager, logger=False)
    total = recipients * events
    tallies: dict[str, int] = {}  # Engine.IO sid: the packets sent to it
    delivered = [0]
    last = [0.0]
    done = asyncio.Event()

    async def send_eio_packet(eio_sid: str, packet: Any) -> None:
        # In place of AsyncServer._send_eio_packet (Engine.IO's send_packet: the
        # client's socket queue, then its WebSocket): no transport, the packet is counted.
        tallies[eio_sid] += 1
        delivered[0] += 1
        last[0] = time.monotonic()
        if delivered[0] >= total:
            done.set()

    server._send_eio_packet = send_eio_packet
    for number in range(recipients):  # as the server registers a client: the manager's API
        eio_sid = f"eio-{number}"
        tallies[eio_sid] = 0
        sid = await manager.connect(eio_sid, "/")
        await manager.enter_room(sid, "/", ROOM)
    server.manager_initialized = True  # what the server does at its first connection:
    manager.initialize()  # the manager starts its listening task
    deadline = time.monotonic() + 30
    while numsub(redis, channel) < 1:
        if time.monotonic() > deadline:
            raise SystemExit("the manager did not subscribe")
        await asyncio.sleep(0.01)
    start = await publish(backend, redis.url, channel, events)
    with contextlib.suppress(TimeoutError):  # the counts tell what was missing
        await asyncio.wait_for(done.wait(), DEADLINE)
    dropped = manager.statistics().events_dropped if backend == "redismpx" else 0
    if backend == "redismpx":
        await manager.close()
    else:  # the stock manager has no close: its listening task, then its connections
        manager.thread.cancel()
        await asyncio.wait({manager.thread})
        await manager.pubsub.aclose()
        await manager.redis.aclose()
    seconds = max(last[0] - start, 1e-9)
    return {
        "path": ALONE,
        "backend": backend,
        "clients": recipients,
        "events": events,
        "delivered": delivered[0],
        "expected": total,
        "short": sum(1 for tally in tallies.values() if tally != events),
        "dropped": dropped,
        "per_second": delivered[0] / seconds,
        "seconds": seconds,
        "rss_peak": None,
    }


def measure_alone(backend: str, redis: RedisServer, recipients: int, events: int) -> dict[str, Any]:
    return asyncio.run(_alone(backend, redis, recipients, events))


# --------------------------------------------------------------------------- report


def mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f} MiB"


def ratio(ours: float | None, stock: float | None) -> str:
    return "-" if ours is None or not stock else f"{ours / stock:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("bench", "app", "clients"), default="bench")
    parser.add_argument("--quick", action="store_true", help="small counts (seconds)")
    parser.add_argument("--clients", default=None, help="comma-separated N (default 1,1000)")
    parser.add_argument("--events", default=None, help="comma-separated M, one per N")
    parser.add_argument(
        "--profile", default=None, help="a directory: each app writes its cProfile stats there"
    )
    parser.add_argument("--backend", choices=BACKENDS)
    parser.add_argument("--redis")
    parser.add_argument("--channel")
    parser.add_argument("--port", type=int)
    parser.add_argument("--url")
    parser.add_argument("--count", type=int)
    parser.add_argument("--expected", type=int)
    args = parser.parse_args()
    if args.role == "app":
        run_app(args.backend, args.redis, args.channel, args.port, args.profile)
        return
    if args.role == "clients":
        asyncio.run(run_clients(args.url, args.count, args.expected))
        return
    sizes = numbers(args.clients, "1,50" if args.quick else "1,1000")
    counts = numbers(args.events, "300,20" if args.quick else "5000,200")
    if len(counts) != len(sizes):
        raise SystemExit("--events needs one count per --clients size")
    rows = []
    with RedisServer() as redis:
        for clients, events in zip(sizes, counts, strict=True):
            for path in (WEBSOCKETS, ALONE):
                for backend in BACKENDS:
                    if path == WEBSOCKETS:
                        row = measure(backend, redis, clients, events, args.profile)
                    else:
                        row = measure_alone(backend, redis, clients, events)
                    rows.append(row)
                    print(
                        f"{backend:<9} {path:<18} N={clients:<5} "
                        f"{row['delivered']:>9,} / {row['expected']:,} in {row['seconds']:.2f} s:"
                        f" {row['per_second']:>10,.0f} events/s, "
                        f"app peak RSS {mib(row['rss_peak'])}",
                        flush=True,
                    )
    print()
    print(f"{'path':<18} {'N':>5} {'M':>6} {'stock ev/s':>11} {'ours ev/s':>11} {'ratio':>6} "
          f"{'stock RSS':>10} {'ours RSS':>10} {'ratio':>6}")  # fmt: skip
    for clients in sizes:
        for path in (WEBSOCKETS, ALONE):
            stock, ours = (
                next(
                    r for r in rows if (r["path"], r["clients"], r["backend"]) == (path, clients, b)
                )
                for b in BACKENDS
            )
            print(
                f"{path:<18} {clients:>5} {stock['events']:>6} {stock['per_second']:>11,.0f} "
                f"{ours['per_second']:>11,.0f} {ratio(ours['per_second'], stock['per_second']):>6} "
                f"{mib(stock['rss_peak']):>10} {mib(ours['rss_peak']):>10} "
                f"{ratio(ours['rss_peak'], stock['rss_peak']):>6}"
            )
    bad = False
    for row in rows:
        where = f"{row['backend']} {row['path']} N={row['clients']}"
        if row["dropped"]:
            print(f"DROPPED: {where}: the manager dropped {row['dropped']:,} event(s)")
        if row["delivered"] != row["expected"] or row["short"]:
            bad = True
            print(
                f"FAIL: {where} delivered {row['delivered']:,} of {row['expected']:,}; "
                f"{row['short']:,} recipient(s) did not get exactly {row['events']:,}"
            )
    if bad:
        raise SystemExit(1)
    print("ok: every recipient got every event, on both back ends, on both paths")


def numbers(given: str | None, default: str) -> list[int]:
    return [int(n) for n in (given or default).split(",")]


if __name__ == "__main__":
    main()
