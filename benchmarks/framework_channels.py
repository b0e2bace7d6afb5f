"""Messages/s through Django Channels to N recipients: the stock Pub/Sub layer
(channels_redis.pubsub.RedisPubSubChannelLayer) against redismpx_channels.

    python benchmarks/framework_channels.py [--quick] [--json]

Two kinds of rows, each for both back ends and N = 1 and N = 1,000, in the same run and
against one redis-server that the script starts:

**through WebSockets** (the whole path of a Channels deployment):

* the app (benchmarks/_framework_channels_app.py: every WebSocket joins group ``bench``,
  is told ``subscribed``, then gets each message of the group as a text frame) runs
  under uvicorn in a process of its own; its peak RSS (VmHWM) is read from /proc when
  the round ends, with its CPU time (user + system, printed to stderr);
* N clients connect from another process (benchmarks/_ws_swarm.py: bare connections
  that wait for the ``subscribed`` notice, then count frames of PAYLOAD bytes without
  parsing them);
* this process publishes M messages with ``group_send`` on a layer of the same kind
  (how a Django view or worker publishes from outside the app), WINDOW calls at a time.

  messages/s = frames the clients received / (time of the last frame - time of the
  first publish).

**back end alone** (the layer's part of that path, no WebSockets): in this process, N
channels of one layer (``new_channel``) in group ``bench``, a task per channel calling
``receive`` in a loop, and M ``group_send`` calls from a second layer of the same kind,
WINDOW at a time, all on one event loop.

  messages/s = messages received / (time of the last receive - time of the first
  publish).

Every row checks its counts: every recipient must get every message (what is missing is
reported, with our layer's dropped and expired counts, and the script exits 1). Our
layer's channel capacity is M and its expiry an hour, so that it drops nothing the stock
layer (unbounded, no expiry) would keep: the same work for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "_peers"))

from _redis import HOST, RedisServer  # noqa: E402
from common import raise_file_limit  # noqa: E402

BACKENDS = ("stock", "ours")
WEBSOCKETS, ALONE = "through WebSockets", "back end alone"
#: N: M, per kind of row; deliveries are their product.
FULL = {
    WEBSOCKETS: {1: 20_000, 1000: 100},
    ALONE: {1: 20_000, 1000: 500},
}
QUICK = {
    WEBSOCKETS: {1: 500, 50: 20},
    ALONE: {1: 500, 50: 20},
}
#: Bytes of every message's text: one text frame of PAYLOAD + 2 bytes per delivery.
PAYLOAD = 100
GROUP = "bench"
START_DEADLINE = 60.0
#: Seconds without a delivery after which a back-end-alone row stops waiting.
IDLE = 10.0
#: group_send calls in flight at once in the publishing layer. (The stock layer sends
#: them one at a time on its one connection; ours pipelines them.)
WINDOW = 64
#: Our layer's expiry: a round at N = 1,000 takes longer than the default 60 s, and
#: the stock layer expires nothing.
EXPIRY = 3600


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_layer(backend: str, url: str, capacity: int) -> Any:
    if backend == "ours":
        from redismpx_channels import RedisMPXChannelLayer

        return RedisMPXChannelLayer(hosts=[url], capacity=capacity, expiry=EXPIRY)
    from channels_redis.pubsub import RedisPubSubChannelLayer  # type: ignore[import-untyped]

    return RedisPubSubChannelLayer(hosts=[url])


async def close_layer(backend: str, layer: Any) -> None:
    if backend == "ours":
        await layer.close()
    else:
        await layer.flush()  # the stock layer's way to close its connections


def payloads(messages: int) -> list[dict[str, Any]]:
    return [
        {"type": "bench.message", "text": f"{n:08d}".ljust(PAYLOAD, "x")} for n in range(messages)
    ]


async def send_all(layer: Any, events: list[dict[str, Any]]) -> float:
    """Warm the layer up (its connection) on another group, then group_send every event,
    WINDOW at a time; returns time.time() of the first publish."""
    await layer.group_send(f"{GROUP}-warm-up", events[0])
    started = time.time()
    for first in range(0, len(events), WINDOW):
        await asyncio.gather(*(layer.group_send(GROUP, e) for e in events[first : first + WINDOW]))
    return started


def row(
    path: str, backend: str, clients: int, messages: int, received: int, seconds: float
) -> dict[str, Any]:
    return {
        "path": path,
        "backend": backend,
        "clients": clients,
        "messages": messages,
        "expected": clients * messages,
        "received": received,
        "seconds": seconds,
        "rate": received / seconds if seconds > 0 else 0.0,
        "app_peak_rss_mib": None,
        "app_cpu_seconds": None,
        "dropped": None,
    }


# ---------------------------------------------------------------- through WebSockets


async def publish(backend: str, url: str, messages: int) -> float:
    layer = make_layer(backend, url, messages)
    try:
        return await send_all(layer, payloads(messages))
    finally:
        await close_layer(backend, layer)


def through_websockets(backend: str, url: str, clients: int, messages: int) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "BENCH_BACKEND": backend,
        "BENCH_REDIS": url,
        "BENCH_CAPACITY": str(messages + 10),
        "BENCH_EXPIRY": str(EXPIRY),
    }
    app = subprocess.Popen(
        [sys.executable, str(HERE / "_framework_channels_app.py"), str(port)], cwd=HERE, env=env
    )
    swarm = None
    try:
        _wait_port(port, app)
        swarm = subprocess.Popen(
            [sys.executable, str(HERE / "_ws_swarm.py"), "--url", f"ws://{HOST}:{port}/",
             "--clients", str(clients), "--payload", str(PAYLOAD), "--expect", str(messages)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert swarm.stdout is not None
        line = swarm.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"the clients did not connect ({backend}, N = {clients}): {line!r}")
        started = asyncio.run(publish(backend, url, messages))
        report = json.loads(swarm.stdout.readline())
        swarm.wait(30)
        seconds = report["last"] - started if report["received"] else 0.0
        result = row(WEBSOCKETS, backend, clients, messages, report["received"], seconds)
        result["app_peak_rss_mib"] = peak_rss_mib(app.pid)
        result["app_cpu_seconds"] = cpu_seconds(app.pid)
        return result
    finally:
        if swarm is not None and swarm.poll() is None:
            swarm.kill()
            swarm.wait(10)
        app.terminate()
        try:
            app.wait(15)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait(10)


def _wait_port(port: int, process: subprocess.Popen[Any]) -> None:
    import socket

    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the app exited at start")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the app did not start")


# ---------------------------------------------------------------- back end alone


async def alone(backend: str, url: str, channels: int, messages: int) -> dict[str, Any]:
    receiving = make_layer(backend, url, messages + 10)
    sending = make_layer(backend, url, messages)
    events = payloads(messages)
    counts = [0] * channels
    last = 0.0

    async def receiver(index: int, name: str) -> None:
        nonlocal last
        for _ in range(messages):
            await receiving.receive(name)
            counts[index] += 1
            last = time.time()

    try:
        names = [await receiving.new_channel() for _ in range(channels)]
        for first in range(0, channels, 100):
            await asyncio.gather(
                *(receiving.group_add(GROUP, n) for n in names[first : first + 100])
            )
        tasks = [asyncio.create_task(receiver(i, name)) for i, name in enumerate(names)]
        await asyncio.sleep(0)  # every receiver waiting
        started = await send_all(sending, events)
        everyone = asyncio.gather(*tasks)
        seen = -1
        while not everyone.done() and sum(counts) != seen:
            seen = sum(counts)
            await asyncio.wait({everyone}, timeout=IDLE)
        for task in tasks:
            task.cancel()
        await asyncio.gather(everyone, return_exceptions=True)
        received = sum(counts)
        result = row(
            ALONE, backend, channels, messages, received, last - started if received else 0
        )
        if backend == "ours":
            stats = receiving.statistics()
            result["dropped"] = stats.messages_dropped + stats.messages_expired
        return result
    finally:
        await close_layer(backend, sending)
        await close_layer(backend, receiving)


# ---------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, seconds")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    options = parser.parse_args()
    rounds = QUICK if options.quick else FULL
    raise_file_limit(65536)
    results: list[dict[str, Any]] = []
    # client-output-buffer-limit off: the stock layer's reader may fall behind by far
    with RedisServer(["--client-output-buffer-limit", "pubsub", "0", "0", "0"]) as server:
        for path, sizes in rounds.items():
            for clients, messages in sizes.items():
                for backend in BACKENDS:
                    if path == WEBSOCKETS:
                        result = through_websockets(backend, server.url, clients, messages)
                    else:
                        result = asyncio.run(alone(backend, server.url, clients, messages))
                    results.append(result)
                    cpu = result["app_cpu_seconds"]
                    print(
                        f"{path}, {backend}, N = {clients:,}: {result['received']:,} of "
                        f"{result['expected']:,} in {result['seconds']:.2f} s"
                        + ("" if cpu is None else f", the app's CPU {cpu:.1f} s"),
                        file=sys.stderr, flush=True,
                    )  # fmt: skip

    print("| measured | N | M | back end | delivered | messages/s | ours/stock | app peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = []
    for path, sizes in rounds.items():
        for clients in sizes:
            stock, ours = (r for r in results if r["path"] == path and r["clients"] == clients)
            ratio = ours["rate"] / stock["rate"] if stock["rate"] else float("inf")
            for r in (stock, ours):
                rss = r["app_peak_rss_mib"]
                print(
                    f"| {path} | {clients:,} | {r['messages']:,} | {r['backend']} | "
                    f"{r['received']:,} / {r['expected']:,} | {r['rate']:,.0f} | "
                    f"{f'{ratio:.2f}x' if r is ours else ''} | "
                    f"{'-' if rss is None else f'{rss:.1f} MiB'} |"
                )
            line = f"{path}, N = {clients:,}: ours/stock messages/s {ratio:.2f}x"
            if stock["app_peak_rss_mib"]:
                line += (
                    f", app peak RSS {ours['app_peak_rss_mib'] / stock['app_peak_rss_mib']:.2f}x"
                )
            summary.append(line)
    print()
    print("\n".join(summary))
    if options.json:
        print(json.dumps(results))
    short = [r for r in results if r["received"] != r["expected"]]
    for r in short:
        dropped = (
            "" if r["dropped"] is None else f" (our layer dropped or expired {r['dropped']:,})"
        )
        print(
            f"LOST: {r['path']}, {r['backend']}, N = {r['clients']}: "
            f"{r['received']:,} of {r['expected']:,} delivered{dropped}"
        )
    if short:
        raise SystemExit(1)
    print("ok: every recipient got every message, on both back ends, in every row")


if __name__ == "__main__":
    main()
