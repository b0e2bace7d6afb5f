"""Checks of the Redis Cluster fixture (tests/redis_cluster.py), and of the sharded
Pub/Sub behaviour of Redis that the library relies on, over raw sockets.

The session cluster serves the tests that leave it as they found it; one factory
cluster takes all the faults (manual failover, a killed master, its restart).
"""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest

from redis_cluster import CLUSTER_SLOTS, RedisCluster, RedisClusterError, RedisClusterFactory
from redis_servers import RedisServer, encode_command

pytestmark = pytest.mark.server_feature("cluster-shards")

_READ_TIMEOUT = 5.0


class RawClient:
    """One blocking connection read frame by frame with ``hiredis.Reader`` (RESP3
    pushes come back as ``hiredis.PushNotification``, a list subclass)."""

    def __init__(self, server: RedisServer, *, resp3: bool = False, readonly: bool = False):
        self.server = server
        self.sock = server.connect(timeout=_READ_TIMEOUT)
        self.reader = hiredis.Reader()
        if resp3:
            hello = self.call("HELLO", 3)
            assert isinstance(hello, dict), hello
        if readonly:
            assert self.call("READONLY") == b"OK"

    def send(self, *args: str | bytes | int) -> None:
        self.sock.sendall(encode_command(*args))

    def read(self, timeout: float = _READ_TIMEOUT) -> Any:
        """The next frame; TimeoutError if none arrives in time, ConnectionError on EOF."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.reader.gets()
            if frame is not False:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame from {self.server!r} in {timeout}s")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"{self.server!r} closed the connection")
            self.reader.feed(data)

    def call(self, *args: str | bytes | int) -> Any:
        self.send(*args)
        return self.read()

    def closed_by_server(self) -> bool:
        """True once the server has closed the connection (EOF or reset)."""
        try:
            frame = self.read()
        except (ConnectionError, OSError) as exc:
            return not isinstance(exc, TimeoutError)
        raise AssertionError(f"expected the connection to be closed, got {frame!r}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    """Collects RawClients to close at teardown: ``clients.append(RawClient(...))``."""
    made: list[RawClient] = []
    yield made
    for client in made:
        client.close()


def _channel_on(cluster: RedisCluster, master: RedisServer, prefix: str) -> tuple[str, int]:
    """A channel name (and its slot) served by ``master``."""
    for i in range(10_000):
        name = f"{prefix}-{i}"
        slot = cluster.key_slot(name)
        if cluster.owner_of_slot(slot) is master:
            return name, slot
    raise AssertionError(f"no channel of {master!r} found")


def _moved(reply: Any) -> tuple[int, int]:
    """(slot, port) of a ``-MOVED slot 127.0.0.1:port`` error reply."""
    assert isinstance(reply, hiredis.ReplyError), reply
    match = re.fullmatch(r"MOVED (\d+) 127\.0\.0\.1:(\d+)", str(reply))
    assert match is not None, str(reply)
    return int(match[1]), int(match[2])


def _wait_caught_up(node: RedisServer, its_master: RedisServer, timeout: float = 10.0) -> None:
    """Until ``node`` has processed its master's whole replication stream."""
    deadline = time.monotonic() + timeout
    while True:
        sent = its_master.info("replication")["master_repl_offset"]
        if node.info("replication")["master_repl_offset"] == sent:
            return
        assert time.monotonic() < deadline, "the replica did not catch up"
        time.sleep(0.005)


def _is_pong(frame: Any) -> bool:
    # RESP2 subscribed clients get [b"pong", b""], the others (and RESP3) +PONG.
    return frame in (b"PONG", [b"pong", b""])


# --------------------------------------------------------------------------- formation


