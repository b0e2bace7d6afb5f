"""Cluster topology: CLUSTER SHARDS and CLUSTER SLOTS replies, real and hand-written,
RESP2 and RESP3, parsed into slot ranges; garbage is a ProtocolError and nothing else."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redis_servers import RedisServer, RedisServerFactory, encode_command, free_port
from redismpx_core import ProtocolError
from redismpx_core._slots import SLOTS, key_slot
from redismpx_core._topology import Node, Topology, parse_cluster_shards, parse_cluster_slots

ASKED = Node("10.0.0.1", 6999)
A = Node("10.0.0.2", 7000)
B = Node("10.0.0.3", 7001)
C = Node("10.0.0.4", 7002)


def flat(value: Any) -> Any:
    """A RESP3-shaped reply as RESP2 sends it: every map a flat key/value array."""
    if isinstance(value, dict):
        return [item for key, val in value.items() for item in (key, flat(val))]
    if isinstance(value, list):
        return [flat(item) for item in value]
    return value


def decoded(value: Any) -> Any:
    """A reply as a hiredis reader with ``encoding="utf-8"`` returns it."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {decoded(key): decoded(val) for key, val in value.items()}
    if isinstance(value, list):
        return [decoded(item) for item in value]
    return value


SHAPES: dict[str, Callable[[Any], Any]] = {
    "resp3": lambda reply: reply,
    "resp2": flat,
    "resp3-str": decoded,
    "resp2-str": lambda reply: flat(decoded(reply)),
}
shapes = pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))


def node_map(
    node: Node,
    role: str = "master",
    health: str = "online",
    *,
    endpoint: str | None = None,
    ip: str | None = None,
    **extra: Any,
) -> dict[bytes, Any]:
    """One entry of a shard's ``nodes``, RESP3-shaped, with every field Redis sends."""
    fields: dict[bytes, Any] = {
        b"id": b"%040x" % node.port,
        b"port": node.port,
        b"ip": (node.host if ip is None else ip).encode(),
        b"endpoint": (node.host if endpoint is None else endpoint).encode(),
        b"role": role.encode(),
        b"replication-offset": 1234,
        b"health": health.encode(),
    }
    fields.update((key.replace("_", "-").encode(), value) for key, value in extra.items())
    return fields


def shard(slots: list[int], *nodes: dict[bytes, Any]) -> dict[bytes, Any]:
    return {b"slots": slots, b"nodes": list(nodes)}


def slots_entry(first: int, last: int, *nodes: Node | list[Any]) -> list[Any]:
    """One CLUSTER SLOTS entry (Redis 7 node shape: host, port, id, extras)."""
    return [
        first,
        last,
        *(
            [n.host.encode(), n.port, b"%040x" % n.port, {}] if isinstance(n, Node) else n
            for n in nodes
        ),
    ]


def check_invariants(topology: Topology) -> None:
    """What every parsed topology guarantees."""
    previous = -1
    for first, last, master in topology.ranges:
        assert previous < first <= last < SLOTS
        assert topology.owner(first) == topology.owner(last) == master
        previous = last
    assert set(topology.replicas) == set(topology.masters)
    for master, replicas in topology.replicas.items():
        assert master not in replicas
        assert len(set(replicas)) == len(replicas)
    assert len(set(topology.nodes)) == len(topology.nodes)
    assert topology.owner(-1) is None
    assert topology.owner(SLOTS) is None


# ---------------------------------------------------------------- Node and Topology


@pytest.mark.parametrize(
    ("node", "text"),
    [
        (Node("10.0.0.1", 6379), "10.0.0.1:6379"),
        (Node("redis-0.example", 7000), "redis-0.example:7000"),
        (Node("::1", 6379), "[::1]:6379"),
        (Node("fe80::1:2", 1), "[fe80::1:2]:1"),
    ],
)
def test_a_node_prints_as_host_and_port(node: Node, text: str) -> None:
    assert str(node) == text


def test_owner_answers_from_the_ranges() -> None:
    topology = Topology(((0, 99, A), (100, 199, B), (300, SLOTS - 1, A)), {A: (C,), B: ()})
    assert [topology.owner(s) for s in (0, 99, 100, 199, 200, 299, 300, SLOTS - 1)] == [
        A, A, B, B, None, None, A, A,
    ]  # fmt: skip
    assert topology.owner(-1) is None
    assert topology.owner(SLOTS) is None
    assert topology.masters == (A, B)
    assert topology.nodes == (A, B, C)
    assert not topology.covers_all_slots
    assert Topology(((0, SLOTS - 1, A),)).covers_all_slots


