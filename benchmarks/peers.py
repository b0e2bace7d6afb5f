"""This library against the Pub/Sub consumers users would pick instead, in one command.

    PYTHONPATH=src python benchmarks/peers.py                 # full: writes docs/benchmarks.md
    PYTHONPATH=src python benchmarks/peers.py --quick         # CI: small counts, checks them
    PYTHONPATH=src python benchmarks/peers.py --only redismpx,redispy --measures backlog

The script starts its own redis-server (``client-output-buffer-limit pubsub 0 0 0``: Redis
buffers any backlog for a subscriber, nothing is dropped) and runs every (library,
variant, measure) as a fresh process of that library's adapter,
``benchmarks/_peers/<library>.py`` (the contract is in ``benchmarks/_peers/common.py``).
Adapters only consume; this process publishes everything itself, identically for all,
over a plain pipelined socket, and checks every count: each ``PUBLISH`` must reach the
number of connections subscribed (``PUBSUB NUMSUB`` once the adapter is READY), and each
adapter must report exactly the deliveries expected.

Libraries: ``raw`` (the ceiling: an anyio socket on asyncio + ``hiredis.Reader``, nothing
else), ``redismpx`` (this library: anyio on asyncio, anyio on trio, the trio driver; sync
callbacks, iterators, async callbacks), ``redispy`` (redis-py's asyncio ``PubSub`` with
hiredis), ``coredis``, ``broadcaster`` (its redis backend), ``glide`` (Valkey GLIDE, a Rust
core with Python bindings: its config-time callback and ``get_pubsub_message()`` polling),
``original`` (redismpx 0.5.2 on aioredis 1.3.1, in a venv of its own built by
``_peers/original_venv.py``).

Measures (full size; ``--quick`` in brackets):

``backlog``  one subscriber, 200,000 [5,000] messages of 64 bytes queued before GO: msg/s
``live``     the same, published while the consumer runs (a publisher thread): msg/s
``fanout``   one channel, 1,000 [100] subscribers in one process, 20,000 [500] messages
             queued before GO: deliveries/s and the adapter's peak RSS
``churn``    10,000 [500] channels subscribed and confirmed, then unsubscribed: names/s
``memory``   100,000 [2,000] idle subscriptions of one name each: bytes per subscription
``latency``  10,000 msg/s paced for 5 [1] s, each payload stamped with the publisher's
             clock: publish-to-consumer p50 and p99

Ratios: each measurement but memory is paired with a measurement of the raw loop taken
just before it (on a shared machine the speed drifts by tens of percent within seconds,
and a pair is likelier to share it): a throughput's ratio is the median over
``--rounds`` of the paired ratios (backlog, live and churn take at least 5 rounds: they
are quick, and their single runs swing the most), a comparison of two libraries is the
quotient of their ratios, and latency's is the p99's excess over the paired raw p99. ``--quick``
pairs nothing (it asserts counts, not speed). Prints one table, n/a reasons, one line
per goal (PASS/MISS), and, on a full run, writes the section of docs/benchmarks.md
between ``<!-- peers:begin -->`` and ``<!-- peers:end -->`` and the charts
``docs/peers-*.png`` (matplotlib); ``--save FILE`` keeps every figure as JSON and
``--load FILE`` redraws the table, docs and charts from it without measuring. Exits
non-zero if any library lost or duplicated a message, or failed; under ``--quick`` also
if a library is unavailable (the original's venv cannot be built, say), unless
``--skip-original`` leaves the original out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hiredis
from _redis import RedisServer, read_reply

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "_peers"
DOCS = ROOT / "docs"
sys.path.insert(0, str(PEERS))
import common  # noqa: E402  (benchmarks/_peers/common.py, the adapters' contract)

REDIS_ARGS = ("--client-output-buffer-limit", "pubsub", "0", "0", "0")
PAYLOAD = b"x" * common.PAYLOAD_SIZE
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
LATENCY_RATE = 10_000
#: Paired with a raw run just before: the throughputs (a ratio) and latency (p99 - raw p99).
PAIRED = ("backlog", "live", "fanout", "churn", "latency")
CONSUMING = ("backlog", "live", "fanout", "latency")  # READY/GO, one run per variant
PER_ROW = ("churn", "memory")  # one run per row prefix, with its first variant
#: Measures that take about a second a run, and whose single runs swing the most: a full
#: run gives each of them at least this many rounds, whatever ``--rounds`` says.
MIN_ROUNDS = {"backlog": 5, "live": 5, "churn": 5}


def rounds_for(measure: str, rounds: int, quick: bool) -> int:
    return rounds if quick else max(rounds, MIN_ROUNDS.get(measure, 1))


@dataclass(frozen=True)
class Sizes:
    messages: int  # backlog and live
    subscribers: int  # fanout
    fanout_messages: int
    names: int  # churn
    memory_names: int
    latency_seconds: float


FULL = Sizes(200_000, 1_000, 20_000, 10_000, 100_000, 5.0)
QUICK = Sizes(5_000, 100, 500, 500, 2_000, 1.0)


@dataclass(frozen=True)
class Library:
    key: str  # the adapter's file name
    label: str
    packages: tuple[str, ...]  # reported with their versions


LIBRARIES = (
    Library("raw", "raw anyio+hiredis loop", ("anyio", "hiredis")),
    Library("redismpx", "redismpx", ("anyio", "trio", "hiredis")),
    Library("redispy", "redis-py asyncio", ("redis", "hiredis")),
    Library("coredis", "coredis", ("coredis",)),
    Library("broadcaster", "broadcaster (redis)", ("broadcaster", "redis")),
    Library("glide", "Valkey GLIDE", ("valkey-glide",)),
    Library("original", "redismpx 0.5.2 (aioredis 1.3.1)", ("redismpx", "aioredis", "hiredis")),
)
BY_KEY = {library.key: library for library in LIBRARIES}
ROW_LABELS = {
    "anyio-asyncio": "anyio/asyncio",
    "anyio-trio": "anyio/trio",
    "trio": "trio driver",
}
KIND_LABELS = {
    "loop": "read loop (ceiling)",
    "sync": "sync callback",
    "callback": "sync callback",
    "callback-run": "sync callback, run()",
    "iter": "iterator",
    "iterator": "iterator",
    "async": "async callback",
    "polling": "polling get_pubsub_message()",
}


def is_sync(variant: str) -> bool:
    """The naming rule of common.py: ``sync*`` or ``callback*`` is a plain callback."""
    kind = variant.rsplit(":", 1)[-1]
    return kind.startswith(("sync", "callback")) or kind == "loop"


@dataclass(frozen=True)
class Row:
    library: Library
    variant: str

    @property
    def prefix(self) -> str:
        return self.variant.rsplit(":", 1)[0] if ":" in self.variant else ""

    @property
    def kind(self) -> str:
        return self.variant.rsplit(":", 1)[-1]

    @property
    def label(self) -> str:
        name = self.library.label
        if self.prefix:
            name += " " + ROW_LABELS.get(self.prefix, self.prefix)
        return name

    @property
    def consumer(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)

    @property
    def name(self) -> str:
        return f"{self.library.key}:{self.variant}"


@dataclass
class Cell:
    """The runs of one (row, measure)."""

    values: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)  # latency: p99 - the paired raw p99
    unsupported: str | None = None
    failure: str | None = None

    def median(self, key: str) -> float | None:
        numbers = [value[key] for value in self.values if value.get(key) is not None]
        return statistics.median(numbers) if numbers else None

    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    def delta(self) -> float | None:
        return statistics.median(self.deltas) if self.deltas else None


class Failed(Exception):
    """One run failed: what to put in the table's cell and the failure list."""


