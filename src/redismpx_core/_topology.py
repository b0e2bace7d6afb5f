"""Redis Cluster topology: which master serves which hash slots.

Parsed from ``CLUSTER SHARDS`` (Redis 7+) or, on older servers, ``CLUSTER SLOTS``,
in the shapes hiredis returns: under RESP2 a map is a flat array of alternating keys
and values, under RESP3 a ``dict``; strings are ``bytes`` (or ``str`` from a reader
that decodes). The caller turns an error reply into a fallback or a
:class:`~redismpx_core.ServerError` before parsing: here it is just not an array.

Anything Redis would not send raises :class:`~redismpx_core.ProtocolError`: a
topology misread would park subscriptions on nodes that never deliver to them,
which fails silently, while a refused reply is retried on a fresh connection.
"""

from __future__ import annotations

import reprlib
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from operator import itemgetter
from types import MappingProxyType
from typing import Any, Final

from ._errors import ProtocolError
from ._slots import SLOTS

__all__ = ("Node", "Topology", "parse_cluster_shards", "parse_cluster_slots")


@dataclass(frozen=True, slots=True)
class Node:
    """The address clients use to reach one cluster node."""

    host: str
    port: int

    def __str__(self) -> str:
        # An IPv6 literal's colons would run into the port's.
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _no_replicas() -> Mapping[Node, tuple[Node, ...]]:
    return MappingProxyType({})


_first: Final = itemgetter(0)