def test_an_empty_topology_serves_nothing() -> None:
    topology = Topology(())
    assert topology.owner(0) is None
    assert topology.masters == topology.nodes == ()
    assert not topology.covers_all_slots
    assert dict(topology.replicas) == {}


def test_a_topology_is_immutable_hashable_and_compared_by_value() -> None:
    replicas = {A: [B]}
    topology = Topology(((0, SLOTS - 1, A),), replicas)  # type: ignore[arg-type]
    replicas[A].append(C)  # the topology took a copy
    assert topology.replicas[A] == (B,)
    with pytest.raises(TypeError):
        topology.replicas[A] = ()  # type: ignore[index]
    with pytest.raises(AttributeError):
        topology.ranges = ()  # type: ignore[misc]
    same = Topology(((0, SLOTS - 1, A),), {A: (B,)})
    assert topology == same
    assert hash(topology) == hash(same)
    assert len({topology, same}) == 1
    assert topology != Topology(((0, SLOTS - 1, A),), {A: ()})


@pytest.mark.parametrize(
    "ranges",
    [
        ((5, 4, A),),  # ends before it starts
        ((0, 10, A), (10, 20, B)),  # overlap
        ((100, 200, A), (0, 10, B)),  # unsorted
        ((-1, 10, A),),
        ((0, SLOTS, A),),
    ],
)
def test_a_topology_refuses_ranges_owner_could_not_bisect(
    ranges: tuple[tuple[int, int, Node], ...],
) -> None:
    with pytest.raises(ValueError, match="sorted, disjoint"):
        Topology(ranges)


# ---------------------------------------------------------------- CLUSTER SHARDS


@shapes
def test_shards_give_each_master_its_slots_and_online_replicas(shape: Callable[[Any], Any]) -> None:
    reply = [
        shard(
            [0, 5460, 10923, 12000],
            node_map(A, hostname=b"a.example", tls_port=17000),
            node_map(B, "replica"),
            node_map(C, "replica", "loading"),
        ),
        shard([5461, 10922], node_map(C)),
    ]
    topology = parse_cluster_shards(shape(reply), ASKED)
    assert topology.ranges == ((0, 5460, A), (5461, 10922, C), (10923, 12000, A))
    assert dict(topology.replicas) == {A: (B,), C: ()}
    assert topology.masters == (A, C)
    assert topology.nodes == (A, C, B)
    assert topology.owner(key_slot(b"foo")) is None  # 12182: no shard claims it
    assert topology.owner(key_slot(b"bar")) == A  # 5061
    check_invariants(topology)


def test_shards_ranges_of_one_master_are_merged_when_adjacent() -> None:
    reply = [shard([0, 99, 100, 199, 300, 399], node_map(A)), shard([200, 299], node_map(B))]
    assert parse_cluster_shards(reply, ASKED).ranges == (
        (0, 199, A),
        (200, 299, B),
        (300, 399, A),
    )


@pytest.mark.parametrize("health", ["failed", "loading", "something-new"])
def test_a_shard_without_an_online_master_leaves_its_slots_unserved(health: str) -> None:
    reply = [
        shard([0, 8191], node_map(A, health=health), node_map(B, "replica")),
        shard([8192, SLOTS - 1], node_map(C)),
    ]
    topology = parse_cluster_shards(reply, ASKED)
    assert topology.owner(0) is None
    assert topology.ranges == ((8192, SLOTS - 1, C),)
    assert dict(topology.replicas) == {C: ()}  # B's master serves nothing
    assert topology.nodes == (C,)
    assert not topology.covers_all_slots


def test_a_failed_master_next_to_its_promoted_replica_is_ignored() -> None:
    # After a failover Redis lists the old master, failed, in the same shard.
    reply = [shard([0, SLOTS - 1], node_map(A, "replica", "failed"), node_map(B))]
    topology = parse_cluster_shards(reply, ASKED)
    assert topology.ranges == ((0, SLOTS - 1, B),)
    assert dict(topology.replicas) == {B: ()}
    assert topology.covers_all_slots


def test_a_shard_without_slots_adds_no_master() -> None:
    reply = [shard([0, SLOTS - 1], node_map(A)), shard([], node_map(B), node_map(C, "replica"))]
    topology = parse_cluster_shards(reply, ASKED)
    assert topology.masters == (A,)
    assert topology.nodes == (A,)