# ------------------------------------------------------------------ publishing


class Publisher:
    """A pipelined PUBLISH connection; every reply must equal the receivers counted."""

    def __init__(self, server: RedisServer) -> None:
        self.sock = server.connect(timeout=120.0)
        self.reader = hiredis.Reader()

    def command(self, *args: bytes) -> Any:
        self.sock.sendall(hiredis.pack_command(args))  # type: ignore[arg-type]
        return read_reply(self.sock, self.reader)

    def numsub(self, channel: bytes) -> int:
        reply = self.command(b"PUBSUB", b"NUMSUB", channel)
        return int(reply[1])

    def _replies(self, count: int, receivers: int) -> None:
        for _ in range(count):
            reply = read_reply(self.sock, self.reader)
            if reply != receivers:
                raise Failed(f"a PUBLISH reached {reply!r} connections, not {receivers}")

    def publish(self, channel: bytes, count: int, receivers: int, batch: int = 10_000) -> None:
        command = hiredis.pack_command((b"PUBLISH", channel, PAYLOAD))  # type: ignore[arg-type]
        sent = 0
        while sent < count:
            size = min(batch, count - sent)
            self.sock.sendall(command * size)
            self._replies(size, receivers)
            sent += size

    def paced(self, channel: bytes, count: int, receivers: int, rate: float) -> None:
        """``count`` messages at ``rate``/s, each payload stamped as it is sent."""
        start = time.perf_counter()
        sent = 0
        while sent < count:
            due = min(count, int((time.perf_counter() - start) * rate) + 1)
            if due > sent:
                commands = [
                    hiredis.pack_command(  # type: ignore[arg-type]
                        (b"PUBLISH", channel, common.latency_payload(common.now_ns()))
                    )
                    for _ in range(due - sent)
                ]
                self.sock.sendall(b"".join(commands))
                self._replies(due - sent, receivers)
                sent = due
            else:
                time.sleep(max(0.0, start + sent / rate - time.perf_counter()))

    def close(self) -> None:
        self.sock.close()