def test_cluster_is_formed(redis_cluster: RedisCluster) -> None:
    cluster = redis_cluster
    masters, replicas = cluster.masters(), cluster.replicas()
    assert len(masters) == 3
    assert len(replicas) == 3
    assert len(cluster.nodes) == 6
    assert sorted(map(id, masters + replicas)) == sorted(map(id, cluster.nodes))
    assert cluster.startup_urls == [f"redis://127.0.0.1:{n.port}" for n in cluster.nodes]
    ids = [cluster.node_id(n) for n in cluster.nodes]
    assert len(set(ids)) == 6
    assert all(re.fullmatch(r"[0-9a-f]{40}", i) for i in ids)
    assert all(cluster.node_id(n) == n.command("CLUSTER", "MYID").decode() for n in cluster.nodes)

    # Every slot served once, ranges contiguous, one range per master.
    owners = cluster.slot_owners()
    assert owners[0][0] == 0
    assert owners[-1][1] == CLUSTER_SLOTS - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(owners))
    assert {id(o) for _, _, o in owners} == {id(m) for m in masters}
    for node in cluster.nodes:
        info = node.command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info
        assert "cluster_slots_assigned:16384" in info
        assert "cluster_known_nodes:6" in info
        assert [o for _, _, o in cluster.slot_owners(via=node)] == [o for _, _, o in owners]

    # Each master has exactly one replica, which replicates it.
    for master in masters:
        (replica,) = cluster.replicas_of(master)
        assert cluster.replica_of(master) is replica
        assert replica.info("replication")["master_port"] == str(master.port)
        assert replica.info("replication")["master_link_status"] == "up"
    assert cluster.owner_of_slot(0) is owners[0][2]
    assert cluster.key_slot("foo") == 12182  # the example of the Redis cluster spec
    assert cluster.key_slot("{user1000}.following") == cluster.key_slot("{user1000}.followers")

    # CLUSTER SHARDS (RESP2): one flat [b"slots", [start, end, ...], b"nodes", [...]]
    # per shard, each node a flat key/value list.
    shards = cluster.shards()
    assert len(shards) == 3
    for shard in shards:
        fields = dict(zip(shard[::2], shard[1::2], strict=True))
        assert set(fields) == {b"slots", b"nodes"}
        roles = sorted(dict(zip(n[::2], n[1::2], strict=True))[b"role"] for n in fields[b"nodes"])
        assert roles == [b"master", b"replica"]


def test_sharded_pubsub_on_every_shard(
    redis_cluster: RedisCluster, clients: list[RawClient]
) -> None:
    cluster = redis_cluster
    for index, master in enumerate(cluster.masters()):
        channel, slot = _channel_on(cluster, master, f"fixture-pubsub-{index}")
        subscriber = RawClient(master)
        clients.append(subscriber)
        assert subscriber.call("SSUBSCRIBE", channel) == [b"ssubscribe", channel.encode(), 1]
        assert cluster.shardnumsub(channel) == 1
        assert cluster.spublish(channel, f"hello {index}") == 1
        assert subscriber.read() == [b"smessage", channel.encode(), f"hello {index}".encode()]

        # (b)/(c): SSUBSCRIBE and SUNSUBSCRIBE on a master that does not serve the slot
        # are refused with -MOVED, and the connection stays usable.
        other = next(m for m in cluster.masters() if m is not master)
        stranger = RawClient(other)
        clients.append(stranger)
        assert _moved(stranger.call("SSUBSCRIBE", channel)) == (slot, master.port)
        assert _moved(stranger.call("SUNSUBSCRIBE", channel)) == (slot, master.port)
        assert stranger.call("PING") == b"PONG"
        # Several channels of different slots in one SSUBSCRIBE: CROSSSLOT.
        reply = subscriber.call("SSUBSCRIBE", channel, f"{channel}-x", f"{channel}-y")
        assert isinstance(reply, hiredis.ReplyError)
        assert str(reply).startswith("CROSSSLOT")
        assert subscriber.call("SUNSUBSCRIBE", channel) == [b"sunsubscribe", channel.encode(), 0]


def test_ssubscribe_on_replicas(redis_cluster: RedisCluster, clients: list[RawClient]) -> None:
    """(d) A replica accepts SSUBSCRIBE for its master's slots, READONLY or not, and
    delivers what is published on the master (through the replication stream). The
    SPUBLISH count is the master's local subscribers only."""
    cluster = redis_cluster
    master = cluster.masters()[0]
    replica = cluster.replica_of(master)
    channel, slot = _channel_on(cluster, master, "fixture-replica")
    plain, readonly = RawClient(replica), RawClient(replica, readonly=True)
    clients += [plain, readonly]
    for client in (plain, readonly):
        assert client.call("SSUBSCRIBE", channel) == [b"ssubscribe", channel.encode(), 1]
    assert cluster.spublish(channel, "via master") == 0  # no subscriber on the master
    for client in (plain, readonly):
        assert client.read() == [b"smessage", channel.encode(), b"via master"]
    assert replica.command("PUBSUB", "SHARDNUMSUB", channel) == [channel.encode(), 2]
    # The replica of another master redirects to the owner.
    other_replica = next(r for r in cluster.replicas() if r is not replica)
    stranger = RawClient(other_replica)
    clients.append(stranger)
    assert _moved(stranger.call("SSUBSCRIBE", channel)) == (slot, master.port)


# --------------------------------------------------------------------------- migration