def test_members_are_every_node_listed_with_or_without_slots_in_any_health() -> None:
    """Who is still in the cluster: slot-less nodes and failed ones too. CLUSTER SLOTS
    leaves slot-less nodes out, so it does not say; members are not compared."""
    reply = [
        shard([0, SLOTS - 1], node_map(A), node_map(ASKED, "replica", "loading")),
        shard([], node_map(B, health="failed"), node_map(C, "replica")),
    ]
    topology = parse_cluster_shards(reply, ASKED)
    assert topology.members == (A, ASKED, B, C)
    assert topology.nodes == (A,)
    assert topology == Topology(((0, SLOTS - 1, A),), {A: ()})
    assert parse_cluster_shards([], ASKED).members == ()
    assert parse_cluster_slots([slots_entry(0, SLOTS - 1, A, B)], ASKED).members is None


@pytest.mark.parametrize(
    ("endpoint", "ip", "host"),
    [
        ("redis-a.example", "10.9.9.9", "redis-a.example"),
        ("10.9.9.9", "10.9.9.9", "10.9.9.9"),
        ("?", "10.9.9.9", "10.9.9.9"),  # hostname preferred but not set
        ("", "10.9.9.9", "10.9.9.9"),
        ("", "", ASKED.host),  # the node has not learnt its own address
        ("?", "", ASKED.host),
        ("::1", "::1", "::1"),
    ],
)
def test_a_shard_node_host_is_its_endpoint_else_its_ip_else_the_asked_host(
    endpoint: str, ip: str, host: str
) -> None:
    reply = [shard([0, SLOTS - 1], node_map(A, endpoint=endpoint, ip=ip))]
    assert parse_cluster_shards(reply, ASKED).owner(0) == Node(host, A.port)


def test_the_tls_flag_picks_the_tls_port() -> None:
    both = [shard([0, SLOTS - 1], node_map(A, tls_port=17000))]
    assert parse_cluster_shards(both, ASKED).owner(0) == A
    assert parse_cluster_shards(both, ASKED, tls=True).owner(0) == Node(A.host, 17000)
    # A node with one port only (port 0 or tls-port 0 in its config) is reached on it.
    tls_only = node_map(A, tls_port=17000)
    del tls_only[b"port"]
    assert parse_cluster_shards([shard([0, 1], tls_only)], ASKED).owner(0) == Node(A.host, 17000)
    plain_only = [shard([0, 1], node_map(A))]
    assert parse_cluster_shards(plain_only, ASKED, tls=True).owner(0) == A


def test_shards_slots_as_bulk_strings_are_read() -> None:
    # Redis 7.0.0 and 7.2.0-7.2.1 sent the slot numbers as bulk strings.
    reply = [shard([b"0", b"16383"], node_map(A)), shard([], node_map(B))]
    assert parse_cluster_shards(flat(reply), ASKED).ranges == ((0, SLOTS - 1, A),)
    assert parse_cluster_shards(decoded(reply), ASKED).ranges == ((0, SLOTS - 1, A),)


def test_unknown_shard_and_node_fields_are_ignored() -> None:
    reply = [
        {
            b"slots": [0, SLOTS - 1],
            b"nodes": [node_map(A, availability_zone=b"eu-1c", future={b"x": [1]})],
            b"shard-id": b"0" * 40,
        }
    ]
    assert parse_cluster_shards(reply, ASKED).ranges == ((0, SLOTS - 1, A),)
    assert parse_cluster_shards(flat(reply), ASKED).ranges == ((0, SLOTS - 1, A),)


def test_an_empty_shards_reply_is_an_empty_topology() -> None:
    assert parse_cluster_shards([], ASKED) == Topology(())


# ---------------------------------------------------------------- CLUSTER SLOTS


@pytest.mark.parametrize("shape", [flat, lambda r: r, decoded], ids=["resp2", "resp3", "str"])
def test_slots_give_each_range_its_master_and_replicas(shape: Callable[[Any], Any]) -> None:
    reply = [
        slots_entry(0, 5460, A, B),
        slots_entry(5461, 10922, C),
        slots_entry(10923, SLOTS - 1, A, B, C),
    ]
    topology = parse_cluster_slots(shape(reply), ASKED)
    assert topology.ranges == ((0, 5460, A), (5461, 10922, C), (10923, SLOTS - 1, A))
    # One master's replicas are the union over its ranges, each once.
    assert dict(topology.replicas) == {A: (B, C), C: ()}
    assert topology.nodes == (A, C, B)
    assert topology.covers_all_slots
    check_invariants(topology)


def test_slots_adjacent_entries_of_one_master_are_merged() -> None:
    reply = [slots_entry(0, 10, A), slots_entry(11, 20, A), slots_entry(21, 30, B)]
    assert parse_cluster_slots(reply, ASKED).ranges == ((0, 20, A), (21, 30, B))


