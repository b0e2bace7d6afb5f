"""Cluster throughput: deliveries/s of one ClusterMultiplexer against three Multiplexers.

The benchmark starts its own three-master Redis Cluster (``_cluster.py``, one
replica per master, ``client-output-buffer-limit pubsub 0 0 0``: Redis buffers any
backlog for a subscriber, nothing is dropped) and picks ``--names`` shard channels (default
30) so that each master owns the same number of them (their hash slots computed
with ``redismpx_core._slots.key_slot``). ``--messages`` SPUBLISH messages of 64
bytes in total (default 300,000) are spread evenly over the names. Three consumers
hold every name with the same sync callback, which counts deliveries per name:

* ``cluster``: one ``ClusterMultiplexer`` over the three masters, one sharded
  subscription holding all the names (it routes each to its slot's master: one
  connection per master);
* ``replicas``: the same with ``shard_subscriptions="replicas"``: each name rides
  the replica of its slot's master (one connection per replica), which hears the
  master's SPUBLISHes over the cluster bus;
* ``three``: the baseline, three single-node ``Multiplexer``s in the same process
  and event loop, one per master, each with a sharded subscription holding that
  master's names. The cluster front end can do no better than this: the same three
  connections, without the routing.

Each consumer is a fresh process; it subscribes, waits until every name is active,
tells this process "ready", and blocks in ``sys.stdin.readline()``. Publishing is
the same for both: this process publishes with one plain pipelined socket per
master, in one thread each, every ``SPUBLISH`` straight to the master owning its
name, and checks every reply (exactly 1 receiver; 0 for ``replicas``, whose
subscriber is on the replica: SPUBLISH counts the master's own). The masters pass
every SPUBLISH on to their replica in every variant. Two modes (``--mode``):

``backlog``  every message is published, and every reply read, before the consumer
             is told "go" (its loop is stopped meanwhile: the whole backlog waits in
             the kernel's and Redis's buffers); nothing else runs while it reads.
``live``     the consumer is told "go" first, then the publishers start: it reads
             while they publish, so each read finds fewer messages (more reads per
             message, which is where a per-read cost of the router shows), and the
             publishers and the three servers share the machine's cores with it.

The consumer times from its first delivery to its last (the ``--messages``-th) and
reports its deliveries per name: each name must get exactly its share, or the run
fails (a short grace after the last delivery catches duplicates). ``cpu`` is the
same rate per second of the consumer's CPU time over that span.

Each cluster (and replicas) measurement is paired with a baseline one on the same
driver and mode (the order rotates between rounds), and its ratio is taken to that one:
on a shared machine the speed drifts by tens of percent within seconds, and the two
of a pair are likelier to share it. The ratio printed is the median over ``--rounds``
of the paired ratios, one line per driver, mode and variant, e.g.
``cluster / three multiplexers [asyncio, backlog]: 0.93 (goal >= 0.8: PASS)`` (the
goal is the cluster's; the replicas' line reports, ``replicas / three multiplexers
[asyncio, backlog]: 0.90``).
Drivers (``--driver``): ``asyncio`` is ``redismpx_anyio`` on asyncio, ``trio`` is
``redismpx_trio``.

    PYTHONPATH=src python benchmarks/cluster_throughput.py [--messages N] [--names K]
        [--rounds R] [--driver asyncio|trio|both] [--mode backlog|live|both]
    PYTHONPATH=src python benchmarks/cluster_throughput.py --quick   # CI: counts only

Exits non-zero if a consumer does not receive exactly the messages published on
each name, or an SPUBLISH does not reach exactly one subscriber. A MISS does not
fail the run: speed is reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import hiredis
from _cluster import Cluster, ClusterNode
from _redis import read_reply

PAYLOAD = b"x" * 64
PUBLISH_BATCH = 5_000
CONSUMER_TIMEOUT = 120.0
#: After the last delivery, how long the consumer keeps listening for duplicates.
GRACE = 0.2
GOAL = 0.8
NAME_PREFIX = "bench:shard:"

DRIVERS = ("asyncio", "trio")
MODES = ("backlog", "live")
VARIANTS = {"three": "three multiplexers", "cluster": "cluster", "replicas": "cluster on replicas"}
#: What each SPUBLISH reply must count: the subscribers on the master published to.
RECEIVERS = {"three": 1, "cluster": 1, "replicas": 0}
REDIS_ARGS = ("--client-output-buffer-limit", "pubsub", "0", "0", "0")


# ------------------------------------------------------------------ names


def pick_names(cluster: Cluster, count: int) -> list[list[str]]:
    """``count`` names, the same number owned by each master: one list per node."""
    from redismpx_core._slots import key_slot

    per_node, extra = divmod(count, len(cluster.nodes))
    if extra:
        raise SystemExit(f"--names must be a multiple of {len(cluster.nodes)}, not {count}")
    chosen: list[list[str]] = [[] for _ in cluster.nodes]
    index = {node.port: position for position, node in enumerate(cluster.nodes)}
    i = 0
    while any(len(names) < per_node for names in chosen):
        name = f"{NAME_PREFIX}{i}"
        i += 1
        names = chosen[index[cluster.owner(key_slot(name.encode())).port]]
        if len(names) < per_node:
            names.append(name)
    return chosen


def shares(names: Sequence[str], messages: int) -> dict[str, int]:
    """How many of ``messages`` each name gets: round-robin over all the names."""
    base, extra = divmod(messages, len(names))
    return {name: base + (1 if position < extra else 0) for position, name in enumerate(names)}


# ------------------------------------------------------------------ consumer process


def consumer_main(spec: dict[str, Any]) -> None:
    driver = spec["driver"]
    if driver == "trio":
        import trio

        result = trio.run(consume, spec)
    else:
        import anyio

        result = anyio.run(consume, spec, backend="asyncio")
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


async def consume(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["driver"] == "trio":
        import trio

        from redismpx_trio import ClusterMultiplexer, Multiplexer

        Event, sleep, move_on_after = trio.Event, trio.sleep, trio.move_on_after
    else:
        import anyio

        from redismpx_anyio import ClusterMultiplexer, Multiplexer

        Event, sleep, move_on_after = anyio.Event, anyio.sleep, anyio.move_on_after

    urls: list[str] = spec["urls"]
    by_node: list[list[str]] = spec["names"]
    total: int = spec["messages"]
    every_name = [name.encode() for names in by_node for name in names]
    counts = dict.fromkeys(every_name, 0)
    count = 0
    first = last = first_cpu = last_cpu = 0.0
    done = Event()
    all_active = Event()
    active: set[bytes] = set()
    perf_counter, process_time = time.perf_counter, time.process_time

    def on_message(channel: bytes, data: bytes) -> None:
        nonlocal count, first, first_cpu, last, last_cpu
        counts[channel] += 1
        count += 1
        if count == 1:
            first, first_cpu = perf_counter(), process_time()
        if count == total:
            last, last_cpu = perf_counter(), process_time()
            done.set()

    def on_activation(name: bytes) -> None:
        active.add(name)
        if len(active) == len(every_name):
            all_active.set()

    async with AsyncExitStack() as stack:
        if spec["variant"] in ("cluster", "replicas"):
            where = "replicas" if spec["variant"] == "replicas" else "masters"
            mpx = await stack.enter_async_context(
                ClusterMultiplexer(urls, shard_subscriptions=where)
            )
            sub = mpx.new_sharded_subscription(on_message, on_activation=on_activation)
            sub.add(*every_name)
        else:
            for url, names in zip(urls, by_node, strict=True):
                mpx = await stack.enter_async_context(Multiplexer(url))
                sub = mpx.new_sharded_subscription(on_message, on_activation=on_activation)
                sub.add(*names)
        with move_on_after(30.0):
            await all_active.wait()
        if not all_active.is_set():
            raise SystemExit(f"consumer: only {len(active)} of {len(every_name)} names active")
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        line = sys.stdin.readline()  # blocks the event loop too: nothing is read meanwhile
        if line.strip() != "go":
            raise SystemExit(f"consumer: expected 'go', got {line!r}")
        with move_on_after(CONSUMER_TIMEOUT):
            await done.wait()
        await sleep(GRACE)  # a duplicate would show up as one delivery too many
    return {
        "count": count,
        "counts": {name.decode(): n for name, n in counts.items()},
        "wall": last - first,
        "cpu": last_cpu - first_cpu,
    }


# ------------------------------------------------------------------ the parent: publishers


class Publisher:
    """One pipelined SPUBLISH connection to a master, for that master's names."""

    def __init__(self, node: ClusterNode, plan: dict[str, int], receivers: int) -> None:
        self.node = node
        self.receivers = receivers
        self.sock = node.connect()
        self.reader = hiredis.Reader()
        # Round-robin over the names, as the messages are spread: name i of k gets
        # messages i, i + k, i + 2k, ...
        commands = {
            name: hiredis.pack_command((b"SPUBLISH", name.encode(), PAYLOAD))  # type: ignore[arg-type]
            for name in plan
        }
        remaining = dict(plan)
        self.commands: list[bytes] = []
        while remaining:
            for name in list(remaining):
                self.commands.append(commands[name])
                remaining[name] -= 1
                if not remaining[name]:
                    del remaining[name]
        self.error: str | None = None

    def publish_all(self) -> None:
        """Publish every message, batch after batch, each reply checked."""
        try:
            for start in range(0, len(self.commands), PUBLISH_BATCH):
                batch = self.commands[start : start + PUBLISH_BATCH]
                self.sock.sendall(b"".join(batch))
                for _ in batch:
                    receivers = read_reply(self.sock, self.reader)
                    if receivers != self.receivers:
                        self.error = (
                            f"SPUBLISH on {self.node.url} reached {receivers!r} subscribers, "
                            f"not {self.receivers}"
                        )
                        return
        except OSError as exc:
            self.error = f"publishing to {self.node.url}: {exc}"

    def close(self) -> None:
        self.sock.close()