def test_migrate_slot(redis_cluster: RedisCluster, clients: list[RawClient]) -> None:
    """(a) Subscribers of a migrated slot's channels on the old owner, and on its
    replica, get one server-sent ``sunsubscribe`` per channel; their other channels
    stay subscribed."""
    cluster = redis_cluster
    source = cluster.masters()[0]
    destination = cluster.masters()[1]
    source_replica = cluster.replica_of(source)
    channel, slot = _channel_on(cluster, source, "fixture-migrate")
    keeper, keeper_slot = _channel_on(cluster, source, "fixture-keep")
    assert keeper_slot != slot
    key = f"{{{channel}}}:key"
    cluster.command_for(key, "SET", key, "value")
    encoded = channel.encode()

    resp2 = RawClient(source)
    resp3 = RawClient(source, resp3=True)
    on_replica = RawClient(source_replica)
    clients += [resp2, resp3, on_replica]
    assert resp2.call("SSUBSCRIBE", channel) == [b"ssubscribe", encoded, 1]
    assert resp2.call("SSUBSCRIBE", keeper) == [b"ssubscribe", keeper.encode(), 2]
    assert resp3.call("SSUBSCRIBE", channel) == [b"ssubscribe", encoded, 1]
    assert on_replica.call("SSUBSCRIBE", channel) == [b"ssubscribe", encoded, 1]
    migration = cluster.begin_migration(slot, destination)
    try:
        assert (migration.source, migration.destination) == (source, destination)
        # During the migration the source still serves the channel (no -ASK for
        # Pub/Sub); the destination redirects unless asked with ASKING.
        assert cluster.spublish(channel, "during") == 2
        for client in (resp2, resp3, on_replica):
            assert client.read() == [b"smessage", encoded, b"during"]
        assert _moved(destination.command("SPUBLISH", channel, "x", check=False)) == (
            slot,
            source.port,
        )
        asking = RawClient(destination)
        clients.append(asking)
        assert asking.call("ASKING") == b"OK"
        assert asking.call("SSUBSCRIBE", channel) == [b"ssubscribe", encoded, 1]
        cluster.finish_migration(migration)

        assert cluster.owner_of_slot(slot) is destination
        for node in cluster.nodes:
            assert cluster.owner_of_slot(slot, via=node) is destination
        assert destination.command("GET", key) == b"value"
        assert _moved(source.command("EXISTS", key, check=False)) == (slot, destination.port)

        # The server-sent unsubscribes: an array in RESP2, a push in RESP3.
        assert resp2.read() == [b"sunsubscribe", encoded, 1]
        frame = resp3.read()
        assert isinstance(frame, hiredis.PushNotification)
        assert frame == [b"sunsubscribe", encoded, 0]
        assert on_replica.read() == [b"sunsubscribe", encoded, 0]
        # The other channel of the same connection is untouched.
        assert cluster.spublish(keeper, "still here") == 1
        assert resp2.read() == [b"smessage", keeper.encode(), b"still here"]
        # The subscriber that came in with ASKING is now on the owner.
        assert cluster.spublish(channel, "after") == 1
        assert asking.read() == [b"smessage", encoded, b"after"]
        late = RawClient(source)
        clients.append(late)
        assert _moved(late.call("SSUBSCRIBE", channel)) == (slot, destination.port)
    finally:  # leave the shared cluster as it was
        if cluster.owner_of_slot(slot) is source:
            cluster.abort_migration(migration)
        else:
            cluster.migrate_slot(slot, source)
        cluster.command_for(key, "DEL", key)
    assert cluster.owner_of_slot(slot) is source


# --------------------------------------------------------------------------- faults


def test_failover_kill_and_restart(
    redis_cluster_factory: RedisClusterFactory, clients: list[RawClient]
) -> None:
    cluster = redis_cluster_factory()
    master = cluster.masters()[0]
    replica = cluster.replica_of(master)
    channel, slot = _channel_on(cluster, master, "fixture-fault")
    encoded = channel.encode()

    # -- CLUSTER FAILOVER: the old master unsubscribes its shard subscribers (and
    # keeps the connections); the promoted replica keeps its own.
    on_master, on_master3, on_replica = (
        RawClient(master),
        RawClient(master, resp3=True),
        RawClient(replica),
    )
    clients += [on_master, on_master3, on_replica]
    for client in (on_master, on_master3, on_replica):
        assert client.call("SSUBSCRIBE", channel) == [b"ssubscribe", encoded, 1]
    assert cluster.failover(master) is replica
    assert cluster.role(replica) == "master"
    assert cluster.role(master) == "replica"
    assert cluster.replica_of(replica) is master
    assert cluster.owner_of_slot(slot) is replica
    assert on_master.read() == [b"sunsubscribe", encoded, 0]
    frame = on_master3.read()
    assert isinstance(frame, hiredis.PushNotification)
    assert frame == [b"sunsubscribe", encoded, 0]
    assert _is_pong(on_replica.call("PING"))  # nothing was queued before the PONG
    assert cluster.spublish(channel, "after failover") == 1
    assert on_replica.read() == [b"smessage", encoded, b"after failover"]
    assert on_master.call("PING") == b"PONG"  # no longer in subscribed mode

    # -- SIGKILL the new master: its replica (the first master) is elected; its
    # subscribers keep their subscriptions, the dead node's clients see EOF.
    # A replica serves its master's shard channels: it is caught up first, so that
    # "after failover" (sent to it through replication) cannot reach the new subscriber.
    _wait_caught_up(master, replica)
    on_old_master = RawClient(master)
    clients.append(on_old_master)
    assert on_old_master.call("SSUBSCRIBE", channel) == [b"ssubscribe", encoded, 1]
    assert cluster.kill_master(replica) is master
    assert not replica.running
    assert on_replica.closed_by_server()
    assert cluster.owner_of_slot(slot) is master
    assert len(cluster.masters()) == 3
    assert _is_pong(on_old_master.call("PING"))
    assert cluster.spublish(channel, "after kill") == 1
    assert on_old_master.read() == [b"smessage", encoded, b"after kill"]

    # -- The killed node comes back as a replica of its successor.
    cluster.restart_node(replica)
    assert cluster.role(replica) == "replica"
    assert cluster.replica_of(master) is replica
    assert len(cluster.masters()) == 3
    assert len(cluster.replicas()) == 3

    cluster.close()
    assert not any(node.running for node in cluster.nodes)