@dataclass(frozen=True, slots=True)
class Topology:
    """Slot ranges and the master serving each, with every master's replicas.

    ``ranges`` holds ``(first slot, last slot, master)``, sorted, non-overlapping,
    and only for slots some master serves; adjacent ranges of one master are merged
    by the parsers, so two readings of the same cluster compare equal.

    ``replicas`` maps each master in ``ranges`` to its online replicas (maybe
    none). It is a read-only ``MappingProxyType`` over a private copy, and left out
    of the hash: a proxy is not hashable, and equal topologies have equal ranges
    anyway. Equality does compare it.

    ``members`` lists every node the reply names, in any health, with slots or
    without (a master that serves none, the replicas of one): the nodes the cluster
    still knows. ``None`` when the reply does not say (``CLUSTER SLOTS`` leaves out
    the nodes without slots). Equality does not compare it: it tells who is in the
    cluster, not where names go.
    """

    ranges: tuple[tuple[int, int, Node], ...]
    replicas: Mapping[Node, tuple[Node, ...]] = field(default_factory=_no_replicas, hash=False)
    members: tuple[Node, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # owner() bisects: unsorted or overlapping ranges would answer wrongly, not fail.
        previous = -1
        for first, last, _ in self.ranges:
            if not previous < first <= last < SLOTS:
                raise ValueError(
                    f"slot ranges must be sorted, disjoint and within 0..{SLOTS - 1}: "
                    f"{first}-{last} follows slot {previous}"
                )
            previous = last
        frozen = {master: tuple(nodes) for master, nodes in self.replicas.items()}
        object.__setattr__(self, "replicas", MappingProxyType(frozen))

    def owner(self, slot: int) -> Node | None:
        """The master serving *slot*, or None if no master serves it."""
        ranges = self.ranges
        index = bisect_right(ranges, slot, key=_first) - 1
        if index >= 0:
            _, last, master = ranges[index]
            if slot <= last:
                return master
        return None

    @property
    def masters(self) -> tuple[Node, ...]:
        """The masters serving slots, each once, in the order of their first slot."""
        return tuple(dict.fromkeys(master for _, _, master in self.ranges))

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every node: the masters, then their replicas, each once."""
        masters = self.masters
        found = dict.fromkeys(masters)
        for master in masters:
            found.update(dict.fromkeys(self.replicas.get(master, ())))
        return tuple(found)

    @property
    def covers_all_slots(self) -> bool:
        """True if every slot has a master (what ``cluster_state:ok`` needs)."""
        return sum(last - first + 1 for first, last, _ in self.ranges) == SLOTS


# ---------------------------------------------------------------- CLUSTER SHARDS


def parse_cluster_shards(reply: Any, asked: Node, *, tls: bool = False) -> Topology:
    """The topology in a ``CLUSTER SHARDS`` reply, sent by the node at *asked*.

    A shard's slots belong to its master if that master's health is ``online``; a
    shard without one leaves its slots unserved. Its replicas are the ``online``
    ones. A node's host is its ``endpoint``, else (empty, or ``?`` for a hostname
    preferred but not set) its ``ip``, else the host of *asked*: a node that has
    not learnt its own address reports an empty one. The port is ``port``, or
    ``tls-port`` when *tls* is true; the other one if a node only has that.
    Every node listed, whatever its health and slots, is one of the ``members``.
    """
    claims: list[_Claim] = []
    replicas: dict[Node, dict[Node, None]] = {}
    members: dict[Node, None] = {}
    for index, item in enumerate(_array(reply, "CLUSTER SHARDS reply")):
        what = f"CLUSTER SHARDS shard {index}"
        shard = _map(item, what)
        slots = _array(_required(shard, "slots", what), f"{what} slots")
        if len(slots) % 2:
            raise ProtocolError(f"{what}: slots must come in start/end pairs, got {len(slots)}")
        master: Node | None = None
        shard_replicas: list[Node] = []
        nodes = _array(_required(shard, "nodes", what), f"{what} nodes")
        for position, raw_node in enumerate(nodes):
            role, online, node = _shard_node(raw_node, f"{what} node {position}", asked, tls)
            members[node] = None
            if not online:
                continue
            if role == "replica":
                shard_replicas.append(node)
            elif master is None:
                master = node
            else:
                raise ProtocolError(f"{what}: two online masters, {master} and {node}")
        for pair in range(0, len(slots), 2):
            first = _slot(slots[pair], f"{what} slots")
            last = _slot(slots[pair + 1], f"{what} slots")
            claims.append(_claim(first, last, master, what))
        if master is not None:
            replicas.setdefault(master, {}).update(dict.fromkeys(shard_replicas))
    return replace(_topology(claims, replicas), members=tuple(members))


def _shard_node(raw: Any, what: str, asked: Node, tls: bool) -> tuple[str, bool, Node]:
    """(role, online, address) of one entry of a shard's ``nodes``."""
    fields = _map(raw, what)
    role = _text(_required(fields, "role", what), f"{what} role")
    if role not in ("master", "replica"):
        raise ProtocolError(f"{what}: unknown role {role!r}")
    # Health is open-ended ("online", "failed", "loading", maybe more): only
    # "online" is usable, and a value we do not know is not.
    online = _text(_required(fields, "health", what), f"{what} health") == "online"
    ports: dict[str, int] = {
        key: _port(fields[key], f"{what} {key}") for key in ("port", "tls-port") if key in fields
    }
    preferred, other = ("tls-port", "port") if tls else ("port", "tls-port")
    port = ports.get(preferred, ports.get(other))
    if port is None:
        raise ProtocolError(f"{what}: neither port nor tls-port")
    for key in ("id", "hostname"):  # unused, but a wrong type says the reply is not Redis'
        if key in fields:
            _text(fields[key], f"{what} {key}")
    endpoint = _text(_required(fields, "endpoint", what), f"{what} endpoint")
    ip = _text(_required(fields, "ip", what), f"{what} ip")
    if endpoint in ("", "?"):
        endpoint = ip or asked.host
    return role, online, Node(endpoint, port)


# ---------------------------------------------------------------- CLUSTER SLOTS


def parse_cluster_slots(reply: Any, asked: Node) -> Topology:
    """The topology in a ``CLUSTER SLOTS`` reply, sent by the node at *asked*.

    A node whose host is empty or nil is *asked*'s host (a node that has not learnt
    its own address, or ``cluster-preferred-endpoint-type unknown-endpoint``). A
    host of ``?`` (hostname preferred but not set) cannot be reached: a replica so
    described is left out, a master so described leaves its range unserved.
    """
    claims: list[_Claim] = []
    replicas: dict[Node, dict[Node, None]] = {}
    for index, item in enumerate(_array(reply, "CLUSTER SLOTS reply")):
        what = f"CLUSTER SLOTS entry {index}"
        entry = _array(item, what)
        if len(entry) < 3:
            raise ProtocolError(f"{what}: expected start, end and a master, got {len(entry)} items")
        first = _slot(entry[0], f"{what} start")
        last = _slot(entry[1], f"{what} end")
        master = _slots_node(entry[2], f"{what} master", asked)
        found = [_slots_node(raw, f"{what} replica {n}", asked) for n, raw in enumerate(entry[3:])]
        claims.append(_claim(first, last, master, what))
        if master is not None:
            known = replicas.setdefault(master, {})
            known.update(dict.fromkeys(node for node in found if node is not None))
    return _topology(claims, replicas)


