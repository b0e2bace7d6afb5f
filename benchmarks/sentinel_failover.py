"""Sentinel failovers: the time from ``SENTINEL FAILOVER`` to ``on_activation`` on the new
master, with Sentinel's default timers, for this tree and for the tree before it heard
failovers as they happen (``--base``, 5576d80), measured in the same run.

The set-up is the test suite's (tests/redis_sentinel.py): a master, a replica and three
sentinels on loopback, here with ``timers="default"``: ``down-after-milliseconds``,
``failover-timeout``, ``parallel-syncs`` and every period (hello, INFO, ping) left at
Sentinel's defaults. Each round starts a client process on one tree's code (a git
worktree of ``--base`` for the baseline, this tree's ``src`` for the other, each put
first on ``PYTHONPATH``, as compare_commits.py does): ``redismpx_anyio.Multiplexer`` on
asyncio with the library's default options, one channel subscription through the
sentinels. Once it is active, the benchmark sends ``SENTINEL FAILOVER`` to the last
sentinel of the list (the client lists the sentinels in order, so this tree's client
listens to the first: it hears of the failover second-hand, as it would from a leader
elected among the others), and the client reports the time of its first
``on_activation`` after the ``on_disconnect``. A message published on the new master
must then reach it (the client is really there), and the set-up is left to settle (the
old master demoted and in sync: the sentinels take 8 to 18 s to demote it with their
default periods) before the next round. The two trees take turns, on one set-up.

    PYTHONPATH=src python benchmarks/sentinel_failover.py [--rounds 5] [--base 5576d80]
    PYTHONPATH=src python benchmarks/sentinel_failover.py --quick    # the tests' timers, 1 round

It needs git (for the baseline's worktree) and a redis-server with Sentinel
(``REDISMPX_REDIS_SERVER`` or PATH; valkey-server works too). The clock is
``time.monotonic()``, which processes on one Linux machine share.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE = "5576d80"
CHANNEL = "sentinel-failover-bench"
GOAL = 2.0  # seconds, this tree's median with default timers

#: How long a client may take to come up, and a failover to reach it (the baseline
#: waits for the demotion: up to 18 s with default periods, more on a busy machine).
READY_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 60.0


# ------------------------------------------------------------------ the client process


def client(url: str) -> None:
    """One round's client: subscribe through the sentinels, then report each
    notice as a JSON line with its ``time.monotonic()``; exit once a message arrives
    after the move (or after FAILOVER_TIMEOUT + READY_TIMEOUT)."""
    import anyio

    import redismpx_anyio

    def say(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)

    async def main() -> None:
        done = anyio.Event()
        moved = False

        def on_message(channel: bytes, data: bytes) -> None:
            if moved:
                say("message", data=data.decode())
                done.set()

        def on_disconnect(error: Exception) -> None:
            nonlocal moved
            moved = True
            say("disconnect", error=str(error))

        def on_activation(name: bytes) -> None:
            say("activated" if moved else "ready", module=redismpx_anyio.__file__)

        with anyio.move_on_after(READY_TIMEOUT + FAILOVER_TIMEOUT):
            async with redismpx_anyio.Multiplexer(url) as mpx:
                sub = mpx.new_channel_subscription(on_message, on_disconnect, on_activation)
                sub.add(CHANNEL)
                await done.wait()

    anyio.run(main)


# ------------------------------------------------------------------ the benchmark


class Client:
    """A client process on ``tree``'s code, its JSON lines read by a thread."""

    def __init__(self, tree: Path, url: str) -> None:
        self.tree = tree
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--client", url],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next line of kind ``event`` (others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SystemExit(f"the client sent no {event!r} within {timeout} s") from None
            if line is None:
                self.proc.wait()
                stderr = self.proc.stderr.read() if self.proc.stderr else ""
                raise SystemExit(f"the client ended before {event!r}:\n{stderr[-2000:]}")
            if line["event"] == event:
                return line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def one_round(setup: Any, tree: Path) -> tuple[float, float]:
    """(seconds to the disconnect, seconds to the activation on the new master)."""
    client = Client(tree, setup.url)
    try:
        ready = client.expect("ready", READY_TIMEOUT)
        expected = tree / "src" / "redismpx_anyio" / "__init__.py"
        if Path(ready["module"]).resolve() != expected.resolve():
            raise SystemExit(f"the client ran {ready['module']}, not {expected}")
        old = setup.master()
        sent = setup.start_failover(via=setup.sentinels[-1])
        disconnected = client.expect("disconnect", FAILOVER_TIMEOUT)
        activated = client.expect("activated", FAILOVER_TIMEOUT)
        # The client is on the new master: what is published there reaches it.
        new = setup.wait_new_master(old, FAILOVER_TIMEOUT)
        deadline = time.monotonic() + 10.0
        while client.lines.empty():
            new.command("PUBLISH", CHANNEL, b"on the new master")
            if time.monotonic() > deadline:
                raise SystemExit("the client did not receive a message from the new master")
            time.sleep(0.05)
        client.expect("message", 10.0)
        return disconnected["t"] - sent, activated["t"] - sent
    finally:
        client.close()


