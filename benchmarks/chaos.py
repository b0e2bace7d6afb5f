"""Chaos: random faults against a busy multiplexer, and every promise of SPEC section 3 checked.

    python benchmarks/chaos.py --rounds N --driver anyio-asyncio|anyio-trio|trio [--seed S]

It starts its own ``redis-server`` and a fault-injecting proxy (``tests/fault_proxy.py``;
the server and the proxy are the test suite's own fixtures), and runs one multiplexer
through the proxy with every kind of subscription:

* 200 channels, "c:0".."c:199": the first 100 held for the whole run by 8 subscriptions
  (each channel by 4 of them; sync and async callbacks), the other 100 added and removed
  all the time by 6 churn subscriptions, which are also closed and replaced now and then;
* 10 patterns "p:K:*", each held by a sync and an async subscription; 50 shard channels
  "s:0".."s:49" held by a sync and an async sharded subscription;
* three iterators (channels, shard channels, one pattern) that follow the names of
  a stable subscription;
* a promise subscription making promises all the time, most of them fulfilled;
* a publisher thread on its own connection (straight to the server) sending
  sequence-numbered messages to every name at a steady rate.

Each round waits until everything is up, then injects one fault chosen at random: the
proxy cuts the connection at a random byte offset (mid-frame), the proxy goes silent
(half-open), SIGKILL and restart of the server, SIGSTOP for longer than the health
check, ``CLIENT KILL TYPE pubsub``, or the server dropping the client at its
``client-output-buffer-limit``. It then waits until every name is active again, pauses
the churn, and checks:

* every message published (and confirmed by Redis) after a (subscription, name) was
  activated reached that subscription, in order, exactly once;
* no message reached a subscription after it removed the name (checked on arrival);
* every name wanted is active, and the server counts each one once (PUBSUB NUMSUB,
  NUMPAT, SHARDNUMSUB) and nothing else;
* every subscription holding names got the same number of ``on_disconnect`` calls, at
  least one and no more than the connections lost;
* every promise settled once (awaiting it again gives the same outcome), on time, with
  the right payload.

After the last round it closes the multiplexer and checks that no task and no file
descriptor is left, and that the server holds none of its names. It prints one line per
figure and, last, ``chaos: N faults, V violations``; the exit status is 1 if V > 0.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import socket
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread
import hiredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fault_proxy import FaultProxy  # noqa: E402
from redis_servers import RedisServer, encode_command  # noqa: E402

DRIVERS = {
    "anyio-asyncio": ("redismpx_anyio", "asyncio"),
    "anyio-trio": ("redismpx_anyio", "trio"),
    "trio": ("redismpx_trio", "trio"),
}
FAULTS = ("cut", "half-open", "sigkill", "sigstop", "client-kill", "output-buffer-limit")

#: Short timers, so that a round takes about a second.
TIMERS: dict[str, Any] = {
    "health_check_interval": 0.3,
    "health_check_timeout": 0.3,
    "backoff_base": 0.02,
    "backoff_cap": 0.2,
    "connect_timeout": 1.0,
}
HEALTH_CHECK_BOUND = TIMERS["health_check_interval"] + TIMERS["health_check_timeout"]
RECOVERY_DEADLINE = 20.0
DELIVERY_DEADLINE = 5.0
DEFAULT_OUTPUT_LIMIT = ("pubsub", "32mb", "8mb", "60")

STABLE_CHANNELS = [b"c:%d" % i for i in range(100)]
CHURN_CHANNELS = [b"c:%d" % i for i in range(100, 200)]
PATTERNS = [b"p:%d:*" % k for k in range(10)]
PATTERN_CHANNELS = {p: [p[:-1] + b"%d" % j for j in range(5)] for p in PATTERNS}
SHARD_CHANNELS = [b"s:%d" % i for i in range(50)]
PROMISE_PREFIX = b"prom:"
BIG_PAYLOAD = b"big:" + b"x" * 200_000


class Publisher(threading.Thread):
    """Sequence-numbered PUBLISH/SPUBLISH at a steady rate, pipelined, on its own socket.

    A message counts as published only once Redis has answered its command; a batch
    whose answers are lost (the server died or froze) is not counted, and nothing is
    expected of it.
    """

    def __init__(self, host: str, port: int, rate: int, seed: int) -> None:
        super().__init__(daemon=True, name="chaos-publisher")
        self.address = (host, port)
        self.rng = random.Random(seed)
        self.tick = 0.005
        self.per_tick = max(1, round(rate * self.tick))
        self.targets = (
            [(b"PUBLISH", c) for c in STABLE_CHANNELS + CHURN_CHANNELS]
            + [(b"PUBLISH", c) for p in PATTERNS for c in PATTERN_CHANNELS[p]]
            + [(b"SPUBLISH", c) for c in SHARD_CHANNELS]
        )
        self.lock = threading.Lock()
        self.next_seq = 0
        #: every sequence number below it has been answered or given up on
        self.settled = 0
        self.confirmed: dict[bytes, list[int]] = defaultdict(list)
        self.extra: deque[tuple[bytes, bytes, bytes]] = deque()
        self.published = 0
        self.unconfirmed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        sock: socket.socket | None = None
        due = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            due = max(due + self.tick, time.monotonic() - 0.1)
            if sock is None:
                try:
                    sock = socket.create_connection(self.address, timeout=0.5)
                except OSError:
                    time.sleep(0.02)
                    continue
            with self.lock:
                first = self.next_seq
                self.next_seq += self.per_tick
            batch = [
                (*self.rng.choice(self.targets), b"%d" % seq)
                for seq in range(first, first + self.per_tick)
            ]
            while self.extra:
                batch.append(self.extra.popleft())
            replies = self._send(sock, batch)
            if replies is None:
                sock.close()
                sock = None
            with self.lock:
                for (_, channel, payload), reply in zip(
                    batch, replies or [None] * len(batch), strict=True
                ):
                    if not payload[:1].isdigit():
                        continue
                    if isinstance(reply, int):
                        self.confirmed[channel].append(int(payload))
                        self.published += 1
                    else:
                        self.unconfirmed += 1
                self.settled = first + self.per_tick
        if sock is not None:
            sock.close()

    @staticmethod
    def _send(sock: socket.socket, batch: list[tuple[bytes, bytes, bytes]]) -> list[Any] | None:
        reader = hiredis.Reader()
        try:
            sock.sendall(b"".join(encode_command(*command) for command in batch))
            replies: list[Any] = []
            while len(replies) < len(batch):
                reply = reader.gets()
                if reply is False:
                    data = sock.recv(65536)
                    if not data:
                        return None
                    reader.feed(data)
                    continue
                replies.append(reply)
            return replies
        except (OSError, hiredis.ProtocolError):
            return None

    def mark(self) -> int:
        return self.next_seq

    def published_between(self, channel: bytes, start: int, end: int) -> list[int]:
        with self.lock:
            return [s for s in self.confirmed.get(channel, ()) if start <= s < end]

    def forget_before(self, mark: int) -> None:
        with self.lock:
            for channel, seqs in self.confirmed.items():
                self.confirmed[channel] = [s for s in seqs if s >= mark]


class Violations(Counter[str]):
    """Violations by kind; the first few reports of each kind are printed with details."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: Counter[str] = Counter()

    def note(self, kind: str, detail: str = "", count: int = 1) -> None:
        if count <= 0:
            return
        self[kind] += count
        self.reports[kind] += 1
        if self.reports[kind] <= 3 and detail:
            print(f"  violation: {kind}: {detail}", file=sys.stderr, flush=True)


