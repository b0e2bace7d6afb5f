"""Chaos: random faults against a busy multiplexer, and every promise of SPEC section 3 checked.

    python benchmarks/chaos.py --rounds N --driver anyio-asyncio|anyio-trio|trio [--seed S]
        [--cluster] [--faults KIND,...] [--rate R] [--server PATH] [--verbose]

It starts its own ``redis-server`` and a fault-injecting proxy (``tests/fault_proxy.py``;
the server and the proxy are the test suite's own fixtures), and runs one multiplexer
through the proxy with every kind of subscription:

* 200 channels, "c:0".."c:199": the first 100 held for the whole run by 8 subscriptions
  (each channel by 4 of them; sync and async callbacks), the other 100 added and removed
  all the time by 6 churn subscriptions, which are also closed and replaced now and then;
* 10 patterns "p:K:*", each held by a sync and an async subscription; 50 shard channels
  ("s:0".."s:44", and "s:{g}:0".."s:{g}:4" in one slot) held by a sync and an async
  sharded subscription;
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

``--server PATH`` names the server binary (a ``valkey-server`` will do); by default it
is the one the tests use (``$REDISMPX_REDIS_SERVER``, else ``redis-server`` on
``PATH``: ``find_redis_server`` in tests/redis_servers.py). The first line printed
names it, with its product and version (``server: Valkey 9.1.2 (/path)``).

``--cluster`` runs a ClusterMultiplexer instead, against a Redis Cluster of 3 masters
with a replica each (``tests/redis_cluster.py``, the test suite's fixture), with the
same subscriptions: the shard channels spread over every master, the channels,
patterns and promises on the multiplexer's home node. The publisher keeps a socket per
node: SPUBLISH to the master owning the slot (a MOVED reply re-routes the next ones),
PUBLISH to the home node. The faults, in a random order that has each kind once in
every run of as many rounds as there are kinds: a slot holding subscribed names migrated
to another master (``migrate``; and ``atomic-migrate``, with Valkey's atomic slot
migration, ``CLUSTER MIGRATESLOTS``, on servers that have it),
``CLUSTER FAILOVER`` of a master (``failover``), SIGKILL of a master until its replica
has taken over, then the node restarted as a replica (``kill-master``),
``CLIENT KILL TYPE pubsub`` or the output buffer limit on a node carrying names, a new
master joining (``CLUSTER MEET``) and given a slot holding names (``node-added``), and a
node leaving (``node-removed``: ``CLUSTER FORGET`` on every other node, then ``CLUSTER
RESET HARD`` on it): the home when it can leave (a replica, or a master added by
``node-added``, its slots moved away first) unless more than two such masters remain,
else such a master, else a replica, which a new node then replaces if its master has no
other, so that each of the three original masters keeps a replica. The
checks are the same, node by node: each shard name counted once by SHARDNUMSUB on the
master owning its slot and by no other node, the channels and patterns on the home
only. The names a fault must re-activate are those on the node that lost its
connections, or whose slot changed master; each subscription holding names on a node
that lost its connection gets exactly one ``on_disconnect``, and none when names only
move (a migration, a failover: the connection stays up). A channel or pattern message
published before a re-activation may arrive twice or late when the home moves (it
travels the cluster bus, which Redis orders per node only): that is counted apart.

The cluster mode also holds a node-wide subscription (on every master) to
``__keyevent@0__:set``, every node (added ones too) runs with ``notify-keyspace-events
E$``, and the publisher writes one key a tick (``SET ks:<seq>``, spread over every slot,
to its owner). After each fault, once that subscription is on every master that owns a
slot and on no other node, each key written is heard of exactly once; a key written
between the last check and that recovery may be lost, but only if the round told it (an
``on_disconnect`` or a re-activation of the subscription), and never heard of twice.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shutil
import socket
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread
import hiredis

from redismpx_core._slots import key_slot

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fault_proxy import FaultProxy  # noqa: E402
from redis_cluster import RedisCluster  # noqa: E402
from redis_servers import (  # noqa: E402
    RedisServer,
    RedisServerError,
    encode_command,
    find_redis_server,
)
from server_matrix import server_build  # noqa: E402

DRIVERS = {
    "anyio-asyncio": ("redismpx_anyio", "asyncio"),
    "anyio-trio": ("redismpx_anyio", "trio"),
    "trio": ("redismpx_trio", "trio"),
}
FAULTS = ("cut", "half-open", "sigkill", "sigstop", "client-kill", "output-buffer-limit")
CLUSTER_FAULTS = (
    "migrate",
    "failover",
    "kill-master",
    "client-kill",
    "output-buffer-limit",
    "node-added",
    "node-removed",
)
#: A slot moved by Valkey's atomic slot migration (CLUSTER MIGRATESLOTS, Valkey 9): a
#: cluster fault of the servers that have it, in the default list there.
ATOMIC_MIGRATE = "atomic-migrate"
#: The faults that cost a node its connections (the others move names between masters).
LOSSY_CLUSTER_FAULTS = frozenset({"kill-master", "client-kill", "output-buffer-limit"})

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
ALL_CHANNELS = STABLE_CHANNELS + CHURN_CHANNELS
#: 50 shard channels: 45 on slots of their own, and 5 sharing one slot (a hash tag), so
#: that a migration of that slot moves them together.
SHARD_GROUP = [b"s:{g}:%d" % i for i in range(5)]
SHARD_CHANNELS = [b"s:%d" % i for i in range(45)] + SHARD_GROUP
PROMISE_PREFIX = b"prom:"
#: The cluster mode's node-wide subscription: one event per key written (SET), published
#: by the master that owns the key, and the prefix of the keys the publisher writes.
KEYEVENT = b"__keyevent@0__:set"
KEY_PREFIX = b"ks:"
#: What every node of the chaos cluster publishes (added and restarted ones too): the
#: keyevent notifications (E) of string commands ($).
NOTIFY_ARGS = ("--notify-keyspace-events", "E$")
#: The cluster mode's timers: a topology read twice a second, so that a new master, a
#: failover that loses no connection and a node that left are seen within a round.
CLUSTER_TIMERS: dict[str, Any] = {**TIMERS, "refresh_interval": 0.5}
#: The masters of the original cluster; a run never has fewer.
MIN_MASTERS = 3
#: Masters added by ``node-added`` beyond which ``node-removed`` takes one of them
#: rather than the home (a replica whose place a new node takes).
MAX_EXTRA_MASTERS = 2
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

    #: whether each tick also writes one key, ``SET ks:<seq> <seq>`` (the cluster mode's
    #: keyspace events); a confirmed write is recorded under :data:`KEY_PREFIX`
    key_writes = False

    def run(self) -> None:
        due = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            due = max(due + self.tick, time.monotonic() - 0.1)
            if not self.ready():
                time.sleep(0.02)
                continue
            with self.lock:
                first = self.next_seq
                self.next_seq += self.per_tick + self.key_writes
            batch = [
                (*self.rng.choice(self.targets), b"%d" % seq)
                for seq in range(first, first + self.per_tick)
            ]
            if self.key_writes:
                seq = first + self.per_tick
                batch.append((b"SET", KEY_PREFIX + b"%d" % seq, b"%d" % seq))
            while self.extra:
                batch.append(self.extra.popleft())
            replies = self.send(batch)
            with self.lock:
                for (command, channel, payload), reply in zip(batch, replies, strict=True):
                    if not payload[:1].isdigit():
                        continue
                    if self.counts(command, reply):
                        where = KEY_PREFIX if command == b"SET" else channel
                        self.confirmed[where].append(int(payload))
                        self.published += 1
                    else:
                        self.unconfirmed += 1
                self.settled = first + self.per_tick + self.key_writes
        self.close()

    @staticmethod
    def counts(command: bytes, reply: Any) -> bool:
        """Whether a message counts as published: Redis answered it with a count."""
        return isinstance(reply, int)

    # The connection: one socket to the one server. A cluster publisher routes instead.

    sock: socket.socket | None = None

    def ready(self) -> bool:
        if self.sock is None:
            try:
                self.sock = socket.create_connection(self.address, timeout=0.5)
            except OSError:
                return False
        return True

    def send(self, batch: list[tuple[bytes, bytes, bytes]]) -> list[Any]:
        """The replies to ``batch``, in order; None for each command that got none."""
        assert self.sock is not None
        replies = self._send(self.sock, batch)
        if replies is None:
            self.sock.close()
            self.sock = None
        return replies or [None] * len(batch)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    @staticmethod
    def _send(sock: socket.socket, batch: Sequence[tuple[bytes, ...]]) -> list[Any] | None:
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


#: A server's PUBSUB NUMSUB and SHARDNUMSUB of every name used here, and its NUMPAT.
PubsubCounts = tuple[dict[bytes, int], dict[bytes, int], int]


def pubsub_counts(server: RedisServer) -> PubsubCounts:
    """What one server counts of the names used here (blocking)."""
    numsub = server.command("PUBSUB", "NUMSUB", *ALL_CHANNELS)
    shardnumsub = server.command("PUBSUB", "SHARDNUMSUB", *SHARD_CHANNELS)
    return (
        dict(zip(numsub[::2], numsub[1::2], strict=True)),
        dict(zip(shardnumsub[::2], shardnumsub[1::2], strict=True)),
        int(server.command("PUBSUB", "NUMPAT")),
    )


def count_differences(
    counts: PubsubCounts, channels: set[bytes], shards: set[bytes], patterns: int, where: str = ""
) -> list[str]:
    """Where ``counts`` differ from one subscriber holding exactly these names."""
    numsub, shardnumsub, numpat = counts
    wrong = [
        f"{where}{c.decode()}={numsub[c]}" for c in ALL_CHANNELS if numsub[c] != (c in channels)
    ]
    wrong += [
        f"{where}{c.decode()}={shardnumsub[c]}"
        for c in SHARD_CHANNELS
        if shardnumsub[c] != (c in shards)
    ]
    if numpat != patterns:
        wrong.append(f"{where}NUMPAT={numpat}")
    return wrong


def pubsub_total(counts: PubsubCounts) -> int:
    numsub, shardnumsub, numpat = counts
    return sum(numsub.values()) + sum(shardnumsub.values()) + numpat


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
    """One server behind the fault proxy; :class:`ClusterChaos` overrides the faults and
    what the server side is checked against."""

    fault_kinds: tuple[str, ...] = FAULTS

    def __init__(
        self,
        m: ModuleType,
        server: RedisServer | None,
        proxy: FaultProxy | None,
        args: argparse.Namespace,
        publisher: Publisher | None = None,
    ) -> None:
        self.m = m
        self.server = server
        self.proxy = proxy
        self.args = args
        self.rng = random.Random(args.seed)
        if getattr(args, "faults", None):
            self.fault_kinds = tuple(args.faults)
        if publisher is None:
            assert server is not None
            publisher = Publisher(server.host, server.port, args.rate, args.seed + 1)
        self.publisher = publisher
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
        self.replayed = 0
        self.extra_losses = 0
        self.promise_outcomes: Counter[str] = Counter()
        self.promises_open = 0
        self.last_fault = ""
        self.number = 0  # the round under way
        self.verbose = bool(getattr(args, "verbose", False))

    # ---- callbacks

    def _record(self, ident: int, channel: bytes, data: bytes) -> None:
        tracked = self.tracked.get(ident) or self.closed.get(ident)
        if tracked is not None and not self._wanted(tracked, channel):
            self.violations.note(
                "deliveries after a remove",
                f"sub {ident} got {channel!r} (round {self.number}, {self.last_fault})",
            )
        if not data[:1].isdigit():
            return  # the output-buffer fault's big message
        seq = int(data)
        key = (ident, channel)
        if self.last.get(key, -1) >= seq:
            if self._replayed(ident, channel, seq):
                self.replayed += 1
                return
            self.violations.note(
                "out of order or duplicated",
                f"{key}: {seq} after {self.last[key]} (round {self.number}, {self.last_fault})",
            )
        self.last[key] = seq
        self.seen[key].add(seq)

    def _replayed(self, ident: int, channel: bytes, seq: int) -> bool:
        """Whether a message out of order is one that may come twice (never, here)."""
        return False

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
            self._disconnected(tracked)

        def on_activation(name: bytes) -> None:
            self._activated(tracked, name)

        return (on_message_async if use_async else on_message), on_disconnect, on_activation

    def _activated(self, tracked: Tracked, name: bytes) -> None:
        tracked.activations += 1
        tracked.active.add(name)
        if tracked.stable:
            self.since[(tracked.ident, name)] = self.publisher.mark()

    def _disconnected(self, tracked: Tracked) -> None:
        """After ``on_disconnect``: every name of the subscription must be activated again."""
        self._deactivate(tracked, tracked.names)

    def _deactivate(self, tracked: Tracked, names: set[bytes]) -> None:
        tracked.active -= names
        for name in names:
            self.since[(tracked.ident, name)] = None

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

    #: channels counted by ``statistics()`` beside the names wanted (node-wide ones)
    node_wide_channels = 0

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
        kind = self.choose_fault()
        before = mpx.statistics().connections_lost
        for t in self.tracked.values():
            t.disconnects = 0
        started = anyio.current_time()
        self.log(f"round {number}: {kind}")
        await self.fault(kind, mpx, tg, number)
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

    def choose_fault(self) -> str:
        return self.rng.choice(self.fault_kinds)

    def log(self, line: str) -> None:
        if self.verbose:
            print(f"  [{time.monotonic():.3f}] {line}", file=sys.stderr, flush=True)

    async def fault(self, kind: str, mpx: Any, tg: Any, number: int) -> None:
        """Inject one fault and wait until the multiplexer has noticed it."""
        before = mpx.statistics().connections_lost
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

    async def check(self, mpx: Any, promises: Any, losses: int, number: int) -> None:
        self.churn_paused = True
        try:
            await self._check_deliveries(number)
            await self._check_server(mpx, promises, number)
            self._check_disconnects(losses, number)
        finally:
            self.churn_paused = False

    def _check_disconnects(self, losses: int, number: int) -> None:
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
                and stats.active_channels == len(wanted_channels) + self.node_wide_channels
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
        assert self.server is not None
        return count_differences(
            pubsub_counts(self.server), wanted_channels, wanted_shards, wanted_patterns
        )

    async def wait_for_blocking(self, condition: Callable[[], bool], deadline: float) -> bool:
        """wait_for, for a condition that blocks (it queries the server) run in a thread."""
        with anyio.move_on_after(deadline):
            while not await self.blocking(condition):  # noqa: ASYNC110 - a server query
                await anyio.sleep(0.02)
            return True
        return False

    async def prepare(self) -> None:
        """Once every name is up, before anything is published."""

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
            await self.prepare()
            self.publisher.start()
            tg.start_soon(self.churn, mpx)
            tg.start_soon(self.make_promises, promises, tg)
            for number in range(1, self.args.rounds + 1):
                await anyio.sleep(self.rng.uniform(0.02, 0.1))
                self.number = number
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


Address = tuple[str, int]
#: Seconds the cluster publisher waits before it sends PUBLISH to another node.
SWITCH_PAUSE = 0.1


class ClusterPublisher(Publisher):
    """The publisher of the cluster mode: one socket per node.

    SPUBLISH goes to the master that owns the channel's slot, as the last CLUSTER SLOTS
    said; a MOVED reply updates the route (that message is not counted: sending it
    again would put it after later ones). PUBLISH goes to one node, the one that
    carries the multiplexer's channels (:attr:`channel_target`, kept up to date by the
    checker), so that a message needs the cluster bus only while that node is down.

    A master demoted by a failover still takes SPUBLISH for its old slots, as a
    replica of their new owner, and forwards it to the shard over the cluster bus: a
    message it took can reach the subscribers after one sent to the new owner later.
    So an SPUBLISH counts only if some subscriber got it straight from the node that
    took it (a count of 1 or more); a count of 0 makes the publisher ask for the slot
    owners again, and whenever a route changes it pauses before the next batch, long
    enough for what the old node took to come through.

    Each tick also writes one key (``SET``, to the master owning its slot, routed as
    SPUBLISH is), whose ``set`` event the multiplexer's node-wide subscription hears.
    """

    key_writes = True

    def __init__(self, cluster: RedisCluster, rate: int, seed: int) -> None:
        first = cluster.nodes[0]
        super().__init__(first.host, first.port, rate, seed)
        self.slots = {name: cluster.key_slot(name) for name in SHARD_CHANNELS}
        self.nodes: list[Address] = [(node.host, node.port) for node in cluster.nodes]
        self.owners: dict[int, Address] = {}
        #: (first slot, last slot, owner) of every range, from the last CLUSTER SLOTS
        self.ranges: list[tuple[int, int, Address]] = []
        self.channel_target: Address = self.address
        self.channel_sent_to = self.address
        self.rerouted = False
        self.socks: dict[Address, socket.socket] = {}
        self.redirected = 0
        self.refreshed_at = 0.0
        self.refresh()

    def ready(self) -> bool:
        return True

    @staticmethod
    def counts(command: bytes, reply: Any) -> bool:
        if command == b"SET":
            return bool(reply == b"OK")
        return isinstance(reply, int) and (command != b"SPUBLISH" or reply > 0)

    def set_nodes(self, nodes: Sequence[RedisServer]) -> None:
        """The nodes of the cluster, after one joined or left: asked for the topology."""
        self.nodes = [(node.host, node.port) for node in nodes]

    def _slot_owner(self, slot: int) -> Address | None:
        if slot in self.owners:
            return self.owners[slot]
        return next((owner for start, end, owner in self.ranges if start <= slot <= end), None)

    def forget_before(self, mark: int) -> None:
        """As the base class's, but the key writes: the keyspace check forgets those."""
        with self.lock:
            for channel, seqs in self.confirmed.items():
                if channel != KEY_PREFIX:
                    self.confirmed[channel] = [s for s in seqs if s >= mark]

    def forget_keys_before(self, mark: int) -> None:
        with self.lock:
            self.confirmed[KEY_PREFIX] = [s for s in self.confirmed[KEY_PREFIX] if s >= mark]

    def send(self, batch: list[tuple[bytes, bytes, bytes]]) -> list[Any]:
        replies: list[Any] = [None] * len(batch)
        groups: dict[Address, list[int]] = defaultdict(list)
        stale = False
        for i, (command, channel, _) in enumerate(batch):
            if command == b"SET":
                target = self._slot_owner(key_slot(channel))
            elif command == b"SPUBLISH":
                target = self.owners.get(self.slots[channel])
            else:
                target = self.channel_target
            if target is None:
                stale = True
            else:
                groups[target].append(i)
        if self.rerouted or self.channel_target != self.channel_sent_to:
            # What the last node took may still be on its way over the cluster bus,
            # and Redis orders messages per node only.
            time.sleep(SWITCH_PAUSE)
            self.channel_sent_to = self.channel_target
            self.rerouted = False
        for address, indexes in groups.items():
            got = self._send_to(address, [batch[i] for i in indexes])
            if got is None:
                stale = True
                if address == self.channel_target:  # down: any other node will do
                    nodes = self.nodes
                    at = nodes.index(address) if address in nodes else -1
                    self.channel_target = nodes[(at + 1) % len(nodes)]
                continue
            for i, reply in zip(indexes, got, strict=True):
                replies[i] = reply
                if isinstance(reply, hiredis.ReplyError):
                    stale |= not self._moved(str(reply))
                elif reply == 0 and batch[i][0] == b"SPUBLISH":
                    stale = True  # nobody here: the name, or this node, has moved
        if stale:
            self.refresh()
        return replies

    def _send_to(self, address: Address, batch: Sequence[tuple[bytes, ...]]) -> list[Any] | None:
        sock = self.socks.get(address)
        if sock is None:
            try:
                sock = self.socks[address] = socket.create_connection(address, timeout=0.5)
            except OSError:
                return None
        replies = self._send(sock, batch)
        if replies is None:
            self.socks.pop(address).close()
        return replies

    def _moved(self, error: str) -> bool:
        """Follow ``MOVED slot host:port``; False for any other error."""
        parts = error.split()
        if len(parts) != 3 or parts[0] != "MOVED":
            return False
        host, _, port = parts[2].rpartition(":")
        self._route(int(parts[1]), (host or "127.0.0.1", int(port)))
        self.redirected += 1
        return True

    def _route(self, slot: int, owner: Address) -> None:
        if self.owners.get(slot, owner) != owner:
            self.rerouted = True
        self.owners[slot] = owner

    def refresh(self) -> None:
        """The slot owners, from CLUSTER SLOTS on the first node that answers."""
        if time.monotonic() - self.refreshed_at < 0.05:
            return
        self.refreshed_at = time.monotonic()
        for address in self.nodes:
            try:
                with socket.create_connection(address, timeout=0.5) as sock:
                    replies = self._send(sock, [(b"CLUSTER", b"SLOTS")])
            except OSError:
                continue
            if not replies or not isinstance(replies[0], list) or not replies[0]:
                continue  # a node outside the cluster (one that left) serves no slot
            ranges = [
                (start, end, (master[0].decode(), int(master[1])))
                for start, end, master, *_ in replies[0]
            ]
            for start, end, owner in ranges:
                # The shard names' slots, and those a MOVED reply taught for keys.
                for slot in set(self.slots.values()) | set(self.owners):
                    if start <= slot <= end:
                        self._route(slot, owner)
            self.ranges = ranges
            return

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()


