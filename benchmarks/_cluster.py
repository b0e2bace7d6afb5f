"""A throwaway three-master Redis Cluster for the cluster benchmarks (no replicas).

Three ``redis-server`` children (see ``_redis.py`` for which binary) in cluster mode
on free loopback ports, the cluster formed by hand: every node ``CLUSTER MEET``s the
first, each is given a third of the 16384 slots with ``CLUSTER ADDSLOTSRANGE``, and the
``with`` block starts once every node says ``cluster_state:ok`` and all agree on who
owns which slots. Nothing is kept on disk; the servers are killed when the block ends.

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
        ]  # fmt: skip

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__()
        self._dir = ""


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class Cluster:
    """Three masters, slots split in thirds, formed and agreed on before ``__enter__`` returns."""

    def __init__(self, extra_args: Sequence[str] = (), masters: int = 3) -> None:
        self.extra_args = list(extra_args)
        self.nodes = [ClusterNode(self.extra_args) for _ in range(masters)]

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
            for node in self.nodes:
                node.__enter__()
            self._form()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for node in self.nodes:
            node.__exit__()

    def _form(self) -> None:
        first = self.nodes[0]
        for node in self.nodes[1:]:
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
        if known != len(self.nodes):
            state = f"{state}, knows {known} nodes"
        ranges = sorted(
            (int(entry[0]), int(entry[1]), int(entry[2][1]))
            for entry in node.command("CLUSTER", "SLOTS")
        )
        return state, ranges


if __name__ == "__main__":  # a manual check: python benchmarks/_cluster.py
    started = time.monotonic()
    with Cluster() as cluster:
        print(f"formed in {time.monotonic() - started:.2f} s:")
        for node in cluster.nodes:
            print(f"  {node.url} bus {node.bus_port} slots {node.slots[0]}-{node.slots[1]}")
