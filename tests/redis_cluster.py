"""A real Redis Cluster for the tests, built from :class:`redis_servers.RedisServer`.

:class:`RedisCluster` starts ``masters * (1 + replicas_per_master)`` redis-server
children in cluster mode on free loopback ports and forms the cluster by hand, the
way ``redis-cli --cluster create`` does it but without needing redis-cli:

1. every node gets a distinct config epoch (``CLUSTER SET-CONFIG-EPOCH``), so no
   epoch-collision rounds are needed;
2. each master takes an even range of the 16384 slots (``CLUSTER ADDSLOTSRANGE``,
   the same split redis-cli makes);
3. every pair of nodes is introduced with ``CLUSTER MEET`` (with the bus port), so
   nothing waits for gossip to spread acquaintances;
4. once a replica knows its master, ``CLUSTER REPLICATE`` it;
5. :meth:`RedisCluster.wait_stable` (see there) until everything has converged.

Formation takes a little over 2 s, nearly all of it Redis' own rule that a master
may not report ``cluster_state:ok`` earlier than 2 s after it started
(``CLUSTER_WRITABLE_DELAY``).

Each node has its own data port and its own cluster bus port (``--cluster-port``,
Redis >= 7), both picked free, so a data port above 55535 is no problem. Its
``nodes.conf`` lives in the node's private directory and survives
:meth:`RedisCluster.restart_node`, so a restarted node keeps its node id and rejoins.

Fixtures, registered in ``tests/conftest.py``:

* ``redis_cluster`` (session): one shared cluster (3 masters, 1 replica each). Never
  fault it (kill, fail over, pause, restart): a test that migrates a slot must move
  it back. Once formed, its node timeout is raised to 2 s so that a busy machine
  cannot make it fail over by itself.
* ``redis_cluster_factory`` (function): ``factory(masters=3, replicas_per_master=1,
  node_timeout=1000) -> RedisCluster``, formed and stable; every cluster it made is
  closed at teardown. Use it for clusters a test faults.

Slots move two ways: the online resharding every server has (:meth:`RedisCluster.migrate_slot`,
``CLUSTER SETSLOT ... IMPORTING/MIGRATING/NODE`` and ``MIGRATE``), and Valkey 9's atomic
slot migration (:meth:`RedisCluster.migrate_slots_atomically`, ``CLUSTER MIGRATESLOTS``,
watched with ``CLUSTER GETSLOTMIGRATIONS``), which only servers with the
``atomic-slot-migration`` feature of tests/server_matrix.py have.

A node without slots leaves the cluster with :meth:`RedisCluster.remove_node`
(``CLUSTER FORGET`` on the others, ``CLUSTER RESET`` on it); it keeps running, and its
clients' connections stay up.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import hiredis
import pytest

from redis_servers import (
    HOST,
    Arg,
    RedisServer,
    RedisServerError,
    binary_version,
    encode_command,
    free_port,
    require_redis7,
    resolve_redis_server,
)

__all__ = [
    "ATOMIC_MIGRATION_ENDS",
    "CLUSTER_SLOTS",
    "AtomicMigration",
    "AtomicMigrationError",
    "Migration",
    "RedisCluster",
    "RedisClusterError",
    "RedisClusterFactory",
    "redis_cluster",
    "redis_cluster_factory",
]

CLUSTER_SLOTS = 16384

_T = TypeVar("_T")

# Failure detection is node_timeout; a replica then waits 500-1000 ms (+1 s per rank)
# before it asks for votes. A stable default wait leaves room for a slow CI machine.
_STABLE_TIMEOUT = 20.0
#: Seconds a failed-over master gets to turn replica by itself (it takes milliseconds).
_DEMOTION_NUDGE = 5.0
_PORT_ATTEMPTS = 10
# Flags of a node entry in CLUSTER NODES that mean "not (yet) a healthy member".
_BAD_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


class RedisClusterError(RedisServerError):
    """The cluster could not be formed, or did not reach the awaited state in time."""


class AtomicMigrationError(RedisClusterError):
    """An atomic slot migration ended in another state than ``success``."""


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _NodeEntry:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # for a replica; None for a master
    slots: tuple[tuple[int, int], ...]

    @property
    def role(self) -> str:
        return "replica" if "slave" in self.flags else "master"


def _parse_nodes(raw: bytes) -> list[_NodeEntry]:
    entries: list[_NodeEntry] = []
    for line in raw.decode().splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]  # ip:port@cport[,hostname]
        port_text = address.rpartition(":")[2]
        slots: list[tuple[int, int]] = []
        for field in fields[8:]:
            if field.startswith("["):  # [slot->-id] / [slot-<-id]: an open migration
                continue
            start, _, end = field.partition("-")
            slots.append((int(start), int(end or start)))
        entries.append(
            _NodeEntry(
                node_id=fields[0],
                port=int(port_text) if port_text.isdigit() else 0,
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(slots),
            )
        )
    return entries


def _parse_info(raw: bytes) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in raw.decode(errors="replace").splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            result[key] = value
    return result


_SlotMap = tuple[tuple[int, int, str, frozenset[str]], ...]


def _parse_slots(reply: list[Any]) -> _SlotMap:
    """``CLUSTER SLOTS`` as sorted (start, end, master id, replica ids)."""
    ranges = []
    for item in reply:
        start, end, master, *replicas = item
        ranges.append(
            (
                int(start),
                int(end),
                master[2].decode(),
                frozenset(r[2].decode() for r in replicas),
            )
        )
    return tuple(sorted(ranges))


def _query(server: RedisServer, *commands: Sequence[Arg], timeout: float = 2.0) -> list[Any]:
    """Send several commands in one round trip over a fresh socket; the replies in
    order (error replies are returned, not raised)."""
    with server.connect(timeout=timeout) as sock:
        sock.sendall(b"".join(encode_command(*c) for c in commands))
        reader = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = reader.gets()
            if reply is False:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("redis-server closed the connection")
                reader.feed(data)
                continue
            replies.append(reply)
    return replies


def _checked(replies: list[Any]) -> list[Any]:
    """The replies of :func:`_query`, raising the first error reply."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise reply
    return replies