@pytest.mark.parametrize("host", [b"", None, ""])
def test_a_slots_node_without_a_host_is_the_asked_host(host: bytes | str | None) -> None:
    reply = [[0, SLOTS - 1, [host, 7000, b"id", []], [host, 7001, b"id2", []]]]
    topology = parse_cluster_slots(reply, ASKED)
    assert topology.owner(0) == Node(ASKED.host, 7000)
    assert topology.replicas[Node(ASKED.host, 7000)] == (Node(ASKED.host, 7001),)


def test_a_slots_node_with_an_unknown_endpoint_is_skipped() -> None:
    reply = [
        [0, 99, [b"?", 7000, b"id"], [A.host.encode(), A.port, b"id"]],
        [100, 199, [B.host.encode(), B.port, b"id"], [b"?", 7003, b"id"]],
    ]
    topology = parse_cluster_slots(reply, ASKED)
    assert topology.owner(0) is None  # its master cannot be reached: no owner
    assert topology.ranges == ((100, 199, B),)
    assert dict(topology.replicas) == {B: ()}


def test_slots_nodes_of_every_redis_version_are_read() -> None:
    reply = [
        [0, 99, [b"10.0.0.2", 7000]],  # Redis 3: host and port
        [100, 199, [b"10.0.0.3", 7001, b"id"]],  # Redis 4 to 6: and the id
        [200, 299, [b"10.0.0.4", 7002, b"id", [b"hostname", b"c.example"]]],  # Redis 7
        [300, 399, [b"10.0.0.4", 7002, b"id", {b"hostname": b"c.example"}]],  # RESP3
    ]
    assert parse_cluster_slots(reply, ASKED).ranges == ((0, 99, A), (100, 199, B), (200, 399, C))


def test_an_empty_slots_reply_is_an_empty_topology() -> None:
    assert parse_cluster_slots([], ASKED) == Topology(())


# ---------------------------------------------------------------- malformed replies

GOOD_NODE = node_map(A)


def without(fields: dict[bytes, Any], key: bytes) -> dict[bytes, Any]:
    return {k: v for k, v in fields.items() if k != key}


MALFORMED_SHARDS = {
    "not an array": (b"ERR unknown subcommand", "expected an array"),
    "an error object": (hiredis.ReplyError("ERR nope"), "expected an array"),
    "a shard not a map": ([[b"slots"]], "as many values as keys"),
    "a shard a string": ([b"slots"], "expected a map"),
    "no slots": ([{b"nodes": [GOOD_NODE]}], "no 'slots'"),
    "no nodes": ([{b"slots": [0, 1]}], "no 'nodes'"),
    "odd slots": ([shard([0, 1, 2], GOOD_NODE)], "start/end pairs"),
    "slot too big": ([shard([0, SLOTS], GOOD_NODE)], "outside 0..16383"),
    "slot negative": ([shard([-1, 5], GOOD_NODE)], "outside 0..16383"),
    "slot a float": ([shard([0.0, 5], GOOD_NODE)], "expected an integer"),
    "slot a bool": ([shard([False, 5], GOOD_NODE)], "expected an integer"),
    "slot not digits": ([shard([b"0x10", 5], GOOD_NODE)], "expected an integer"),
    "slot signed": ([shard([b"+1", 5], GOOD_NODE)], "expected an integer"),
    "slot huge digits": ([shard([b"9" * 400, 5], GOOD_NODE)], "expected an integer"),
    "start after end": ([shard([10, 5], GOOD_NODE)], "ends before it starts"),
    "overlap": (
        [shard([0, 100], GOOD_NODE), shard([100, 200], node_map(B))],
        "slot 100 appears in two ranges",
    ),
    "overlap with an unserved shard": (
        [shard([0, 100], node_map(A, health="failed")), shard([50, 60], node_map(B))],
        "appears in two ranges",
    ),
    "overlap within a shard": ([shard([0, 100, 50, 60], GOOD_NODE)], "two ranges"),
    "nodes not an array": ([{b"slots": [0, 1], b"nodes": 3}], "expected an array"),
    "no role": ([shard([0, 1], without(GOOD_NODE, b"role"))], "no 'role'"),
    "unknown role": ([shard([0, 1], node_map(A, "slave"))], "unknown role 'slave'"),
    "no health": ([shard([0, 1], without(GOOD_NODE, b"health"))], "no 'health'"),
    "health an int": ([shard([0, 1], node_map(A) | {b"health": 1})], "expected a string"),
    "no port": ([shard([0, 1], without(GOOD_NODE, b"port"))], "neither port nor tls-port"),
    "port zero": ([shard([0, 1], node_map(A) | {b"port": 0})], "outside 1..65535"),
    "port too big": ([shard([0, 1], node_map(A) | {b"port": 65536})], "outside 1..65535"),
    "tls-port bad": ([shard([0, 1], node_map(A) | {b"tls-port": -5})], "outside 1..65535"),
    "no ip": ([shard([0, 1], without(GOOD_NODE, b"ip"))], "no 'ip'"),
    "no endpoint": ([shard([0, 1], without(GOOD_NODE, b"endpoint"))], "no 'endpoint'"),
    "endpoint nil": ([shard([0, 1], node_map(A) | {b"endpoint": None})], "expected a string"),
    "host not utf-8": ([shard([0, 1], node_map(A) | {b"endpoint": b"\xff"})], "not UTF-8"),
    "id an int": ([shard([0, 1], node_map(A) | {b"id": 5})], "id: expected a string"),
    "hostname nil": ([shard([0, 1], node_map(A) | {b"hostname": None})], "hostname: expected"),
    "key not a string": ([{b"slots": [0, 1], b"nodes": [GOOD_NODE], 5: 1}], "expected a string"),
    "key twice": ([[b"slots", [0, 1], b"slots", [2, 3], b"nodes", [GOOD_NODE]]], "twice"),
    "key twice as bytes and str": (
        [{b"slots": [0, 1], "slots": [0, 1], b"nodes": [GOOD_NODE]}],
        "twice",
    ),
    "two online masters": ([shard([0, 1], GOOD_NODE, node_map(B))], "two online masters"),
}


