"""Hostile servers: what the core does with bytes it did not expect.

The contract (SPEC 3.14): malformed or unexpected bytes from the server raise only
``ProtocolError`` (or ``ServerError`` for an error reply nobody asked for) from
``receive_data``; the driver then calls ``connection_lost``, which returns a list
of events, and the next connection starts clean. Nothing else may escape: no
IndexError, TypeError, KeyError, RecursionError, MemoryError... And a server cannot
make the core buffer without bound.
"""

from __future__ import annotations

import weakref
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.fake_redis import FakeRedis, Map, Push, RespError, Simple, encode
from redismpx_core import (
    ConnectionEstablished,
    ConnectionLost,
    ConnectionState,
    MessagesReceived,
    MultiplexerCore,
    NameRejected,
    NamesActivated,
    PromiseExpired,
    PromiseFailed,
    PromiseFulfilled,
    PromiseInterrupted,
    ProtocolError,
    PublishCompleted,
    PublishFailed,
    ServerError,
    SubscriptionDisconnected,
    SubscriptionHandle,
    SubscriptionKind,
)
from server_matrix import examples

EVENT_TYPES = (
    ConnectionEstablished,
    MessagesReceived,
    NamesActivated,
    NameRejected,
    SubscriptionDisconnected,
    PromiseFulfilled,
    PromiseExpired,
    PromiseFailed,
    PublishCompleted,
    PublishFailed,
)

FUZZ = settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


#: The subscriptions each core of connected_core() was given.
SUBSCRIPTIONS: weakref.WeakKeyDictionary[MultiplexerCore, list[SubscriptionHandle]] = (
    weakref.WeakKeyDictionary()
)


def connected_core(protocol: int, *, ready: bool = True, **options: Any) -> MultiplexerCore:
    """A core that talked to FakeRedis until its names were active and a promise pending
    (``ready``), or that has just sent its handshake (``not ready``)."""
    options.setdefault("random", lambda: 0.5)
    options.setdefault("client_name", "fuzz")  # a handshake under RESP2 too
    core = MultiplexerCore(protocol=protocol, **options)
    fake = FakeRedis()
    conn = fake.connect()
    assert core.connection_made(0.0) == []
    assert core.state is ConnectionState.HANDSHAKING
    channels = core.open_subscription(SubscriptionKind.CHANNEL, "C")
    core.add(channels, [b"a", b"b"])
    patterns, _ = core.open_pattern_subscription(b"p*", "P")
    shards = core.open_subscription(SubscriptionKind.SHARD, "S")
    core.add(shards, [b"s"])
    promises, _ = core.open_promise_subscription(b"pr", "R")
    SUBSCRIPTIONS[core] = [channels, patterns, shards, promises]
    if not ready:
        conn.feed(core.data_to_send())
        return core
    events: list[Any] = []
    while data := core.data_to_send():
        conn.feed(data)
        events += core.receive_data(conn.take(), 0.0)
    assert events[0] == ConnectionEstablished()
    assert sum(len(e.names) for e in events if isinstance(e, NamesActivated)) == 5
    core.new_promise(promises, b"1", 100.0, 0.0, "promise")
    assert core.state.value == "ready"
    return core


def feed_all(core: MultiplexerCore, chunks: list[bytes]) -> ProtocolError | ServerError | None:
    """Feed chunks until one raises; only the documented errors may. Returns the error."""
    for chunk in chunks:
        try:
            events = core.receive_data(chunk, 1.0)
        except (ProtocolError, ServerError) as exc:
            assert core.state is ConnectionState.BROKEN
            return exc
        assert isinstance(events, list)
        assert all(isinstance(e, EVENT_TYPES) for e in events)
    return None