def _slots_node(raw: Any, what: str, asked: Node) -> Node | None:
    """The address in one node of a CLUSTER SLOTS entry; None if it is unknown."""
    fields = _array(raw, what)
    # [host, port] before Redis 4, then the node id, then (Redis 7) a map of extras.
    if len(fields) < 2:
        raise ProtocolError(f"{what}: expected host and port, got {len(fields)} items")
    host = "" if fields[0] is None else _text(fields[0], f"{what} host")
    port = _port(fields[1], f"{what} port")
    if len(fields) > 2:
        _text(fields[2], f"{what} id")
    if len(fields) > 3 and not isinstance(fields[3], list | tuple | dict):
        raise ProtocolError(f"{what}: extra metadata is not a map: {_show(fields[3])}")
    if host == "?":
        return None
    return Node(host or asked.host, port)


# ---------------------------------------------------------------- shared


#: (first slot, last slot, master or None when no master serves them).
_Claim = tuple[int, int, Node | None]


def _claim(first: int, last: int, master: Node | None, what: str) -> _Claim:
    if first > last:
        raise ProtocolError(f"{what}: slot range {first}-{last} ends before it starts")
    return (first, last, master)


def _topology(claims: list[_Claim], replicas: dict[Node, dict[Node, None]]) -> Topology:
    claims.sort(key=_first)
    ranges: list[tuple[int, int, Node]] = []
    previous = -1
    for first, last, master in claims:
        # Unserved ranges count too: a slot claimed twice is a reply we cannot trust.
        if first <= previous:
            raise ProtocolError(f"slot {first} appears in two ranges")
        previous = last
        if master is None:
            continue
        if ranges and ranges[-1][2] == master and ranges[-1][1] + 1 == first:
            ranges[-1] = (ranges[-1][0], last, master)
        else:
            ranges.append((first, last, master))
    masters = dict.fromkeys(master for _, _, master in ranges)
    return Topology(
        tuple(ranges),
        {
            master: tuple(node for node in replicas.get(master, ()) if node != master)
            for master in masters
        },
    )


def _short_repr() -> reprlib.Repr:
    # Bounded: an error message must not echo a whole hostile reply.
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict = 2, 4, 4
    short.maxstring = short.maxother = 40
    return short


_show: Final = _short_repr().repr


def _array(value: Any, what: str) -> list[Any] | tuple[Any, ...]:
    if isinstance(value, list | tuple):
        return value
    raise ProtocolError(f"{what}: expected an array, got {_show(value)}")


def _map(value: Any, what: str) -> dict[str, Any]:
    """A RESP3 map, or a RESP2 flat array of keys and values, keyed by str."""
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list | tuple):
        if len(value) % 2:
            raise ProtocolError(f"{what}: a map needs as many values as keys, got {len(value)}")
        pairs = list(zip(value[::2], value[1::2], strict=True))
    else:
        raise ProtocolError(f"{what}: expected a map, got {_show(value)}")
    fields: dict[str, Any] = {}
    for raw_key, item in pairs:
        key = _text(raw_key, f"{what} key")
        if key in fields:
            raise ProtocolError(f"{what}: key {key!r} appears twice")
        fields[key] = item
    return fields


def _required(fields: dict[str, Any], key: str, what: str) -> Any:
    try:
        return fields[key]
    except KeyError:
        raise ProtocolError(f"{what}: no {key!r}") from None


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what}: not UTF-8: {_show(value)}") from None
    raise ProtocolError(f"{what}: expected a string, got {_show(value)}")


# Enough digits for any slot or port, few enough that int() stays cheap.
_MAX_DIGITS: Final = 10


def _integer(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # Some 7.0 and 7.2 releases send CLUSTER SHARDS slots as bulk strings (redis#10680,
    # redis#12561).
    if isinstance(value, bytes | str) and 0 < len(value) <= _MAX_DIGITS:
        digits = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if digits.isascii() and digits.isdigit():
            return int(digits)
    raise ProtocolError(f"{what}: expected an integer, got {_show(value)}")


def _slot(value: Any, what: str) -> int:
    slot = _integer(value, what)
    if not 0 <= slot < SLOTS:
        raise ProtocolError(f"{what}: slot {slot} is outside 0..{SLOTS - 1}")
    return slot


def _port(value: Any, what: str) -> int:
    port = _integer(value, what)
    if not 0 < port < 65536:
        raise ProtocolError(f"{what}: port {port} is outside 1..65535")
    return port
