"""Soak: one Multiplexer under constant churn and a steady publish rate; memory must stay flat.

For ``--seconds`` S the script runs one multiplexer of the chosen driver against its own
redis-server and keeps every part of it busy at once:

* a publisher thread (a plain blocking socket, pipelined ``PUBLISH``/``SPUBLISH`` paced to
  ``--rate`` messages/s, independent of the event loop under test) publishes to a steady
  channel, to channels under a steady pattern, and to a pool of channels and shard
  channels that the churned subscriptions come and go on;
* steady subscriptions that live the whole run and must get every message of their
  names, in order, without a drop: a sync callback, an async callback and an iterator on
  the steady channel, and a sync pattern subscription;
* churn (``--churn`` operations/s) on a set of slots, each holding a subscription of a
  random kind: channel and shard subscriptions with sync callbacks, channel and pattern
  subscriptions with async callbacks (fast, or slow with a tiny buffer so that drops and
  ``close``-policy overflows keep happening, under all three overflow policies), pattern
  subscriptions with sync callbacks, channel and pattern iterators read by their own
  tasks. An operation adds names, removes names, clears, does an add-remove-add burst on
  one name, or closes the subscription and puts a new one of a random kind in its place;
* networked promises (``--promises``/s) on a long-lived promise subscription and on one
  that is closed and reopened on the same prefix every second: most are fulfilled through
  ``mpx.publish`` (the multiplexer's own publishing connection), some are left to expire,
  some are never awaited, and those pending on a closed subscription fail.

Callbacks check, on every message, that the subscription still holds the name (a message
of a removed name is a violation). Garbage is left to the interpreter's own collector, as
in a real application (``gc.collect()`` is never called); the gc's collection counts and
Python's allocated blocks (``sys.getallocatedblocks()``) are printed for diagnosis. The
script takes care not to disturb the C allocator itself: it builds no large temporary
object while it measures (a freed block of 256 KiB or more raises glibc's dynamic mmap
threshold, after which asyncio's 256 KiB socket reads fragment the heap: ``--free-large``
does that on purpose). ``--census`` and ``--tracemalloc N`` add diagnoses that cost that.

RSS (``VmRSS`` of /proc/self/status) is taken when the warm-up ends (``--warmup``, default
``min(30, S/5)`` s, part of the S seconds) and at the end, and sampled in between. At the
end the churn stops, every churned subscription is closed, and the script checks that:

* RSS grew by at most ``--max-growth`` percent (default 10) after the warm-up;
* deliveries never stopped (each sample saw the steady subscriptions progress while the
  publisher did), and every steady subscription got every message, in order, no drop;
* no callback or iterator saw a message of a name its subscription did not hold;
* ``statistics()`` agrees with what the script counted: ``messages_delivered`` equals the
  callback calls and iterator messages, ``messages_dropped`` the sum of the per-subscription
  ``dropped`` counters, ``subscriptions``/``active_*`` the steady set, no promise pending,
  no connection lost;
* the server agrees: ``PUBSUB CHANNELS``/``NUMSUB``/``NUMPAT``/``SHARDCHANNELS`` are back to
  the steady set (each name once);
* promises behaved: fulfilled ones got their payload, expiring ones raised ``TimeoutError``.

Last line: ``soak: RSS start X MiB, end Y MiB, growth Z%: PASS`` (or ``FAIL``); exit status
1 on any failure (the reasons are printed just before it).

    PYTHONPATH=src python benchmarks/soak.py --seconds 60 [--driver anyio-asyncio|anyio-trio|trio]

The ``trio`` driver (``redismpx_trio``) is driven by the same anyio code running on
anyio's trio backend, as the conformance suite does.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import random
import re
import statistics
import sys
import threading
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import hiredis
from _redis import RedisServer, read_reply

DRIVERS = {  # --driver -> (package, anyio backend)
    "anyio-asyncio": ("redismpx_anyio", "asyncio"),
    "anyio-trio": ("redismpx_anyio", "trio"),
    "trio": ("redismpx_trio", "trio"),
}

STEADY = b"soak:steady"
STEADY_PATTERN = b"soak:pat:*"
PATTERN_CHANNELS = [b"soak:pat:%d" % i for i in range(7)]
POOL = [b"soak:c:%d" % i for i in range(32)]  # channels the churned subscriptions use
SHARD_POOL = [b"soak:s:{%d}" % i for i in range(8)]
CHURN_PATTERNS = [b"soak:c:1*", b"soak:c:2?", b"soak:c:*", b"soak:c:[0-3]", b"soak:c:?"]
PROMISE_PREFIX = b"soak:prom:"  # the long-lived promise subscription
CHURNED_PROMISE_PREFIX = b"soak:prom1:"  # closed and reopened every second
SLOTS = 16
KINDS = (
    "chan-sync",
    "chan-async",
    "chan-slow",
    "shard-sync",
    "pat-sync",
    "pat-async",
    "iter-chan",
    "iter-pat",
)
POLICIES = ("drop-oldest", "drop-newest", "close")


# ------------------------------------------------------------------ measurements


def rss_mib() -> float:
    """Resident set size now, from /proc/self/status (the peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # not Linux: the peak is the best there is

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def object_census() -> Counter[str]:
    """Live gc-tracked objects by type name (taken after the RSS sample, never before)."""
    return Counter(type(obj).__name__ for obj in gc.get_objects())


def gc_collections() -> tuple[int, ...]:
    return tuple(gen["collections"] for gen in gc.get_stats())


# ------------------------------------------------------------------ the publisher thread


class Publisher(threading.Thread):
    """Pipelined PUBLISH/SPUBLISH at a steady rate over its own blocking connection.

    One message in ten goes to each of these, in a fixed rotation: the steady channel
    (three), the steady pattern's channels (two), the churn pool (four, one of which is a
    shard channel when the server has SPUBLISH). Steady payloads carry a sequence number.
    Counters are written by this thread only and read by the event loop (ints: atomic
    under the GIL).
    """

    def __init__(self, server: RedisServer, rate: int, sharded: bool) -> None:
        super().__init__(name="soak-publisher", daemon=True)
        self.server = server
        self.rate = rate
        self.sharded = sharded
        self.stop = threading.Event()
        self.published = 0
        self.steady = 0  # messages published on STEADY (their payloads are 1..steady)
        self.patterned = 0  # messages published under STEADY_PATTERN
        self.receivers = 0  # sum of the PUBLISH replies
        self.steady_unreceived = 0  # PUBLISH on STEADY that reached no subscriber
        self.error: BaseException | None = None
        self._rng = random.Random(7)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _run(self) -> None:
        rng = self._rng
        sock = self.server.connect()
        reader = hiredis.Reader()
        start = time.monotonic()
        sent = 0
        most = max(1, self.rate // 10)  # catch up by at most 100 ms of messages per write
        try:
            while not self.stop.is_set():
                due = int((time.monotonic() - start) * self.rate) - sent
                if due <= 0:
                    time.sleep(0.005)
                    continue
                batch = min(due, most)
                commands: list[bytes] = []
                kinds: list[int] = []
                for i in range(sent, sent + batch):
                    slot = i % 10
                    if slot < 3:
                        self.steady += 1
                        commands.append(
                            hiredis.pack_command((b"PUBLISH", STEADY, b"%d" % self.steady))  # type: ignore[arg-type]
                        )
                        kinds.append(1)
                        continue
                    if slot < 5:
                        self.patterned += 1
                        channel = PATTERN_CHANNELS[i % len(PATTERN_CHANNELS)]
                        commands.append(
                            hiredis.pack_command((b"PUBLISH", channel, b"%d" % self.patterned))  # type: ignore[arg-type]
                        )
                    elif slot == 5 and self.sharded:
                        commands.append(
                            hiredis.pack_command((b"SPUBLISH", rng.choice(SHARD_POOL), b"s"))  # type: ignore[arg-type]
                        )
                    else:
                        commands.append(
                            hiredis.pack_command((b"PUBLISH", rng.choice(POOL), b"c%d" % i))  # type: ignore[arg-type]
                        )
                    kinds.append(0)
                sock.sendall(b"".join(commands))
                for kind in kinds:
                    reply = read_reply(sock, reader)
                    if isinstance(reply, hiredis.ReplyError):
                        raise reply
                    self.receivers += reply
                    if kind == 1 and reply == 0:
                        self.steady_unreceived += 1
                sent += batch
                self.published = sent
        finally:
            sock.close()


# ------------------------------------------------------------------ bookkeeping


@dataclass
class Tally:
    """What the script itself counted, to hold ``statistics()`` against."""

    delivered: int = 0  # every on_message call and every message an iterator handed out
    dropped_closed: int = 0  # `dropped` of subscriptions that are finished
    violations: int = 0  # a message of a name the subscription did not hold
    violation_examples: list[str] = field(default_factory=list)
    created: int = 0  # churned subscriptions created (iterators included)
    closed: int = 0  # churned subscriptions closed by the script
    overflow_closed: int = 0  # churned subscriptions closed by a `close`-policy overflow
    overflow_notices: int = 0  # SubscriptionOverflow notices (on_disconnect or iterator)
    other_disconnects: int = 0  # on_disconnect with anything else
    names_added: int = 0
    names_removed: int = 0
    clears: int = 0
    bursts: int = 0  # add, remove, add of one name at once
    operations: int = 0
    iterator_errors: list[str] = field(default_factory=list)
    promises_made: int = 0
    promises_fulfilled: int = 0
    promises_expired: int = 0
    promises_abandoned: int = 0
    promises_closed: int = 0  # failed with SubscriptionClosed (their subscription closed)
    promises_late: int = 0  # meant to be fulfilled, expired first (a slow round trip)
    promises_wrong: list[str] = field(default_factory=list)
    promise_subscriptions: int = 0  # churned promise subscriptions opened
    promises_inactive: int = 0  # skipped: the churned promise subscription was not active

    def violation(self, text: str) -> None:
        self.violations += 1
        if len(self.violation_examples) < 5:
            self.violation_examples.append(text)


class Ordered:
    """A steady consumer's check: payloads are 1, 2, 3, ... with nothing missing."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last = 0
        self.gaps = 0

    def see(self, data: bytes) -> None:
        value = int(data)
        if value != self.last + 1:
            self.gaps += 1
        self.last = value


class Slot:
    """One churn slot: the subscription (or iterator task) it holds now."""

    __slots__ = ("kind", "scope", "sub", "task_done")

    def __init__(self) -> None:
        self.kind = ""
        self.sub: Any = None
        self.scope: anyio.CancelScope | None = None
        self.task_done: anyio.Event | None = None


# ------------------------------------------------------------------ the soak


class Soak:
    def __init__(self, args: argparse.Namespace, module: ModuleType, server: RedisServer) -> None:
        self.args = args
        self.module = module
        self.server = server
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.stop = False
        self.mpx: Any = None
        self.slots = [Slot() for _ in range(SLOTS)]
        self.sharded = server_version(server) >= (7,)
        self.publisher = Publisher(server, args.rate, self.sharded)
        self.steady_sync = Ordered("steady sync callback")
        self.steady_async = Ordered("steady async callback")
        self.steady_iter = Ordered("steady iterator")
        self.steady_pattern = Ordered("steady pattern callback")
        self.steady_subs: list[Any] = []
        self.steady_iterator: Any = None
        self.churned_promises: Any = None
        self.rss_start = self.rss_end = 0.0
        # One promise in twenty lives longer (and expires): 5 s, less in a short run.
        self.long_timeout = min(5.0, max(1.0, args.seconds / 10))
        self.samples: list[tuple[float, float]] = []

    # ---- callbacks

    def checker(self, holder: list[Any]) -> Callable[[bytes, bytes], None]:
        """A sync on_message that checks its subscription still holds the channel."""
        tally = self.tally

        def on_message(channel: bytes, data: bytes) -> None:
            tally.delivered += 1
            sub = holder[0]
            if channel not in sub.names:
                tally.violation(f"sync callback got {channel!r}, holds {sorted(sub.names)}")

        return on_message

    def async_checker(
        self, holder: list[Any], pause: float | None
    ) -> Callable[[bytes, bytes], Any]:
        tally = self.tally
        pattern = holder[1]

        async def on_message(channel: bytes, data: bytes) -> None:
            tally.delivered += 1
            sub = holder[0]
            if pattern is None and channel not in sub.names:
                tally.violation(f"async callback got {channel!r}, holds {sorted(sub.names)}")
            if pause is None:
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.sleep(pause)

        return on_message

    def pattern_checker(self) -> Callable[[bytes, bytes], None]:
        tally = self.tally

        def on_message(channel: bytes, data: bytes) -> None:
            tally.delivered += 1

        return on_message

    def on_disconnect(self, error: Exception) -> None:
        if isinstance(error, self.module.SubscriptionOverflow):
            self.tally.overflow_notices += 1
        else:
            self.tally.other_disconnects += 1

    # ---- churned subscriptions

    def open_slot(self, slot: Slot, tg: anyio.abc.TaskGroup) -> None:
        rng = self.rng
        mpx = self.mpx
        kind = rng.choice(KINDS if self.sharded else [k for k in KINDS if k != "shard-sync"])
        policy = rng.choice(POLICIES)
        slot.kind = kind
        slot.sub = slot.scope = slot.task_done = None
        self.tally.created += 1
        holder: list[Any] = [None, None]
        if kind == "chan-sync":
            sub = mpx.new_channel_subscription(self.checker(holder), self.on_disconnect)
            sub.add(*rng.sample(POOL, rng.randint(1, 3)))
        elif kind == "shard-sync":
            sub = mpx.new_sharded_subscription(self.checker(holder), self.on_disconnect)
            sub.add(*rng.sample(SHARD_POOL, rng.randint(1, 2)))
        elif kind in ("chan-async", "chan-slow"):
            slow = kind == "chan-slow"
            sub = mpx.new_channel_subscription(
                self.async_checker(holder, 0.02 if slow else None),
                self.on_disconnect,
                buffer_size=8 if slow else 256,
                overflow=policy,
            )
            sub.add(*rng.sample(POOL, rng.randint(1, 3)))
        elif kind == "pat-sync":
            sub = mpx.new_pattern_subscription(
                rng.choice(CHURN_PATTERNS), self.pattern_checker(), self.on_disconnect
            )
        elif kind == "pat-async":
            holder[1] = rng.choice(CHURN_PATTERNS)
            sub = mpx.new_pattern_subscription(
                holder[1],
                self.async_checker(holder, 0.001),
                self.on_disconnect,
                buffer_size=32,
                overflow=policy,
            )
        else:
            # The scope and the event exist before the task starts: the slot may be
            # closed (the scope cancelled) before the task has run at all.
            slot.scope = anyio.CancelScope()
            slot.task_done = anyio.Event()
            tg.start_soon(self.run_iterator, slot.scope, slot.task_done, kind, policy)
            return
        holder[0] = sub
        slot.sub = sub

    async def run_iterator(
        self, scope: anyio.CancelScope, done: anyio.Event, kind: str, policy: str
    ) -> None:
        rng = self.rng
        tally = self.tally
        it: Any = None
        try:
            with scope:
                if kind == "iter-chan":
                    names = set(rng.sample(POOL, rng.randint(1, 3)))
                    it = self.mpx.subscribe(*names, buffer_size=64, overflow=policy)
                    pattern = None
                else:
                    names = set()
                    pattern = rng.choice(CHURN_PATTERNS)
                    it = self.mpx.psubscribe(pattern, buffer_size=64, overflow=policy)
                async with it:
                    count = 0
                    async for msg in it:
                        tally.delivered += 1
                        if msg.pattern != pattern or (pattern is None and msg.channel not in names):
                            tally.violation(f"iterator got {msg!r}, holds {names or pattern!r}")
                        count += 1
                        if count % 50 == 0:
                            await anyio.sleep(0.002)  # a consumer that sometimes lags
        except self.module.SubscriptionOverflow:
            tally.overflow_notices += 1
            tally.overflow_closed += 1
        except self.module.SubscriptionClosed:
            pass  # the multiplexer closed (the end of the run)
        except Exception as exc:  # reported, never hidden
            tally.iterator_errors.append(repr(exc))
        finally:
            if it is not None:
                tally.dropped_closed += it.dropped
            done.set()

    def close_slot(self, slot: Slot) -> None:
        """Close what the slot holds (an iterator's task ends, and counts its drops)."""
        if slot.sub is not None:
            if slot.sub.closed:
                self.tally.overflow_closed += 1
            else:
                self.tally.closed += 1
            slot.sub.close()
            self.tally.dropped_closed += slot.sub.dropped
            slot.sub = None
        elif slot.scope is not None or slot.task_done is not None:
            if slot.task_done is not None and not slot.task_done.is_set():
                self.tally.closed += 1
            if slot.scope is not None:
                slot.scope.cancel()

    def churn_once(self, tg: anyio.abc.TaskGroup) -> None:
        rng = self.rng
        tally = self.tally
        slot = rng.choice(self.slots)
        tally.operations += 1
        sub = slot.sub
        named = slot.kind in ("chan-sync", "chan-async", "chan-slow", "shard-sync")
        finished = (sub is not None and sub.closed) or (
            slot.task_done is not None and slot.task_done.is_set()
        )
        roll = rng.random()
        if finished or not named or roll < 0.2:
            if not named and not finished and roll > 0.35:
                return  # patterns and iterators: replaced on about a third of their turns
            self.close_slot(slot)
            self.open_slot(slot, tg)
            return
        pool = SHARD_POOL if slot.kind == "shard-sync" else POOL
        if roll < 0.55:
            names = rng.sample(pool, rng.randint(1, 3))
            sub.add(*names)
            tally.names_added += len(names)
        elif roll < 0.85:
            held = sorted(sub.names)
            names = rng.sample(held, min(len(held), rng.randint(1, 2))) if held else []
            if rng.random() < 0.2:
                names.append(rng.choice(pool))  # a name it may not hold: ignored
            sub.remove(*names)
            tally.names_removed += len(names)
        elif roll < 0.9:
            sub.clear()
            tally.clears += 1
        else:
            name = rng.choice(pool)
            sub.add(name)
            sub.remove(name)
            sub.add(name)
            tally.bursts += 1

    async def churn(self, tg: anyio.abc.TaskGroup) -> None:
        for slot in self.slots:
            self.open_slot(slot, tg)
        start = anyio.current_time()
        done = 0
        while True:
            await anyio.sleep(0.01)
            if self.stop:
                return
            due = int((anyio.current_time() - start) * self.args.churn) - done
            for _ in range(max(0, min(due, self.args.churn))):
                self.churn_once(tg)
            done += max(0, due)

    # ---- promises

    async def promises(self, tg: anyio.abc.TaskGroup) -> None:
        rng = self.rng
        tally = self.tally
        mpx = self.mpx
        steady = mpx.new_promise_subscription(PROMISE_PREFIX)
        self.steady_subs.append(steady)
        with anyio.fail_after(10):
            await steady.wait_for_activation()
        self.churned_promises = mpx.new_promise_subscription(CHURNED_PROMISE_PREFIX)
        tally.promise_subscriptions += 1
        start = anyio.current_time()
        reopened = start
        made = 0
        while True:
            await anyio.sleep(0.01)
            if self.stop:
                self.churned_promises.close()  # its pending promises fail
                return
            now = anyio.current_time()
            if now - reopened >= 1.0:  # close (pending ones fail) and reopen the same prefix
                reopened = now
                self.churned_promises.close()
                self.churned_promises = mpx.new_promise_subscription(CHURNED_PROMISE_PREFIX)
                tally.promise_subscriptions += 1
            due = int((now - start) * self.args.promises) - made
            for _ in range(max(0, due)):
                made += 1
                churned = rng.random() < 0.3
                subscription = self.churned_promises if churned else steady
                if not subscription.active:
                    tally.promises_inactive += 1
                    continue
                fate = rng.random()
                timeout = rng.uniform(0.3, 1.0) if fate < 0.95 else self.long_timeout
                promise = subscription.new_promise(b"%d" % made, timeout)
                tally.promises_made += 1
                if fate < 0.6:
                    tg.start_soon(self.fulfil, promise, b"v%d" % made)
                elif fate < 0.9 or fate >= 0.95:
                    tg.start_soon(self.expire, promise)
                else:
                    tally.promises_abandoned += 1  # never awaited: must leave nothing behind

    async def fulfil(self, promise: Any, payload: bytes) -> None:
        tally = self.tally
        try:
            await self.mpx.publish(promise.channel, payload)
            data = await promise
        except TimeoutError:
            tally.promises_late += 1
        except self.module.SubscriptionClosed:
            tally.promises_closed += 1
        except Exception as exc:
            tally.promises_wrong.append(f"fulfilled promise raised {exc!r}")
        else:
            if data == payload:
                tally.promises_fulfilled += 1
            else:
                tally.promises_wrong.append(f"promise got {data!r}, not {payload!r}")

    async def expire(self, promise: Any) -> None:
        tally = self.tally
        try:
            data = await promise
        except TimeoutError:
            tally.promises_expired += 1
        except self.module.SubscriptionClosed:
            tally.promises_closed += 1
        except Exception as exc:
            tally.promises_wrong.append(f"expiring promise raised {exc!r}")
        else:
            tally.promises_wrong.append(f"a promise nobody fulfilled got {data!r}")

    # ---- steady subscriptions

    async def steady(self, tg: anyio.abc.TaskGroup) -> None:
        mpx = self.mpx
        tally = self.tally
        active: list[bytes] = []
        sync_order, async_order = self.steady_sync, self.steady_async
        pattern_order = self.steady_pattern

        def on_sync(channel: bytes, data: bytes) -> None:
            tally.delivered += 1
            sync_order.see(data)

        async def on_async(channel: bytes, data: bytes) -> None:
            tally.delivered += 1
            async_order.see(data)
            await anyio.lowlevel.checkpoint()

        def on_pattern(channel: bytes, data: bytes) -> None:
            tally.delivered += 1
            pattern_order.see(data)

        for on_message in (on_sync, on_async):
            sub = mpx.new_channel_subscription(on_message, self.on_disconnect, active.append)
            sub.add(STEADY)
            self.steady_subs.append(sub)
        self.steady_subs.append(
            mpx.new_pattern_subscription(STEADY_PATTERN, on_pattern, None, active.append)
        )
        self.steady_iterator = mpx.subscribe(STEADY)
        with anyio.fail_after(10):
            await self.steady_iterator.__aenter__()
            while len(active) < 3:  # noqa: ASYNC110 - counts, no event to wait on
                await anyio.sleep(0.01)
        tg.start_soon(self.read_steady_iterator)

    async def read_steady_iterator(self) -> None:
        order = self.steady_iter
        tally = self.tally
        try:
            async for msg in self.steady_iterator:
                tally.delivered += 1
                order.see(msg.data)
        except self.module.SubscriptionClosed:
            pass

    # ---- sampling

    def progress(self) -> int:
        return min(
            self.steady_sync.last,
            self.steady_async.last,
            self.steady_iter.last,
        )

    def lag(self) -> str:
        """How far behind the publisher each steady consumer is (sync/async/iterator)."""
        published = self.publisher.steady
        orders = (self.steady_sync, self.steady_async, self.steady_iter)
        return "/".join(str(max(0, published - order.last)) for order in orders)

    def sample_line(self, elapsed: float, rss: float, rate: float) -> str:
        t = self.tally
        stats = self.mpx.statistics()
        return (
            f"t={elapsed:6.1f}s rss={rss:7.2f} MiB delivered={stats.messages_delivered:,} "
            f"({rate:,.0f}/s) dropped={stats.messages_dropped:,} "
            f"subs={stats.subscriptions} churned={t.created:,} ops={t.operations:,} "
            f"promises={t.promises_made:,} pending={stats.promises_pending} "
            f"lag={self.lag()} "
            f"gc={'/'.join(map(str, gc_collections()))} blocks={sys.getallocatedblocks():,}"
        )

    async def sampler(self) -> None:
        args = self.args
        start = anyio.current_time()
        next_sample = start + args.sample_every
        last_delivered = 0
        last_time = start
        last_progress = (self.progress(), self.publisher.steady)
        while not self.stop:
            await anyio.sleep(
                max(0.0, min(next_sample, start + args.seconds) - anyio.current_time())
            )
            now = anyio.current_time()
            if now - start >= args.seconds:
                return
            next_sample += args.sample_every
            rss = rss_mib()
            self.samples.append((now - start, rss))
            delivered = self.mpx.statistics().messages_delivered
            rate = (delivered - last_delivered) / max(now - last_time, 1e-9)
            last_delivered, last_time = delivered, now
            print(self.sample_line(now - start, rss, rate), flush=True)
            progress = (self.progress(), self.publisher.steady)
            if progress[1] > last_progress[1] and progress[0] == last_progress[0]:
                self.failures.append(
                    f"deliveries stopped at t={now - start:.1f}s: the publisher went from "
                    f"{last_progress[1]} to {progress[1]} steady messages, the steady "
                    f"consumers stayed at {progress[0]}"
                )
            last_progress = progress

    # ---- the run

    async def run(self) -> None:
        async with self.module.Multiplexer(
            self.server.url, client_name="soak", health_check_interval=5
        ) as mpx:
            self.mpx = mpx
            with anyio.fail_after(10):
                await mpx.wait_connected()
            async with anyio.create_task_group() as tg:
                await self.steady(tg)
                self.publisher.start()
                async with anyio.create_task_group() as promise_tg:
                    promise_tg.start_soon(self.promises, promise_tg)
                    async with anyio.create_task_group() as churn_tg:
                        churn_tg.start_soon(self.churn, churn_tg)
                        churn_tg.start_soon(self.sampler)
                        await self.measure()
                        self.stop = True
                        self.publisher.stop.set()
                        for slot in self.slots:
                            self.close_slot(slot)
                        churn_tg.cancel_scope.cancel()  # the sampler, the iterators' tasks
                    # The promise tasks end by their own timeouts (5 s at most).
                await anyio.to_thread.run_sync(self.publisher.join)
                await self.settle()
                await self.verify(mpx)
                self.steady_iterator.close()  # its reading task ends

    async def measure(self) -> None:
        args = self.args
        start = anyio.current_time()
        await anyio.sleep(args.warmup)
        self.rss_start = rss_mib()
        self.gc_start = gc_collections()
        self.blocks_start = sys.getallocatedblocks()
        self.census_start = object_census() if args.census else Counter()
        self.trace_start = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        if args.free_large:
            bytearray(1 << 20)  # allocated and freed at once (see --free-large)
        print(
            f"warm-up done after {args.warmup:g} s: RSS start {self.rss_start:.2f} MiB, "
            f"{self.blocks_start:,} allocated blocks",
            flush=True,
        )
        await anyio.sleep(max(0.0, start + args.seconds - anyio.current_time()))
        self.rss_end = rss_mib()
        self.gc_end = gc_collections()
        self.blocks_end = sys.getallocatedblocks()
        self.census_end = object_census() if args.census else Counter()
        if self.trace_start is not None:
            grown = tracemalloc.take_snapshot().compare_to(self.trace_start, "traceback")
            print("tracemalloc: the allocation sites that grew most after the warm-up")
            for stat in grown[: self.args.tracemalloc_top]:
                print(f"  {stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+,} blocks:")
                for line in stat.traceback.format(limit=self.args.tracemalloc):
                    print(f"    {line}")
        self.elapsed = anyio.current_time() - start
        self.published_at_end = self.publisher.published

    async def settle(self) -> None:
        """After the publisher stopped: every steady consumer catches up with it, every
        churned iterator's task has ended, and the server is back to the steady set."""
        publisher = self.publisher
        if publisher.error is not None:
            self.failures.append(f"the publisher thread failed: {publisher.error!r}")

        def behind() -> bool:
            return (
                self.progress() < publisher.steady or self.steady_pattern.last < publisher.patterned
            )

        with anyio.move_on_after(15):
            while behind():  # noqa: ASYNC110 - counters, no event to wait on
                await anyio.sleep(0.01)
        if behind():
            self.failures.append(
                f"the steady consumers did not catch up: published {publisher.steady} "
                f"(pattern {publisher.patterned}), got: sync {self.steady_sync.last}, async "
                f"{self.steady_async.last}, iterator {self.steady_iter.last}, pattern "
                f"{self.steady_pattern.last}"
            )
        for slot in self.slots:
            if slot.task_done is not None and not slot.task_done.is_set():
                self.failures.append(f"a churned {slot.kind} iterator's task did not end")
        await self.server_settled()

    async def server_settled(self) -> None:
        """The server's view goes back to the steady set (UNSUBSCRIBEs may be in flight)."""
        expected_numpat = 2  # STEADY_PATTERN and the long-lived promise prefix
        seen: dict[str, Any] = {}

        def state() -> bool:
            server = self.server
            seen["channels"] = sorted(server.command("PUBSUB", "CHANNELS", "soak:*"))
            flat = server.command("PUBSUB", "NUMSUB", STEADY, *POOL)
            seen["numsub"] = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2) if flat[i + 1]}
            seen["numpat"] = server.command("PUBSUB", "NUMPAT")
            seen["shard"] = (
                sorted(server.command("PUBSUB", "SHARDCHANNELS")) if self.sharded else []
            )
            return (
                seen["channels"] == [STEADY]
                and seen["numsub"] == {STEADY: 1}
                and seen["numpat"] == expected_numpat
                and seen["shard"] == []
            )

        with anyio.move_on_after(10):
            while not state():  # noqa: ASYNC110 - polls the server
                await anyio.sleep(0.05)
        if not state():
            self.failures.append(
                f"the server did not go back to the steady set: PUBSUB CHANNELS "
                f"{seen['channels']}, NUMSUB {seen['numsub']}, NUMPAT {seen['numpat']} "
                f"(expected {expected_numpat}), SHARDCHANNELS {seen['shard']}"
            )

    async def verify(self, mpx: Any) -> None:
        """statistics() against the script's own counts, before the multiplexer closes."""
        tally = self.tally
        fail = self.failures.append
        with anyio.move_on_after(5):  # an abandoned promise may still be ticking
            while mpx.statistics().promises_pending:  # noqa: ASYNC110 - a counter
                await anyio.sleep(0.05)
        stats = mpx.statistics()
        self.final_stats = stats
        steady_dropped = sum(s.dropped for s in self.steady_subs if hasattr(s, "dropped"))
        steady_dropped += self.steady_iterator.dropped
        expected_subscriptions = len(self.steady_subs) + 1  # + the steady iterator
        if not stats.connected or stats.connections_made != 1 or stats.connections_lost:
            fail(
                f"the connection did not stay up: connected={stats.connected}, "
                f"connections_made={stats.connections_made}, "
                f"connections_lost={stats.connections_lost}"
            )
        if stats.subscriptions != expected_subscriptions:
            fail(
                f"statistics().subscriptions {stats.subscriptions}, "
                f"expected {expected_subscriptions}"
            )
        active = (stats.active_channels, stats.active_patterns, stats.active_shard_channels)
        if active != (1, 2, 0):
            fail(
                f"statistics() active channels/patterns/shard channels {active}, expected (1, 2, 0)"
            )
        if stats.promises_pending:
            fail(f"statistics().promises_pending is {stats.promises_pending} after every timeout")
        if stats.messages_delivered != tally.delivered:
            fail(
                f"statistics().messages_delivered {stats.messages_delivered:,}, but callbacks "
                f"and iterators got {tally.delivered:,}"
            )
        dropped = tally.dropped_closed + steady_dropped
        if stats.messages_dropped != dropped:
            fail(
                f"statistics().messages_dropped {stats.messages_dropped:,}, but the "
                f"subscriptions' own counters add up to {dropped:,}"
            )
        if stats.messages_received < self.publisher.steady + self.publisher.patterned:
            fail(
                f"statistics().messages_received {stats.messages_received:,} is less than the "
                f"steady messages alone ({self.publisher.steady + self.publisher.patterned:,})"
            )
        if steady_dropped:
            fail(f"the steady subscriptions dropped {steady_dropped} messages")
        for order in (self.steady_sync, self.steady_async, self.steady_iter, self.steady_pattern):
            if order.gaps:
                fail(f"the {order.label} saw {order.gaps} gaps or reorderings")
        if self.publisher.steady_unreceived:
            fail(f"{self.publisher.steady_unreceived} PUBLISH on the steady channel reached nobody")
        if tally.violations:
            fail(
                f"{tally.violations} messages of names not held reached a subscription, e.g. "
                + "; ".join(tally.violation_examples)
            )
        if tally.iterator_errors:
            fail(f"churned iterators raised: {tally.iterator_errors[:5]}")
        if tally.other_disconnects:
            fail(
                f"on_disconnect was called {tally.other_disconnects} times "
                "with other than an overflow"
            )
        if tally.promises_wrong:
            fail(f"promises misbehaved ({len(tally.promises_wrong)}): {tally.promises_wrong[:5]}")
        attempts = tally.promises_fulfilled + tally.promises_late
        if tally.promises_late > max(3, attempts // 20):
            fail(f"{tally.promises_late} of {attempts} promises expired before their fulfilment")
        elif tally.promises_late:
            self.notes.append(f"{tally.promises_late} promises expired before a slow fulfilment")
        if tally.promises_fulfilled == 0 or tally.promises_expired == 0:
            fail("the promises were not exercised (none fulfilled or none expired)")
        if tally.overflow_notices != tally.overflow_closed:
            self.notes.append(
                f"{tally.overflow_notices} SubscriptionOverflow notices for "
                f"{tally.overflow_closed} overflow closes (on_disconnect is repeated when one "
                f"socket read brings a closed subscription several runs of messages)"
            )
            if self.args.strict:
                fail(self.notes[-1])

    # ---- the report

    def report(self) -> int:
        args = self.args
        tally = self.tally
        publisher = self.publisher
        stats = getattr(self, "final_stats", None)
        duration = getattr(self, "elapsed", args.seconds)
        published = getattr(self, "published_at_end", publisher.published)
        print(
            f"driver {args.driver}, {args.seconds:g} s (warm-up {args.warmup:g} s), publish "
            f"{args.rate:,}/s (achieved {published / max(duration, 1e-9):,.0f}/s), churn "
            f"{args.churn:,} ops/s, promises {args.promises:,}/s"
        )
        print(
            f"published {publisher.published:,} messages (steady channel {publisher.steady:,}, "
            f"steady pattern {publisher.patterned:,}), {publisher.receivers:,} receivers"
        )
        if stats is not None:
            print(
                f"delivered {tally.delivered:,} messages "
                f"(statistics: {stats.messages_delivered:,}), "
                f"dropped {stats.messages_dropped:,}, received {stats.messages_received:,}"
            )
        print(
            f"churned {tally.created:,} subscriptions in {tally.operations:,} operations "
            f"(closed {tally.closed:,}, closed by overflow {tally.overflow_closed:,} with "
            f"{tally.overflow_notices:,} SubscriptionOverflow notices), names "
            f"added {tally.names_added:,}, removed {tally.names_removed:,}, clears "
            f"{tally.clears:,}, add-remove-add bursts {tally.bursts:,}"
        )
        print(
            f"promises: {tally.promises_made:,} made on {tally.promise_subscriptions + 1} "
            f"promise subscriptions, {tally.promises_fulfilled:,} fulfilled, "
            f"{tally.promises_expired:,} expired, {tally.promises_abandoned:,} never awaited, "
            f"{tally.promises_closed:,} failed by close, {tally.promises_late:,} late, "
            f"{tally.promises_inactive:,} skipped while reopening"
        )
        if self.rss_start:
            window = [rss for t, rss in self.samples if t >= args.warmup]
            if window:
                print(
                    f"RSS after warm-up: min {min(window):.2f}, median "
                    f"{statistics.median(window):.2f}, max {max(window):.2f} MiB "
                    f"({len(window)} samples)"
                )
            collections = [e - s for s, e in zip(self.gc_start, self.gc_end, strict=True)]
            growth = self.census_end - self.census_start
            top = ", ".join(f"{name} +{count:,}" for name, count in growth.most_common(5))
            print(
                f"gc: collections after warm-up (gen0/gen1/gen2) "
                f"{'/'.join(map(str, collections))}; allocated blocks "
                f"{self.blocks_start:,} -> {self.blocks_end:,}"
            )
            if args.census:
                print(
                    f"census: gc-tracked objects {sum(self.census_start.values()):,} -> "
                    f"{sum(self.census_end.values()):,}; most grown: {top or 'none'}"
                )
        growth_pct = (
            (self.rss_end - self.rss_start) / self.rss_start * 100 if self.rss_start else 0.0
        )
        if self.rss_start and growth_pct > args.max_growth:
            self.failures.append(
                f"RSS grew {growth_pct:.1f}% after the warm-up (limit {args.max_growth:g}%)"
            )
        for note in self.notes:
            print(f"note: {note}")
        for failure in self.failures:
            print(f"FAILED: {failure}")
        verdict = "FAIL" if self.failures else "PASS"
        print(
            f"soak: RSS start {self.rss_start:.2f} MiB, end {self.rss_end:.2f} MiB, "
            f"growth {growth_pct:.1f}%: {verdict}",
            flush=True,
        )
        return 1 if self.failures else 0


def server_version(server: RedisServer) -> tuple[int, ...]:
    info = bytes(server.command("INFO", "server")).decode()
    match = re.search(r"redis_version:(\d+)\.(\d+)", info)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, required=True, help="the whole run, warm-up included"
    )
    parser.add_argument("--driver", choices=sorted(DRIVERS), default="anyio-asyncio")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds before RSS start (default min(30, S/5))"
    )
    parser.add_argument("--rate", type=int, default=3000, help="messages published per second")
    parser.add_argument("--churn", type=int, default=200, help="churn operations per second")
    parser.add_argument("--promises", type=int, default=100, help="promises made per second")
    parser.add_argument(
        "--sample-every", type=float, default=None, help="seconds between RSS samples"
    )
    parser.add_argument(
        "--max-growth", type=float, default=10.0, help="RSS growth allowed, percent"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="diagnosis: trace allocations (this many frames each) and print the sites that "
        "grew most after the warm-up (slower, and RSS then includes the tracing)",
    )
    parser.add_argument("--tracemalloc-top", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument(
        "--census",
        action="store_true",
        help="diagnosis: count the gc-tracked objects by type at RSS start and end, and "
        "print the types that grew most (gc.get_objects() builds a list of a few hundred "
        "KiB, which itself raises glibc's mmap threshold: see --free-large)",
    )
    parser.add_argument(
        "--free-large",
        action="store_true",
        help="allocate and free one 1 MiB buffer after the warm-up, as an application "
        "does sooner or later: on glibc this raises malloc's dynamic mmap threshold, after "
        "which asyncio's 256 KiB socket reads come from (and fragment) the heap",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on known library anomalies too (see notes)"
    )
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = min(30.0, args.seconds / 5)
    if args.sample_every is None:
        args.sample_every = max(1.0, args.seconds / 12)
    if args.seconds <= 0 or not 0 <= args.warmup < args.seconds:
        parser.error("need --seconds > 0 and 0 <= --warmup < --seconds")
    if min(args.rate, args.churn, args.promises) < 1 or args.sample_every <= 0:
        parser.error("--rate, --churn, --promises and --sample-every must be positive")
    package, backend = DRIVERS[args.driver]
    module = importlib.import_module(package)
    if args.tracemalloc:
        tracemalloc.start(args.tracemalloc)
    print(
        f"soak: {package} on {backend}, pid {os.getpid()}, RSS before the run {rss_mib():.2f} MiB",
        flush=True,
    )
    with RedisServer() as server:
        soak = Soak(args, module, server)
        try:
            anyio.run(soak.run, backend=backend)
        except BaseException as exc:  # reported in the summary, with its traceback above it
            traceback.print_exc(file=sys.stdout)
            soak.failures.append(f"the run raised {exc!r}")
        finally:
            soak.publisher.stop.set()
    raise SystemExit(soak.report())


if __name__ == "__main__":
    main()