def lose_and_check(core: MultiplexerCore, error: ProtocolError | ServerError | None) -> None:
    """connection_lost after the error: a list of events; the core is reusable."""
    lost = error if error is not None else ConnectionLost("end of test")
    assert isinstance(lost, ConnectionLost | ServerError)
    events = core.connection_lost(lost)
    assert isinstance(events, list)
    assert all(isinstance(e, EVENT_TYPES) for e in events)
    assert core.state is ConnectionState.DISCONNECTED
    # The promise fails with the loss, unless a message fulfilled it first.
    settled = [e for e in events if isinstance(e, PromiseFailed)]
    assert all(isinstance(e.error, PromiseInterrupted) for e in settled)
    # The next connection starts clean: a new reader, and every name still held (a
    # refusal in the fuzzed bytes may have dropped some) subscribed again.
    assert core.connection_made(2.0) == []
    reader = hiredis.Reader()
    reader.feed(core.data_to_send())
    sent: dict[bytes, set[bytes]] = {}
    while (command := reader.gets()) is not False:
        sent.setdefault(command[0], set()).update(command[1:])
    held: dict[bytes, set[bytes]] = {}
    for sub in SUBSCRIPTIONS.get(core, []):
        verb = {"channel": b"SUBSCRIBE", "shard": b"SSUBSCRIBE"}.get(sub.kind.value, b"PSUBSCRIBE")
        held.setdefault(verb, set()).update(sub.names)
    assert {verb: names for verb, names in sent.items() if b"SUBSCRIBE" in verb} == {
        verb: names for verb, names in held.items() if names
    }
    assert held[b"SUBSCRIBE"] == {b"a", b"b"}  # channels are never refused here


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = []
    last = 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return [p for p in pieces if p] or [data]


# --------------------------------------------------------------------------- arbitrary bytes

# Pieces of RESP, so that random concatenations get past the first byte often.
FRAGMENTS = [
    b"*3\r\n",
    b"*4\r\n",
    b"*1\r\n",
    b"*0\r\n",
    b"*-1\r\n",
    b">3\r\n",
    b">4\r\n",
    b">0\r\n",
    b"%1\r\n",
    b"~1\r\n",
    b"|1\r\n",
    b"$7\r\nmessage\r\n",
    b"$8\r\npmessage\r\n",
    b"$8\r\nsmessage\r\n",
    b"$9\r\nsubscribe\r\n",
    b"$11\r\nunsubscribe\r\n",
    b"$10\r\npsubscribe\r\n",
    b"$12\r\nsunsubscribe\r\n",
    b"$1\r\na\r\n",
    b"$2\r\np*\r\n",
    b"$1\r\ns\r\n",
    b"$3\r\npr1\r\n",
    b"$-1\r\n",
    b"$0\r\n\r\n",
    b":1\r\n",
    b":-1\r\n",
    b"_\r\n",
    b"#t\r\n",
    b",1.5\r\n",
    b"(12345678901234567890\r\n",
    b"+OK\r\n",
    b"+PONG\r\n",
    b"-ERR x\r\n",
    b"-NOPERM no\r\n",
    b"-WRONGPASS no\r\n",
    b"=7\r\ntxt:abc\r\n",
    b"\r\n",
    b"%1\r\n*0\r\n:1\r\n",  # a map with an unhashable key
    b"$99999999999999999999\r\n",
]

byte_soup = st.lists(
    st.one_of(st.binary(max_size=24), st.sampled_from(FRAGMENTS)), min_size=1, max_size=24
).map(b"".join)