@contextmanager
def worktree(commit: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="redismpx-base-") as scratch:
        tree = Path(scratch) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(tree), commit],
            cwd=ROOT,
            check=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
            )


def summary(label: str, values: list[float]) -> str:
    median = statistics.median(values)
    runs = " ".join(f"{v:.2f}" for v in values)
    spread = (max(values) - min(values)) / median if median else 0.0
    return (
        f"{label:<12} median {median:6.2f} s   min {min(values):5.2f}   max {max(values):5.2f}"
        f"   spread {spread:4.0%}   runs: {runs}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="failovers per tree")
    parser.add_argument("--base", default=BASE, help="the commit whose behaviour is the baseline")
    parser.add_argument(
        "--quick", action="store_true", help="the tests' fast timers and one round (CI)"
    )
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client)
        return
    rounds = 1 if args.quick else args.rounds
    timers = "fast" if args.quick else "default"

    sys.path.insert(0, str(ROOT / "tests"))
    from redis_sentinel import RedisSentinel
    from redis_servers import binary_version, resolve_redis_server

    binary = resolve_redis_server()
    version = ".".join(map(str, binary_version(binary)))
    results: dict[str, list[tuple[float, float]]] = {}
    with worktree(args.base) as base_tree, RedisSentinel(binary, timers=timers) as setup:
        trees = [(args.base, base_tree), ("this tree", ROOT)]
        for turn in range(rounds):
            # Turn and turn about, starting with each side in turn.
            for label, tree in trees if turn % 2 == 0 else trees[::-1]:
                figures = one_round(setup, tree)
                results.setdefault(label, []).append(figures)
                print(
                    f"round {turn + 1}/{rounds} {label}: on_disconnect {figures[0]:.2f} s, "
                    f"on_activation {figures[1]:.2f} s after SENTINEL FAILOVER",
                    file=sys.stderr,
                    flush=True,
                )
                setup.settle()
    print(
        f"SENTINEL FAILOVER -> on_activation on the new master; {timers} Sentinel timers, "
        f"{os.path.basename(binary)} {version}; {rounds} round(s) per tree, alternating"
    )
    for label, _ in trees:
        print(summary(label, [activated for _, activated in results[label]]))
    base = statistics.median(activated for _, activated in results[args.base])
    this = statistics.median(activated for _, activated in results["this tree"])
    verdict = "PASS" if this < GOAL else "MISS"
    goal = f"(goal < {GOAL:g} s with default timers: {verdict})" if timers == "default" else ""
    print(f"this tree / {args.base}: {this / base:.2f} of the time {goal}".rstrip())


if __name__ == "__main__":
    main()