def test_remove_node(redis_cluster_factory: RedisClusterFactory, clients: list[RawClient]) -> None:
    """A node without slots leaves: no other node lists it, it describes a cluster of
    its own (itself alone, no slot: what the library must not believe), and its
    clients' connections stay up. A master with slots is refused."""
    cluster = redis_cluster_factory(masters=1, replicas_per_master=1)
    [master] = cluster.masters()
    replica = cluster.replica_of(master)
    with pytest.raises(RedisClusterError, match="serves slots"):
        cluster.remove_node(master)
    client = RawClient(replica)
    clients.append(client)
    assert client.call("SUBSCRIBE", "fixture-left") == [b"subscribe", b"fixture-left", 1]
    assert len(master.command("CLUSTER", "NODES").splitlines()) == 2
    cluster.remove_node(replica)
    assert cluster.reachable() == [master]
    assert len(master.command("CLUSTER", "NODES").splitlines()) == 1
    assert cluster.role(replica) == "master"
    assert b"cluster_state:fail" in replica.command("CLUSTER", "INFO")
    [shard] = cluster.shards(via=replica)
    fields = dict(zip(shard[::2], shard[1::2], strict=True))
    assert fields[b"slots"] == []
    [itself] = fields[b"nodes"]
    assert dict(zip(itself[::2], itself[1::2], strict=True))[b"port"] == replica.port
    # Its connection is up and still subscribed, though the cluster no longer relays
    # to it: a PUBLISH on the node itself reaches it.
    assert replica.command("PUBLISH", "fixture-left", "on the node itself") == 1
    assert client.read() == [b"message", b"fixture-left", b"on the node itself"]
    with pytest.raises(RedisClusterError, match="already removed"):
        cluster.remove_node(replica)
    cluster.wait_stable()


def test_add_master(redis_cluster_factory: RedisClusterFactory) -> None:
    """A node added joins as a master of no slot, and serves a slot migrated to it."""
    cluster = redis_cluster_factory(masters=3, replicas_per_master=0)
    added = cluster.add_master()
    assert added in cluster.nodes
    assert cluster.role(added) == "master"
    assert added not in {owner for _, _, owner in cluster.slot_owners()}
    assert len(cluster.masters()) == 4
    key = "fixture-added"
    slot = cluster.key_slot(key)
    cluster.migrate_slot(slot, added)
    assert cluster.owner_of_slot(slot) is added
    for node in cluster.masters():  # every node sends the key's commands there
        assert cluster.owner_of_slot(slot, via=node) is added
    assert cluster.command_for(key, "SET", key, "v") == b"OK"
    assert added.command("GET", key) == b"v"


def test_bus_port_is_separate(redis_cluster: RedisCluster) -> None:
    """Each node has a bus port of its own (``--cluster-port``), so data ports above
    55535 work; CLUSTER NODES shows ``ip:port@busport``."""
    cluster = redis_cluster
    node = cluster.nodes[0]
    lines = node.command("CLUSTER", "NODES").decode().splitlines()
    myself = next(line for line in lines if "myself" in line)
    address = myself.split()[1]
    port, _, bus = address.partition("@")
    assert port == f"127.0.0.1:{node.port}"
    assert int(bus.split(",")[0]) == int(node.command("CONFIG", "GET", "cluster-port")[1])
    with socket.create_connection(("127.0.0.1", int(bus.split(",")[0])), timeout=5):
        pass