class Background:
    """A publisher in a thread, started at GO; ``join`` raises what it raised."""

    def __init__(self, target: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # reported by join()
            self.error = error

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise Failed("the publisher did not finish")
        if self.error is not None:
            raise Failed(f"publisher: {self.error}")


# ------------------------------------------------------------------ running adapters


class Runner:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, server: RedisServer) -> None:
        self.args = args
        self.sizes = sizes
        self.server = server
        self.pythons: dict[str, str] = {}
        self.runs = 0

    def argv(self, row: Row, *rest: str) -> list[str]:
        python = self.pythons.get(row.library.key, sys.executable)
        return [python, str(PEERS / f"{row.library.key}.py"), *rest]

    def env(self, library: Library) -> dict[str, str]:
        env = dict(os.environ)
        if library.key == "original":
            env.pop("PYTHONPATH", None)
        else:
            paths = [str(ROOT / "src"), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
        return env

    def expected(self, measure: str) -> tuple[int, int, int]:
        """(messages published, subscribers, deliveries expected) of a measure."""
        sizes = self.sizes
        if measure in ("backlog", "live"):
            return sizes.messages, 1, sizes.messages
        if measure == "fanout":
            return (
                sizes.fanout_messages,
                sizes.subscribers,
                (sizes.fanout_messages * sizes.subscribers),
            )
        if measure == "latency":
            count = round(LATENCY_RATE * sizes.latency_seconds)
            return count, 1, count
        return 0, 0, 0

    def run(self, row: Row, measure: str) -> dict[str, Any]:
        """One fresh adapter process; its result, or Failed."""
        self.runs += 1
        channel = f"peers:{measure}:{self.runs}"
        messages, subscribers, deliveries = self.expected(measure)
        names = {"churn": self.sizes.names, "memory": self.sizes.memory_names}.get(measure, 0)
        timeout = self.args.timeout
        argv = self.argv(
            row,
            measure,
            "--port", str(self.server.port),
            "--channel", channel,
            "--expected", str(deliveries),
            "--variant", row.variant,
            "--subscribers", str(subscribers or 1),
            "--names", str(names),
            "--timeout", str(timeout),
        )  # fmt: skip
        with tempfile.TemporaryFile("w+") as stderr:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=self.env(row.library),
            )
            watchdog = threading.Timer(timeout + 60.0, proc.kill)
            watchdog.start()
            try:
                lines = self._drive(proc, measure, channel.encode(), messages, subscribers)
                proc.wait()
            except Failed as error:
                proc.kill()
                proc.wait()
                raise Failed(f"{error}{self._tail(stderr)}") from None
            finally:
                watchdog.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if proc.returncode != 0:
                reason = "killed after its timeout" if proc.returncode < 0 else "failed"
                raise Failed(f"exit {proc.returncode} ({reason}){self._tail(stderr)}")
        try:
            result: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise Failed(f"no result line (stdout: {lines[-3:]!r})") from None
        if "unsupported" in result:
            return result
        self._check(result, measure, deliveries, names)
        return result

    @staticmethod
    def _tail(stderr: Any) -> str:
        stderr.seek(0)
        lines = stderr.read().strip().splitlines()
        return ("\n    " + "\n    ".join(lines[-8:])) if lines else ""

    def _drive(
        self,
        proc: subprocess.Popen[str],
        measure: str,
        channel: bytes,
        messages: int,
        subscribers: int,
    ) -> list[str]:
        """The hand-shake and the publishing; returns the adapter's stdout lines."""
        assert proc.stdin is not None
        assert proc.stdout is not None
        lines: list[str] = []
        if measure in CONSUMING:
            while True:
                line = proc.stdout.readline()
                if not line:
                    raise Failed("exited before READY")
                lines.append(line.strip())
                if line.strip() == "READY":
                    break
                if line.strip().startswith("{"):  # unsupported, said before READY
                    return lines + [line.strip() for line in proc.stdout]
            publisher = Publisher(self.server)
            try:
                receivers = publisher.numsub(channel)
                if not 1 <= receivers <= subscribers:
                    raise Failed(
                        f"{receivers} connections subscribed at READY (1 to {subscribers} expected)"
                    )
                background = None
                if measure in ("backlog", "fanout"):
                    publisher.publish(channel, messages, receivers)
                elif measure == "live":
                    background = Background(
                        lambda: publisher.publish(channel, messages, receivers, batch=1_000)
                    )
                else:
                    background = Background(
                        lambda: publisher.paced(channel, messages, receivers, LATENCY_RATE)
                    )
                try:
                    proc.stdin.write("GO\n")
                    proc.stdin.flush()
                except OSError:
                    raise Failed("exited before GO") from None
                if background is not None:
                    background.start()
                lines += [line.strip() for line in proc.stdout]
                if background is not None:
                    background.join(self.args.timeout)
            finally:
                publisher.close()
        else:
            lines += [line.strip() for line in proc.stdout]
        with_output = [line for line in lines if line]
        return with_output

    @staticmethod
    def _check(result: dict[str, Any], measure: str, deliveries: int, names: int) -> None:
        if measure in CONSUMING:
            got = result.get("deliveries")
            if got != deliveries:
                raise Failed(f"delivered {got} of {deliveries} messages")
            if not result.get("seconds", 0) > 0:
                raise Failed(f"no time measured: {result!r}")
            if measure == "latency" and "p99_us" not in result:
                raise Failed("no latency figures")
        elif measure == "churn":
            if result.get("names") != 2 * names:
                raise Failed(f"churned {result.get('names')} names, not {2 * names}")
            if not result.get("seconds", 0) > 0:
                raise Failed(f"no time measured: {result!r}")
        elif "bytes_per_subscription" not in result:
            raise Failed(f"no bytes_per_subscription: {result!r}")

    def variants(self, library: Library) -> list[str]:
        """The adapter's variants (``--list-variants``); Failed if it cannot say."""
        row = Row(library, "")
        try:
            done = subprocess.run(
                self.argv(row, "--list-variants"),
                capture_output=True,
                text=True,
                timeout=120,
                env=self.env(library),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise Failed(str(error)) from None
        if done.returncode != 0:
            tail = "\n    ".join(done.stderr.strip().splitlines()[-5:])
            raise Failed(f"--list-variants: exit {done.returncode}\n    {tail}")
        variants = json.loads(done.stdout.strip().splitlines()[-1])
        if not variants or not all(isinstance(variant, str) for variant in variants):
            raise Failed(f"--list-variants answered {done.stdout!r}")
        return list(variants)

    def versions(self, library: Library) -> str:
        code = (
            "import importlib.metadata as m, json, sys\n"
            "def v(p):\n"
            "    try: return m.version(p)\n"
            "    except m.PackageNotFoundError: return None\n"
            f"print(json.dumps({{p: v(p) for p in {list(library.packages)!r}}}))"
        )
        python = self.pythons.get(library.key, sys.executable)
        try:
            done = subprocess.run(
                [python, "-c", code], capture_output=True, text=True, timeout=60, check=True
            )
            found = json.loads(done.stdout)
        except (OSError, subprocess.SubprocessError, ValueError):
            return ""
        return ", ".join(f"{name} {version}" for name, version in found.items() if version)


# ------------------------------------------------------------------ the run


@dataclass
class Results:
    rows: list[Row]
    cells: dict[tuple[str, str], Cell]
    unavailable: dict[str, str]  # library key -> why
    failures: list[str]
    measures: tuple[str, ...]
    rounds: int
    sizes: Sizes
    versions: dict[str, str]
    command: str = ""
    date: str = ""

    def cell(self, row: Row, measure: str) -> Cell:
        return self.cells.setdefault((row.name, measure), Cell())

    def to_json(self) -> dict[str, Any]:
        """Everything measured, for ``--save`` (and ``--load``, to redraw without measuring)."""
        return {
            "rows": [[row.library.key, row.variant] for row in self.rows],
            "cells": [
                {"row": name, "measure": measure, **vars(cell)}
                for (name, measure), cell in self.cells.items()
            ],
            "unavailable": self.unavailable,
            "failures": self.failures,
            "measures": list(self.measures),
            "rounds": self.rounds,
            "sizes": vars(self.sizes),
            "versions": self.versions,
            "command": self.command,
            "date": self.date,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        cells = {}
        for item in data["cells"]:
            key = (item.pop("row"), item.pop("measure"))
            cells[key] = Cell(**item)
        return cls(
            rows=[Row(BY_KEY[key], variant) for key, variant in data["rows"]],
            cells=cells,
            unavailable=data["unavailable"],
            failures=data["failures"],
            measures=tuple(data["measures"]),
            rounds=data["rounds"],
            sizes=Sizes(**data["sizes"]),
            versions=data["versions"],
            command=data.get("command", ""),
            date=data.get("date", ""),
        )

    def not_offered(self, row: Row) -> str | None:
        """Why, if the row's adapter said ``unsupported`` to every measure it was given."""
        cells = [self.cells[row.name, m] for m in self.measures if (row.name, m) in self.cells]
        if cells and all(cell.unsupported is not None for cell in cells):
            return cells[0].unsupported
        return None

    def shown_rows(self) -> list[Row]:
        return [row for row in self.rows if self.not_offered(row) is None]


def measured_value(measure: str, result: dict[str, Any]) -> dict[str, Any]:
    if measure in ("backlog", "live", "fanout"):
        return {"rate": result["deliveries"] / result["seconds"], "rss": result.get("rss_peak")}
    if measure == "churn":
        return {"rate": result["names"] / result["seconds"]}
    if measure == "memory":
        return {"bytes": result["bytes_per_subscription"]}
    return {"p50": result["p50_us"], "p99": result["p99_us"], "max": result.get("max_us")}


def selected(args: argparse.Namespace) -> dict[str, list[str] | None]:
    """--only: library key -> variant prefixes (None: all); raw is always measured."""
    if not args.only:
        return {library.key: None for library in LIBRARIES}
    chosen: dict[str, list[str] | None] = {"raw": None}
    for entry in args.only.split(","):
        key, _, prefix = entry.strip().partition(":")
        if key not in BY_KEY:
            raise SystemExit(f"--only: no library {key!r} (one of {', '.join(BY_KEY)})")
        if prefix:
            known = chosen.get(key, [])
            chosen[key] = [*(known or []), prefix]
        else:
            chosen[key] = None
    return chosen


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def describe(measure: str, value: dict[str, Any], ratio: float | None) -> str:
    if measure == "memory":
        return f"{value['bytes']:,.0f} B/subscription"
    if measure == "latency":
        shown = f"p50 {value['p50']:,.0f} us, p99 {value['p99']:,.0f} us"
        return shown + (f" ({ratio:+,.0f} us over raw)" if ratio is not None else "")
    unit = {"churn": "names/s", "fanout": "deliveries/s"}.get(measure, "msg/s")
    shown = f"{value['rate']:,.0f} {unit}"
    return shown + (f" ({ratio:.2f} of raw)" if ratio is not None else "")


def collect(args: argparse.Namespace, sizes: Sizes, measures: tuple[str, ...]) -> Results:
    chosen = selected(args)
    unavailable: dict[str, str] = {}
    failures: list[str] = []
    rows: list[Row] = []
    versions: dict[str, str] = {}
    with RedisServer(REDIS_ARGS) as server:
        runner = Runner(args, sizes, server)
        for library in LIBRARIES:
            if library.key not in chosen:
                continue
            if library.key == "original" and args.skip_original:
                unavailable[library.key] = "skipped (--skip-original)"
                continue
            if not (PEERS / f"{library.key}.py").is_file():
                unavailable[library.key] = f"no adapter benchmarks/_peers/{library.key}.py"
                continue
            try:
                if library.key == "original":
                    runner.pythons["original"] = python_for_original()
                variants = runner.variants(library)
            except Failed as error:
                unavailable[library.key] = str(error)
                continue
            except Exception as error:  # python_for_original: a venv that cannot be built
                unavailable[library.key] = f"{type(error).__name__}: {error}"
                continue
            prefixes = chosen[library.key]
            rows += [
                Row(library, variant)
                for variant in variants
                if prefixes is None or any(variant.startswith(p) for p in prefixes)
            ]
            versions[library.key] = runner.versions(library)
        for key, why in unavailable.items():
            progress(f"{BY_KEY[key].label}: unavailable: {why}")
        results = Results(rows, {}, unavailable, failures, measures, args.rounds, sizes, versions)
        raw = next((row for row in rows if row.library.key == "raw"), None)
        if raw is None:
            raise SystemExit(f"the raw loop is unavailable: {unavailable.get('raw')}")

        def attempt(row: Row, measure: str) -> dict[str, Any] | None:
            cell = results.cell(row, measure)
            if cell.failure is not None or cell.unsupported is not None:
                return None
            try:
                result = runner.run(row, measure)
            except Failed as error:
                cell.failure = str(error).splitlines()[0]
                failures.append(f"{row.label}, {row.consumer}, {measure}: {error}")
                progress(f"  {measure:8} {row.label}, {row.consumer}: FAILED: {error}")
                return None
            if "unsupported" in result:
                cell.unsupported = str(result["unsupported"])
                progress(f"  {measure:8} {row.label}, {row.consumer}: n/a ({cell.unsupported})")
                return None
            value = measured_value(measure, result)
            cell.values.append(value)
            return value

        firsts = {(row.library.key, row.prefix): row for row in reversed(rows)}
        rounds = {m: rounds_for(m, args.rounds, args.quick) for m in measures}
        total = max(rounds.values())
        for round_number in range(total):
            progress(f"round {round_number + 1} of {total}")
            for measure in measures:
                if round_number >= rounds[measure]:
                    continue
                targets = [
                    row
                    for row in rows
                    if row is not raw
                    and (measure not in PER_ROW or firsts[row.library.key, row.prefix] is row)
                ]
                pair = measure in PAIRED and not args.quick
                if not pair:
                    value = attempt(raw, measure)
                    if value is not None:
                        progress(f"  {measure:8} {raw.label}: {describe(measure, value, None)}")
                for row in targets:
                    baseline = attempt(raw, measure) if pair else None
                    value = attempt(row, measure)
                    ratio = None
                    if value is not None and baseline is not None:
                        if measure == "latency":
                            ratio = value["p99"] - baseline["p99"]
                            results.cell(row, measure).deltas.append(ratio)
                        else:
                            ratio = value["rate"] / baseline["rate"]
                            results.cell(row, measure).ratios.append(ratio)
                    if value is not None:
                        shown = describe(measure, value, ratio)
                        progress(f"  {measure:8} {row.label}, {row.consumer}: {shown}")
        for measure in PAIRED:
            if measure in measures and not args.quick:
                if measure == "latency":
                    results.cell(raw, measure).deltas = [0.0]
                else:
                    results.cell(raw, measure).ratios = [1.0]
    return results


def python_for_original() -> str:
    try:
        from original_venv import python_for_original as build  # type: ignore[import-not-found]
    except ImportError as error:
        raise Failed(f"benchmarks/_peers/original_venv.py: {error}") from None
    python: str = build()
    return python


# ------------------------------------------------------------------ reporting


def fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def table(results: Results) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the one table (library x measure)."""
    measures = results.measures
    header = ["library", "consumer"]
    if "backlog" in measures:
        header += ["backlog msg/s", "/ raw"]
    if "live" in measures:
        header += ["live msg/s", "/ raw"]
    if "fanout" in measures:
        header += ["fan-out deliveries/s", "/ raw", "fan-out peak RSS MiB"]
    if "churn" in measures:
        header += ["churn names/s", "/ raw"]
    if "memory" in measures:
        header += ["B/subscription"]
    if "latency" in measures:
        header += ["latency p50 µs", "p99 µs", "p99 - raw µs"]
    body: list[list[str]] = []
    for row in results.shown_rows():
        line = [row.label, row.consumer]

        def shown(measure: str, key: str, scale: float = 1.0, row: Row = row) -> str:
            cell = results.cells.get((row.name, measure))
            if cell is None:
                return ""
            if cell.failure is not None:
                return "FAILED"
            if cell.unsupported is not None:
                return "n/a"
            value = cell.median(key)
            if value is None:
                return "-"
            return f"{value / scale:,.0f}" if value / scale >= 10 else f"{value / scale:,.1f}"

        def ratio(measure: str, row: Row = row) -> str:
            cell = results.cells.get((row.name, measure))
            return fmt_ratio(cell.ratio()) if cell is not None else ""

        if "backlog" in measures:
            line += [shown("backlog", "rate"), ratio("backlog")]
        if "live" in measures:
            line += [shown("live", "rate"), ratio("live")]
        if "fanout" in measures:
            line += [shown("fanout", "rate"), ratio("fanout"), shown("fanout", "rss", 2**20)]
        if "churn" in measures:
            line += [shown("churn", "rate"), ratio("churn")]
        if "memory" in measures:
            line += [shown("memory", "bytes")]
        if "latency" in measures:
            cell = results.cells.get((row.name, "latency"))
            delta = cell.delta() if cell is not None else None
            line += [
                shown("latency", "p50"),
                shown("latency", "p99"),
                "" if delta is None else f"{delta:+,.0f}",
            ]
        body.append(line)
    for key, why in results.unavailable.items():
        first = why.splitlines()[0] if why else ""
        body.append([BY_KEY[key].label, f"unavailable: {first}"] + [""] * (len(header) - 2))
    return header, body


def na_notes(results: Results) -> list[str]:
    """Why a cell of the table says n/a: one line per (library, reason)."""
    notes: dict[tuple[str, str], list[str]] = {}
    for row in results.shown_rows():
        for measure in results.measures:
            cell = results.cells.get((row.name, measure))
            if cell is not None and cell.unsupported is not None:
                where = notes.setdefault((row.library.label, cell.unsupported), [])
                if measure not in where:
                    where.append(measure)
    return [f"{label}, {', '.join(where)}: {why}" for (label, why), where in notes.items()]


def not_offered(results: Results) -> list[str]:
    """One line per row left out of the table: its adapter supports none of the measures."""
    return [
        f"{row.label}, {row.consumer}: {why}"
        for row in results.rows
        if (why := results.not_offered(row)) is not None
    ]


def text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for number, line in enumerate([header, *body]):
        cells = [
            text.ljust(widths[i]) if i < 2 else text.rjust(widths[i]) for i, text in enumerate(line)
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---" if i < 2 else "---:" for i in range(len(header))) + " |")
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


@dataclass(frozen=True)
class Goal:
    text: str
    values: list[tuple[str, float]]  # (what, figure)
    passed: bool | None  # None: not measured

    def line(self, unit: str = "") -> str:
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[self.passed]
        shown = ", ".join(
            f"{what} {figure:,.0f}{unit}" if unit in (" B", " µs") else f"{what} {figure:.2f}{unit}"
            for what, figure in self.values
        )
        return f"{verdict}  {self.text}: {shown or 'not measured'}"


def goals(results: Results) -> list[tuple[Goal, str]]:
    """One (goal, unit) per performance goal (docs/benchmarks.md), from this run's figures."""
    ours = [row for row in results.rows if row.library.key == "redismpx"]

    def ratio(row: Row, measure: str) -> float | None:
        cell = results.cells.get((row.name, measure))
        return cell.ratio() if cell is not None else None

    def median(row: Row, measure: str, key: str) -> float | None:
        cell = results.cells.get((row.name, measure))
        return cell.median(key) if cell is not None else None

    def best(key: str, measure: str, sync: bool | None) -> float | None:
        """The best ratio to raw of a peer's rows (of one kind, or any)."""
        figures = [
            figure
            for row in results.rows
            if row.library.key == key and (sync is None or is_sync(row.variant) == sync)
            if (figure := ratio(row, measure)) is not None
        ]
        return max(figures) if figures else None

    def check(
        text: str,
        rows: Iterable[Row],
        figure: Callable[[Row], float | None],
        ok: Callable[[float], bool],
        unit: str = "",
    ) -> tuple[Goal, str]:
        values = [
            (f"{row.prefix} {row.kind}".strip(), value)
            for row in rows
            if (value := figure(row)) is not None
        ]
        passed = all(ok(value) for _, value in values) if values else None
        return Goal(text, values, passed), unit

    sync_rows = [row for row in ours if is_sync(row.variant)]
    async_rows = [row for row in ours if not is_sync(row.variant)]
    firsts = list({row.prefix: row for row in reversed(ours)}.values())[::-1]
    out = [
        check(
            "single subscriber, sync callback >= 0.5 of the ceiling",
            sync_rows,
            lambda row: ratio(row, "backlog"),
            lambda value: value >= 0.5,
        ),
        check(
            "single subscriber, iterator or async callback >= 0.3 of the ceiling",
            async_rows,
            lambda row: ratio(row, "backlog"),
            lambda value: value >= 0.3,
        ),
    ]
    for key, factor, name in (("original", 3, "original redismpx"), ("redispy", 7, "redis-py")):
        peer = best(key, "backlog", None)
        out.append(
            check(
                f"single subscriber, sync callback >= {factor}x {name} (its fastest consumer)",
                sync_rows,
                lambda row, peer=peer: (
                    None if peer is None or (mine := ratio(row, "backlog")) is None else mine / peer
                ),
                lambda value, factor=factor: value >= factor,
                "x",
            )
        )
    out.append(
        check(
            "fan-out, sync callbacks >= 0.5 of the plain-callback loop",
            sync_rows,
            lambda row: ratio(row, "fanout"),
            lambda value: value >= 0.5,
        )
    )
    broadcaster = best("broadcaster", "fanout", False) or best("broadcaster", "fanout", None)
    out.append(
        check(
            "fan-out, async consumers >= 2x broadcaster",
            async_rows,
            lambda row: (
                None
                if broadcaster is None or (mine := ratio(row, "fanout")) is None
                else mine / broadcaster
            ),
            lambda value: value >= 2,
            "x",
        )
    )
    out.append(
        check(
            "churn >= 0.8 of a raw pipelined SUBSCRIBE loop",
            firsts,
            lambda row: ratio(row, "churn"),
            lambda value: value >= 0.8,
        )
    )
    out.append(
        check(
            "memory <= 1 KiB per idle subscription (bytes)",
            firsts,
            lambda row: median(row, "memory", "bytes"),
            lambda value: value <= 1024,
            " B",
        )
    )

    def delta(row: Row) -> float | None:
        cell = results.cells.get((row.name, "latency"))
        return cell.delta() if cell is not None else None

    out.append(
        check(
            "latency p99 within 0.5 ms of the raw loop's (µs over the paired raw run's p99)",
            ours,
            delta,
            lambda value: value <= 500,
            " µs",
        )
    )
    return out


# ------------------------------------------------------------------ charts and docs


#: Chart colours: the ceiling grey, this library blue, each peer its own.
COLOURS = {
    "raw": "#8c8c8c",
    "redismpx": "#1f77b4",
    "redispy": "#d62728",
    "coredis": "#9467bd",
    "broadcaster": "#2ca02c",
    "glide": "#e377c2",
    "original": "#ff7f0e",
}


def charts(results: Results) -> list[str]:
    """docs/peers-*.png from the table's numbers; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    written: list[str] = []

    def compact(x: float, _: object) -> str:
        if x >= 1e6:
            return f"{x / 1e6:g}M"
        return f"{x / 1e3:g}k" if x >= 1e4 else f"{x:,.0f}"

    thousands = FuncFormatter(compact)

    def values(measure: str, key: str, scale: float = 1.0) -> dict[Row, float]:
        out = {}
        for row in results.shown_rows():
            cell = results.cells.get((row.name, measure))
            value = cell.median(key) if cell is not None else None
            if value is not None:
                out[row] = value / scale
        return out

    def bars(
        filename: str,
        title: str,
        panels: list[tuple[str, list[tuple[str, Any]]]],
        per_row: bool = False,
    ) -> None:
        """Horizontal bars, one row of the table per bar group. A panel is (x label,
        [(series name, {row: value})]); one series is coloured by library, several by
        series (first on top)."""
        panels = [(xlabel, named) for xlabel, named in panels if any(v for _, v in named)]
        if not panels:
            return
        rows_of = [
            [row for row in results.shown_rows() if any(row in v for _, v in named)]
            for _, named in panels
        ]
        height = max(len(rows) for rows in rows_of)
        figure, axes = plt.subplots(
            1, len(panels), figsize=(6.5 * len(panels), 1.2 + 0.45 * height), squeeze=False
        )
        for axis, (xlabel, named), rows in zip(axes[0], panels, rows_of, strict=True):
            count = len(named)
            width = 0.8 / count
            for index, (name, data) in enumerate(named):
                ys = [len(rows) - 1 - y + 0.4 - width * (index + 0.5) for y in range(len(rows))]
                xs = [data.get(row, 0.0) for row in rows]
                colours = (
                    [COLOURS.get(row.library.key, "#444444") for row in rows]
                    if count == 1
                    else None
                )
                axis.barh(ys, xs, height=width, color=colours, label=name if count > 1 else None)
                for y, x in zip(ys, xs, strict=True):
                    shown = f" {x:,.0f}" if x >= 10 else f" {x:,.1f}"
                    axis.text(x, y, shown, va="center", fontsize=7)
            labels = [row.label if per_row else f"{row.label}\n{row.consumer}" for row in rows]
            axis.set_yticks(range(len(rows) - 1, -1, -1), labels, fontsize=7)
            axis.set_xlabel(xlabel)
            axis.xaxis.set_major_formatter(thousands)
            axis.tick_params(axis="x", labelsize=7)
            axis.margins(x=0.2)
            below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.1), "ncol": 2}
            if count > 1:
                axis.legend(fontsize=8, **below)
            else:
                keys = list(dict.fromkeys(row.library.key for row in rows))
                handles = [Patch(color=COLOURS.get(k, "#444444"), label=BY_KEY[k].label)
                           for k in keys]  # fmt: skip
                axis.legend(handles=handles, fontsize=7, **below)
        figure.suptitle(title)
        figure.tight_layout()
        path = DOCS / filename
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path.name)

    sizes = results.sizes
    measures = results.measures
    if "backlog" in measures or "live" in measures:
        bars(
            "peers-single.png",
            f"One subscriber, {sizes.messages:,} messages of 64 bytes (higher is better)",
            [(
                "messages/s",
                [("queued before the start (backlog)", values("backlog", "rate")),
                 ("published while it reads (live)", values("live", "rate"))],
            )],
        )  # fmt: skip
    if "fanout" in measures:
        bars(
            "peers-fanout.png",
            f"Fan-out: one channel, {sizes.subscribers:,} subscribers, "
            f"{sizes.fanout_messages:,} messages",
            [
                ("deliveries/s (higher is better)", [("", values("fanout", "rate"))]),
                ("peak RSS, MiB (lower is better)", [("", values("fanout", "rss", 2**20))]),
            ],
        )
    if "churn" in measures:
        bars(
            "peers-churn.png",
            f"Churn: {sizes.names:,} channels subscribed, then unsubscribed, each confirmed",
            [("names/s (higher is better)", [("", values("churn", "rate"))])],
            per_row=True,
        )
    if "memory" in measures:
        bars(
            "peers-memory.png",
            f"Memory: {sizes.memory_names:,} idle subscriptions of one name each",
            [("bytes per subscription (lower is better)", [("", values("memory", "bytes"))])],
            per_row=True,
        )
    if "latency" in measures:
        bars(
            "peers-latency.png",
            f"Latency, publish to consumer, at {LATENCY_RATE:,} messages/s (lower is better)",
            [(
                "microseconds",
                [("p50", values("latency", "p50")), ("p99", values("latency", "p99"))],
            )],
        )  # fmt: skip
    return written


def redis_version(server: RedisServer | None = None) -> str:
    try:
        done = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        )
        match = re.search(r"v=(\S+)", done.stdout)
        return match.group(1) if match else "?"
    except OSError:
        return "?"


def wrap(text: str, bullet: bool = False) -> str:
    """A paragraph (or a ``* `` bullet) wrapped as the rest of docs/ is."""
    return textwrap.fill(
        text, width=92, subsequent_indent="  " if bullet else "", break_on_hyphens=False
    )


def docs_section(results: Results, goal_lines: list[str], images: list[str]) -> str:
    header, body = table(results)
    sizes = results.sizes
    versions = "; ".join(
        f"{BY_KEY[key].label}: {text}" for key, text in results.versions.items() if text
    )
    paragraphs = [
        "One command measures this library and the consumers its users would pick instead,"
        " each as a fresh process of an adapter in `benchmarks/_peers/` (the contract is in"
        " `common.py`; each adapter's docstring says exactly how it uses its library),"
        " against a redis-server of its own (`client-output-buffer-limit pubsub 0 0 0`, so"
        " nothing is dropped). The script publishes everything itself, the same way for"
        " every library, and checks every count: each `PUBLISH` must reach every subscribed"
        " connection, and each consumer must get exactly the messages published.",
    ]
    bullets = [
        f"* **backlog**: one subscriber, {sizes.messages:,} messages of 64 bytes queued in"
        " its socket and Redis' output buffer before the clock starts; **live**: as many"
        " published (pipelined, from a thread) while it reads: messages/s;",
        f"* **fan-out**: one channel, {sizes.subscribers:,} subscribers in one process,"
        f" {sizes.fanout_messages:,} messages queued: deliveries/s and the process's peak"
        " RSS (redis-py, coredis and Valkey GLIDE have no multiplexer: one connection per"
        " subscriber, a `PubSub` or a GLIDE client, as their users do);",
        f"* **churn**: {sizes.names:,} distinct channels subscribed and confirmed, then"
        " unsubscribed and confirmed: names/s (subscribed + unsubscribed);",
        f"* **memory**: {sizes.memory_names:,} idle subscriptions of one name each: RSS"
        " above the connected baseline, per subscription;",
        f"* **latency**: {LATENCY_RATE:,} messages/s for {sizes.latency_seconds:g} s, each"
        " payload stamped with the publisher's monotonic clock: publish-to-consumer p50 and"
        " p99, and the p99's excess over the raw loop's, measured just before.",
    ]
    method = (
        "The ceiling (`raw`) is an anyio socket on asyncio with `hiredis.Reader` and nothing"
        " else; in fan-out it calls the subscribers' plain callbacks in a loop (the"
        " plain-callback loop), in churn it pipelines `SUBSCRIBE` commands of 1,024 names"
        " and counts the confirmations, and in memory it keeps a `dict` of name to callback."
        " Every measurement but memory is paired with a raw one taken just before it: `/ raw`"
        " is the median of the paired ratios, a comparison of two libraries divides their"
        " ratios, and the raw row's figures are the medians of all its runs. Churn and memory"
        " run once per library row (with its first consumer). The machine's speed drifts by"
        " tens of percent within seconds: compare ratios, and use `--rounds` for decisions."
    )
    min_rounds = ", ".join(
        f"{measure} {max(results.rounds, count)}" for measure, count in MIN_ROUNDS.items()
    )
    measured = (
        f"Measured {results.date or 'on an unknown date'} with `{results.command}`:"
        f" {results.rounds} round(s) ({min_rounds}), Python {platform.python_version()},"
        f" Redis {redis_version()}, {os.cpu_count()} cores; {versions}."
    )
    notes = [f"* n/a: {line}" for line in na_notes(results)]
    notes += [f"* not offered: {line}" for line in not_offered(results)]
    parts = [
        BEGIN,
        "<!-- written by benchmarks/peers.py: edit the script, not this section -->",
        "",
        "## Against the peers: `benchmarks/peers.py`",
        "",
        "```sh",
        "PYTHONPATH=src python benchmarks/peers.py              # this section and the charts",
        "PYTHONPATH=src python benchmarks/peers.py --quick      # CI: small counts, no docs",
        "PYTHONPATH=src python benchmarks/peers.py --only redismpx,redispy --measures backlog",
        "```",
        "",
        *[wrap(text) + "\n" for text in paragraphs],
        *[wrap(text, bullet=True) for text in bullets],
        "",
        wrap(method),
        "",
        wrap(measured),
        "",
        markdown_table(header, body),
        "",
        *[wrap(text, bullet=True) for text in notes],
        "",
        "Goals, from the same run:",
        "",
        *[wrap("* **{}** {}".format(*line.split("  ", 1)), bullet=True) for line in goal_lines],
        "",
    ]
    if results.failures:
        failures = [f"* {line.splitlines()[0]}" for line in results.failures]
        parts += ["Failures:", "", *[wrap(text, bullet=True) for text in failures], ""]
    parts += [f"![{image}]({image})" for image in images]
    parts += ["", END]
    return "\n".join(parts) + "\n"


def write_docs(section: str) -> None:
    path = DOCS / "benchmarks.md"
    text = path.read_text()
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# ------------------------------------------------------------------ main


def shown_arguments() -> list[str]:
    """The command line, less ``--save FILE`` (where the figures went is nobody's business)."""
    shown: list[str] = []
    skip = False
    for argument in sys.argv[1:]:
        if skip:
            skip = False
        elif argument == "--save":
            skip = True
        elif not argument.startswith("--save="):
            shown.append(argument)
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI: small counts, no docs")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (medians); default 1")
    parser.add_argument("--only", help="LIB[:VARIANT-PREFIX][,...]; raw always runs")
    parser.add_argument("--measures", help=f"a subset of {','.join(common.MEASURES)}")
    parser.add_argument("--skip-original", action="store_true", help="do not run redismpx 0.5.2")
    parser.add_argument("--timeout", type=float, default=None, help="per run, seconds")
    parser.add_argument("--write", action="store_true", help="write the docs even for a subset")
    parser.add_argument("--no-write", action="store_true", help="do not write the docs")
    for name in ("messages", "subscribers", "fanout-messages", "names", "memory-names"):
        parser.add_argument(f"--{name}", type=int, help="override the size of a measure")
    parser.add_argument("--latency-seconds", type=float)
    parser.add_argument("--save", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument(
        "--load", metavar="FILE", help="measure nothing: report (and write) a --save'd run"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    measures = tuple(common.MEASURES)
    if args.measures:
        wanted = [measure.strip() for measure in args.measures.split(",")]
        unknown = set(wanted) - set(common.MEASURES)
        if unknown:
            parser.error(f"--measures: unknown {', '.join(sorted(unknown))}")
        measures = tuple(measure for measure in common.MEASURES if measure in wanted)
    base = QUICK if args.quick else FULL
    overrides = {
        "messages": args.messages,
        "subscribers": args.subscribers,
        "fanout_messages": args.fanout_messages,
        "names": args.names,
        "memory_names": args.memory_names,
        "latency_seconds": args.latency_seconds,
    }
    sizes = Sizes(**{
        key: (value if value is not None else getattr(base, key))
        for key, value in overrides.items()
    })  # fmt: skip
    if args.timeout is None:
        args.timeout = 120.0 if args.quick else 1800.0

    started = time.perf_counter()
    if args.load:
        results = Results.from_json(json.loads(Path(args.load).read_text()))
        sizes, measures = results.sizes, results.measures
    else:
        results = collect(args, sizes, measures)
        results.command = " ".join(["python", "benchmarks/peers.py", *shown_arguments()])
        results.date = datetime.date.today().isoformat()
    if args.save:
        Path(args.save).write_text(json.dumps(results.to_json(), indent=1) + "\n")
    header, body = table(results)
    print(
        f"peers: {results.rounds} round(s); backlog/live {sizes.messages:,} msg, fan-out "
        f"{sizes.subscribers:,} x {sizes.fanout_messages:,}, churn {sizes.names:,} names, "
        f"memory {sizes.memory_names:,} subscriptions, latency {LATENCY_RATE:,} msg/s for "
        f"{sizes.latency_seconds:g} s ({time.perf_counter() - started:,.0f} s)"
    )
    print(text_table(header, body))
    for line in na_notes(results):
        print(f"n/a: {line}")
    for line in not_offered(results):
        print(f"not offered: {line}")
    print()
    goal_lines = [goal.line(unit) for goal, unit in goals(results)]
    if not args.quick:
        for line in goal_lines:
            print(line)
    missing = set(results.unavailable)
    if args.skip_original:
        missing.discard("original")
    complete = not args.only and not args.measures
    if not args.quick and not args.no_write and (complete or args.write):
        images = charts(results)
        write_docs(docs_section(results, goal_lines, images))
        print(f"wrote docs/benchmarks.md and {', '.join(f'docs/{i}' for i in images)}")
    for failure in results.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if args.quick:
        for key in sorted(missing):
            print(f"FAILED: {BY_KEY[key].label} unavailable: {results.unavailable[key]}")
    if results.failures or (args.quick and missing):
        raise SystemExit(1)
    libraries = sorted({row.library.key for row in results.rows}, key=list(BY_KEY).index)
    print(
        f"ok: every library delivered every message ({', '.join(libraries)}; "
        f"{len(results.rows)} consumers)"
    )


if __name__ == "__main__":
    main()
