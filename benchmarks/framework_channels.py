"""Messages/s through Django Channels to N WebSocket clients: the stock Pub/Sub layer
(channels_redis.pubsub.RedisPubSubChannelLayer) against redismpx_channels.

    python benchmarks/framework_channels.py [--quick] [--clients 1,1000] [--json]

For each back end and each N, in the same run, against one redis-server it starts:

* the app (benchmarks/_framework_channels_app.py: every WebSocket joins group ``bench``
  and gets each of its messages as a text frame) runs under uvicorn in a process of
  its own; its peak RSS (VmHWM) is read from /proc when the round ends;
* N clients connect from another process (benchmarks/_framework_channels_swarm.py);
* this process publishes M messages with ``group_send`` on a layer of the same kind
  (how a Django view or worker publishes from outside the app), as fast as it can,
  WINDOW calls at a time.

messages/s = frames the clients received / (time of the last frame - time of the first
publish). Our layer's channel capacity is M and its expiry an hour, so that it drops
nothing the stock layer (unbounded, no expiry) would keep: the same work for both.
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

#: (clients, messages) per round; deliveries are their product.
FULL = {1: 20_000, 1000: 100}
QUICK = {1: 500, 50: 20}
START_DEADLINE = 60.0
#: group_send calls in flight at once in the publishing process. (The stock layer
#: sends them one at a time on its one connection; ours pipelines them.)
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


def make_layer(backend: str, url: str, capacity: int) -> Any:
    if backend == "ours":
        from redismpx_channels import RedisMPXChannelLayer

        return RedisMPXChannelLayer(hosts=[url], capacity=capacity, expiry=EXPIRY)
    from channels_redis.pubsub import RedisPubSubChannelLayer

    return RedisPubSubChannelLayer(hosts=[url])


async def publish(backend: str, url: str, messages: int) -> float:
    layer = make_layer(backend, url, messages)
    await layer.group_send("bench", {"type": "bench.message", "text": "warm"})
    started = time.time()
    for first in range(0, messages, WINDOW):
        await asyncio.gather(
            *(
                layer.group_send("bench", {"type": "bench.message", "text": str(n)})
                for n in range(first, min(first + WINDOW, messages))
            )
        )
    if backend == "ours":
        await layer.close()
    else:
        await layer.flush()
    return started


def one_round(backend: str, url: str, clients: int, messages: int) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "BENCH_BACKEND": backend,
        "BENCH_REDIS": url,
        "BENCH_CAPACITY": str(messages + 10),
        "BENCH_EXPIRY": str(EXPIRY),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    app = subprocess.Popen(
        [sys.executable, "-c",
         "from _peers.common import raise_file_limit; raise_file_limit(65536); "
         "import uvicorn, sys; sys.argv[0] = 'uvicorn'; uvicorn.main()",
         "_framework_channels_app:application", "--host", HOST, "--port", str(port),
         "--log-level", "warning", "--lifespan", "off", "--no-access-log"],
        cwd=HERE, env=env,
    )  # fmt: skip
    swarm = None
    try:
        _wait_port(port, app)
        # +1: the warm-up message, which every client also receives
        expected = clients * (messages + 1)
        swarm = subprocess.Popen(
            [sys.executable, str(HERE / "_framework_channels_swarm.py"),
             f"ws://{HOST}:{port}/", str(clients), str(expected)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert swarm.stdout is not None
        line = swarm.stdout.readline().strip()
        if line != "READY":
            raise SystemExit(f"the client swarm did not start: {line!r}")
        started = asyncio.run(publish(backend, url, messages))
        result = json.loads(swarm.stdout.readline())
        swarm.wait(30)
        received = result["received"] - clients  # the warm-up frames
        seconds = max(result["last"] - started, 1e-9)
        return {
            "backend": backend,
            "clients": clients,
            "messages": messages,
            "expected": clients * messages,
            "received": received,
            "seconds": seconds,
            "rate": received / seconds,
            "app_peak_rss_mib": peak_rss_mib(app.pid),
        }
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
        for clients, messages in rounds.items():
            for backend in ("stock", "ours"):
                results.append(one_round(backend, server.url, clients, messages))
    print(f"{'N':>6} {'back end':>8} {'delivered':>12} {'messages/s':>12} {'app peak RSS':>13}")
    for row in results:
        print(
            f"{row['clients']:>6} {row['backend']:>8} "
            f"{row['received']:>6}/{row['expected']:<6}"
            f"{row['rate']:>11,.0f} {row['app_peak_rss_mib']:>9.1f} MiB"
        )
    for clients in rounds:
        stock, ours = (r for r in results if r["clients"] == clients)
        print(
            f"N = {clients}: ours/stock messages/s {ours['rate'] / stock['rate']:.2f}x, "
            f"peak RSS {ours['app_peak_rss_mib'] / stock['app_peak_rss_mib']:.2f}x"
        )
    if options.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
