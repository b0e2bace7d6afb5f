"""Closing cluster subscriptions: what one close costs among N, against one server's core.

A ``ClusterCore`` over three masters, each with a subscriber connection (one shard
subscription holds a name on each master: a master's connection opens with its first
shard channel, and stays), holds N subscriptions of one name each, all confirmed;
then every one is closed, and the ``close_subscription`` calls are timed (the
router's and the node cores' work, which a driver runs on its event loop). Twice: N
channel subscriptions (they ride the home node) and N shard subscriptions (spread
over the three masters by slot). The baseline, measured in the same run, is a single
``MultiplexerCore`` closing N channel subscriptions. No server: a few lines below
answer the cores' commands (PING, CLUSTER SHARDS, the SUBSCRIBE family) the way
Redis 7 does. Best of ``--rounds``, in microseconds per close; a cost that does not
grow with N means closing them all costs O(N), not O(N^2).

    PYTHONPATH=src python benchmarks/cluster_close.py [--sizes 1000,2000] [--rounds R]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import hiredis

from redismpx_core import (
    ClusterCore,
    ConnectionState,
    MultiplexerCore,
    Node,
    SubscriptionKind,
    key_slot,
)
from redismpx_core._cluster import ConnectionKey

NODES = (Node("10.0.0.1", 7001), Node("10.0.0.2", 7002), Node("10.0.0.3", 7003))
#: The masters' slot ranges, as ``redis-cli --cluster create`` splits them.
RANGES = ((0, 5460), (5461, 10922), (10923, 16383))
SIZES = (1_000, 2_000, 4_000, 8_000)


class Owner:
    """A subscription's owner: the core only hands it back in events."""


def encode(value: Any) -> bytes:
    """RESP2, for the replies below."""
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if value is None:
        return b"$-1\r\n"
    return b"*%d\r\n" % len(value) + b"".join(encode(item) for item in value)


def cluster_shards() -> list[Any]:
    """``CLUSTER SHARDS`` as RESP2 carries it (maps as flat arrays)."""
    shards = []
    for node, (first, last) in zip(NODES, RANGES, strict=True):
        description = [
            b"id", f"{node.port:040x}".encode(),
            b"port", node.port,
            b"ip", node.host.encode(),
            b"endpoint", node.host.encode(),
            b"role", b"master",
            b"replication-offset", 0,
            b"health", b"online",
        ]  # fmt: skip
        shards.append([b"slots", [first, last], b"nodes", [description]])
    return shards


SHARDS_REPLY = encode(cluster_shards())
CONFIRMED = {b"subscribe", b"unsubscribe", b"ssubscribe", b"sunsubscribe"}


def answer(data: bytes, counts: list[int]) -> bytes:
    """What a Redis 7 node answers to these commands (``counts``: its subscriptions)."""
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (command := reader.gets()) is not False:
        verb = command[0].lower()
        if verb == b"ping":
            out.append(b"+PONG\r\n")
        elif verb == b"cluster":
            out.append(SHARDS_REPLY)
        elif verb in CONFIRMED:
            step = -1 if verb.endswith(b"unsubscribe") else 1
            for name in command[1:]:
                counts[0] += step
                out.append(encode([verb, name, counts[0]]))
        else:
            raise SystemExit(f"cluster_close: no answer for {command!r}")
    return b"".join(out)


def settle(router: ClusterCore[Owner, Owner], counts: dict[ConnectionKey, list[int]]) -> None:
    """Play the driver and the servers until no connection has anything to send."""
    moved = True
    while moved:
        moved = False
        for key, core in list(router.connections().items()):
            if core.state is ConnectionState.DISCONNECTED:
                counts[key] = [0]
                router.handle_events(key, core.connection_made(0.0), 0.0)
            data = core.data_to_send()
            if data:
                reply = answer(data, counts[key])
                router.handle_events(key, core.receive_data(reply, 0.0), 0.0)
                moved = True