class Tracked:
    """One subscription with callbacks, as the checker sees it."""

    def __init__(self, ident: int, kind: str, names: set[bytes], stable: bool) -> None:
        self.ident = ident
        self.kind = kind  # "channel", "shard" or "pattern"
        self.names = set(names)  # what the user asked for: the checker's own record
        self.stable = stable
        self.active: set[bytes] = set()
        self.disconnects = 0
        self.activations = 0
        self.handle: Any = None


class Chaos:
    def __init__(
        self, m: ModuleType, server: RedisServer, proxy: FaultProxy, args: argparse.Namespace
    ) -> None:
        self.m = m
        self.server = server
        self.proxy = proxy
        self.args = args
        self.rng = random.Random(args.seed)
        self.publisher = Publisher(server.host, server.port, args.rate, args.seed + 1)
        self.violations = Violations()
        self.tracked: dict[int, Tracked] = {}
        #: (subscription, name) -> publisher mark at activation, None while not active
        self.since: dict[tuple[int, bytes], int | None] = {}
        #: (subscription, channel) -> sequence numbers delivered since the last check
        self.seen: dict[tuple[int, bytes], set[int]] = defaultdict(set)
        self.last: dict[tuple[int, bytes], int] = {}
        self.followers: list[tuple[int, int]] = []  # (iterator, stable subscription it follows)
        self.ids = iter(range(1, 1 << 30))
        self.closed: dict[int, Tracked] = {}
        self.churn_paused = False
        self.stopping = False
        self.churn_ops = 0
        self.faults: Counter[str] = Counter()
        self.recovery: dict[str, list[float]] = defaultdict(list)
        self.recovered = 0
        self.checked_messages = 0
        self.extra_losses = 0
        self.promise_outcomes: Counter[str] = Counter()
        self.promises_open = 0
        self.last_fault = ""

    # ---- callbacks

    def _record(self, ident: int, channel: bytes, data: bytes) -> None:
        tracked = self.tracked.get(ident) or self.closed.get(ident)
        if tracked is not None and not self._wanted(tracked, channel):
            self.violations.note("deliveries after a remove", f"sub {ident} got {channel!r}")
        if not data[:1].isdigit():
            return  # the output-buffer fault's big message
        seq = int(data)
        key = (ident, channel)
        if self.last.get(key, -1) >= seq:
            self.violations.note(
                "out of order or duplicated", f"{key}: {seq} after {self.last[key]}"
            )
        self.last[key] = seq
        self.seen[key].add(seq)

    @staticmethod
    def _wanted(tracked: Tracked, channel: bytes) -> bool:
        if tracked.kind == "pattern":
            return any(channel.startswith(p[:-1]) for p in tracked.names)
        return channel in tracked.names

    def _callbacks(self, tracked: Tracked, use_async: bool) -> tuple[Any, Any, Any]:
        ident = tracked.ident

        def on_message(channel: bytes, data: bytes) -> None:
            self._record(ident, channel, data)

        async def on_message_async(channel: bytes, data: bytes) -> None:
            self._record(ident, channel, data)

        def on_disconnect(error: Exception) -> None:
            tracked.disconnects += 1
            tracked.active.clear()
            for name in tracked.names:
                self.since[(ident, name)] = None

        def on_activation(name: bytes) -> None:
            tracked.activations += 1
            tracked.active.add(name)
            if tracked.stable:
                self.since[(ident, name)] = self.publisher.mark()

        return (on_message_async if use_async else on_message), on_disconnect, on_activation

    # ---- subscriptions

    def _new(
        self, mpx: Any, kind: str, names: set[bytes], stable: bool, use_async: bool
    ) -> Tracked:
        tracked = Tracked(next(self.ids), kind, names, stable)
        self.tracked[tracked.ident] = tracked
        for name in names:
            self.since[(tracked.ident, name)] = None
        callbacks = self._callbacks(tracked, use_async)
        if kind == "pattern":
            (pattern,) = names
            tracked.handle = mpx.new_pattern_subscription(pattern, *callbacks)
        else:
            factory = (
                mpx.new_channel_subscription if kind == "channel" else mpx.new_sharded_subscription
            )
            tracked.handle = factory(*callbacks)
            if names:
                tracked.handle.add(*names)
        return tracked

    def build(self, mpx: Any) -> None:
        for i in range(8):
            names = {c for j, c in enumerate(STABLE_CHANNELS) if (j + i) % 4 in (0, 1)}
            self._new(mpx, "channel", names, stable=True, use_async=i % 2 == 1)
        for use_async in (False, True):
            self._new(mpx, "shard", set(SHARD_CHANNELS), stable=True, use_async=use_async)
            for pattern in PATTERNS:
                self._new(mpx, "pattern", {pattern}, stable=True, use_async=use_async)
        for i in range(6):
            self._new_churner(mpx, use_async=i % 2 == 1)

    def _new_churner(self, mpx: Any, use_async: bool) -> Tracked:
        return self._new(
            mpx,
            "channel",
            set(self.rng.sample(CHURN_CHANNELS, 10)),
            stable=False,
            use_async=use_async,
        )

    def stable(self) -> list[Tracked]:
        return [t for t in self.tracked.values() if t.stable]

    def churners(self) -> list[Tracked]:
        return [t for t in self.tracked.values() if not t.stable]

    async def follow(self, opened: Any, leader: Tracked, task_status: Any) -> None:
        """An iterator over ``leader``'s names: delivery checked against its activations."""
        ident = next(self.ids)
        self.followers.append((ident, leader.ident))
        async with opened as iterator:
            task_status.started()
            async for message in iterator:
                self._record(ident, message.channel, message.data)

    async def churn(self, mpx: Any) -> None:
        while not self.stopping:
            await anyio.sleep(self.rng.uniform(0.001, 0.01))
            if self.churn_paused or self.stopping:
                continue
            tracked = self.rng.choice(self.churners())
            self.churn_ops += 1
            roll = self.rng.random()
            if roll < 0.02:
                tracked.handle.close()
                tracked.names.clear()
                self.closed[tracked.ident] = self.tracked.pop(tracked.ident)
                self._new_churner(mpx, use_async=self.rng.random() < 0.5)
            elif roll < 0.5 and tracked.names:
                name = self.rng.choice(sorted(tracked.names))
                tracked.handle.remove(name)
                tracked.names.discard(name)
                tracked.active.discard(name)
            else:
                name = self.rng.choice(CHURN_CHANNELS)
                if name not in tracked.names:
                    tracked.names.add(name)
                    tracked.handle.add(name)

    # ---- promises

    async def make_promises(self, promises: Any, tg: Any) -> None:
        serial = 0
        while True:
            await anyio.sleep(self.rng.uniform(0.005, 0.03))
            if self.stopping:
                return
            serial += 1
            suffix = b"%d" % serial
            timeout = self.rng.uniform(0.05, 0.5)
            try:
                promise = promises.new_promise(suffix, timeout)
            except self.m.InactiveSubscription:
                await promises.wait_for_activation()
                continue
            self.promises_open += 1
            tg.start_soon(self.settle, promise, suffix, timeout)
            if self.rng.random() < 0.7:
                self.publisher.extra.append(
                    (b"PUBLISH", PROMISE_PREFIX + suffix, b"promise:" + suffix)
                )

    async def _outcome(self, promise: Any) -> tuple[str, bytes | None]:
        try:
            return "fulfilled", await promise
        except TimeoutError:
            return "timed out", None
        except self.m.PromiseInterrupted:
            return "interrupted", None
        except self.m.SubscriptionClosed:
            return "closed", None

    async def settle(self, promise: Any, suffix: bytes, lifetime: float) -> None:
        started = anyio.current_time()
        try:
            with anyio.fail_after(lifetime + 2.0):
                first = await self._outcome(promise)
        except TimeoutError:
            self.violations.note("promises not settled exactly once", f"{suffix!r} never settled")
            return
        finally:
            self.promises_open -= 1
        second = await self._outcome(promise)
        late = anyio.current_time() - started > lifetime + 1.0 and first[0] == "timed out"
        if (
            first != second
            or late
            or (first[0] == "fulfilled" and first[1] != b"promise:" + suffix)
        ):
            self.violations.note(
                "promises not settled exactly once", f"{suffix!r}: {first} then {second}"
            )
        self.promise_outcomes[first[0]] += 1

    # ---- waiting and checking

    async def wait_for(self, condition: Callable[[], bool], deadline: float) -> bool:
        with anyio.move_on_after(deadline):
            while not condition():  # noqa: ASYNC110 - state of threads and a server
                await anyio.sleep(0.005)
            return True
        return False

    def all_active(self, promises: Any) -> bool:
        return promises.active and all(t.active >= t.names for t in self.tracked.values())

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    async def inject(self, kind: str, mpx: Any, tg: Any) -> None:
        self.faults[kind] += 1
        self.last_fault = kind
        if kind == "cut":
            self.proxy.cut(self.rng.randrange(0, 4096))
        elif kind == "half-open":
            self.proxy.silence()
        elif kind == "sigkill":
            await self.blocking(self.server_kill_restart)
        elif kind == "sigstop":
            self.server.pause()
            tg.start_soon(self._resume_after, HEALTH_CHECK_BOUND + 0.2)
        elif kind == "client-kill":
            await self.blocking(self.server.kill_clients, "pubsub")
        elif kind == "output-buffer-limit":
            await self.blocking(
                self.server.command,
                "CONFIG",
                "SET",
                "client-output-buffer-limit",
                "pubsub 64kb 0 0",
            )
            self.publisher.extra.append((b"PUBLISH", STABLE_CHANNELS[0], BIG_PAYLOAD))

    def server_kill_restart(self) -> None:
        self.server.kill()
        self.server.restart()

    async def _resume_after(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        self.server.resume()

    async def round(self, mpx: Any, promises: Any, tg: Any, number: int) -> None:
        kind = self.rng.choice(FAULTS)
        before = mpx.statistics().connections_lost
        for t in self.tracked.values():
            t.disconnects = 0
        started = anyio.current_time()
        await self.inject(kind, mpx, tg)
        lost = await self.wait_for(lambda: mpx.statistics().connections_lost > before, 10.0)
        if kind == "cut" and not lost:  # no traffic reached the armed offset
            self.proxy.cut()
            lost = await self.wait_for(lambda: mpx.statistics().connections_lost > before, 5.0)
        if kind == "output-buffer-limit":
            await self.blocking(
                self.server.command,
                "CONFIG",
                "SET",
                "client-output-buffer-limit",
                " ".join(DEFAULT_OUTPUT_LIMIT),
            )
        if not lost:
            self.violations.note("faults not detected", f"round {number}: {kind}")
        if await self.wait_for(lambda: self.all_active(promises), RECOVERY_DEADLINE):
            self.recovered += 1
            self.recovery[kind].append(anyio.current_time() - started)
        else:
            missing = sum(len(t.names - t.active) for t in self.tracked.values())
            self.violations.note(
                "subscriptions lost",
                f"round {number} ({kind}): {missing} names not re-activated",
                missing or 1,
            )
        await anyio.sleep(self.rng.uniform(0.05, 0.2))  # traffic on the recovered connection
        await self.check(mpx, promises, mpx.statistics().connections_lost - before, number)

    async def check(self, mpx: Any, promises: Any, losses: int, number: int) -> None:
        self.churn_paused = True
        try:
            await self._check_deliveries(number)
            await self._check_server(mpx, promises, number)
            counts = {t.disconnects for t in self.stable()}
            churn_over = [t for t in self.churners() if t.disconnects > max(counts | {0})]
            if len(counts) != 1 or 0 in counts or max(counts) > losses or churn_over:
                self.violations.note(
                    "on_disconnect not exactly one per subscription per loss",
                    f"round {number}: stable {sorted(counts)}, "
                    f"churn over {len(churn_over)}, losses {losses}",
                )
            else:
                self.extra_losses += max(counts) - 1
        finally:
            self.churn_paused = False

    def _obligations(self, end: int) -> list[tuple[int, bytes, int]]:
        """(subscription, channel, seq) that must have been delivered, published before ``end``."""
        windows: list[tuple[int, Tracked]] = [(t.ident, t) for t in self.stable()]
        windows += [(ident, self.tracked[leader]) for ident, leader in self.followers]
        due = []
        for ident, leader in windows:
            for name in leader.names:
                since = self.since.get((leader.ident, name))
                if since is None:
                    continue
                channels = PATTERN_CHANNELS[name] if leader.kind == "pattern" else [name]
                for channel in channels:
                    due += [
                        (ident, channel, s)
                        for s in self.publisher.published_between(channel, since, end)
                    ]
        return due

    async def _check_deliveries(self, number: int) -> None:
        end = self.publisher.mark()
        await self.wait_for(lambda: self.publisher.settled >= end, 5.0)
        due = self._obligations(end)

        def missing() -> list[tuple[int, bytes, int]]:
            return [d for d in due if d[2] not in self.seen.get((d[0], d[1]), ())]

        await self.wait_for(lambda: not missing(), DELIVERY_DEADLINE)
        lost = missing()
        self.checked_messages += len(due)
        self.violations.note(
            "messages published after re-activation not delivered",
            f"round {number}: {len(lost)} of {len(due)}, e.g. {lost[:3]}",
            len(lost),
        )
        for key, since in self.since.items():
            if since is not None:
                self.since[key] = max(since, end)
        for key in list(self.seen):
            self.seen[key] = {s for s in self.seen[key] if s >= end}
        self.publisher.forget_before(end)

    async def _check_server(self, mpx: Any, promises: Any, number: int) -> None:
        wanted_channels = set().union(
            *(t.names for t in self.tracked.values() if t.kind == "channel")
        )
        wanted_shards = set().union(*(t.names for t in self.tracked.values() if t.kind == "shard"))
        wanted_patterns = len(PATTERNS) + 1  # and the promise prefix

        def settled() -> bool:
            stats = mpx.statistics()
            return (
                self.all_active(promises)
                and stats.active_channels == len(wanted_channels)
                and stats.active_shard_channels == len(wanted_shards)
                and stats.active_patterns == wanted_patterns
            )

        if not await self.wait_for(settled, DELIVERY_DEADLINE):
            missing = sum(len(t.names - t.active) for t in self.tracked.values())
            self.violations.note(
                "subscriptions lost",
                f"round {number}: {missing} not active, {mpx.statistics()}",
                missing or 1,
            )
            return
        wrong: list[str] = []

        def server_agrees() -> bool:
            wrong[:] = self._server_differences(wanted_channels, wanted_shards, wanted_patterns)
            return not wrong

        # The server counts a connection's names until it has processed that
        # connection's close: after a freeze or a silenced proxy link the old connection
        # can linger a moment behind the new one. What must hold is that it converges.
        agrees = await self.wait_for_blocking(server_agrees, DELIVERY_DEADLINE)
        self.violations.note(
            "subscriptions lost",
            f"round {number} ({self.last_fault}): server counts differ: {wrong[:5]}",
            0 if agrees else len(wrong),
        )

    def _server_differences(
        self, wanted_channels: set[bytes], wanted_shards: set[bytes], wanted_patterns: int
    ) -> list[str]:
        """Where the server's PUBSUB counts differ from the names wanted (blocking)."""
        everything = STABLE_CHANNELS + CHURN_CHANNELS
        numsub = self.server.command("PUBSUB", "NUMSUB", *everything)
        shardnumsub = self.server.command("PUBSUB", "SHARDNUMSUB", *SHARD_CHANNELS)
        numpat = self.server.command("PUBSUB", "NUMPAT")
        expected = {c: int(c in wanted_channels) for c in everything}
        counts = dict(zip(numsub[::2], numsub[1::2], strict=True))
        expected_shards = {c: int(c in wanted_shards) for c in SHARD_CHANNELS}
        shard_counts = dict(zip(shardnumsub[::2], shardnumsub[1::2], strict=True))
        wrong = [f"{c.decode()}={counts[c]}" for c in everything if counts[c] != expected[c]]
        wrong += [
            f"{c.decode()}={shard_counts[c]}"
            for c in SHARD_CHANNELS
            if shard_counts[c] != expected_shards[c]
        ]
        if numpat != wanted_patterns:
            wrong.append(f"NUMPAT={numpat}")
        return wrong

    async def wait_for_blocking(self, condition: Callable[[], bool], deadline: float) -> bool:
        """wait_for, for a condition that blocks (it queries the server) run in a thread."""
        with anyio.move_on_after(deadline):
            while not await self.blocking(condition):  # noqa: ASYNC110 - a server query
                await anyio.sleep(0.02)
            return True
        return False

    async def run(self, mpx: Any) -> None:
        self.build(mpx)
        promises = mpx.new_promise_subscription(PROMISE_PREFIX)
        async with anyio.create_task_group() as tg:
            leaders = [t for t in self.stable() if t.kind == "channel"][:1]
            shard_leader = next(t for t in self.stable() if t.kind == "shard")
            pattern_leader = next(t for t in self.stable() if t.kind == "pattern")
            await tg.start(self.follow, mpx.subscribe(*leaders[0].names), leaders[0])
            await tg.start(self.follow, mpx.ssubscribe(*shard_leader.names), shard_leader)
            await tg.start(self.follow, mpx.psubscribe(*pattern_leader.names), pattern_leader)
            if not await self.wait_for(lambda: self.all_active(promises), RECOVERY_DEADLINE):
                raise SystemExit("the subscriptions never came up")
            self.publisher.start()
            tg.start_soon(self.churn, mpx)
            tg.start_soon(self.make_promises, promises, tg)
            for number in range(1, self.args.rounds + 1):
                await anyio.sleep(self.rng.uniform(0.02, 0.1))
                await self.round(mpx, promises, tg, number)
                if number % 50 == 0:
                    print(
                        f"  ... {number} rounds, {sum(self.violations.values())} violations",
                        file=sys.stderr,
                        flush=True,
                    )
            self.stopping = True
            await self.wait_for(lambda: self.promises_open == 0, 5.0)
            promises.close()
            await self.wait_for(lambda: self.promises_open == 0, 5.0)
            tg.cancel_scope.cancel()
        self.publisher.stopping.set()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _median_p99(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    ordered = sorted(values)
    return statistics.median(ordered), ordered[
        min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    ]


async def _main(m: ModuleType, args: argparse.Namespace) -> int:
    with RedisServer() as server, FaultProxy(server.host, server.port) as proxy:
        chaos = Chaos(m, server, proxy, args)
        tasks_before = len(anyio.get_running_tasks())
        fds_before = _open_fds()
        started = time.monotonic()
        async with m.Multiplexer(proxy.url, **TIMERS) as mpx:
            await chaos.run(mpx)
            final = mpx.statistics()
        chaos.publisher.join(5.0)
        await chaos.wait_for(lambda: proxy.connections == 0, 5.0)
        gone = await chaos.wait_for(lambda: _open_fds() <= fds_before, 5.0)
        tasks_leaked = len(anyio.get_running_tasks()) - tasks_before
        fds_leaked = 0 if gone else _open_fds() - fds_before
        chaos.violations.note("tasks leaked after close", f"{tasks_leaked}", tasks_leaked)
        chaos.violations.note("file descriptors leaked after close", f"{fds_leaked}", fds_leaked)
        left = await anyio.to_thread.run_sync(
            lambda: (
                sum(
                    int(n)
                    for n in server.command("PUBSUB", "NUMSUB", *STABLE_CHANNELS, *CHURN_CHANNELS)[
                        1::2
                    ]
                )
                + sum(
                    int(n) for n in server.command("PUBSUB", "SHARDNUMSUB", *SHARD_CHANNELS)[1::2]
                )
                + int(server.command("PUBSUB", "NUMPAT"))
            )
        )
        chaos.violations.note("server-side subscriptions left after close", f"{left}", left)
        elapsed = time.monotonic() - started
    return report(chaos, final, tasks_leaked, fds_leaked, elapsed, args)


def report(
    chaos: Chaos,
    final: Any,
    tasks_leaked: int,
    fds_leaked: int,
    elapsed: float,
    args: argparse.Namespace,
) -> int:
    v = chaos.violations
    faults = sum(chaos.faults.values())
    times = [t for ts in chaos.recovery.values() for t in ts]
    median, p99 = _median_p99(times)
    kinds = ", ".join(f"{k} {chaos.faults[k]}" for k in FAULTS)
    print(f"driver: {args.driver}, seed {args.seed}, {elapsed:.0f} s, publish rate {args.rate}/s")
    print(f"faults injected: {faults} ({kinds})")
    print(f"recoveries: {chaos.recovered}")
    print(
        f"fault to every name re-activated: median {median * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )
    for kind in FAULTS:
        kind_median, kind_p99 = _median_p99(chaos.recovery[kind])
        print(f"  {kind}: median {kind_median * 1000:.0f} ms, p99 {kind_p99 * 1000:.0f} ms")
    print(f"subscriptions lost: {v['subscriptions lost']}")
    undelivered = v["messages published after re-activation not delivered"]
    print(
        "messages published after re-activation not delivered: "
        f"{undelivered} (of {chaos.checked_messages} checked)"
    )
    print(f"deliveries after a remove: {v['deliveries after a remove']}")
    print(f"messages out of order or duplicated: {v['out of order or duplicated']}")
    outcomes = ", ".join(f"{k} {n}" for k, n in sorted(chaos.promise_outcomes.items()))
    print(
        f"promises not settled exactly once: {v['promises not settled exactly once']}"
        f" (of {sum(chaos.promise_outcomes.values())}: {outcomes})"
    )
    notices = v["on_disconnect not exactly one per subscription per loss"]
    print(
        "on_disconnect calls not exactly one per subscription per loss: "
        f"{notices} (extra losses seen: {chaos.extra_losses})"
    )
    print(f"faults not detected: {v['faults not detected']}")
    print(f"tasks leaked after close: {tasks_leaked}")
    print(f"file descriptors leaked after close: {fds_leaked}")
    left = v["server-side subscriptions left after close"]
    print(f"server-side subscriptions left after close: {left}")
    print(
        f"churn: {chaos.churn_ops} operations; messages published {chaos.publisher.published}, "
        f"delivered {final.messages_delivered}, dropped {final.messages_dropped}; "
        f"connections lost {final.connections_lost}"
    )
    total = sum(v.values())
    print(f"chaos: {faults} faults, {total} violations")
    return 1 if total else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100, help="faults to inject")
    parser.add_argument("--driver", choices=sorted(DRIVERS), default="anyio-asyncio")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rate", type=int, default=2000, help="messages published per second")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    package, backend = DRIVERS[args.driver]
    module = importlib.import_module(package)
    run: Callable[[], Awaitable[int]] = lambda: _main(module, args)  # noqa: E731
    return anyio.run(run, backend=backend)


if __name__ == "__main__":
    sys.exit(main())
