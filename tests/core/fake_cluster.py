"""An in-memory Redis Cluster of :class:`fake_redis.FakeRedis` nodes, for ClusterCore tests.

Each node is a FakeRedis whose connections also answer ``CLUSTER SHARDS``, and
refuse shard names of slots they do not own as Redis 7 does (facts checked on a
real cluster in tests/test_cluster_fixture.py): ``SSUBSCRIBE``, ``SUNSUBSCRIBE``
and ``SPUBLISH`` get ``-MOVED slot host:port``, names of several slots in one
command get ``-CROSSSLOT``. Moving a slot makes the old owner unsubscribe its
subscribers of the slot's names on its own, with a ``sunsubscribe`` frame each.
A node that is down refuses connections, and its slots go to the next node; a
node whose view lags (``views``) still lists it, as a node that has not heard yet does.
A dead node stays listed, as failed, with no slot. A node without slots can leave
(:meth:`FakeCluster.remove`: forgotten by the others, then reset): the others no
longer list it nor relay PUBLISH to it, and it describes a cluster of its own,
itself alone and no slot.
A master may have replicas (:meth:`FakeCluster.add_replica`), listed in its shard: each
serves its master's shard channels and hears its SPUBLISHes, unsubscribes them with it
when a slot moves, and takes over in :meth:`FakeCluster.promote`.
ACLs are the same on every node (:meth:`FakeCluster.deny`), as a cluster's are.
"""

from __future__ import annotations

from core.fake_redis import FakeConnection, FakeRedis, Push, RespError
from redismpx_core._slots import SLOTS, key_slot
from redismpx_core._topology import Node

__all__ = ("FakeCluster",)