@pytest.mark.parametrize(
    ("reply", "message"), list(MALFORMED_SHARDS.values()), ids=list(MALFORMED_SHARDS)
)
def test_malformed_shards_replies_are_protocol_errors(reply: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_cluster_shards(reply, ASKED)


MALFORMED_SLOTS = {
    "not an array": (None, "expected an array"),
    "an entry not an array": ([5], "expected an array"),
    "an entry without a master": ([[0, 1]], "expected start, end and a master"),
    "start not an int": ([[b"x", 1, [b"h", 1]]], "expected an integer"),
    "end too big": ([[0, SLOTS, [b"h", 1]]], "outside 0..16383"),
    "start after end": ([[9, 1, [b"h", 1]]], "ends before it starts"),
    "overlap": ([slots_entry(0, 10, A), slots_entry(5, 20, B)], "slot 5 appears in two ranges"),
    "overlap with an unknown master": (
        [[0, 10, [b"?", 1, b"id"]], slots_entry(10, 20, B)],
        "appears in two ranges",
    ),
    "a node not an array": ([[0, 1, b"10.0.0.2:7000"]], "expected an array"),
    "a node without a port": ([[0, 1, [b"h"]]], "expected host and port"),
    "port zero": ([[0, 1, [b"h", 0]]], "outside 1..65535"),
    "port too big": ([[0, 1, [b"h", 70000]]], "outside 1..65535"),
    "a replica's port bad": ([[0, 1, [b"h", 1], [b"r", -1]]], "replica 0 port"),
    "host an int": ([[0, 1, [7, 1]]], "expected a string"),
    "host not utf-8": ([[0, 1, [b"\xc3", 1]]], "not UTF-8"),
    "id an int": ([[0, 1, [b"h", 1, 5]]], "id: expected a string"),
    "metadata a string": ([[0, 1, [b"h", 1, b"id", b"x"]]], "not a map"),
}


@pytest.mark.parametrize(
    ("reply", "message"), list(MALFORMED_SLOTS.values()), ids=list(MALFORMED_SLOTS)
)
def test_malformed_slots_replies_are_protocol_errors(reply: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_cluster_slots(reply, ASKED)


def test_an_error_message_does_not_echo_a_huge_reply() -> None:
    reply = [shard([0, 1], node_map(A) | {b"health": [b"x" * 10_000] * 10_000})]
    with pytest.raises(ProtocolError) as caught:
        parse_cluster_shards(reply, ASKED)
    assert len(str(caught.value)) < 300


leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-2, max_value=70_000)
    | st.floats(allow_nan=False)
    | st.binary(max_size=6)
    | st.text(max_size=4)
    | st.sampled_from(
        [
            *(b"slots", b"nodes", b"role", b"master", b"replica", b"health", b"online"),
            *(b"port", b"tls-port", b"ip", b"endpoint", b"?", b"", b"16383", 0, 16383),
        ]
    )
)
garbage = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.binary(max_size=8) | st.sampled_from([b"slots", b"nodes"]), children)
    ),
    max_leaves=40,
)


