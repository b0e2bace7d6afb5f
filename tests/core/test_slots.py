"""Hash slots: key_slot agrees with Redis' CLUSTER KEYSLOT; the core batches shard names by slot."""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from pathlib import Path

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from redis_servers import RedisServer, RedisServerFactory, encode_command, free_port
from redismpx_core import MultiplexerCore, SubscriptionKind
from redismpx_core._slots import SLOTS, key_slot


def _reference_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = (crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


REFERENCE_TABLE = _reference_table()


def reference_crc16(data: bytes) -> int:
    """CRC16/XMODEM, table-driven as in Redis' crc16.c: an independent check of the
    C routine key_slot relies on."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFF00) ^ REFERENCE_TABLE[(crc >> 8) ^ byte]
    return crc


def reference_slot(name: bytes) -> int:
    """keyHashSlot() of Redis' cluster.c, transcribed loop for loop."""
    start = next((i for i, byte in enumerate(name) if byte == ord("{")), None)
    if start is None:
        return reference_crc16(name) & 0x3FFF
    end = next((i for i in range(start + 1, len(name)) if name[i] == ord("}")), None)
    if end is None or end == start + 1:
        return reference_crc16(name) & 0x3FFF
    return reference_crc16(name[start + 1 : end]) & 0x3FFF


# ---------------------------------------------------------------- known values


def test_the_crc_is_xmodem() -> None:
    # The check value of CRC-16/XMODEM, and the one Redis' crc16.c tests itself with.
    assert reference_crc16(b"123456789") == 0x31C3
    assert key_slot(b"123456789") == 0x31C3 & (SLOTS - 1)


@pytest.mark.parametrize(
    ("name", "slot"),
    [
        (b"foo", 12182),
        (b"bar", 5061),
        (b"", 0),
        (b"123456789", 12739),
        (b"user1000", 3443),
        (b"{user1000}.following", 3443),
        (b"{user1000}.followers", 3443),
    ],
)
def test_known_slots(name: bytes, slot: int) -> None:
    assert key_slot(name) == slot


@pytest.mark.parametrize(
    ("name", "hashed"),
    [
        (b"{user1000}.following", b"user1000"),
        (b"foo{}{bar}", b"foo{}{bar}"),  # an empty first tag: the whole name
        (b"foo{{bar}}zap", b"{bar"),  # the first "{", then the first "}" after it
        (b"foo{bar}{zap}", b"bar"),  # only the first tag counts
        (b"foo{bar", b"foo{bar"),  # never closed: the whole name
        (b"foo}bar{", b"foo}bar{"),  # a "}" before the "{" closes nothing
        (b"}{x}", b"x"),
        (b"{}", b"{}"),
        (b"{", b"{"),
        (b"a{\x00\xff}b", b"\x00\xff"),
    ],
)
def test_hash_tags_follow_redis_rules(name: bytes, hashed: bytes) -> None:
    assert key_slot(name) == reference_crc16(hashed) & 0x3FFF


def test_names_sharing_a_tag_share_a_slot() -> None:
    slot = key_slot(b"user1000")
    assert key_slot(b"{user1000}.following") == slot
    assert key_slot(b"{user1000}.followers") == slot
    assert key_slot(b"x{user1000}y{other}") == slot
    assert key_slot(b"foo{bar}{zap}") == key_slot(b"bar")
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")


# ---------------------------------------------------------------- properties

names = st.binary(max_size=64) | st.lists(
    st.sampled_from([b"{", b"}", b"a", b"\x00", b"\xff", b"tag"]), max_size=12
).map(b"".join)


@given(names)
def test_key_slot_matches_the_reference_implementation(name: bytes) -> None:
    slot = key_slot(name)
    assert slot == reference_slot(name)
    assert 0 <= slot < SLOTS


@given(
    prefix=st.binary(max_size=16).filter(lambda b: b"{" not in b),
    tag=st.binary(min_size=1, max_size=16).filter(lambda b: b"}" not in b),
    suffix=st.binary(max_size=16),
)
def test_a_non_empty_tag_is_all_that_is_hashed(prefix: bytes, tag: bytes, suffix: bytes) -> None:
    assert key_slot(prefix + b"{" + tag + b"}" + suffix) == key_slot(tag)


@given(st.lists(names.filter(bool), max_size=40))
def test_shard_names_are_subscribed_in_batches_of_one_slot(given_names: list[bytes]) -> None:
    """The core's flush partitions shard names by slot (Redis Cluster refuses a command
    whose names span slots): every name once, in the order given, each batch within
    one slot, and the batches in the order of their slot's first name."""
    core: MultiplexerCore[None, None] = MultiplexerCore(
        random=lambda: 0.5, health_check_interval=None
    )
    core.connection_made(0.0)
    core.data_to_send()
    core.receive_data(b"+PONG\r\n", 0.0)
    core.add(core.open_subscription(SubscriptionKind.SHARD, None), given_names)
    reader = hiredis.Reader()
    reader.feed(core.data_to_send())
    batches: list[list[bytes]] = []
    while (command := reader.gets()) is not False:
        assert command[0] == b"SSUBSCRIBE"
        batches.append(command[1:])
    wanted = list(dict.fromkeys(given_names))
    assert sorted(n for batch in batches for n in batch) == sorted(wanted)
    for batch in batches:
        slot = key_slot(batch[0])
        assert batch == [n for n in wanted if key_slot(n) == slot]
    assert [key_slot(batch[0]) for batch in batches] == list(
        dict.fromkeys(key_slot(n) for n in wanted)
    )


# ---------------------------------------------------------------- against Redis


def server_slots(server: RedisServer, names: Sequence[bytes]) -> list[int]:
    """CLUSTER KEYSLOT of every name, pipelined on one connection."""
    with server.connect() as sock:
        sock.sendall(b"".join(encode_command("CLUSTER", "KEYSLOT", n) for n in names))
        return read_replies(sock, len(names))


def read_replies(sock: socket.socket, count: int) -> list[int]:
    reader = hiredis.Reader()
    replies: list[int] = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is False:
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            reader.feed(data)
            continue
        assert isinstance(reply, int), reply
        replies.append(reply)
    return replies


def tricky_names(count: int, seed: int = 16384) -> list[bytes]:
    """Random binary names, most of them with braces in them."""
    rng = random.Random(seed)
    pieces = [b"{", b"}", b"{}", b"user", b"\x00", b"\r\n", b"\xff\xfe", b" "]
    found = [b"", b"{", b"}", b"{}", b"{{}}", b"}{", b"a{b}c", b"{a}{b}", b"foo{{bar}}zap"]
    while len(found) < count:
        if rng.random() < 0.3:
            found.append(rng.randbytes(rng.randrange(0, 40)))
        else:
            found.append(
                b"".join(
                    rng.choice(pieces) if rng.random() < 0.5 else rng.randbytes(rng.randrange(3))
                    for _ in range(rng.randrange(1, 10))
                )
            )
    return found


@pytest.mark.server_feature("cluster-shards")
def test_key_slot_agrees_with_cluster_keyslot(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    # KEYSLOT needs cluster mode. The bus port is chosen free: by default it is the
    # data port + 10000, which the random data ports often push past 65535.
    server = redis_server_factory(
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(tmp_path / "nodes.conf"),
        "--cluster-port", str(free_port()),
    )  # fmt: skip
    names = tricky_names(600)
    assert sum(b"{" in n and b"}" in n for n in names) > 100
    expected = server_slots(server, names)
    assert [key_slot(n) for n in names] == expected
    assert len(set(expected)) > 300  # the names are spread: nothing is trivially constant