class ClusterChaos(Chaos):
    """The cluster mode: a ClusterMultiplexer against a RedisCluster, cluster faults.

    The subscriptions and checks are the single server's. What differs: a sharded
    subscription's names ride every master, so its ``on_disconnect`` does not say
    which of them were lost; the fault does (the names on the node that lost its
    connections, or the names whose slot moved), and those are the names that must be
    activated again. The server side is checked node by node: the channels and
    patterns on one node (the multiplexer's home) and nowhere else, each shard name on
    the master that owns its slot and nowhere else.
    """

    fault_kinds = CLUSTER_FAULTS

    def __init__(self, m: ModuleType, cluster: RedisCluster, args: argparse.Namespace) -> None:
        self.publisher: ClusterPublisher
        super().__init__(m, None, None, args, ClusterPublisher(cluster, args.rate, args.seed + 1))
        self.cluster = cluster
        self.home: RedisServer | None = None
        #: subscription -> on_disconnect calls the round's fault owes it
        self.expected: dict[int, int] = {}
        self.home_lost = False
        self.order: list[str] = []
        #: (subscription, name) -> publisher mark at its last activation, for every one
        self.activated_at: dict[tuple[int, bytes], int] = {}
        #: the node-wide subscription to KEYEVENT: how many times each key's event came
        self.key_seen: Counter[int] = Counter()
        self.key_from = 0  # the key writes not checked yet start at this mark
        self.key_told = 0  # its on_disconnect calls and re-activations since the fault
        self.key_started = False  # its first activations (one per master) are behind
        self.key_checked = 0  # events owed once (keys written after a recovery)
        self.key_during = 0  # keys written from a check to the next recovery
        self.key_lost = 0  # ... whose events were lost (told)
        self.removed_homes = 0

    def choose_fault(self) -> str:
        """At random, but every kind once in each run of len(CLUSTER_FAULTS) rounds."""
        if not self.order:
            self.order = self.rng.sample(self.fault_kinds, len(self.fault_kinds))
        return self.order.pop()

    def _activated(self, tracked: Tracked, name: bytes) -> None:
        super()._activated(tracked, name)
        self.activated_at[(tracked.ident, name)] = self.publisher.mark()

    def _replayed(self, ident: int, channel: bytes, seq: int) -> bool:
        """A channel or pattern message published before the name was last activated.

        Such names ride the home node; PUBLISH reaches it from whichever node took the
        message, over the cluster bus, and Redis orders messages per node only. When
        the home moves, a message published just before can arrive both from the old
        home (before its connection died) and from the new one (the bus was slower
        than the move), or arrive late. Only messages published after the activation
        are owed in order and once.
        """
        tracked = self.tracked.get(dict(self.followers).get(ident, ident))
        if tracked is None or tracked.kind == "shard":
            return False
        name = channel
        if tracked.kind == "pattern":
            name = next(p for p in tracked.names if channel.startswith(p[:-1]))
        activated = self.activated_at.get((tracked.ident, name))
        return activated is not None and seq < activated

    def build(self, mpx: Any) -> None:
        super().build(mpx)

        def on_message(channel: bytes, data: bytes) -> None:
            if channel != KEYEVENT or not data.startswith(KEY_PREFIX):
                self.violations.note("keyspace events of no key written", f"{channel!r} {data!r}")
                return
            self.key_seen[int(data[len(KEY_PREFIX) :])] += 1

        def on_disconnect(error: Exception) -> None:
            self.key_told += 1

        def on_activation(name: bytes) -> None:
            self.key_told += self.key_started

        self.keyspace = mpx.new_node_wide_channel_subscription(
            on_message, on_disconnect, on_activation
        )
        self.keyspace.add(KEYEVENT)

    def _disconnected(self, tracked: Tracked) -> None:
        if tracked.kind != "shard":  # it rides the home node alone: all its names are lost
            super()._disconnected(tracked)

    # ---- the cluster as it is (blocking)

    def shard_owners(self) -> dict[bytes, RedisServer]:
        ranges = self.cluster.slot_owners()
        slots = self.publisher.slots
        return {
            name: next(owner for start, end, owner in ranges if start <= slots[name] <= end)
            for name in SHARD_CHANNELS
        }

    def _homes(self, counts: dict[RedisServer, PubsubCounts]) -> list[RedisServer]:
        """The nodes holding patterns: the multiplexer's home, if there is exactly one."""
        return [node for node, (_, _, numpat) in counts.items() if numpat]

    def _set_home(self, home: RedisServer) -> None:
        self.home = home
        self.publisher.channel_target = (home.host, home.port)

    def _locate_home(self) -> bool:
        homes = self._homes({node: pubsub_counts(node) for node in self.cluster.reachable()})
        if len(homes) == 1:
            self._set_home(homes[0])
        return len(homes) == 1

    def _running(self) -> list[RedisServer]:
        """The nodes running, members of the cluster or removed from it."""
        return [node for node in self.cluster.nodes if node.running and not node.paused]

    def _node_wide_settled(self) -> bool:
        """Whether the keyspace subscription is held on every master that owns a slot,
        once, and on no other node (blocking)."""
        owners = {owner for _, _, owner in self.cluster.slot_owners()}
        self.node_wide_channels = len(owners)  # statistics() counts it once per master
        return all(
            int(node.command("PUBSUB", "NUMSUB", KEYEVENT)[1]) == (node in owners)
            for node in self._running()
        )

    async def prepare(self) -> None:
        if not await self.wait_for_blocking(self._locate_home, RECOVERY_DEADLINE):
            raise SystemExit("no single node holds the patterns")
        if not await self.wait_for_blocking(self._node_wide_settled, RECOVERY_DEADLINE):
            raise SystemExit("the node-wide subscription is not on every master")
        self.key_started = True

    async def check(self, mpx: Any, promises: Any, losses: int, number: int) -> None:
        """The checks of every mode, then the keyspace events': once the node-wide
        subscription is on every master, every key written is heard of once."""
        settled = await self.wait_for_blocking(self._node_wide_settled, RECOVERY_DEADLINE)
        self.violations.note(
            "node-wide subscription not on every master",
            f"round {number} ({self.last_fault})",
            int(not settled),
        )
        since = self.publisher.mark()
        await anyio.sleep(0.1)  # keys written after the recovery
        await super().check(mpx, promises, losses, number)
        await self._check_keyspace(since, number)

    async def _check_keyspace(self, since: int, number: int) -> None:
        """Keys written from ``since`` (the recovery) on: each one's event received
        once. Keys written before, since the last check: lost only if the loss was told
        (an ``on_disconnect`` or a re-activation since the fault), never twice."""
        end = self.publisher.mark()
        await self.wait_for(lambda: self.publisher.settled >= end, 5.0)
        owed = self.publisher.published_between(KEY_PREFIX, since, end)

        def missing() -> list[int]:
            return [s for s in owed if not self.key_seen.get(s)]

        await self.wait_for(lambda: not missing(), DELIVERY_DEADLINE)
        wrong = missing() + [s for s in owed if self.key_seen.get(s, 0) > 1]
        self.key_checked += len(owed)
        self.violations.note(
            "keyspace events after recovery not received exactly once",
            f"round {number} ({self.last_fault}): {len(wrong)} of {len(owed)}, e.g. {wrong[:3]}",
            len(wrong),
        )
        during = self.publisher.published_between(KEY_PREFIX, self.key_from, since)
        gone = [s for s in during if not self.key_seen.get(s)]
        twice = [s for s in during if self.key_seen.get(s, 0) > 1]
        self.key_during += len(during)
        self.key_lost += len(gone)
        self.violations.note(
            "keyspace events received twice",
            f"round {number} ({self.last_fault}): {len(twice)}, e.g. {twice[:3]}",
            len(twice),
        )
        self.violations.note(
            "keyspace events lost untold",
            f"round {number} ({self.last_fault}): {len(gone)} of {len(during)}",
            int(bool(gone) and not self.key_told),
        )
        self.key_from = end
        self.publisher.forget_keys_before(end)
        for seq in [s for s in self.key_seen if s < end]:
            del self.key_seen[seq]

    def _server_differences(
        self, wanted_channels: set[bytes], wanted_shards: set[bytes], wanted_patterns: int
    ) -> list[str]:
        # The nodes that left count too: the multiplexer must have left them.
        counts = {node: pubsub_counts(node) for node in self._running()}
        homes = self._homes(counts)
        if len(homes) != 1:
            return [f"patterns on {len(homes)} nodes"]
        self._set_home(homes[0])
        owners = self.shard_owners()
        wrong: list[str] = []
        for node, node_counts in counts.items():
            at_home = node is homes[0]
            wrong += count_differences(
                node_counts,
                wanted_channels if at_home else set(),
                {name for name in wanted_shards if owners[name] is node},
                wanted_patterns if at_home else 0,
                f"{node.port}:",
            )
        return wrong

    # ---- faults

    async def fault(self, kind: str, mpx: Any, tg: Any, number: int) -> None:
        self.faults[kind] += 1
        self.last_fault = kind
        self.key_told = 0
        owners = await self.blocking(self.shard_owners)
        masters = sorted(set(owners.values()), key=self.cluster.nodes.index)
        if kind == "node-added":
            await self._node_added()
            return
        if kind == "node-removed":
            await self._node_removed(number)
            return
        if kind in ("failover", "kill-master"):
            # A master added here has no replica; kill_master waits for the election
            # of one replica, which it must be if there are two.
            followers = {m: len(await self.blocking(self.cluster.replicas_of, m)) for m in masters}
            masters = [
                m for m in masters if followers[m] == 1 or (followers[m] and kind == "failover")
            ]
        if kind in ("migrate", ATOMIC_MIGRATE):
            slot, moving = self._pick_slot()
            source = owners[next(iter(moving))]
            others = [m for m in await self.blocking(self.cluster.masters) if m is not source]
            destination = self.rng.choice(sorted(others, key=self.cluster.nodes.index))
            self._expect(moving, None)
            self.log(f"  slot {slot} ({len(moving)} names): {source.port} -> {destination.port}")
            if kind == ATOMIC_MIGRATE:
                await self.blocking(self.cluster.migrate_slots_atomically, slot, slot, destination)
            else:
                await self.blocking(self._migrate_slot, slot, destination)
            return
        assert self.home is not None
        carriers = masters if kind in ("failover", "kill-master") else [*masters, self.home]
        node = self.rng.choice(sorted(set(carriers), key=self.cluster.nodes.index))
        moving = {name for name, owner in owners.items() if owner is node}
        self._expect(moving, node if kind in LOSSY_CLUSTER_FAULTS else None)
        self.log(f"  node {node.port} ({len(moving)} shard names), home {self.home.port}")
        if kind == "failover":
            await self.blocking(self.cluster.failover, node)
        elif kind == "kill-master":
            await self.blocking(self.cluster.kill_master, node)
            await self.blocking(self.cluster.restart_node, node)
        elif kind == "client-kill":
            await self.blocking(node.kill_clients, "pubsub")
        else:
            await self.blocking(
                node.command, "CONFIG", "SET", "client-output-buffer-limit", "pubsub 64kb 0 0"
            )
            if node is self.home:
                self.publisher.extra.append((b"PUBLISH", STABLE_CHANNELS[0], BIG_PAYLOAD))
            else:
                self.publisher.extra.append((b"SPUBLISH", min(moving), BIG_PAYLOAD))
        if kind in LOSSY_CLUSTER_FAULTS:
            owed = [t for t in self.stable() if self.expected.get(t.ident)]
            lost = await self.wait_for(lambda: any(t.disconnects for t in owed), 10.0)
            if not lost:
                self.violations.note("faults not detected", f"round {number}: {kind} of {node}")
        if kind == "output-buffer-limit":
            await self.blocking(
                node.command,
                "CONFIG",
                "SET",
                "client-output-buffer-limit",
                " ".join(DEFAULT_OUTPUT_LIMIT),
            )

    def _pick_slot(self) -> tuple[int, set[bytes]]:
        """A slot holding shard names, and those names. Half of the time the slot of
        the group: several names move at once."""
        picked = SHARD_GROUP[0] if self.rng.random() < 0.5 else self.rng.choice(SHARD_CHANNELS)
        slot = self.publisher.slots[picked]
        return slot, {n for n in SHARD_CHANNELS if self.publisher.slots[n] == slot}

    async def _node_added(self) -> None:
        """A new master joins (``CLUSTER MEET``), then a slot holding names moves to it."""
        node = await self.blocking(self.cluster.add_master)
        self.publisher.set_nodes(self.cluster.reachable())
        slot, moving = self._pick_slot()
        self._expect(moving, None)
        self.log(f"  node {node.port} added; slot {slot} ({len(moving)} names) moves to it")
        await self.blocking(self._migrate_slot, slot, node)

    def _removable(self) -> tuple[RedisServer | None, list[RedisServer], list[RedisServer]]:
        """What may leave the cluster (blocking): the home if it can (a replica, or a
        master added here, one without replicas, while there are more than
        MIN_MASTERS) unless more than MAX_EXTRA_MASTERS were added, else such an added
        master, else a replica: (home or None, added masters, replicas)."""
        masters = self.cluster.masters()

        def extra(node: RedisServer) -> bool:
            return (
                node in masters
                and len(masters) > MIN_MASTERS
                and not self.cluster.replicas_of(node)
            )

        replicas = self.cluster.replicas()
        # A replica whose master has another is taken first: none need replace it.
        spare = [r for r in replicas if len(self.cluster.replicas_of(self._master_of(r))) > 1]
        replicas = spare or replicas
        extras = [m for m in masters if extra(m)]
        home = self.home if self.home in replicas or self.home in extras else None
        if len(extras) > MAX_EXTRA_MASTERS and home not in extras:
            home = None  # an added master leaves instead: the cluster does not grow
        return home, extras, replicas

    def _migrate_slot(self, slot: int, destination: RedisServer) -> None:
        """The fixture's ``migrate_slot``, for a source that may give its last slot: Redis
        makes a master whose slots all went to one node that node's replica, at once, so
        the source may refuse the final ``SETSLOT NODE`` (blocking)."""
        migration = self.cluster.begin_migration(slot, destination)
        self.cluster.move_keys(migration)
        new_owner = self.cluster.node_id(destination)
        destination.command("CLUSTER", "SETSLOT", slot, "NODE", new_owner)
        for master in [migration.source, *self.cluster.masters()]:
            if master is destination:
                continue
            try:
                master.command("CLUSTER", "SETSLOT", slot, "NODE", new_owner)
            except hiredis.ReplyError as exc:
                if master is not migration.source or "only with masters" not in str(exc):
                    raise
        self.cluster.wait_stable()

    def _slots_of(self, node: RedisServer) -> list[int]:
        return [
            slot
            for start, end, owner in self.cluster.slot_owners()
            if owner is node
            for slot in range(start, end + 1)
        ]

    def _master_of(self, replica: RedisServer) -> RedisServer:
        return next(m for m in self.cluster.masters() if replica in self.cluster.replicas_of(m))

    def _add_replica(self, master: RedisServer) -> None:
        """A new node joins as a replica of ``master``, which lost its own (blocking)."""
        node = self.cluster.add_master()
        node.command("CLUSTER", "REPLICATE", self.cluster.node_id(master))
        deadline = time.monotonic() + RECOVERY_DEADLINE
        while self.cluster.role(node) != "replica":
            if time.monotonic() > deadline:
                raise RedisServerError(f"{node!r} did not become a replica of {master!r}")
            time.sleep(0.02)
        self.cluster.wait_stable()
        self.publisher.set_nodes(self.cluster.reachable())

    async def _node_removed(self, number: int) -> None:
        """A node without slots leaves (``CLUSTER FORGET`` on every other node, ``CLUSTER
        RESET HARD`` on it): the home when it can, its slots moved away first if it is
        a master added here; else such a master; else a replica, and a new node
        replaces it, so that every master of the original three keeps one."""
        home, extras, replicas = await self.blocking(self._removable)
        node = home or (self.rng.choice(extras) if extras else self.rng.choice(replicas))
        orphan = None
        if node in replicas:
            master = await self.blocking(self._master_of, node)
            if await self.blocking(self.cluster.replicas_of, master) == [node]:
                orphan = master
        slots = await self.blocking(self._slots_of, node)
        moving = {n for n in SHARD_CHANNELS if self.publisher.slots[n] in slots}
        self._expect(moving, None)
        self.log(f"  node {node.port} leaves ({len(slots)} slots), home {self.home}")
        if slots:
            masters = [m for m in await self.blocking(self.cluster.masters) if m is not node]
            for slot in slots:
                await self.blocking(self._migrate_slot, slot, self.rng.choice(masters))
            # Before it leaves, its names have moved with their slots.
            await self.wait_for(lambda: all(t.active >= t.names for t in self.stable()), 10.0)
        if node is self.home:
            self.removed_homes += 1
            self.home_lost = True
            for t in self.tracked.values():
                if t.kind != "shard":
                    self._deactivate(t, set(t.names))
                    self.expected[t.ident] = int(bool(t.names))
            # PUBLISH goes on through a member: a node that left relays nothing.
            other = next(n for n in self.cluster.reachable() if n is not node)
            self.publisher.channel_target = (other.host, other.port)
        await self.blocking(self.cluster.remove_node, node)
        self.publisher.set_nodes(self.cluster.reachable())
        if node is self.home:
            owed = [t for t in self.stable() if self.expected.get(t.ident)]
            if not await self.wait_for(lambda: any(t.disconnects for t in owed), 10.0):
                self.violations.note("faults not detected", f"round {number}: home {node} left")
        if orphan is not None:
            await self.blocking(self._add_replica, orphan)

    def _expect(self, moving: set[bytes], lost: RedisServer | None) -> None:
        """What the coming fault does: the shard names in ``moving`` must be activated
        again, and so must all names on the home if the home is the node ``lost``
        (whose connections die). A subscription gets one ``on_disconnect`` if it has
        names on that node; none when names only move (migration, failover)."""
        self.home_lost = lost is not None and lost is self.home
        self.expected.clear()
        for t in self.tracked.values():
            if t.kind == "shard":
                names = t.names & moving
            else:
                names = set(t.names) if self.home_lost else set()
            self._deactivate(t, names)
            self.expected[t.ident] = int(bool(names) and lost is not None)

    def _check_disconnects(self, losses: int, number: int) -> None:
        wrong = [
            f"sub {t.ident} ({t.kind}): {t.disconnects}, not {self.expected.get(t.ident, 0)}"
            for t in self.stable()
            if t.disconnects != self.expected.get(t.ident, 0)
        ]
        wrong += [
            f"churn sub {t.ident}: {t.disconnects}"
            for t in self.churners()
            if t.disconnects > int(self.home_lost)
        ]
        self.violations.note(
            "on_disconnect not exactly one per subscription per loss",
            f"round {number} ({self.last_fault}): {wrong[:4]}",
            int(bool(wrong)),
        )


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _median_p99(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    ordered = sorted(values)
    return statistics.median(ordered), ordered[
        min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    ]


def drops_at_output_buffer_limit(server: RedisServer) -> bool:
    """Whether ``server`` does what the ``output-buffer-limit`` fault needs: drop a
    subscriber once one large message (``BIG_PAYLOAD``) takes it past its pubsub
    ``client-output-buffer-limit`` (64 kB here), although the subscriber's socket could
    take the message at once. Redis 7.0 (and 6.2) does: it counts a reply against the
    limit as it queues it. Valkey 9.1 does not: the message goes out to the socket, a
    subscriber that keeps reading is not dropped whatever the message's size (16 MB
    tried), and one that stops reading is dropped only once its socket is full (some
    12 MB later on loopback). See docs/chaos.md. The probe: one subscriber on a socket
    of its own, one message."""
    channel = b"chaos:probe:output-buffer-limit"
    reader = hiredis.Reader()
    with server.connect(timeout=5.0) as sock:
        sock.sendall(encode_command("SUBSCRIBE", channel))
        while reader.gets() is False:
            data = sock.recv(65536)
            if not data:
                raise RedisServerError(f"{server!r} closed the probe's connection")
            reader.feed(data)
        server.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 64kb 0 0")
        try:
            server.command("PUBLISH", channel, BIG_PAYLOAD)
            while True:
                try:
                    data = sock.recv(1 << 20)
                except ConnectionResetError:
                    return True
                if not data:
                    return True
                reader.feed(data)
                if reader.gets() is not False:  # the message itself
                    return False
        finally:
            server.command(
                "CONFIG", "SET", "client-output-buffer-limit", " ".join(DEFAULT_OUTPUT_LIMIT)
            )


def _possible_faults(args: argparse.Namespace, server: RedisServer) -> str | None:
    """Leave out of ``args.faults`` the kinds that ``server`` makes impossible, and say
    so on stdout; an error message instead if ``--faults`` asked for one by name."""
    kinds = list(args.faults or (CLUSTER_FAULTS if args.cluster else FAULTS))
    if "output-buffer-limit" in kinds and not drops_at_output_buffer_limit(server):
        why = (
            f"{args.server_label} does not drop a subscriber that reads at its "
            "client-output-buffer-limit (one large message)"
        )
        if args.faults_named:
            return f"--faults output-buffer-limit: {why}"
        args.faults = [kind for kind in kinds if kind != "output-buffer-limit"]
        print(f"faults: output-buffer-limit left out: {why}", flush=True)
    return None


async def _main(m: ModuleType, args: argparse.Namespace) -> int:
    if args.cluster:
        with RedisCluster(binary=args.server, extra_args=NOTIFY_ARGS) as cluster:
            if error := _possible_faults(args, cluster.masters()[0]):
                print(f"chaos.py: error: {error}", file=sys.stderr)
                return 2
            return await _exercise(
                ClusterChaos(m, cluster, args),
                m.ClusterMultiplexer(cluster.startup_urls, **CLUSTER_TIMERS),
                lambda: [node for node in cluster.nodes if node.running],
                lambda: True,
                args,
            )
    with RedisServer(args.server) as server, FaultProxy(server.host, server.port) as proxy:
        if error := _possible_faults(args, server):
            print(f"chaos.py: error: {error}", file=sys.stderr)
            return 2
        return await _exercise(
            Chaos(m, server, proxy, args),
            m.Multiplexer(proxy.url, **TIMERS),
            lambda: [server],
            lambda: proxy.connections == 0,
            args,
        )


async def _exercise(
    chaos: Chaos,
    multiplexer: Any,
    servers: Callable[[], list[RedisServer]],
    disconnected: Callable[[], bool],
    args: argparse.Namespace,
) -> int:
    """Run the rounds, close the multiplexer, check that it left nothing behind, report."""
    tasks_before = len(anyio.get_running_tasks())
    fds_before = _open_fds()
    started = time.monotonic()
    async with multiplexer as mpx:
        await chaos.run(mpx)
        final = mpx.statistics()
    chaos.publisher.join(5.0)
    await chaos.wait_for(disconnected, 5.0)
    gone = await chaos.wait_for(lambda: _open_fds() <= fds_before, 5.0)
    tasks_leaked = len(anyio.get_running_tasks()) - tasks_before
    fds_leaked = 0 if gone else _open_fds() - fds_before
    chaos.violations.note("tasks leaked after close", f"{tasks_leaked}", tasks_leaked)
    chaos.violations.note("file descriptors leaked after close", f"{fds_leaked}", fds_leaked)

    def left() -> int:
        return sum(pubsub_total(pubsub_counts(server)) for server in servers())

    # The servers count a connection's names until they have processed its close.
    await chaos.wait_for_blocking(lambda: left() == 0, 5.0)
    remaining = await chaos.blocking(left)
    chaos.violations.note("server-side subscriptions left after close", f"{remaining}", remaining)
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
    kinds = ", ".join(f"{k} {chaos.faults[k]}" for k in chaos.fault_kinds)
    mode = ", cluster" if args.cluster else ""
    print(
        f"driver: {args.driver}{mode}, seed {args.seed}, {elapsed:.0f} s, "
        f"publish rate {args.rate}/s"
    )
    print(f"faults injected: {faults} ({kinds})")
    print(f"recoveries: {chaos.recovered}")
    print(
        f"fault to every name re-activated: median {median * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )
    for kind in chaos.fault_kinds:
        kind_median, kind_p99 = _median_p99(chaos.recovery[kind])
        print(f"  {kind}: median {kind_median * 1000:.0f} ms, p99 {kind_p99 * 1000:.0f} ms")
    print(f"subscriptions lost: {v['subscriptions lost']}")
    undelivered = v["messages published after re-activation not delivered"]
    print(
        "messages published after re-activation not delivered: "
        f"{undelivered} (of {chaos.checked_messages} checked)"
    )
    print(f"deliveries after a remove: {v['deliveries after a remove']}")
    replayed = (
        f" (published before a re-activation, replayed over the cluster bus: {chaos.replayed})"
        if args.cluster
        else ""
    )
    print(f"messages out of order or duplicated: {v['out of order or duplicated']}{replayed}")
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
    if isinstance(chaos, ClusterChaos):
        print(f"publishes redirected by MOVED: {chaos.publisher.redirected}")
        print(
            "node-wide keyspace events after recovery not received exactly once: "
            f"{v['keyspace events after recovery not received exactly once']} "
            f"(of {chaos.key_checked} checked)"
        )
        print(
            f"keyspace events of keys written during a fault: lost {chaos.key_lost} "
            f"of {chaos.key_during}, lost untold {v['keyspace events lost untold']}, "
            f"received twice {v['keyspace events received twice']}"
        )
        print(
            f"nodes that left the cluster: {len(chaos.cluster.removed)} "
            f"({chaos.removed_homes} of them the home); at the end "
            f"{len(chaos.cluster.masters())} masters, {len(chaos.cluster.replicas())} replicas"
        )
    total = sum(v.values())
    print(f"chaos: {faults} faults, {total} violations")
    return 1 if total else 0


def _server_binary(parser: argparse.ArgumentParser, given: str | None) -> str:
    """The server binary's path: ``--server``'s, else the one the tests would use."""
    if given is not None:
        found = shutil.which(given)
        if found is None:
            parser.error(f"--server: {given!r} is not an executable file")
        return found
    try:
        found = find_redis_server()
    except RedisServerError as exc:
        parser.error(str(exc))
    if found is None:
        parser.error("no redis-server binary: pass --server or set $REDISMPX_REDIS_SERVER")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100, help="faults to inject")
    parser.add_argument("--driver", choices=sorted(DRIVERS), default="anyio-asyncio")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rate", type=int, default=2000, help="messages published per second")
    parser.add_argument("--verbose", action="store_true", help="each round's fault, on stderr")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="a ClusterMultiplexer against a Redis Cluster (3 masters, 3 replicas), cluster faults",
    )
    parser.add_argument(
        "--faults",
        type=lambda text: text.split(","),
        default=None,
        help="only these faults, comma-separated (default: every kind of the mode)",
    )
    parser.add_argument(
        "--server",
        metavar="PATH",
        default=None,
        help="the server binary to run the chaos against, redis-server or valkey-server "
        "(default: the tests' choice, $REDISMPX_REDIS_SERVER, else redis-server on PATH)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.server = _server_binary(parser, args.server)
    build = server_build(args.server)
    if not build.has("sharded" if not args.cluster else "cluster-shards"):
        parser.error(f"--server: {build.label} lacks what the chaos needs (Redis 7 or Valkey)")
    args.faults_named = args.faults is not None
    atomic = build.has("atomic-slot-migration")
    if args.faults is not None and ATOMIC_MIGRATE in args.faults and not atomic:
        parser.error(f"--faults {ATOMIC_MIGRATE}: {build.label} has no CLUSTER MIGRATESLOTS")
    if args.cluster and args.faults is None and atomic:
        args.faults = [*CLUSTER_FAULTS, ATOMIC_MIGRATE]
    kinds = (*CLUSTER_FAULTS, ATOMIC_MIGRATE) if args.cluster else FAULTS
    if args.faults is not None and not set(args.faults) <= set(kinds):
        parser.error(f"--faults: choose among {', '.join(kinds)}")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    args.server_label = build.label
    print(f"server: {build.label} ({args.server})", flush=True)
    package, backend = DRIVERS[args.driver]
    module = importlib.import_module(package)
    run: Callable[[], Awaitable[int]] = lambda: _main(module, args)  # noqa: E731
    return anyio.run(run, backend=backend)


if __name__ == "__main__":
    sys.exit(main())
