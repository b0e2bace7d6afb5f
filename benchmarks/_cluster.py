"""A throwaway three-master Redis Cluster for the cluster benchmarks, with replicas if asked.

Three ``redis-server`` children (see ``_redis.py`` for which binary) in cluster mode
on free loopback ports, the cluster formed by hand: every node ``CLUSTER MEET``s the
first, each is given a third of the 16384 slots with ``CLUSTER ADDSLOTSRANGE``, and the
``with`` block starts once every node says ``cluster_state:ok`` and all agree on who
owns which slots. With ``replicas_per_master`` the replicas then ``CLUSTER MEET`` the
first node and ``CLUSTER REPLICATE`` their master, a key is written on every master
(a replica whose replication offset is still 0 is reported ``loading`` by ``CLUSTER
SHARDS``), and the block waits until every node's health is ``online`` there, in
every node's view.
Nothing is kept on disk; the servers are killed when the block ends.

    with Cluster(["--client-output-buffer-limit", "pubsub", "0", "0", "0"]) as cluster:
        for node in cluster.nodes: node.url, node.slots  # (first, last)
        cluster.owner(slot)                              # the node serving slot

Cluster mode refuses a data port above 55535 unless told the bus port, and derives the
bus port as port + 10000: each node gets a data port <= 55535 *and* an explicit
``--cluster-port`` on a free port of its own.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

import hiredis
from _redis import HOST, RedisServer

__all__ = ("Cluster", "ClusterNode")

SLOTS = 16384
MAX_DATA_PORT = 55535
_FORM_TIMEOUT = 30.0


def _free_port(maximum: int = 65535) -> int:
    """A free loopback port no higher than ``maximum`` (the kernel picks; we retry)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port <= maximum:
            return port
    raise SystemExit(f"no free loopback port <= {maximum}")


class ClusterNode(RedisServer):
    """One cluster-mode redis-server: a data port <= 55535 and a bus port of its own."""

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        super().__init__(extra_args)
        self.bus_port = 0
        self.slots = (0, -1)  # (first, last): set when the cluster is formed

    def _pick_ports(self) -> int:
        port = _free_port(MAX_DATA_PORT)
        self.bus_port = _free_port()
        while self.bus_port == port:
            self.bus_port = _free_port()
        return port

    def _mode_args(self) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"{self._dir}/nodes-{self.port}.conf",
            "--cluster-node-timeout", "5000",
            "--cluster-port", str(self.bus_port),
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once
        ]  # fmt: skip

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__()
        self._dir = ""


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class Cluster:
    """Three masters, slots split in thirds, formed and agreed on before ``__enter__`` returns."""

    def __init__(
        self, extra_args: Sequence[str] = (), masters: int = 3, replicas_per_master: int = 0
    ) -> None:
        self.extra_args = list(extra_args)
        #: The masters (the replicas are in ``replicas``, master i's at i, i + masters, ...).
        self.nodes = [ClusterNode(self.extra_args) for _ in range(masters)]
        self.replicas = [ClusterNode(self.extra_args) for _ in range(masters * replicas_per_master)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def owner(self, slot: int) -> ClusterNode:
        for node in self.nodes:
            first, last = node.slots
            if first <= slot <= last:
                return node
        raise ValueError(f"no node owns slot {slot}")

    def __enter__(self) -> Cluster:
        try:
            for node in [*self.nodes, *self.replicas]:
                node.__enter__()
            self._form()
            if self.replicas:
                self._replicate()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for node in [*self.nodes, *self.replicas]:
            node.__exit__()

    def _form(self) -> None:
        first = self.nodes[0]
        for node in [*self.nodes[1:], *self.replicas]:
            node.command("CLUSTER", "MEET", HOST, str(first.port), str(first.bus_port))
        share, extra = divmod(SLOTS, len(self.nodes))
        start = 0
        for index, node in enumerate(self.nodes):
            end = start + share + (1 if index < extra else 0) - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", str(start), str(end))
            node.slots = (start, end)
            start = end + 1
        expected = sorted((node.slots[0], node.slots[1], node.port) for node in self.nodes)
        deadline = time.monotonic() + _FORM_TIMEOUT
        last_seen: object = None
        while time.monotonic() < deadline:
            try:
                last_seen = [self._view(node) for node in self.nodes]
            except (OSError, ConnectionError) as exc:
                last_seen = exc
            else:
                if all(view == ("ok", expected) for view in last_seen):
                    return
            time.sleep(0.05)
        raise SystemExit(
            f"the cluster did not form in {_FORM_TIMEOUT:g} s; nodes saw {last_seen!r}, "
            f"expected ('ok', {expected!r}) on each"
        )

    def _view(self, node: ClusterNode) -> tuple[str, list[tuple[int, int, int]]]:
        """(cluster_state, sorted [(first slot, last slot, master port)]) as ``node`` sees it."""
        info = _text(node.command("CLUSTER", "INFO"))
        state = "?"
        known = 0
        for line in str(info).splitlines():
            key, _, value = line.strip().partition(":")
            if key == "cluster_state":
                state = value
            elif key == "cluster_known_nodes":
                known = int(value)
        if known != len(self.nodes) + len(self.replicas):
            state = f"{state}, knows {known} nodes"
        ranges = sorted(
            (int(entry[0]), int(entry[1]), int(entry[2][1]))
            for entry in node.command("CLUSTER", "SLOTS")
        )
        return state, ranges

    def _replicate(self) -> None:
        """Each replica follows its master; returns once every node is ``online``."""
        deadline = time.monotonic() + _FORM_TIMEOUT
        for index, replica in enumerate(self.replicas):
            master_id = _text(self.nodes[index % len(self.nodes)].command("CLUSTER", "MYID"))
            while True:  # until the replica has heard of its master
                try:
                    replica.command("CLUSTER", "REPLICATE", master_id)
                    break
                except hiredis.ReplyError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        for replica in self.replicas:  # synced: a write now moves its offset
            while _text(replica.command("ROLE")[3]) != "connected":
                if time.monotonic() > deadline:
                    raise SystemExit(f"a replica did not sync in {_FORM_TIMEOUT:g} s")
                time.sleep(0.05)
        for master in self.nodes:
            first, last = master.slots
            key = next(
                f"bench:replicated:{i}"
                for i in range(100_000)
                if first
                <= int(master.command("CLUSTER", "KEYSLOT", f"bench:replicated:{i}"))
                <= last
            )
            master.command("SET", key, "1")
        health: list[tuple[str, str]] = []
        everyone = [*self.nodes, *self.replicas]
        while time.monotonic() < deadline:
            # Every node's own view: a master that has not heard of its replica yet does
            # not pass it its SPUBLISHes, though the replica takes SSUBSCRIBEs already.
            health = [
                (
                    _text(fields[fields.index(b"role") + 1]),
                    _text(fields[fields.index(b"health") + 1]),
                )
                for node in everyone
                for shard in node.command("CLUSTER", "SHARDS")
                for fields in shard[shard.index(b"nodes") + 1]
            ]
            replicas = [entry for entry in health if entry == ("replica", "online")]
            if len(replicas) == len(self.replicas) * len(everyone):
                return
            time.sleep(0.05)
        raise SystemExit(f"the replicas did not come online in {_FORM_TIMEOUT:g} s: {health}")


if __name__ == "__main__":  # a manual check: python benchmarks/_cluster.py
    started = time.monotonic()
    with Cluster() as cluster:
        print(f"formed in {time.monotonic() - started:.2f} s:")
        for node in cluster.nodes:
            print(f"  {node.url} bus {node.bus_port} slots {node.slots[0]}-{node.slots[1]}")
