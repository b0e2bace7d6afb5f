"""What every adapter of ``benchmarks/peers.py`` shares: its command line, the hand-shake
with the orchestrator, the clock, RSS, and the one result line.

An adapter is one script per library (``benchmarks/_peers/<library>.py``), run once per
measurement in a fresh process (so that RSS is its own), possibly by another Python
(the original redismpx runs in a venv of its own): it imports nothing from the project
but this file, and this file needs only the standard library.

    python benchmarks/_peers/<library>.py MEASURE --port P --channel CH --expected N
           [--variant V] [--subscribers K] [--names K]

Measures and what the adapter does (the orchestrator publishes; adapters only consume):

``backlog``, ``live``, ``latency``
    Subscribe one consumer (of the kind ``--variant`` names) to ``--channel``; once Redis
    has confirmed it, call :func:`ready` (prints ``READY``, waits for ``GO``). Then
    receive until ``--expected`` messages have arrived, and :func:`emit` the result with
    ``deliveries`` and ``seconds`` (from GO to the last message). For ``latency`` also
    pass every payload's :func:`latency_ns` to :class:`Latencies` and emit its figures.
``fanout``
    The same with ``--subscribers`` consumers on the one channel; ``--expected`` is the
    total of deliveries (messages x subscribers).
``churn``
    No READY: subscribe ``--names`` distinct channels (``<channel>:0``...), wait until
    Redis has confirmed all, unsubscribe all, wait until that is confirmed too; emit
    ``names`` (subscribed + unsubscribed, so 2 x K) and ``seconds``.
``memory``
    No READY: connect and settle, take :func:`rss_bytes` as the baseline; open
    ``--names`` idle subscriptions of one distinct channel each, wait until confirmed,
    :func:`settle`, take RSS again; emit ``bytes_per_subscription``.

Every result also carries ``rss_peak`` (from :func:`peak_rss_bytes`). An adapter that
cannot do a measure emits ``{"unsupported": "why"}``; one that fails exits non-zero.

Variants (the tuple an adapter passes to :func:`parse`; the first is the default, and
``churn`` and ``memory`` run with it): each is one row of the table. The orchestrator
asks an adapter for them with ``python <adapter> --list-variants`` (answered by
:func:`parse`, which prints them as a JSON list and exits) and tells a sync consumer from
an async one by the name: ``sync`` or ``callback`` (or a name that starts with either,
``callback-run``) is a plain callback; anything else (``async`` for an ``async def``
callback, ``iter`` for an iterator, ``listen``, ...) is an async consumer. A variant that
emits ``unsupported`` for every measure is left out of the table (its reason is listed
under it). A library with several rows of its own (drivers, backends) prefixes them
with the row and a colon: ``anyio-asyncio:sync``; ``churn`` and ``memory`` then run once
per row prefix, with its first variant.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = (
    "MEASURES",
    "Latencies",
    "latency_ns",
    "latency_payload",
    "now_ns",
    "parse",
    "peak_rss_bytes",
    "ready",
    "emit",
    "rss_bytes",
    "settle",
)

MEASURES = ("backlog", "live", "fanout", "churn", "memory", "latency")
#: Payloads are 64 bytes; a latency payload starts with the publisher's clock.
PAYLOAD_SIZE = 64


def parse(variants: tuple[str, ...]) -> argparse.Namespace:
    if sys.argv[1:] == ["--list-variants"]:
        print(json.dumps(list(variants)), flush=True)
        raise SystemExit(0)
    parser = argparse.ArgumentParser()
    parser.add_argument("measure", choices=MEASURES)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--channel", default="bench")
    parser.add_argument("--expected", type=int, default=0)
    parser.add_argument("--variant", choices=variants, default=variants[0])
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--names", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0)
    return parser.parse_args()


def now_ns() -> int:
    """The clock of latency payloads: CLOCK_MONOTONIC, the same in every process."""
    return time.monotonic_ns()


def latency_payload(stamp_ns: int) -> bytes:
    return (b"%d:" % stamp_ns).ljust(PAYLOAD_SIZE, b"x")


def latency_ns(payload: bytes | str) -> int:
    """Nanoseconds since the payload was published (its first field is the clock)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return now_ns() - int(payload.split(b":", 1)[0])


class Latencies:
    """Latency samples: append nanoseconds, emit p50 and p99 in microseconds."""

    def __init__(self) -> None:
        self.samples: list[int] = []

    def add(self, nanoseconds: int) -> None:
        self.samples.append(nanoseconds)

    def figures(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        if not ordered:
            return {}

        def at(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0

        return {"p50_us": at(0.50), "p99_us": at(0.99), "max_us": ordered[-1] / 1000.0}


class Tally:
    """Counts deliveries of dict-shaped messages (redis-py's and coredis' ``{"data": ...}``)
    and notes the time of the last one; ``done`` is the caller's loop's event."""

    def __init__(self, expected: int, latencies: Latencies | None, done: Any) -> None:
        self.expected = expected
        self.count = 0
        self.end = 0.0
        self.done = done
        self.latencies = latencies
        self.on_message: Callable[[Any], None] = (
            self._count if latencies is None else self._count_latency
        )

    def _count(self, message: Any) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.end = time.perf_counter()
            self.done.set()

    def _count_latency(self, message: Any) -> None:
        assert self.latencies is not None
        self.latencies.add(latency_ns(message["data"]))
        self._count(message)


def ready() -> float:
    """Tell the orchestrator the consumers are subscribed; wait for GO; return its time."""
    print("READY", flush=True)
    line = sys.stdin.readline().strip()
    if line != "GO":
        raise SystemExit(f"expected GO from the orchestrator, got {line!r}")
    return time.perf_counter()


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settle() -> None:
    """Collect garbage so that an RSS reading counts live objects only."""
    gc.collect()


def emit(**result: Any) -> None:
    """The adapter's result: one JSON line, last on stdout."""
    result.setdefault("rss_peak", peak_rss_bytes())
    print(json.dumps(result), flush=True)


def raise_file_limit(needed: int) -> None:
    """Lift the soft limit on open files to ``needed`` (at most the hard limit): a
    fan-out that opens one connection per subscriber needs more than the default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