class FakeCluster:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = list(nodes)
        self.servers = {node: _FakeNode(self, node) for node in nodes}
        share = SLOTS // len(nodes) + 1
        self.owners = [nodes[slot // share] for slot in range(SLOTS)]
        self.down: set[Node] = set()
        self.shards_queries = 0
        # A node's own view of the slot owners, where it lags (gossip not heard yet).
        self.views: dict[Node, list[Node]] = {}
        # Demoted masters: a replica serves its master's shard channels, as in Redis.
        self.replica_of: dict[Node, Node] = {}
        # Nodes that left the cluster (forgotten by the others, then reset).
        self.removed: set[Node] = set()
        # Replicas listed in each master's shard (add_replica), and served by SPUBLISH.
        self.replicas: dict[Node, list[Node]] = {}

    def connect(self, node: Node) -> FakeConnection | None:
        """A new connection to ``node``, or None if it is down (connection refused)."""
        if node in self.down or node not in self.servers:
            return None
        return self.servers[node].connect()

    def owner(self, name: bytes) -> Node:
        return self.owners[key_slot(name)]

    def move_slot(self, slot: int, node: Node) -> None:
        old = self.owners[slot]
        self.owners[slot] = node
        if old != node:
            # The old owner and its replicas unsubscribe the slot's names (clusterDelSlot).
            servers = [self.servers[n] for n in [old, *self.replicas.get(old, ())]]
            for conn in [conn for server in servers for conn in server.connections]:
                assert isinstance(conn, _FakeNodeConnection)
                conn.lose_slot(slot)

    def failover(self, old: Node, new: Node, *, stale: tuple[Node, ...] = ()) -> None:
        """``new`` takes every slot of ``old``, which becomes its replica and unsubscribes
        its subscribers of those slots itself; the ``stale`` nodes have not heard yet."""
        before = list(self.owners)
        for node in stale:
            self.views[node] = before
        for slot, owner in enumerate(before):
            if owner == old:
                self.move_slot(slot, new)
        self.replica_of[old] = new

    def add_replica(self, master: Node, node: Node) -> None:
        """``node`` joins as a replica of ``master``: listed in its shard, it serves the
        master's shard channels (an SPUBLISH on the master reaches it too)."""
        self.servers[node] = _FakeNode(self, node)
        self.replicas.setdefault(master, []).append(node)
        self.replica_of[node] = master

    def promote(self, replica: Node) -> Node:
        """A failover: ``replica`` takes every slot of its master, which becomes its
        replica (unsubscribing its subscribers of those slots itself); returns the old
        master."""
        old = self.replica_of[replica]
        for slot, owner in enumerate(list(self.owners)):
            if owner == old:
                self.move_slot(slot, replica)
        del self.replica_of[replica]
        self.nodes[self.nodes.index(old)] = replica
        others = [node for node in self.replicas.pop(old, []) if node != replica]
        for node in others:
            self.replica_of[node] = replica
        self.replicas[replica] = [old, *others]
        self.replica_of[old] = replica
        return old

    def add_node(self, node: Node) -> None:
        """A new node joins, with no slot yet (a master once :meth:`move_slot` gives it one)."""
        self.nodes.append(node)
        self.servers[node] = _FakeNode(self, node)

    def kill(self, node: Node) -> None:
        """The node dies: its connections close, and its slots go to the next live node."""
        self.down.add(node)
        for conn in list(self.servers[node].connections):
            conn.close()
        alive = [n for n in self.nodes if n not in self.down and n not in self.removed]
        heir = alive[0]
        self.owners = [heir if owner == node else owner for owner in self.owners]

    def revive(self, node: Node) -> None:
        self.down.discard(node)

    def empty(self, node: Node, heir: Node) -> None:
        """Every slot of ``node`` moves to ``heir`` (its names unsubscribed, as in a migration)."""
        for slot in [slot for slot, owner in enumerate(self.owners) if owner == node]:
            self.move_slot(slot, heir)

    def remove(self, node: Node) -> None:
        """``node`` leaves the cluster: forgotten by every other node, then reset. Its
        connections stay up; it must own no slot (:meth:`empty` it first)."""
        assert node not in self.owners, "a node leaves with no slot"
        self.removed.add(node)

    def spublish(self, channel: bytes, data: bytes) -> int:
        """The owner's receivers count; its live replicas' subscribers hear it too."""
        owner = self.owner(channel)
        for replica in self.replicas.get(owner, ()):
            if replica not in self.down:
                self.servers[replica].spublish(channel, data)
        return self.servers[owner].spublish(channel, data)

    def publish(self, channel: bytes, data: bytes) -> int:
        """PUBLISH reaches every node of a cluster."""
        return sum(
            server.publish(channel, data)
            for node, server in self.servers.items()
            if node not in self.down and node not in self.removed
        )

    def deny(self, name: bytes) -> None:
        """Every node refuses ``name`` (a channel, shard channel or pattern) with NOPERM.
        Names already subscribed stay: only a later SUBSCRIBE-family command is refused."""
        for server in self.servers.values():
            server.deny(None, name)

    def allow(self, name: bytes) -> None:
        """Undo :meth:`deny`."""
        for server in self.servers.values():
            server.allow(None, name)

    def shard_holders(self, name: bytes) -> list[Node]:
        """Every node with a connection subscribed to shard channel ``name``."""
        return [node for node, server in self.servers.items() if server.shardnumsub(name)]

    def channel_holders(self, name: bytes) -> list[Node]:
        """Every node with a connection subscribed to channel ``name`` (once per connection)."""
        return [node for node, server in self.servers.items() for _ in range(server.numsub(name))]

    def pattern_holders(self, pattern: bytes) -> list[Node]:
        """Every node with a connection subscribed to ``pattern`` (once per connection)."""
        return [
            node
            for node, server in self.servers.items()
            for conn in server.connections
            if pattern in conn.patterns
        ]

    def shards_reply(self, asked: Node) -> list[object]:
        """``CLUSTER SHARDS`` as RESP2 carries it (maps as flat lists), as ``asked`` sees it."""
        if asked in self.removed:  # it knows no cluster but its own
            return [[b"slots", [], b"nodes", [_description(asked, b"online")]]]
        shards = []
        owners = self.views.get(asked, self.owners)
        for node in self.nodes:
            if node in self.removed:
                continue
            # (a node whose view lags has not heard of a death either)
            dead = node in self.down and asked not in self.views
            ranges: list[int] = []
            for slot, owner in enumerate(owners):
                if owner != node:
                    continue
                if ranges and ranges[-1] == slot - 1:
                    ranges[-1] = slot
                else:
                    ranges += [slot, slot]
            health = b"failed" if dead else b"online"
            described = [_description(node, health)]
            for replica in self.replicas.get(node, ()):
                failed = replica in self.down and asked not in self.views
                described.append(
                    _description(replica, b"failed" if failed else b"online", b"replica")
                )
            shards.append([b"slots", ranges, b"nodes", described])
        return shards


def _description(node: Node, health: bytes, role: bytes = b"master") -> list[object]:
    """One node's entry in a CLUSTER SHARDS reply."""
    return [
        b"id", f"{node.port:040x}".encode(),
        b"port", node.port,
        b"ip", node.host.encode(),
        b"endpoint", node.host.encode(),
        b"role", role,
        b"replication-offset", 0,
        b"health", health,
    ]  # fmt: skip


class _FakeNode(FakeRedis):
    def __init__(self, cluster: FakeCluster, node: Node) -> None:
        super().__init__()
        self.cluster = cluster
        self.node = node

    def connect(self) -> FakeConnection:
        conn = _FakeNodeConnection(self, next(self._ids))
        self.connections.append(conn)
        return conn


_SLOT_CHECKED = frozenset({b"ssubscribe", b"sunsubscribe", b"spublish"})


class _FakeNodeConnection(FakeConnection):
    server: _FakeNode

    def _execute(self, command: list[bytes]) -> None:
        name = command[0].lower()
        if name == b"cluster" and len(command) == 2 and command[1].upper() == b"SHARDS":
            self.server.cluster.shards_queries += 1
            self._reply(self.server.cluster.shards_reply(self.server.node))
            return
        if name in _SLOT_CHECKED and len(command) > 1:
            names = command[1:2] if name == b"spublish" else command[1:]
            slots = {key_slot(n) for n in names}
            if len(slots) > 1:
                self._reply(RespError("CROSSSLOT Keys in request don't hash to the same slot"))
                return
            slot = slots.pop()
            cluster = self.server.cluster
            owner = cluster.owners[slot]
            serves = owner == self.server.node or (
                name != b"spublish" and cluster.replica_of.get(self.server.node) == owner
            )
            if not serves:
                self._reply(RespError(f"MOVED {slot} {owner.host}:{owner.port}"))
                return
        super()._execute(command)

    def lose_slot(self, slot: int) -> None:
        for name in [n for n in self.shard_channels if key_slot(n) == slot]:
            del self.shard_channels[name]
            self._reply(Push([b"sunsubscribe", name, len(self.shard_channels)]))