def ready_core() -> MultiplexerCore[Owner, Owner]:
    core: MultiplexerCore[Owner, Owner] = MultiplexerCore(
        random=lambda: 0.5, health_check_interval=None
    )
    core.connection_made(0.0)
    counts = [0]
    core.receive_data(answer(core.data_to_send(), counts), 0.0)
    return core


def names(count: int) -> list[bytes]:
    return [f"bench:{index}".encode() for index in range(count)]


def single_core(count: int) -> float:
    """The baseline: one server's core closes ``count`` channel subscriptions."""
    core = ready_core()
    handles = []
    for name in names(count):
        handle = core.open_subscription(SubscriptionKind.CHANNEL, Owner())
        core.add(handle, [name])
        handles.append(handle)
    counts = [0]
    core.receive_data(answer(core.data_to_send(), counts), 0.0)
    seconds = timed(lambda: [core.close_subscription(h) for h in handles])
    core.receive_data(answer(core.data_to_send(), counts), 0.0)
    check(core.statistics(messages_delivered=0, messages_dropped=0).active_channels, "single")
    return seconds


def cluster(kind: SubscriptionKind, count: int) -> float:
    """A three-master router closes ``count`` subscriptions of ``kind``."""
    router: ClusterCore[Owner, Owner] = ClusterCore(
        NODES[:1], random=lambda: 0.5, health_check_interval=None
    )
    counts: dict[ConnectionKey, list[int]] = {}
    settle(router, counts)
    spread = router.open_subscription(SubscriptionKind.SHARD, Owner())
    one_each: dict[Node, bytes] = {}
    for index in range(100):
        name = f"spread:{index}".encode()
        one_each.setdefault(owner_of(name), name)
    router.add(spread, one_each.values())
    handles = []
    for name in names(count):
        handle = router.open_subscription(kind, Owner())
        router.add(handle, [name])
        handles.append(handle)
    settle(router, counts)
    subscribers = [key for key in router.connections() if key[0] == "subscriber"]
    if len(subscribers) != len(NODES) or not all(
        router.is_active(h, next(iter(h.names))) for h in handles
    ):
        raise SystemExit("cluster_close: the subscriptions did not all become active")
    seconds = timed(lambda: [router.close_subscription(h) for h in handles])
    settle(router, counts)
    stats = router.statistics(messages_delivered=0, messages_dropped=0)
    check(stats.active_channels + stats.active_shard_channels - len(NODES), kind.value)
    return seconds


def owner_of(name: bytes) -> Node:
    slot = key_slot(name)
    return next(node for node, (first, last) in zip(NODES, RANGES, strict=True) if slot <= last)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def check(left: int, label: str) -> None:
    if left:
        raise SystemExit(f"cluster_close: {left} names left subscribed after closing ({label})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"closing N subscriptions of one name each: us per close, best of {args.rounds} rounds")
    header = ("N", "single core", "cluster channel", "/ single", "cluster shard", "/ single")
    print("{:>8} {:>12} {:>16} {:>9} {:>14} {:>9}".format(*header))
    rows = []
    for size in sizes:
        best = [
            min(measure(size) for _ in range(args.rounds)) * 1e6 / size
            for measure in (
                single_core,
                lambda n: cluster(SubscriptionKind.CHANNEL, n),
                lambda n: cluster(SubscriptionKind.SHARD, n),
            )
        ]
        single, channel, shard = best
        rows.append(best)
        print(
            f"{size:>8,} {single:>12.2f} {channel:>16.2f} {channel / single:>9.2f}"
            f" {shard:>14.2f} {shard / single:>9.2f}"
        )
    if len(sizes) > 1:
        first, last = rows[0], rows[-1]
        growth = [after / before for before, after in zip(first, last, strict=True)]
        print(
            f"per-close cost at N={sizes[-1]:,} / at N={sizes[0]:,}: single {growth[0]:.2f},"
            f" cluster channel {growth[1]:.2f}, cluster shard {growth[2]:.2f}"
        )
    single, channel, shard = rows[-1]
    print(f"cluster / single core: channel {channel / single:.2f}, shard {shard / single:.2f}")


if __name__ == "__main__":
    main()