def _wait_for(
    what: str,
    probe: Callable[[], _T | None],
    timeout: float,
    describe: Callable[[], str] = lambda: "",
) -> _T:
    """Poll ``probe`` until it returns something other than None; raise after
    ``timeout`` seconds. Errors talking to a server count as "not yet"."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    last: BaseException | None = None
    while True:
        try:
            result = probe()
        except (OSError, hiredis.HiredisError) as exc:
            last, result = exc, None
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            detail = describe()
            raise RedisClusterError(
                f"timed out after {timeout}s waiting for {what}"
                + (f" (last error: {last!r})" if last is not None else "")
                + (f":\n{detail}" if detail else "")
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True)
class Migration:
    """A slot migration in progress (see :meth:`RedisCluster.begin_migration`)."""

    slot: int
    source: RedisServer
    destination: RedisServer


#: ``CLUSTER GETSLOTMIGRATIONS`` states after which a job does nothing more (Valkey 9.1:
#: a source's job cancelled with ``CLUSTER CANCELSLOTMIGRATIONS`` ends ``cancelled``, and
#: its destination's ``failed``).
ATOMIC_MIGRATION_ENDS = frozenset({"success", "failed", "cancelled"})


@dataclass(frozen=True)
class AtomicMigration:
    """An atomic slot migration job (see :meth:`RedisCluster.begin_atomic_migration`)."""

    #: The job's name in ``CLUSTER GETSLOTMIGRATIONS`` (40 hex characters).
    name: str
    first_slot: int
    last_slot: int
    source: RedisServer
    destination: RedisServer


class RedisCluster:
    """A Redis Cluster of real redis-server children on loopback.

    ``masters`` masters with ``replicas_per_master`` replicas each: ``nodes[:masters]``
    start as the masters (slot ranges in that order) and ``nodes[masters:]`` as the
    replicas, replica ``j`` of master ``j % masters``. Roles change with
    :meth:`failover` and :meth:`kill_master`; :meth:`masters` and :meth:`replicas`
    always ask the servers.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        binary: str | None = None,
        work_dir: str | Path | None = None,
        node_timeout: int = 1000,
        extra_args: Sequence[str] = (),
    ) -> None:
        if masters < 1 or replicas_per_master < 0:
            raise ValueError("need at least one master and no negative replica count")
        self.binary: str = binary if binary is not None else resolve_redis_server()
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout = node_timeout
        self.extra_args = tuple(extra_args)
        self._owns_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="redismpx-cluster-")).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[RedisServer] = []
        self._ids: dict[RedisServer, str] = {}
        # Nodes that left the cluster (remove_node): still running, no longer members.
        self.removed: set[RedisServer] = set()
        self.start_seconds: float | None = None

    # -- lifecycle ---------------------------------------------------------

    def _node_args(self, index: int, bus_port: int) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.work_dir / f"node{index}" / "nodes.conf"),
            "--cluster-port", str(bus_port),
            "--cluster-node-timeout", str(self.node_timeout),
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-replica-migration", "no",
            "--appendonly", "no",
            # Replicas sync at once instead of after the default 5 s diskless delay.
            "--repl-diskless-sync-delay", "0",
            *self.extra_args,
        ]  # fmt: skip

    def _start_node(self, index: int, taken: set[int]) -> RedisServer:
        node_dir = self.work_dir / f"node{index}"
        node_dir.mkdir(exist_ok=True)
        last: RedisServerError | None = None
        for _ in range(_PORT_ATTEMPTS):
            port, bus_port = _pick_port(taken), _pick_port(taken)
            server = RedisServer(
                self.binary,
                extra_args=self._node_args(index, bus_port),
                work_dir=node_dir,
                port=port,
            )
            try:
                return server.start()
            except RedisServerError as exc:
                server.kill()
                if "could not bind" not in str(exc):
                    raise
                last = exc
                with contextlib.suppress(FileNotFoundError):
                    (node_dir / "nodes.conf").unlink()
        raise RedisClusterError(f"no free port pair in {_PORT_ATTEMPTS} attempts: {last}")

    def start(self, timeout: float = _STABLE_TIMEOUT) -> RedisCluster:
        """Start every node, form the cluster and wait until it is stable. Returns self."""
        if self.nodes:
            raise RedisClusterError("the cluster has already been started")
        started = time.monotonic()
        count = self.master_count * (1 + self.replicas_per_master)
        taken: set[int] = set()
        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = [pool.submit(self._start_node, i, taken) for i in range(count)]
            errors = []
            for future in futures:
                try:
                    self.nodes.append(future.result())
                except Exception as exc:
                    errors.append(exc)
        if errors:
            self.close()
            raise errors[0]
        try:
            self._form(timeout)
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _form(self, timeout: float) -> None:
        masters = self.nodes[: self.master_count]
        replicas = self.nodes[self.master_count :]
        for epoch, node in enumerate(self.nodes, start=1):
            node_id, _ = _checked(
                _query(node, ("CLUSTER", "MYID"), ("CLUSTER", "SET-CONFIG-EPOCH", epoch))
            )
            self._ids[node] = node_id.decode()
        for i, master in enumerate(masters):
            start = i * CLUSTER_SLOTS // self.master_count
            end = (i + 1) * CLUSTER_SLOTS // self.master_count - 1
            master.command("CLUSTER", "ADDSLOTSRANGE", start, end)
        # Every pair is introduced directly: waiting for gossip to spread the
        # acquaintances of one hub takes up to a second.
        for i, node in enumerate(self.nodes[:-1]):
            meet = [
                ("CLUSTER", "MEET", HOST, other.port, self._bus_port(other))
                for other in self.nodes[i + 1 :]
            ]
            _checked(_query(node, *meet))
        pending = {r: masters[j % self.master_count] for j, r in enumerate(replicas)}
        deadline = time.monotonic() + timeout

        def replicate_known() -> bool | None:
            # A replica can only REPLICATE a master it already knows (handshake done).
            for replica, master in list(pending.items()):
                known = {e.node_id for e in _parse_nodes(replica.command("CLUSTER", "NODES"))
                         if not e.flags & {"handshake", "noaddr"}}  # fmt: skip
                if self._ids[master] in known:
                    replica.command("CLUSTER", "REPLICATE", self._ids[master])
                    del pending[replica]
            return True if not pending else None

        _wait_for("the replicas to learn their masters", replicate_known, timeout)
        self.wait_stable(max(deadline - time.monotonic(), 0.1))

    def set_node_timeout(self, milliseconds: int) -> None:
        """``CONFIG SET cluster-node-timeout`` on every reachable node. The timeout
        paces gossip as well as failure detection, so a cluster forms fastest with a
        short one; raise it afterwards for a cluster that must never fail over."""
        for node in self.reachable():
            node.command("CONFIG", "SET", "cluster-node-timeout", milliseconds)
        self.node_timeout = milliseconds

    @staticmethod
    def _bus_port(server: RedisServer) -> int:
        args = server.extra_args
        return int(args[args.index("--cluster-port") + 1])

    def close(self) -> None:
        """Stop every node and remove the directories the cluster created."""
        errors: list[Exception] = []
        for node in self.nodes:
            try:
                node.kill()  # nothing to persist: SIGTERM would only cost time
                node.close()
            except Exception as exc:
                errors.append(exc)
        if self._owns_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if errors:
            raise errors[0]

    def __enter__(self) -> RedisCluster:
        if not self.nodes:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        ports = ",".join(str(n._port) for n in self.nodes)
        return f"<RedisCluster {self.master_count}x{1 + self.replicas_per_master} ports={ports}>"

    # -- nodes and roles ---------------------------------------------------

    @property
    def startup_urls(self) -> list[str]:
        """``redis://127.0.0.1:PORT`` of every node, masters and replicas."""
        return [node.url for node in self.nodes]

    def node_id(self, server: RedisServer) -> str:
        """The cluster node id (40 hex characters) of a node; kept across restarts."""
        return self._ids[server]

    def node_by_id(self, node_id: str) -> RedisServer:
        for node, known in self._ids.items():
            if known == node_id:
                return node
        raise KeyError(node_id)

    def node_by_port(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node._port == port:
                return node
        raise KeyError(port)

    def reachable(self) -> list[RedisServer]:
        """The nodes of the cluster that are running and not paused (a removed node is
        not of the cluster)."""
        return [n for n in self.nodes if n.running and not n.paused and n not in self.removed]

    def _any_node(self) -> RedisServer:
        live = self.reachable()
        if not live:
            raise RedisClusterError("no node of the cluster is reachable")
        return live[0]

    def role(self, server: RedisServer) -> str:
        """``"master"`` or ``"replica"``, from the server's ``ROLE``."""
        kind = server.command("ROLE")[0]
        return "master" if kind == b"master" else "replica"

    def masters(self) -> list[RedisServer]:
        """The reachable nodes that are masters now (asked from each server)."""
        return [n for n in self.reachable() if self.role(n) == "master"]

    def replicas(self) -> list[RedisServer]:
        """The reachable nodes that are replicas now (asked from each server)."""
        return [n for n in self.reachable() if self.role(n) == "replica"]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The reachable replicas that follow ``master``, according to themselves."""
        wanted = self.node_id(master)
        found = []
        for node in self.reachable():
            if node is master:
                continue
            me = _myself(node)
            if me.role == "replica" and me.master_id == wanted:
                found.append(node)
        return found

    def replica_of(self, master: RedisServer) -> RedisServer:
        """The (first) reachable replica of ``master``."""
        found = self.replicas_of(master)
        if not found:
            raise RedisClusterError(f"{master!r} has no reachable replica")
        return found[0]

    def slot_owners(self, via: RedisServer | None = None) -> list[tuple[int, int, RedisServer]]:
        """(first slot, last slot, master) for every slot range, as ``via`` (default:
        any reachable node) sees it, from ``CLUSTER SLOTS``."""
        node = via if via is not None else self._any_node()
        slot_map = _parse_slots(node.command("CLUSTER", "SLOTS"))
        return [(start, end, self.node_by_id(owner)) for start, end, owner, _ in slot_map]

    def owner_of_slot(self, slot: int, via: RedisServer | None = None) -> RedisServer:
        """The master serving ``slot``, as ``via`` (default: any reachable node) sees it."""
        for start, end, owner in self.slot_owners(via):
            if start <= slot <= end:
                return owner
        raise RedisClusterError(f"slot {slot} is not served")

    def key_slot(self, name: str | bytes) -> int:
        """Hash slot of a key or shard channel name (``CLUSTER KEYSLOT``)."""
        return int(self._any_node().command("CLUSTER", "KEYSLOT", name))

    def owner_of(self, name: str | bytes) -> RedisServer:
        """The master serving the slot of a key or shard channel name."""
        return self.owner_of_slot(self.key_slot(name))

    def shards(self, via: RedisServer | None = None) -> Any:
        """``CLUSTER SHARDS`` as hiredis parses it (RESP2: flat key/value lists)."""
        return (via if via is not None else self._any_node()).command("CLUSTER", "SHARDS")

    # -- routed commands ---------------------------------------------------

    def command_for(self, name: str | bytes, *args: Arg, redirects: int = 5) -> Any:
        """Run ``args`` on the owner of ``name``'s slot, following MOVED and ASK."""
        node = self.owner_of(name)
        asking = False
        for _ in range(redirects + 1):
            commands: list[Sequence[Arg]] = [args]
            if asking:
                commands.insert(0, ("ASKING",))
            reply = _query(node, *commands, timeout=5.0)[-1]
            if isinstance(reply, hiredis.ReplyError):
                kind, *rest = str(reply).split()
                if kind in {"MOVED", "ASK"} and len(rest) == 2:
                    node = self.node_by_port(int(rest[1].rpartition(":")[2]))
                    asking = kind == "ASK"
                    continue
                raise reply
            return reply
        raise RedisClusterError(f"more than {redirects} redirections for {args!r}")

    def spublish(self, name: str | bytes, data: str | bytes) -> int:
        """``SPUBLISH`` on the owner of the channel's slot. The count is the owner's own
        subscribers only: those on its replicas get the message too (through the
        replication stream) but are not counted."""
        return int(self.command_for(name, "SPUBLISH", name, data))

    def shardnumsub(self, name: str | bytes) -> int:
        """``PUBSUB SHARDNUMSUB`` of one channel, on the owner of its slot."""
        reply = self.command_for(name, "PUBSUB", "SHARDNUMSUB", name)
        return int(reply[1])

    # -- convergence -------------------------------------------------------

    def _unstable(self) -> str | None:
        """Why the cluster is not stable yet, or None when it is."""
        live = self.reachable()
        if not live:
            return "no node is reachable"
        views: dict[RedisServer, list[_NodeEntry]] = {}
        slot_maps: dict[RedisServer, _SlotMap] = {}
        repl: dict[RedisServer, dict[str, str]] = {}
        for node in live:
            info, nodes, slots, replication = _query(
                node,
                ("CLUSTER", "INFO"),
                ("CLUSTER", "NODES"),
                ("CLUSTER", "SLOTS"),
                ("INFO", "replication"),
            )
            for reply in (info, nodes, slots, replication):
                if isinstance(reply, hiredis.ReplyError):
                    return f"{node!r}: {reply}"
            state = _parse_info(info).get("cluster_state")
            if state != "ok":
                return f"{node!r}: cluster_state:{state}"
            views[node] = _parse_nodes(nodes)
            slot_maps[node] = _parse_slots(slots)
            repl[node] = _parse_info(replication)
        # Every live node's own view of itself.
        selves: dict[str, _NodeEntry] = {}
        for node, view in views.items():
            mine = [e for e in view if "myself" in e.flags]
            if len(mine) != 1 or mine[0].node_id != self._ids[node]:
                return f"{node!r}: no single myself entry with its id"
            selves[mine[0].node_id] = mine[0]
        known = set(self._ids.values())
        down = {self._ids[n] for n in self.nodes if not n.running}
        for node, view in views.items():
            by_id = {e.node_id: e for e in view}
            for entry in view:
                if entry.node_id not in known:
                    return f"{node!r} knows a stranger: {entry}"
            for node_id, itself in selves.items():
                seen = by_id.get(node_id)
                if seen is None:
                    return f"{node!r} does not know {node_id}"
                if seen.flags & _BAD_FLAGS:
                    return f"{node!r} sees {node_id} as {sorted(seen.flags)}"
                if (seen.role, seen.master_id) != (itself.role, itself.master_id):
                    return f"{node!r} disagrees with {node_id} about its role"
            for node_id in down:
                seen = by_id.get(node_id)
                if seen is not None and "fail" not in seen.flags:
                    return f"{node!r} has not yet marked the stopped {node_id} as failed"
        first, first_map = next(iter(slot_maps.items()))
        if sum(end - start + 1 for start, end, _, _ in first_map) != CLUSTER_SLOTS:
            return f"{first!r}: not all {CLUSTER_SLOTS} slots are served"
        for node, slot_map in slot_maps.items():
            if slot_map != first_map:
                return f"{node!r} and {first!r} disagree on CLUSTER SLOTS"
        for owner_id in {owner for _, _, owner, _ in first_map}:
            if owner_id not in selves or selves[owner_id].role != "master":
                return f"slot owner {owner_id} is not a reachable master"
        for node_id, itself in selves.items():
            if itself.role != "replica" or itself.master_id is None:
                continue
            replica = self.node_by_id(node_id)
            link = repl[replica]
            if link.get("master_link_status") != "up":
                return f"{replica!r}: master_link_status:{link.get('master_link_status')}"
            master = self.node_by_id(itself.master_id)
            if link.get("master_port") != str(master._port):
                return f"{replica!r} replicates port {link.get('master_port')}, not {master!r}"
        return None

    def wait_stable(self, timeout: float = _STABLE_TIMEOUT) -> None:
        """Wait until the cluster has converged, or raise RedisClusterError.

        Converged: every reachable (running, not paused) node reports
        ``cluster_state:ok``; every one knows every other reachable node with no
        ``fail``/``fail?``/``handshake``/``noaddr`` flag and with the role and master
        that node gives itself, and has flagged every stopped node ``fail``; all
        return the same ``CLUSTER SLOTS`` (ranges, master ids, replica ids), covering
        all 16384 slots, each range served by a reachable master; and every reachable
        replica has ``master_link_status:up`` to the master the cluster says it has.
        Paused nodes are ignored.
        """
        reason: list[str | None] = [None]

        def probe() -> bool | None:
            reason[0] = self._unstable()
            return True if reason[0] is None else None

        _wait_for("the cluster to be stable", probe, timeout, lambda: self._describe(reason[0]))

    def _describe(self, reason: str | None) -> str:
        lines = [f"last reason: {reason}"]
        for node in self.reachable():
            try:
                lines.append(
                    f"{node!r} CLUSTER NODES:\n{node.command('CLUSTER', 'NODES').decode()}"
                )
            except (OSError, hiredis.HiredisError) as exc:
                lines.append(f"{node!r}: {exc!r}")
        return "\n".join(lines)

    # -- resharding --------------------------------------------------------

    def begin_migration(self, slot: int, destination: RedisServer) -> Migration:
        """First half of an online slot migration: ``SETSLOT IMPORTING`` on the
        destination, then ``SETSLOT MIGRATING`` on the source (the current owner)."""
        source = self.owner_of_slot(slot)
        if source is destination:
            raise RedisClusterError(f"slot {slot} is already served by {destination!r}")
        destination.command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(destination))
        return Migration(slot, source, destination)

    def move_keys(self, migration: Migration, batch: int = 100) -> int:
        """``CLUSTER GETKEYSINSLOT`` + ``MIGRATE`` until the source holds no key of
        the slot. Returns how many keys moved."""
        source, destination = migration.source, migration.destination
        moved = 0
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", migration.slot, batch)
            if not keys:
                return moved
            source.command(
                "MIGRATE", destination.host, destination.port, "", 0, 5000, "KEYS", *keys
            )
            moved += len(keys)

    def finish_migration(self, migration: Migration, timeout: float = _STABLE_TIMEOUT) -> None:
        """Second half: move the keys, ``SETSLOT NODE`` on the destination, the source
        and every other master, then :meth:`wait_stable`."""
        self.move_keys(migration)
        dst_id = self.node_id(migration.destination)
        migration.destination.command("CLUSTER", "SETSLOT", migration.slot, "NODE", dst_id)
        migration.source.command("CLUSTER", "SETSLOT", migration.slot, "NODE", dst_id)
        for master in self.masters():
            if master is not migration.source and master is not migration.destination:
                master.command("CLUSTER", "SETSLOT", migration.slot, "NODE", dst_id)
        self.wait_stable(timeout)

    def abort_migration(self, migration: Migration) -> None:
        """Undo :meth:`begin_migration` (``SETSLOT STABLE`` on both sides): the source
        keeps the slot. Keys already moved stay on the destination."""
        for node in (migration.destination, migration.source):
            node.command("CLUSTER", "SETSLOT", migration.slot, "STABLE")

    def migrate_slot(
        self, slot: int, destination: RedisServer, timeout: float = _STABLE_TIMEOUT
    ) -> RedisServer:
        """Move ``slot`` (and its keys) to the master ``destination`` the way Redis
        documents online resharding; returns the former owner."""
        migration = self.begin_migration(slot, destination)
        self.finish_migration(migration, timeout)
        return migration.source

    # -- atomic slot migration (Valkey 9) ----------------------------------

    def slot_migrations(self, server: RedisServer) -> list[dict[str, Any]]:
        """``CLUSTER GETSLOTMIGRATIONS`` on ``server``: one dict per job it knows (the
        running ones and the last finished ones), with ``str`` keys, text values decoded
        and numbers as they come (``name``, ``operation`` EXPORT or IMPORT,
        ``slot_ranges``, ``source_node``, ``target_node``, ``state``, ``message``, ...)."""
        jobs: list[dict[str, Any]] = []
        for entry in server.command("CLUSTER", "GETSLOTMIGRATIONS"):  # RESP2: flat lists
            pairs = zip(entry[::2], entry[1::2], strict=True)
            jobs.append(
                {
                    key.decode(): value.decode() if isinstance(value, bytes) else value
                    for key, value in pairs
                }
            )
        return jobs

    def begin_atomic_migration(
        self, first_slot: int, last_slot: int, destination: RedisServer
    ) -> AtomicMigration:
        """``CLUSTER MIGRATESLOTS SLOTSRANGE first last NODE <destination>`` on the
        slots' owner: the source then moves the slots (and their keys) on its own, and
        hands them over in one step at the end. Returns at once; the job runs on."""
        source = self.owner_of_slot(first_slot)
        if self.owner_of_slot(last_slot) is not source:
            raise RedisClusterError(f"slots {first_slot}-{last_slot} have more than one owner")
        if source is destination:
            raise RedisClusterError(f"slot {first_slot} is already served by {destination!r}")
        known = {job["name"] for job in self.slot_migrations(source)}
        source.command(
            "CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", first_slot, last_slot,
            "NODE", self.node_id(destination),
        )  # fmt: skip
        new = [
            job["name"]
            for job in self.slot_migrations(source)
            if job["name"] not in known and job["operation"] == "EXPORT"
        ]
        if len(new) != 1:
            raise RedisClusterError(f"{source!r} lists {len(new)} new export jobs, not one")
        return AtomicMigration(new[0], first_slot, last_slot, source, destination)

    def atomic_migration_state(self, migration: AtomicMigration) -> str:
        """The job's state as its source reports it (``snapshotting``, ``success``, ...)."""
        for job in self.slot_migrations(migration.source):
            if job["name"] == migration.name:
                return str(job["state"])
        raise RedisClusterError(f"{migration.source!r} no longer lists job {migration.name}")

    def _wait_ended(self, migration: AtomicMigration, timeout: float) -> str:
        def ended() -> str | None:
            state = self.atomic_migration_state(migration)
            return state if state in ATOMIC_MIGRATION_ENDS else None

        return _wait_for(f"atomic migration {migration.name} to end", ended, timeout)

    def finish_atomic_migration(
        self, migration: AtomicMigration, timeout: float = _STABLE_TIMEOUT
    ) -> None:
        """Wait until the job has ended on its source (AtomicMigrationError if not in
        ``success``), then :meth:`wait_stable` (every node agrees on the new owner)."""
        deadline = time.monotonic() + timeout
        state = self._wait_ended(migration, timeout)
        if state != "success":
            message = next(
                (j.get("message") for j in self.slot_migrations(migration.source)
                 if j["name"] == migration.name),
                "",
            )  # fmt: skip
            raise AtomicMigrationError(f"atomic migration {migration.name}: {state} {message!r}")
        self.wait_stable(max(deadline - time.monotonic(), 0.1))

    def cancel_atomic_migration(
        self, migration: AtomicMigration, timeout: float = _STABLE_TIMEOUT
    ) -> str:
        """``CLUSTER CANCELSLOTMIGRATIONS`` on the job's source (it cancels every job
        the source exports); waits until the job has ended and the cluster is stable,
        and returns the state it ended in (``cancelled``, or ``success`` if the hand-over
        came first)."""
        deadline = time.monotonic() + timeout
        migration.source.command("CLUSTER", "CANCELSLOTMIGRATIONS")
        state = self._wait_ended(migration, timeout)
        self.wait_stable(max(deadline - time.monotonic(), 0.1))
        return state

    def settle_atomic_migrations(self, timeout: float = _STABLE_TIMEOUT) -> None:
        """Wait until no reachable master runs an atomic migration job (one left
        running by a failed test would still move its slots), then :meth:`wait_stable`."""
        deadline = time.monotonic() + timeout

        def settled() -> bool | None:
            for master in self.masters():
                if any(
                    j["state"] not in ATOMIC_MIGRATION_ENDS for j in self.slot_migrations(master)
                ):
                    return None
            return True

        _wait_for("the atomic migrations to end", settled, timeout)
        self.wait_stable(max(deadline - time.monotonic(), 0.1))

    def migrate_slots_atomically(
        self,
        first_slot: int,
        last_slot: int,
        destination: RedisServer,
        timeout: float = _STABLE_TIMEOUT,
    ) -> RedisServer:
        """Move a range of slots (and their keys) to the master ``destination`` with
        Valkey's atomic slot migration, and wait until the cluster is stable; returns
        the former owner."""
        migration = self.begin_atomic_migration(first_slot, last_slot, destination)
        self.finish_atomic_migration(migration, timeout)
        return migration.source

    # -- faults ------------------------------------------------------------

    def _wait_role(self, server: RedisServer, role: str, timeout: float, what: str) -> None:
        _wait_for(what, lambda: True if self.role(server) == role else None, timeout)

    def failover(self, master: RedisServer, timeout: float = _STABLE_TIMEOUT) -> RedisServer:
        """``CLUSTER FAILOVER`` on a replica of ``master``; waits until it is the master
        and the old master its replica, then :meth:`wait_stable`. Returns the new master."""
        replica = self.replica_of(master)
        deadline = time.monotonic() + timeout
        replica.command("CLUSTER", "FAILOVER")
        self._wait_role(replica, "master", timeout, f"{replica!r} to take over")
        what = f"{master!r} to become a replica"
        try:
            self._wait_role(master, "replica", _DEMOTION_NUDGE, what)
        except RedisClusterError:
            # Seen once in CI, on a loaded machine: the old master, its slots gone, stayed
            # a master of nothing for 20 s and more. Do what an operator would: tell it.
            if _myself(master).slots:
                raise
            master.command("CLUSTER", "REPLICATE", self.node_id(replica))
            self._wait_role(master, "replica", max(deadline - time.monotonic(), 0.1), what)
        self.wait_stable(max(deadline - time.monotonic(), 0.1))
        return replica

    def add_master(self, timeout: float = _STABLE_TIMEOUT) -> RedisServer:
        """Start one more node (with the cluster's ``extra_args``) and introduce it to
        every running node with ``CLUSTER MEET``: it joins as a master of no slot (give
        it some with :meth:`migrate_slot`). Waits until the cluster is stable; returns it.

        It takes a little over 2 s, Redis' delay before a new master reports
        ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        taken = {node.port for node in self.nodes} | {self._bus_port(n) for n in self.nodes}
        server = self._start_node(len(self.nodes), taken)
        self.nodes.append(server)
        [node_id] = _checked(_query(server, ("CLUSTER", "MYID")))
        self._ids[server] = node_id.decode()
        meet = [
            ("CLUSTER", "MEET", HOST, other.port, self._bus_port(other))
            for other in self.reachable()
            if other is not server
        ]
        _checked(_query(server, *meet))
        self.wait_stable(max(deadline - time.monotonic(), 0.1))
        return server

    def kill_master(self, master: RedisServer, timeout: float = _STABLE_TIMEOUT) -> RedisServer:
        """SIGKILL ``master``; wait until its replica has been elected in its place and
        the rest of the cluster is stable. Returns the promoted replica.

        The election needs the votes of a majority of all masters, so the cluster
        must have at least 3. With node_timeout 1000 this takes about 2 s."""
        replica = self.replica_of(master)
        deadline = time.monotonic() + timeout
        master.kill()
        self._wait_role(replica, "master", timeout, f"{replica!r} to be promoted")
        self.wait_stable(max(deadline - time.monotonic(), 0.1))
        return replica

    def remove_node(self, server: RedisServer, timeout: float = _STABLE_TIMEOUT) -> None:
        """``server`` leaves the cluster the way Redis documents removing a node:
        ``CLUSTER FORGET`` it on every other node (within the 60 s in which they refuse
        to learn it again from gossip), then ``CLUSTER RESET HARD`` on it. It keeps
        running, and its clients' connections stay up; it now knows no other node and
        serves no slot (a cluster of its own, ``cluster_state:fail``), and the others
        no longer relay PUBLISH to it. It must serve no slot (move them first) and, as a
        master, have no replica. Waits until the rest is stable and no node lists it;
        from then on it is left out of :meth:`reachable`, :meth:`masters` and the rest."""
        if server in self.removed:
            raise RedisClusterError(f"{server!r} was already removed")
        me = _myself(server)
        if me.slots:
            raise RedisClusterError(f"{server!r} serves slots {list(me.slots)}: move them first")
        if me.role == "master" and self.replicas_of(server):
            raise RedisClusterError(f"{server!r} has replicas: they would be orphaned")
        deadline = time.monotonic() + timeout
        node_id = self.node_id(server)
        others = [n for n in self.reachable() if n is not server]
        for node in others:
            node.command("CLUSTER", "FORGET", node_id)
        server.command("CLUSTER", "RESET", "HARD")
        self.removed.add(server)

        def forgotten() -> bool | None:
            for node in others:
                if any(
                    e.node_id == node_id for e in _parse_nodes(node.command("CLUSTER", "NODES"))
                ):
                    return None
            if len(_parse_nodes(server.command("CLUSTER", "NODES"))) != 1:
                return None
            return True

        _wait_for(f"{server!r} to be forgotten", forgotten, timeout)
        self.wait_stable(max(deadline - time.monotonic(), 0.1))

    def restart_node(self, server: RedisServer, timeout: float = _STABLE_TIMEOUT) -> None:
        """Start a stopped (or killed) node again on its ports with its ``nodes.conf``;
        it rejoins with its node id (a failed-over master comes back as a replica of
        its successor). Waits until the cluster is stable."""
        deadline = time.monotonic() + timeout
        server.restart(timeout)
        self.wait_stable(max(deadline - time.monotonic(), 0.1))


def _myself(server: RedisServer) -> _NodeEntry:
    for entry in _parse_nodes(server.command("CLUSTER", "NODES")):
        if "myself" in entry.flags:
            return entry
    raise RedisClusterError(f"{server!r}: no myself entry in CLUSTER NODES")


def _pick_port(taken: set[int]) -> int:
    """A free port not yet handed out to another node of this cluster."""
    while True:
        port = free_port()
        if port not in taken:
            taken.add(port)
            return port


# --------------------------------------------------------------------------- fixtures


class RedisClusterFactory(Protocol):
    """Type of the ``redis_cluster_factory`` fixture: forms a cluster and returns it
    stable; the fixture closes every cluster it made at teardown."""

    def __call__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        node_timeout: int = 1000,
        extra_args: Sequence[str] = (),
    ) -> RedisCluster: ...


@pytest.fixture(scope="session")
def redis_cluster(
    redis_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisCluster]:
    """One shared cluster, 3 masters with a replica each. Never fault it; move migrated
    slots back."""
    require_redis7(binary_version(redis_binary))
    cluster = RedisCluster(binary=redis_binary, work_dir=tmp_path_factory.mktemp("redis-cluster"))
    with cluster.start():
        # Formed fast with the short timeout; a longer one now, so that a busy machine
        # cannot make it fail over by itself. (Not longer still: the timeout also paces
        # gossip, so replicas may take up to about half of it to learn a migration.)
        cluster.set_node_timeout(2000)
        yield cluster


@pytest.fixture
def redis_cluster_factory(
    redis_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisClusterFactory]:
    """Fresh clusters a test may fault (kill, fail over, pause, restart); every one is
    closed at teardown."""
    require_redis7(binary_version(redis_binary))
    clusters: list[RedisCluster] = []

    def factory(
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        node_timeout: int = 1000,
        extra_args: Sequence[str] = (),
    ) -> RedisCluster:
        cluster = RedisCluster(
            masters,
            replicas_per_master,
            binary=redis_binary,
            work_dir=tmp_path_factory.mktemp("redis-cluster"),
            node_timeout=node_timeout,
            extra_args=extra_args,
        )
        clusters.append(cluster)
        return cluster.start()

    yield factory
    errors: list[Exception] = []
    for cluster in clusters:
        try:
            cluster.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