def parse_or_refuse(parse: Callable[[Any, Node], Topology], reply: Any) -> Topology | None:
    """The parse's result, checked, or None if it raised ProtocolError. Anything else
    escaping fails the test."""
    try:
        topology = parse(reply, ASKED)
    except ProtocolError:
        return None
    check_invariants(topology)
    return topology


@settings(max_examples=200)
@given(reply=garbage)
def test_garbage_raises_nothing_but_protocol_error(reply: Any) -> None:
    parse_or_refuse(parse_cluster_shards, reply)
    parse_or_refuse(parse_cluster_slots, reply)


# ---------------------------------------------------------------- generated clusters

HOSTS = [ASKED.host, "10.0.0.2", "redis-b.example", "::1", "fe80::7"]


@dataclass
class Shard:
    master: Node
    health: str
    replicas: list[tuple[Node, str]]


@dataclass
class Cluster:
    """A cluster model: slot segments, each claimed by a shard (or by none)."""

    segments: list[tuple[int, int, int | None]]
    shards: list[Shard]

    def owners(self) -> list[Node | None]:
        owners: list[Node | None] = [None] * SLOTS
        for first, last, index in self.segments:
            if index is not None and self.shards[index].health == "online":
                owners[first : last + 1] = [self.shards[index].master] * (last - first + 1)
        return owners

    def expected_replicas(self) -> dict[Node, set[Node]]:
        serving = {owner for owner in self.owners() if owner is not None}
        return {
            shard.master: {node for node, health in shard.replicas if health == "online"}
            for shard in self.shards
            if shard.master in serving
        }


@st.composite
def clusters(draw: st.DrawFn, all_online: bool = False) -> Cluster:
    health = st.just("online") if all_online else st.sampled_from(["online", "online", "failed"])
    count = draw(st.integers(min_value=1, max_value=4))
    sizes = [draw(st.integers(min_value=0, max_value=3)) for _ in range(count)]
    ports = iter(range(7000, 7000 + count + sum(sizes)))
    shards = [
        Shard(
            Node(draw(st.sampled_from(HOSTS)), next(ports)),
            draw(health),
            [(Node(draw(st.sampled_from(HOSTS)), next(ports)), draw(health)) for _ in range(size)],
        )
        for size in sizes
    ]
    cuts = draw(st.lists(st.integers(min_value=1, max_value=SLOTS - 1), max_size=12, unique=True))
    bounds = [0, *sorted(cuts), SLOTS]
    claimants = st.integers(min_value=0, max_value=count - 1)
    claimant = claimants if all_online else claimants | st.none()
    segments = [(a, b - 1, draw(claimant)) for a, b in pairwise(bounds)]
    return Cluster(segments, shards)


@st.composite
def spelled_node(draw: st.DrawFn, node: Node, role: str, health: str) -> dict[bytes, Any]:
    """One shard node entry, in one of the ways Redis may spell its address."""
    spellings = [(node.host, node.host), ("?", node.host), ("", node.host)]
    if node.host == ASKED.host:
        spellings.append(("", ""))
    endpoint, ip = draw(st.sampled_from(spellings))
    extra: dict[str, Any] = {}
    if draw(st.booleans()):
        extra["tls_port"] = node.port + 10_000
    if draw(st.booleans()):
        extra["hostname"] = b"h.example"
    return node_map(node, role, health, endpoint=endpoint, ip=ip, **extra)


@st.composite
def shards_reply(draw: st.DrawFn, cluster: Cluster) -> list[Any]:
    reply = []
    for index, item in enumerate(cluster.shards):
        slots = [
            draw(st.sampled_from([bound, str(bound).encode()]))
            for first, last, claimant in cluster.segments
            if claimant == index
            for bound in (first, last)
        ]
        nodes = [draw(spelled_node(item.master, "master", item.health))]
        nodes += [draw(spelled_node(node, "replica", health)) for node, health in item.replicas]
        reply.append(shard(slots, *draw(st.permutations(nodes))))
    return draw(st.permutations(reply))


@st.composite
def slots_reply(draw: st.DrawFn, cluster: Cluster) -> list[Any]:
    """What CLUSTER SLOTS says of the same cluster (all online): one entry per range,
    or several adjacent ones."""

    def spelled(node: Node) -> list[Any]:
        host: bytes | None = node.host.encode()
        if node.host == ASKED.host:
            host = draw(st.sampled_from([host, b"", None]))
        return [host, node.port, b"%040x" % node.port, draw(st.sampled_from([[], {}]))]

    reply = []
    for first, last, claimant in cluster.segments:
        assert claimant is not None
        item = cluster.shards[claimant]
        cut = draw(st.integers(min_value=first, max_value=last))
        for a, b in ((first, cut), (cut + 1, last)):
            if a <= b:
                reply.append([a, b, spelled(item.master), *(spelled(n) for n, _ in item.replicas)])
    return draw(st.permutations(reply))


