"""Valkey 9's atomic slot migration (``CLUSTER MIGRATESLOTS``) under sharded subscriptions.

An atomic migration is driven by the source alone: it snapshots the slot's keys in a
child process, streams the writes that follow, pauses its clients for a moment and lets
the destination take the slot over in one step. Until that step the source serves the
slot (the destination answers MOVED to the source, ASKING or not: there is no ASK
phase); at that step the source and its replicas unsubscribe their subscribers of the
slot's shard channels with a server-sent ``sunsubscribe`` each, and the source answers
MOVED from then on. ``test_what_a_shard_subscriber_sees`` checks this on raw sockets;
the other test checks that a ``ClusterMultiplexer`` follows it with nothing lost of
what the server accepted for it, on every driver and both protocols.

Every test here runs on the shared cluster, and puts the slot back (atomically) and the
server setting it changed back as they were. A migration of an empty slot takes a few
milliseconds; to publish *during* one, the tests fill the slot with keys and slow the
source's snapshot down with ``rdb-key-save-delay`` (microseconds per key, a setting
the servers' own test suites use).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import hiredis
import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import CLUSTER_FAST, Log, names_on
from redis_cluster import ATOMIC_MIGRATION_ENDS, AtomicMigration, RedisCluster
from redis_servers import RedisServer, encode_command

pytestmark = pytest.mark.server_feature("atomic-slot-migration")

FAST = CLUSTER_FAST
#: Keys put in the migrated slot, and the source's snapshot delay per key (µs): the
#: snapshot then lasts at least 150 * 5 ms = 0.75 s, the window to publish "during".
SLOT_KEYS = 150
KEY_SAVE_DELAY_US = 5000
#: The states of the source's export job (Valkey 9.1) while it serves the slot with
#: nothing paused: connecting to the destination, taking its snapshot, streaming the
#: writes since. Then come the hand-over's (``waiting-to-pause``, ``failover-paused``,
#: ``failover-granted``: the source pauses writes, a publish met there may end up
#: redirected) and the end (``success``).
SERVING_STATES = frozenset(
    {
        "connecting",
        "sending-auth-command",
        "reading-auth-response",
        "sending-establish-command",
        "reading-establish-response",
        "waiting-to-snapshot",
        "snapshotting",
        "replicating",
    }
)
_READ_TIMEOUT = 5.0



@dataclass(frozen=True)
class SlowSlot:
    """A slot of the shared cluster made slow to migrate, put back as it was after."""

    source: RedisServer
    slot: int
    keys: list[str]


@pytest.fixture
def slow_slot_factory(redis_cluster: RedisCluster) -> Iterator[Callable[[str], SlowSlot]]:
    """``make(name) -> SlowSlot``: ``SLOT_KEYS`` keys in ``name``'s slot and the
    snapshot delay on its owner. At teardown the delay is reset, any migration job
    left running ends, the slot goes back to its owner (atomically) and the keys go."""
    cluster = redis_cluster
    made: list[SlowSlot] = []

    def make(name: str) -> SlowSlot:
        slot = cluster.key_slot(name)
        keys = [f"{{{name}}}:key:{i}" for i in range(SLOT_KEYS)]
        slow = SlowSlot(cluster.owner_of_slot(slot), slot, keys)
        made.append(slow)
        cluster.command_for(name, "MSET", *[part for key in keys for part in (key, "v")])
        slow.source.command("CONFIG", "SET", "rdb-key-save-delay", KEY_SAVE_DELAY_US)
        return slow

    yield make
    for slow in made:
        slow.source.command("CONFIG", "SET", "rdb-key-save-delay", 0)
        cluster.settle_atomic_migrations()
        if cluster.owner_of_slot(slow.slot) is not slow.source:
            cluster.migrate_slots_atomically(slow.slot, slow.slot, slow.source)
        cluster.command_for(slow.keys[0], "DEL", *slow.keys)
        assert cluster.owner_of_slot(slow.slot) is slow.source


class RawClient:
    """One blocking connection, read frame by frame (RESP3 pushes are hiredis'
    ``PushNotification``, a list)."""

    def __init__(self, server: RedisServer, *, resp3: bool = False) -> None:
        self.sock = server.connect(timeout=_READ_TIMEOUT)
        self.reader = hiredis.Reader()
        if resp3:
            assert isinstance(self.call("HELLO", 3), dict)

    def read(self) -> Any:
        deadline = time.monotonic() + _READ_TIMEOUT
        while (frame := self.reader.gets()) is False:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.reader.feed(data)
        return frame

    def call(self, *args: str | bytes | int) -> Any:
        self.sock.sendall(encode_command(*args))
        return self.read()

    def close(self) -> None:
        self.sock.close()


def _moved(reply: Any) -> tuple[int, int]:
    """(slot, port) of a MOVED error reply."""
    assert isinstance(reply, hiredis.ReplyError), reply
    kind, slot, address = str(reply).split()
    assert kind == "MOVED", reply
    return int(slot), int(address.rpartition(":")[2])


def test_what_a_shard_subscriber_sees(
    redis_cluster: RedisCluster, slow_slot_factory: Callable[[str], SlowSlot]
) -> None:
    """What the servers do to subscribers while a slot migrates atomically, over raw
    sockets: the source serves the slot's shard channels until the hand-over and the
    destination redirects to it (even after ASKING); then each subscriber of the
    slot's channels, on the source (RESP2 and RESP3) and on its replica, gets one
    ``sunsubscribe``, after every message the source accepted, and the source
    redirects to the destination. Other slots' shard channels and plain channels on the
    same connection are not touched."""
    cluster = redis_cluster
    source, destination = cluster.masters()[0], cluster.masters()[1]
    channel, keeper = names_on(cluster, source, 2, "asm-raw")
    slow = slow_slot_factory(channel)
    encoded = channel.encode()
    resp2, resp3 = RawClient(source), RawClient(source, resp3=True)
    on_replica = RawClient(cluster.replica_of(source))
    subscribers = [resp2, resp3, on_replica]
    clients = list(subscribers)  # to close
    try:
        assert resp2.call("SSUBSCRIBE", channel) == [b"ssubscribe", encoded, 1]
        assert resp2.call("SSUBSCRIBE", keeper) == [b"ssubscribe", keeper.encode(), 2]
        # (Counts are per kind: shard channels, channels.)
        assert resp2.call("SUBSCRIBE", channel) == [b"subscribe", encoded, 1]
        assert resp3.call("SSUBSCRIBE", channel) == [b"ssubscribe", encoded, 1]
        assert on_replica.call("SSUBSCRIBE", channel) == [b"ssubscribe", encoded, 1]

        migration = cluster.begin_atomic_migration(slow.slot, slow.slot, destination)
        during = 0
        while (state := cluster.atomic_migration_state(migration)) not in ATOMIC_MIGRATION_ENDS:
            if state not in SERVING_STATES:
                continue  # the hand-over: a publish now may go either way
            data = b"during %d" % during
            received = cluster.spublish(channel, data)
            if cluster.atomic_migration_state(migration) not in SERVING_STATES:
                break  # this one may have met the hand-over: its count tells nothing
            # Served by the source: its two subscribers there got it.
            assert received == 2
            for client in subscribers:
                assert client.read() == [b"smessage", encoded, data]
            at_destination = destination.command("SPUBLISH", channel, "x", check=False)
            asked: Any = None
            if during == 0:  # no ASK phase: the destination refuses even after ASKING
                asking = RawClient(destination)
                clients.append(asking)
                assert asking.call("ASKING") == b"OK"
                asked = asking.call("SSUBSCRIBE", channel)
            during += 1
            if cluster.atomic_migration_state(migration) not in SERVING_STATES:
                break  # the hand-over came meanwhile: the destination's answers tell nothing
            assert _moved(at_destination) == (slow.slot, source.port)
            if asked is not None:
                assert _moved(asked) == (slow.slot, source.port)
        assert during >= 3, f"only {during} messages published during the migration"
        cluster.finish_atomic_migration(migration)

        assert cluster.owner_of_slot(slow.slot) is destination
        # Whatever the source accepted came before its unsubscribe: read the frames up
        # to it; each is a message of the channel (a publish that met the hand-over).
        for client in subscribers:
            frame = client.read()
            while frame[0] == b"smessage":
                assert frame[1] == encoded
                frame = client.read()
            assert frame[:2] == [b"sunsubscribe", encoded]
            assert frame[2] == (1 if client is resp2 else 0)  # resp2 keeps the keeper
            # An array in RESP2, a push in RESP3.
            assert isinstance(frame, hiredis.PushNotification) == (client is resp3)
        assert _moved(source.command("SPUBLISH", channel, "x", check=False)) == (
            slow.slot,
            destination.port,
        )
        late, on_destination = RawClient(source), RawClient(destination)
        clients += [late, on_destination]
        assert _moved(late.call("SSUBSCRIBE", channel)) == (slow.slot, destination.port)
        assert on_destination.call("SSUBSCRIBE", channel) == [b"ssubscribe", encoded, 1]
        assert cluster.spublish(channel, "after") == 1
        assert on_destination.read() == [b"smessage", encoded, b"after"]
        # The other slot's shard channel and the plain channel stay on the source.
        assert cluster.spublish(keeper, "kept") == 1
        assert resp2.read() == [b"smessage", keeper.encode(), b"kept"]
        assert source.command("PUBLISH", channel, "plain") == 1
        assert resp2.read() == [b"message", encoded, b"plain"]
    finally:
        for client in clients:
            client.close()


@dataclass
class Published:
    """One SPUBLISH of the multiplexer: its payload, Redis' count of receivers, and
    when it was sent and answered (``anyio.current_time()``)."""

    data: bytes
    receivers: int
    sent: float
    answered: float


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_sharded_subscription_follows_an_atomic_migration(
    driver: Driver,
    redis_cluster: RedisCluster,
    slow_slot_factory: Callable[[str], SlowSlot],
    protocol: int,
) -> None:
    """A sharded subscription's slot migrates atomically while messages flow (SPUBLISH
    through the multiplexer) to it and, for comparison, to a channel subscription of
    the same name on the same node. Every SPUBLISH the server counted a receiver for
    (before the migration, during it, after it) arrives exactly once and in order; the
    name is activated again on the new owner, with no ``on_disconnect``, and is
    subscribed there alone; the channel subscription notices nothing."""
    cluster = redis_cluster
    source, destination = cluster.masters()[0], cluster.masters()[1]
    assert cluster.startup_urls[0] == source.url  # the home: the channel rides the source
    moving, staying = names_on(cluster, source, 2, "asm")
    slow = slow_slot_factory(moving)
    encoded = moving.encode()

    async def body() -> None:
        shard_log, channel_log = Log(), Log()
        options = dict(FAST, protocol=protocol)
        async with driver.module.ClusterMultiplexer(cluster.startup_urls, **options) as mpx:
            shards = mpx.new_sharded_subscription(*shard_log.callbacks())
            shards.add(moving, staying)
            channels = mpx.new_channel_subscription(*channel_log.callbacks())
            channels.add(moving)
            await wait_until(lambda: len(shard_log.activations) == 2)
            await wait_until(lambda: len(channel_log.activations) == 1)
            sharded: list[Published] = []
            plain: list[bytes] = []
            stop = anyio.Event()

            async def publish_all_the_time() -> None:
                sequence = 0
                while not stop.is_set():
                    sequence += 1
                    data = b"%d" % sequence
                    sent = anyio.current_time()
                    receivers = await mpx.spublish(moving, data)
                    sharded.append(Published(data, receivers, sent, anyio.current_time()))
                    await mpx.publish(moving, data)  # the channel's: no slot, no move
                    plain.append(data)
                    await anyio.sleep(0.002)

            # The start of the last query that found the source still serving the slot:
            # a publish answered before it was answered by the source, unpaused.
            serving_at = -1.0

            async def watch(migration: AtomicMigration) -> None:
                nonlocal serving_at
                while True:
                    asked = anyio.current_time()
                    state = await anyio.to_thread.run_sync(
                        cluster.atomic_migration_state, migration
                    )
                    if state in ATOMIC_MIGRATION_ENDS:
                        return
                    if state in SERVING_STATES:
                        serving_at = asked
                    await anyio.sleep(0.005)

            async with anyio.create_task_group() as group:
                group.start_soon(publish_all_the_time)
                await wait_until(lambda: len(sharded) >= 20)
                begun = anyio.current_time()
                migration = await anyio.to_thread.run_sync(
                    cluster.begin_atomic_migration, slow.slot, slow.slot, destination
                )
                started = anyio.current_time()
                await watch(migration)
                await anyio.to_thread.run_sync(partial(cluster.finish_atomic_migration, migration))
                await wait_until(lambda: shard_log.activations.count(encoded) == 2, 10)
                activated = anyio.current_time()
                await wait_until(lambda: sum(p.sent > activated for p in sharded) >= 20)
                stop.set()

            counted = [p.data for p in sharded if p.receivers]
            await wait_until(lambda: set(counted) <= {d for c, d in shard_log.messages}, 5)
            await wait_until(lambda: set(plain) <= {d for c, d in channel_log.messages}, 5)
            received = [d for c, d in shard_log.messages if c == encoded]
            assert len(received) == len(set(received)), "a message arrived twice"
            assert received == sorted(received, key=int), "out of order"
            assert set(received) <= {p.data for p in sharded}
            # Before the migration, during it (until the hand-over) and after the re-activation the
            # server counts the subscriber (and everything it counted arrived, above).
            before = [p for p in sharded if p.answered < begun]
            during = [p for p in sharded if p.sent > started and p.answered < serving_at]
            after = [p for p in sharded if p.sent > activated]
            assert len(before) >= 20
            assert len(during) >= 5, f"only {len(during)} publishes during the migration"
            assert len(after) >= 20
            for p in before + during + after:
                assert p.receivers == 1, p
            # In between, the hand-over: a publish the destination took before the name
            # was subscribed there counts no receiver and is lost, which the second
            # activation tells of. A move, not a loss: no on_disconnect.
            assert shard_log.disconnects == []
            assert sorted(shard_log.activations[:2]) == sorted([encoded, staying.encode()])
            assert shard_log.activations[2:] == [encoded]
            # The channel of the same name never noticed: one activation, everything.
            assert channel_log.activations == [encoded]
            assert channel_log.disconnects == []
            assert [d for c, d in channel_log.messages] == plain
            # The name lives on the new owner alone; the other stayed where it was.
            assert cluster.owner_of(moving) is destination
            for node in cluster.nodes:
                expected = 1 if node is destination else 0
                assert node.command("PUBSUB", "SHARDNUMSUB", moving)[1] == expected, node
            assert source.command("PUBSUB", "SHARDNUMSUB", staying)[1] == 1
            assert await mpx.spublish(staying, b"untouched") == 1
            await wait_until(lambda: (staying.encode(), b"untouched") in shard_log.messages)

    driver.run(body)


def test_a_cancelled_atomic_migration_changes_nothing(
    driver: Driver, redis_cluster: RedisCluster, slow_slot_factory: Callable[[str], SlowSlot]
) -> None:
    """A migration cancelled before its hand-over leaves the slot where it was: the
    source never unsubscribes, so the subscription is told nothing (no second
    activation, no ``on_disconnect``) and every message still arrives."""
    cluster = redis_cluster
    source, destination = cluster.masters()[0], cluster.masters()[1]
    [name] = names_on(cluster, source, 1, "asm-cancelled")
    slow = slow_slot_factory(name)
    encoded = name.encode()

    async def body() -> None:
        log = Log()
        async with driver.module.ClusterMultiplexer(cluster.startup_urls, **FAST) as mpx:
            sub = mpx.new_sharded_subscription(*log.callbacks())
            sub.add(name)
            await wait_until(lambda: log.activations == [encoded])
            migration = await anyio.to_thread.run_sync(
                cluster.begin_atomic_migration, slow.slot, slow.slot, destination
            )
            sent = []
            while (
                await anyio.to_thread.run_sync(cluster.atomic_migration_state, migration)
                in SERVING_STATES
            ):
                data = b"%d" % len(sent)
                assert await mpx.spublish(name, data) == 1
                sent.append(data)
                if len(sent) == 5:
                    ended = await anyio.to_thread.run_sync(
                        cluster.cancel_atomic_migration, migration
                    )
                    assert ended == "cancelled"
            assert len(sent) == 5, "the hand-over came before the cancel"
            assert cluster.owner_of(name) is source
            for _ in range(5):
                data = b"%d" % len(sent)
                assert await mpx.spublish(name, data) == 1
                sent.append(data)
            await wait_until(lambda: len(log.messages) == len(sent))
            assert log.messages == [(encoded, data) for data in sent]
            assert log.activations == [encoded]
            assert log.disconnects == []
            assert source.command("PUBSUB", "SHARDNUMSUB", name)[1] == 1
            assert destination.command("PUBSUB", "SHARDNUMSUB", name)[1] == 0

    driver.run(body)