def publish(publishers: Sequence[Publisher]) -> None:
    """Every publisher at once, one thread each; returns when every reply is read."""
    threads = [threading.Thread(target=p.publish_all, daemon=True) for p in publishers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [p.error for p in publishers if p.error is not None]
    if errors:
        raise SystemExit("; ".join(errors))


class Failed(Exception):
    pass


def measure(
    cluster: Cluster,
    names: list[list[str]],
    plan: dict[str, int],
    driver: str,
    variant: str,
    mode: str,
    messages: int,
) -> dict[str, Any]:
    """One fresh consumer process: {"count", "counts", "wall", "cpu"}, counts checked."""
    spec = {
        "driver": driver,
        "variant": variant,
        "urls": cluster.urls,
        "names": names,
        "messages": messages,
    }
    argv = [sys.executable, __file__, "--consumer", json.dumps(spec)]
    label = f"{driver} {mode} {VARIANTS[variant]}"
    publishers = [
        Publisher(node, {name: plan[name] for name in node_names}, RECEIVERS[variant])
        for node, node_names in zip(cluster.nodes, names, strict=True)
    ]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            raise Failed(f"{label}: the consumer failed to subscribe")
        if mode == "backlog":
            publish(publishers)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if mode == "live":
            publish(publishers)
        try:
            out, _ = proc.communicate(timeout=CONSUMER_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            raise Failed(f"{label}: no end after {CONSUMER_TIMEOUT:g} s") from None
        if proc.returncode != 0 or not out.strip():
            raise Failed(f"{label}: the consumer exited with {proc.returncode}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for publisher in publishers:
            publisher.close()
    wrong = {n: got for n, got in result["counts"].items() if got != plan[n]}
    if result["count"] != messages or wrong:
        shown = ", ".join(f"{n}: {got} of {plan[n]}" for n, got in sorted(wrong.items())[:5])
        raise Failed(f"{label}: delivered {result['count']} of {messages} messages ({shown})")
    return result


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--names", type=int, default=30, help="a multiple of 3")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--driver", choices=(*DRIVERS, "both"), default="both")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="CI: 9,000 messages, 9 names, 1 round")
    parser.add_argument("--consumer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consumer:
        consumer_main(json.loads(args.consumer))
        return
    if args.quick:
        args.messages, args.names, args.rounds = 9_000, 9, 1
    if args.messages < 1 or args.rounds < 1 or args.names < 3:
        parser.error("--messages and --rounds must be >= 1, --names >= 3")
    if args.messages < args.names:
        parser.error("--messages must be at least --names (every name gets a message)")
    drivers = DRIVERS if args.driver == "both" else (args.driver,)
    modes = MODES if args.mode == "both" else (args.mode,)
    pairs = [(driver, mode) for driver in drivers for mode in modes]

    wall: dict[tuple[str, str, str], list[float]] = {
        (d, m, v): [] for d, m in pairs for v in VARIANTS
    }
    cpu: dict[tuple[str, str, str], list[float]] = {key: [] for key in wall}
    compared = [variant for variant in VARIANTS if variant != "three"]
    ratios: dict[tuple[str, str, str], list[float]] = {
        (d, m, v): [] for d, m in pairs for v in compared
    }
    cpu_ratios: dict[tuple[str, str, str], list[float]] = {key: [] for key in ratios}

    with Cluster(REDIS_ARGS, replicas_per_master=1) as cluster:
        names = pick_names(cluster, args.names)
        plan = shares([name for node_names in names for name in node_names], args.messages)
        try:
            for round_ in range(args.rounds):
                # Rotate which goes first: none always gets the warmer start.
                variants = list(VARIANTS)
                shift = round_ % len(variants)
                order = variants[shift:] + variants[:shift]
                for driver, mode in pairs:
                    rate: dict[str, float] = {}
                    cpu_rate: dict[str, float] = {}
                    for variant in order:
                        result = measure(cluster, names, plan, driver, variant, mode, args.messages)
                        # first to last delivery spans messages - 1 deliveries
                        rate[variant] = (args.messages - 1) / max(result["wall"], 1e-9)
                        cpu_rate[variant] = (args.messages - 1) / max(result["cpu"], 1e-9)
                        wall[driver, mode, variant].append(rate[variant])
                        cpu[driver, mode, variant].append(cpu_rate[variant])
                    for variant in compared:
                        ratios[driver, mode, variant].append(rate[variant] / rate["three"])
                        cpu_ratios[driver, mode, variant].append(
                            cpu_rate[variant] / cpu_rate["three"]
                        )
        except Failed as failure:
            print(f"FAILED: {failure}", file=sys.stderr)
            raise SystemExit(1) from None

    print(
        f"cluster throughput: {args.messages:,} SPUBLISH messages of {len(PAYLOAD)} bytes "
        f"over {args.names} shard channels ({args.names // 3} per master, 3 masters), "
        f"median of {args.rounds} round(s)"
    )
    header = f"{'driver':8} {'mode':8} {'consumer':20} {'deliveries/s':>13} {'cpu':>13}"
    print(f"{header} {'/ three':>8} {'cpu':>6}")
    for driver, mode in pairs:
        for variant, label in VARIANTS.items():
            shown = (
                f"{statistics.median(ratios[driver, mode, variant]):8.2f} "
                f"{statistics.median(cpu_ratios[driver, mode, variant]):6.2f}"
                if variant != "three"
                else f"{1:8.2f} {1:6.2f}"
            )
            print(
                f"{driver:8} {mode:8} {label:20} "
                f"{statistics.median(wall[driver, mode, variant]):13,.0f} "
                f"{statistics.median(cpu[driver, mode, variant]):13,.0f} {shown}"
            )
    print(f"ok: every consumer received exactly {args.messages:,} messages, each name its share")
    for driver, mode in pairs:
        ratio = statistics.median(ratios[driver, mode, "cluster"])
        verdict = "PASS" if ratio >= GOAL else "MISS"
        print(
            f"cluster / three multiplexers [{driver}, {mode}]: {ratio:.2f} "
            f"(goal >= {GOAL}: {verdict})"
        )
    for driver, mode in pairs:
        ratio = statistics.median(ratios[driver, mode, "replicas"])
        print(f"replicas / three multiplexers [{driver}, {mode}]: {ratio:.2f}")


if __name__ == "__main__":
    main()
