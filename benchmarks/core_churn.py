"""Subscription churn in the core alone: what each name costs, phase by phase.

One subscription adds ``--names`` channels; the SUBSCRIBE commands are written; the
confirmations (RESP2 frames, fed in 64 KiB chunks, as a driver would) are read and
the activations dispatched to a plain method; then the same for ``remove`` and
UNSUBSCRIBE. No I/O: this is the per-name work of ``MultiplexerCore`` itself. The
baseline, measured in the same run, is a bare ``hiredis.Reader`` parsing the same
confirmation frames. Best of ``--rounds``, in ns per name.

    PYTHONPATH=src python benchmarks/core_churn.py [--names N] [--rounds R]
    git worktree add /tmp/before a5d44ae    # the core before the churn work
    PYTHONPATH=/tmp/before/src python benchmarks/core_churn.py
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import hiredis

from redismpx_core import MultiplexerCore, SubscriptionKind

CHUNK = 64 * 1024
#: The activation event's name now and before it covered a run of names, so that the
#: same script measures an older checkout (the "before" of docs/benchmarks.md).
ACTIVATIONS = frozenset({"NamesActivated", "NameActivated"})
PHASES = (
    "add",
    "SUBSCRIBE written",
    "SUBSCRIBE confirmed",
    "activations dispatched",
    "remove",
    "UNSUBSCRIBE written",
    "UNSUBSCRIBE confirmed",
)


def confirmations(kind: bytes, names: list[bytes]) -> bytes:
    return b"".join(
        b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n:%d\r\n" % (len(kind), kind, len(name), name, i + 1)
        for i, name in enumerate(names)
    )


class Owner:
    def __init__(self) -> None:
        self.activated = 0

    def _activated(self, name: bytes) -> None:
        self.activated += 1


def ready_core() -> MultiplexerCore:
    core = MultiplexerCore(random=lambda: 0.5, health_check_interval=None)
    core.connection_made(0.0)
    core.data_to_send()
    core.receive_data(b"+PONG\r\n", 0.0)
    return core


def feed(core: MultiplexerCore, data: bytes) -> list[Any]:
    events: list[Any] = []
    for start in range(0, len(data), CHUNK):
        events += core.receive_data(data[start : start + CHUNK], 0.0)
    return events


def one_round(names: list[bytes], subscribed: bytes, unsubscribed: bytes) -> list[float]:
    core = ready_core()
    owner = Owner()
    sub = core.open_subscription(SubscriptionKind.CHANNEL, owner)
    clock = [time.perf_counter()]
    core.add(sub, names)
    clock.append(time.perf_counter())
    core.data_to_send()
    clock.append(time.perf_counter())
    events = feed(core, subscribed)
    clock.append(time.perf_counter())
    for event in events:
        if type(event).__name__ in ACTIVATIONS:
            activated = event.subscriber._activated
            # (One name per event in the core before NamesActivated: see ACTIVATIONS.)
            for name in getattr(event, "names", None) or (event.name,):
                activated(name)
    clock.append(time.perf_counter())
    core.remove(sub, names)
    clock.append(time.perf_counter())
    core.data_to_send()
    clock.append(time.perf_counter())
    feed(core, unsubscribed)
    clock.append(time.perf_counter())
    if owner.activated != len(names) or core.statistics(
        messages_delivered=0, messages_dropped=0
    ).active_channels:
        raise SystemExit("core_churn: the core lost count")
    return [after - before for before, after in itertools.pairwise(clock)]


def parse_only(data: bytes) -> float:
    reader = hiredis.Reader()
    start = time.perf_counter()
    for offset in range(0, len(data), CHUNK):
        reader.feed(data[offset : offset + CHUNK])
        while reader.gets() is not False:
            pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    names = [f"churn:{index}".encode() for index in range(args.names)]
    subscribed = confirmations(b"subscribe", names)
    unsubscribed = confirmations(b"unsubscribe", names)
    rounds = [one_round(names, subscribed, unsubscribed) for _ in range(args.rounds)]
    best = [min(r[phase] for r in rounds) for phase in range(len(PHASES))]
    parse = min(parse_only(subscribed) + parse_only(unsubscribed) for _ in range(args.rounds))
    per_name = 1e9 / args.names
    print(f"core churn of {args.names:,} names, best of {args.rounds} rounds (ns per name)")
    for label, seconds in zip(PHASES, best, strict=True):
        print(f"  {label:24} {seconds * per_name:7,.0f}")
    total = sum(best)
    print(f"  {'hiredis parse alone':24} {parse * per_name:7,.0f}  (both confirmation sets)")
    print(f"per name operation: {total * per_name / 2:,.0f} ns")
    print(f"core / parse alone: {total / parse:.1f}")


if __name__ == "__main__":
    main()