@FUZZ
@given(
    protocol=st.sampled_from([2, 3]),
    ready=st.booleans(),
    data=byte_soup,
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_arbitrary_bytes_raise_only_protocol_or_server_errors(
    protocol: int, ready: bool, data: bytes, cuts: list[int]
) -> None:
    core = connected_core(protocol, ready=ready)
    error = feed_all(core, split(data, cuts))
    lose_and_check(core, error)


@FUZZ
@given(protocol=st.sampled_from([2, 3]), data=st.binary(min_size=1, max_size=200))
def test_random_binary_then_valid_traffic(protocol: int, data: bytes) -> None:
    """Whatever random bytes did, a new connection works normally afterwards."""
    core = connected_core(protocol)
    error = feed_all(core, [data])
    core.connection_lost(error if error is not None else ConnectionLost("x"))
    fake = FakeRedis()
    conn = fake.connect()
    core.connection_made(3.0)
    events: list[Any] = []
    while out := core.data_to_send():
        conn.feed(out)
        events += core.receive_data(conn.take(), 3.0)
    assert ConnectionEstablished() in events
    assert fake.channels() == {b"a", b"b"}
    fake.publish(b"a", b"after")
    assert core.receive_data(conn.take(), 4.0) == [MessagesReceived(("C",), b"a", None, [b"after"])]


# --------------------------------------------------------------------------- valid RESP


PUBSUB_WORDS = [
    b"message",
    b"pmessage",
    b"smessage",
    b"subscribe",
    b"unsubscribe",
    b"psubscribe",
    b"punsubscribe",
    b"ssubscribe",
    b"sunsubscribe",
    b"pong",
    b"invalidate",
]
NAMES = [b"a", b"b", b"p*", b"s", b"pr1", b"zz", b""]


def leaves(protocol: int) -> st.SearchStrategy[Any]:
    base = [
        st.sampled_from(PUBSUB_WORDS + NAMES),
        st.binary(max_size=12),
        st.integers(-(2**63), 2**63 - 1),
        st.none(),
        st.builds(Simple, st.sampled_from([b"OK", b"PONG", b"QUEUED", b""])),
        st.builds(RespError, st.sampled_from(["ERR x", "NOPERM no", "WRONGPASS y", "E"])),
    ]
    if protocol == 3:
        base += [st.booleans(), st.floats(allow_nan=False)]
    return st.one_of(*base)


def resp_values(protocol: int) -> st.SearchStrategy[Any]:
    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        kinds = [
            st.lists(children, max_size=5),
            st.lists(children, max_size=5).map(Push),
            # Pub/Sub-shaped frames: a known word first, anything after.
            st.tuples(st.sampled_from(PUBSUB_WORDS), st.lists(children, max_size=4)).map(
                lambda t: Push([t[0], *t[1]])
            ),
            st.tuples(st.sampled_from(PUBSUB_WORDS), st.lists(children, max_size=4)).map(
                lambda t: [t[0], *t[1]]
            ),
            st.dictionaries(
                st.one_of(st.binary(max_size=6), st.integers(0, 9)), children, max_size=3
            ).map(Map),
        ]
        if protocol == 3:
            kinds.append(st.sets(st.binary(max_size=4), max_size=3))
        return st.one_of(*kinds)

    return st.recursive(leaves(protocol), extend, max_leaves=12)


@st.composite
def resp_stream(draw: st.DrawFn, protocol: int) -> tuple[bytes, list[Any]]:
    values = draw(st.lists(resp_values(protocol), min_size=1, max_size=8))
    return b"".join(encode(v, protocol) for v in values), values


@settings(FUZZ, max_examples=200)
@given(data=st.data(), protocol=st.sampled_from([2, 3]), ready=st.booleans())
def test_structured_resp_raises_only_protocol_or_server_errors(
    data: st.DataObject, protocol: int, ready: bool
) -> None:
    stream, _ = data.draw(resp_stream(protocol))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    core = connected_core(protocol, ready=ready)
    error = feed_all(core, split(stream, cuts))
    lose_and_check(core, error)


@settings(max_examples=100, deadline=None)
@given(
    protocol=st.sampled_from([2, 3]),
    payloads=st.lists(st.binary(max_size=30), min_size=1, max_size=10),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_valid_messages_in_any_chunking_are_delivered(
    protocol: int, payloads: list[bytes], cuts: list[int]
) -> None:
    """The positive control for the fuzzing above: real messages, split anywhere."""
    core = connected_core(protocol)
    stream = b"".join(encode(Push([b"message", b"a", p]), protocol) for p in payloads)
    stream += encode(Push([b"pmessage", b"p*", b"pr1", b"last"]), protocol)
    stream += encode(Push([b"pmessage", b"pr*", b"pr1", b"promised"]), protocol)
    got: list[Any] = []
    for chunk in split(stream, cuts):
        for event in core.receive_data(chunk, 1.0):
            if isinstance(event, MessagesReceived):  # a run ends with its chunk
                got += [
                    (event.subscribers, event.channel, event.pattern, p) for p in event.payloads
                ]
            else:
                got.append(event)
    assert got == [
        *((("C",), b"a", None, p) for p in payloads),
        (("P",), b"pr1", b"p*", b"last"),
        PromiseFulfilled("promise", b"promised"),
    ]


# --------------------------------------------------------------------------- bounds


@settings(max_examples=60, deadline=None)
@given(
    protocol=st.sampled_from([2, 3]),
    max_frame_size=st.integers(1024, 64 * 1024),
    chunk=st.integers(64, 9000),
    before=st.lists(st.binary(max_size=40), max_size=3),
)
def test_huge_bulk_is_refused_once_past_max_frame_size(
    protocol: int, max_frame_size: int, chunk: int, before: list[bytes]
) -> None:
    """A bulk header of 2**40 bytes, then data: ProtocolError once the bytes held for the
    incomplete frame pass max_frame_size, and not before; what was held then is at
    most max_frame_size plus one chunk, plus the 1 KiB of consumed input hiredis may
    keep (the slack FrameReader documents)."""
    core = connected_core(protocol, max_frame_size=max_frame_size)
    # Complete frames first, in the same chunk as the header, so that the bound is
    # measured from a frame boundary inside a chunk.
    head = b"".join(encode(Push([b"message", b"a", p]), protocol) for p in before)
    header = b"$1099511627776\r\n"
    events = core.receive_data(head + header, 1.0)
    assert len(events) == (1 if before else 0)
    held = len(header)
    refused: ProtocolError | None = None
    while held <= max_frame_size + chunk + 1024:
        try:
            core.receive_data(b"x" * chunk, 1.0)
        except ProtocolError as exc:
            refused = exc
            break
        held += chunk
    held += chunk  # the chunk that was refused had been fed too
    assert refused is not None, f"no error after {held} bytes (max_frame_size {max_frame_size})"
    assert "max_frame_size" in str(refused)
    assert held > max_frame_size, "refused a frame still within max_frame_size"
    assert held <= max_frame_size + chunk + 1023
    lose_and_check(core, ProtocolError("bound"))


@settings(max_examples=60, deadline=None)
@given(
    protocol=st.sampled_from([2, 3]),
    max_frame_size=st.integers(1024, 16 * 1024),
    slack=st.integers(0, 200),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
    first=st.booleans(),
)
def test_frames_within_max_frame_size_are_never_refused(
    protocol: int, max_frame_size: int, slack: int, cuts: list[int], first: bool
) -> None:
    """A frame of up to max_frame_size bytes is accepted however it is split: between
    other frames, and (``first``) as the very first bytes of a connection, where the
    core's count of the incomplete frame is exact."""
    target = size = max_frame_size - slack
    while len(big := encode(Push([b"message", b"a", b"y" * size]), protocol)) > target:
        size -= 1
    assert max_frame_size - slack - 2 <= len(big) <= max_frame_size - slack
    if first:
        # The big frame is the first thing the reader sees (a message for a name not
        # confirmed yet: dropped, but parsed and counted).
        core = MultiplexerCore(random=lambda: 0.5, protocol=protocol, max_frame_size=max_frame_size)
        core.connection_made(0.0)
        for piece in split(big, [*cuts, len(big) - 1]):  # all but the last byte held
            assert core.receive_data(piece, 1.0) == []
        return
    core = connected_core(protocol, max_frame_size=max_frame_size)
    small = encode(Push([b"message", b"b", b"small"]), protocol)
    got: list[Any] = []
    for piece in split(small + big + small, cuts):
        got += core.receive_data(piece, 1.0)
    assert [len(p) for e in got for p in e.payloads] == [5, size, 5]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("chunk", [None, 4, 4096])
def test_deep_nesting_is_a_protocol_error(protocol: int, chunk: int | None) -> None:
    core = connected_core(protocol)
    data = b"*1\r\n" * 10_000
    chunks = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    error = feed_all(core, chunks)
    assert isinstance(error, ProtocolError)
    lose_and_check(core, error)


@pytest.mark.parametrize("protocol", [2, 3])
def test_error_reply_nobody_asked_for_is_a_server_error(protocol: int) -> None:
    core = connected_core(protocol)
    error = feed_all(core, [b"-ERR max number of clients reached\r\n"])
    assert type(error) is ServerError
    assert error.code == "ERR"
    lose_and_check(core, error)