def runs(owners: list[Node | None]) -> tuple[tuple[int, int, Node], ...]:
    found: list[tuple[int, int, Node]] = []
    for slot, owner in enumerate(owners):
        if owner is None:
            continue
        if found and found[-1][2] == owner and found[-1][1] == slot - 1:
            found[-1] = (found[-1][0], slot, owner)
        else:
            found.append((slot, slot, owner))
    return tuple(found)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), cluster=clusters(), shape=st.sampled_from(list(SHAPES.values())))
def test_owner_agrees_with_a_brute_force_scan(
    data: st.DataObject, cluster: Cluster, shape: Callable[[Any], Any]
) -> None:
    topology = parse_cluster_shards(shape(data.draw(shards_reply(cluster))), ASKED)
    owners = cluster.owners()
    assert [topology.owner(slot) for slot in range(SLOTS)] == owners
    assert topology.ranges == runs(owners)
    assert topology.masters == tuple(dict.fromkeys(o for o in owners if o is not None))
    assert topology.covers_all_slots == (None not in owners)
    assert {m: set(r) for m, r in topology.replicas.items()} == cluster.expected_replicas()
    check_invariants(topology)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), cluster=clusters(all_online=True), resp3=st.booleans())
def test_shards_and_slots_of_one_cluster_give_one_topology(
    data: st.DataObject, cluster: Cluster, resp3: bool
) -> None:
    shape = (lambda r: r) if resp3 else flat
    from_shards = parse_cluster_shards(shape(data.draw(shards_reply(cluster))), ASKED)
    from_slots = parse_cluster_slots(shape(data.draw(slots_reply(cluster))), ASKED)
    assert from_slots.ranges == from_shards.ranges == runs(cluster.owners())
    assert {m: set(r) for m, r in from_slots.replicas.items()} == {
        m: set(r) for m, r in from_shards.replicas.items()
    }
    assert from_slots.covers_all_slots


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place inside a nested reply: list indexes and dict keys."""
    yield prefix
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))


def mutated(reply: Any, path: tuple[Any, ...], how: str, junk: Any) -> Any:
    """A copy of *reply* with the value at *path* replaced, dropped or doubled."""
    if not path:
        return junk
    head, *rest = path
    copy: Any = list(reply) if isinstance(reply, list) else dict(reply)
    if rest:
        copy[head] = mutated(reply[head], tuple(rest), how, junk)
    elif how == "replace":
        copy[head] = junk
    elif how == "drop":
        del copy[head]
    elif isinstance(copy, list):
        copy.insert(head, copy[head])
    else:
        copy[head] = [copy[head], copy[head]]
    return copy


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    cluster=clusters(),
    resp3=st.booleans(),
    how=st.sampled_from(["replace", "drop", "double"]),
    junk=garbage,
)
def test_a_damaged_shards_reply_raises_nothing_but_protocol_error(
    data: st.DataObject, cluster: Cluster, resp3: bool, how: str, junk: Any
) -> None:
    reply = data.draw(shards_reply(cluster))
    reply = reply if resp3 else flat(reply)
    path = data.draw(st.sampled_from(list(paths(reply))))
    parse_or_refuse(parse_cluster_shards, mutated(reply, path, how, junk))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    cluster=clusters(all_online=True),
    resp3=st.booleans(),
    how=st.sampled_from(["replace", "drop", "double"]),
    junk=garbage,
)
def test_a_damaged_slots_reply_raises_nothing_but_protocol_error(
    data: st.DataObject, cluster: Cluster, resp3: bool, how: str, junk: Any
) -> None:
    reply = data.draw(slots_reply(cluster))
    reply = reply if resp3 else flat(reply)
    path = data.draw(st.sampled_from(list(paths(reply))))
    parse_or_refuse(parse_cluster_slots, mutated(reply, path, how, junk))


# ---------------------------------------------------------------- real servers


def cluster_node(
    factory: RedisServerFactory, tmp_path: Path, name: str, *extra: str
) -> tuple[RedisServer, int]:
    """A cluster-mode server and its bus port. The bus port is chosen free: by default
    it is the data port + 10000, which the random data ports often push past 65535."""
    bus_port = free_port()
    server = factory(
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(tmp_path / f"{name}.conf"),
        "--cluster-port", str(bus_port),
        *extra,
    )  # fmt: skip
    return server, bus_port


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.01)


def cluster_ok(server: RedisServer) -> bool:
    # A master reports ok no sooner than 2 s after it started (CLUSTER_WRITABLE_DELAY).
    return b"cluster_state:ok" in server.command("CLUSTER", "INFO")


def resp3_replies(server: RedisServer, *commands: tuple[str, ...]) -> list[Any]:
    """The replies to *commands* on a connection switched to RESP3."""
    with server.connect() as sock:
        sock.sendall(b"".join(encode_command(*c) for c in (("HELLO", "3"), *commands)))
        hello, *replies = read_replies(sock, len(commands) + 1)
    assert hello[b"proto"] == 3
    return replies


def read_replies(sock: socket.socket, count: int) -> list[Any]:
    reader = hiredis.Reader()
    replies: list[Any] = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is False:
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            reader.feed(data)
        else:
            assert not isinstance(reply, hiredis.ReplyError), reply
            replies.append(reply)
    return replies


def real_replies(server: RedisServer) -> dict[str, Any]:
    shards3, slots3 = resp3_replies(server, ("CLUSTER", "SHARDS"), ("CLUSTER", "SLOTS"))
    return {
        "shards2": server.command("CLUSTER", "SHARDS"),
        "slots2": server.command("CLUSTER", "SLOTS"),
        "shards3": shards3,
        "slots3": slots3,
    }


def parse_real(replies: dict[str, Any], asked: Node) -> dict[str, Topology]:
    parse = {"shards": parse_cluster_shards, "slots": parse_cluster_slots}
    return {name: parse[name[:-1]](reply, asked) for name, reply in replies.items()}


@pytest.mark.server_feature("cluster-shards")
def test_a_real_single_node_cluster(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    server, _ = cluster_node(redis_server_factory, tmp_path, "nodes")
    assert server.command("CLUSTER", "ADDSLOTSRANGE", 0, SLOTS - 1) == b"OK"
    wait_until(lambda: cluster_ok(server), "cluster_state:ok")
    replies = real_replies(server)
    # A node alone has never learnt its own address: it reports none at all.
    assert isinstance(replies["shards3"][0], dict)
    assert replies["shards3"][0][b"nodes"][0][b"ip"] == b""
    assert replies["slots2"][0][2][0] == b""
    # So the host is the one it was asked on, whatever that was.
    asked = Node("localhost", server.port)
    expected = Topology(((0, SLOTS - 1, asked),), {asked: ()})
    assert parse_real(replies, asked) == dict.fromkeys(replies, expected)
    assert expected.covers_all_slots


@pytest.mark.server_feature("cluster-shards")
def test_a_real_master_and_replica(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    # Replicas sync at once instead of waiting 5 s for more replicas to join, and the
    # master pings them every second: a replica is "loading" until its offset moves.
    fast_sync = ("--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1")
    master, master_bus = cluster_node(redis_server_factory, tmp_path, "master", *fast_sync)
    replica, _ = cluster_node(redis_server_factory, tmp_path, "replica", *fast_sync)
    master.command("CLUSTER", "ADDSLOTSRANGE", 0, SLOTS - 1)
    replica.command("CLUSTER", "MEET", master.host, master.port, master_bus)
    master_id = master.command("CLUSTER", "MYID")

    def replicating() -> bool:
        reply = replica.command("CLUSTER", "REPLICATE", master_id, check=False)
        return not isinstance(reply, hiredis.ReplyError)  # "Unknown node" until the MEET

    wait_until(replicating, "CLUSTER REPLICATE")

    def known(server: RedisServer) -> list[list[tuple[bytes, bytes]]]:
        """(health, ip) of each node of each shard, read from the raw reply: the parser
        under test must not decide when to test it."""
        shards = [
            dict(zip(s[::2], s[1::2], strict=True)) for s in server.command("CLUSTER", "SHARDS")
        ]
        return [
            [
                (f[b"health"], f[b"ip"])
                for f in (dict(zip(n[::2], n[1::2], strict=True)) for n in s[b"nodes"])
            ]
            for s in shards
        ]

    # Both views converged: one shard, both nodes online, their addresses learnt.
    settled = [[(b"online", b"127.0.0.1")] * 2]
    wait_until(
        lambda: all(cluster_ok(s) and known(s) == settled for s in (master, replica)),
        "both nodes ok, the replica synced",
    )
    m, r = Node(master.host, master.port), Node(replica.host, replica.port)
    expected = Topology(((0, SLOTS - 1, m),), {m: (r,)})
    for server in (master, replica):
        replies = real_replies(server)
        # The nodes have met: each knows both addresses, so the asked host is unused.
        assert parse_real(replies, Node("unused", 1)) == dict.fromkeys(replies, expected)
    assert expected.nodes == (m, r)
