"""Bad input: refused where it is given, with python-socketio's own error where it has
one, and nothing half-done (nothing published, no sequence number spent); and what
arrives on the channel that is not a Socket.IO event is counted, logged and skipped."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import socketio

from frameworks.socketio.deploy import ROOM, deployment, wait_until
from redis_servers import RedisServer, encode_command
from redismpx_socketio import SEQUENCE_KEY, ClusterMultiplexerManager, MultiplexerManager

pytestmark = pytest.mark.anyio

MARKER = b"--marker--"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"url": "http://localhost"}, ValueError, "scheme"),
        ({"url": "redis://localhost:99999"}, ValueError, "port"),
        ({"channel": b"socketio"}, TypeError, "channel must be a str"),
        ({"channel": ""}, ValueError, "channel must not be empty"),
        ({"overflow": "close"}, ValueError, "drop-oldest"),
        ({"overflow": "sometimes"}, ValueError, "overflow"),
        ({"buffer_size": 0}, ValueError, "buffer_size"),
        ({"health_check_intervall": 5}, TypeError, "did you mean 'health_check_interval'"),
        ({"redis_options": {"socket_timeout": 5}}, TypeError, "redis_options"),
        ({"publish_timeout": 0}, ValueError, "publish_timeout"),
        ({"publish_timeout": float("inf")}, ValueError, "publish_timeout"),
        ({"publish_timeout": "5"}, TypeError, "publish_timeout"),
        ({"publish_timeout": True}, TypeError, "publish_timeout"),
    ],
)
def test_construction_refuses_bad_options(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        MultiplexerManager(**kwargs)


def test_cluster_construction_refuses_bad_options() -> None:
    with pytest.raises(ValueError, match="database 0"):
        ClusterMultiplexerManager(["redis://127.0.0.1:7000/3"])
    with pytest.raises(TypeError, match="channel"):
        ClusterMultiplexerManager(["redis://127.0.0.1:7000"], channel=7)


def test_stock_manager_accepts_a_bad_url_until_it_is_used() -> None:
    """For comparison: the stock manager takes the same URL and fails only on first use."""
    socketio.AsyncRedisManager("http://localhost")


# --------------------------------------------------------------------------- emits


@pytest.fixture
def channel_watch(redis_server: RedisServer) -> Iterator[tuple[str, Any]]:
    """A raw subscriber of a channel of its own: ``published()`` returns every message
    published on it since the last call (a marker published last tells where to stop)."""
    channel = "socketio-bad-input"
    sock = redis_server.connect(timeout=5)
    reader = hiredis.Reader()

    def read() -> Any:
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            reader.feed(sock.recv(1 << 16))

    sock.sendall(encode_command("SUBSCRIBE", channel))
    read()

    def published() -> list[bytes]:
        redis_server.command("PUBLISH", channel, MARKER)
        found = []
        while (message := read()[2]) != MARKER:
            found.append(message)
        return found

    try:
        yield channel, published
    finally:
        sock.close()


async def test_callback_without_a_server_is_python_socketios_runtime_error(
    redis_server: RedisServer, channel_watch: tuple[str, Any]
) -> None:
    channel, published = channel_watch
    emitter = MultiplexerManager(redis_server.url, channel=channel, write_only=True)
    try:
        with pytest.raises(RuntimeError, match="context of a server"):
            await emitter.emit("news", "x", room=ROOM, callback=lambda *args: None)
        assert published() == []
        await emitter.emit("news", "fine", room=ROOM)
        (sent,) = published()
        # No sequence number was spent on the refused calls.
        assert json.loads(sent)[SEQUENCE_KEY] == 1
    finally:
        await emitter.close()


async def test_callback_without_a_room_is_python_socketios_value_error(
    redis_server: RedisServer, channel_watch: tuple[str, Any]
) -> None:
    channel, published = channel_watch
    manager = MultiplexerManager(redis_server.url, channel=channel)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
    try:
        with pytest.raises(ValueError, match="without a room"):
            await sio.emit("news", "x", callback=lambda *args: None)
        assert published() == []
        await sio.emit("news", "fine", to=ROOM)
        (sent,) = published()
        assert json.loads(sent)[SEQUENCE_KEY] == 1
    finally:
        await manager.close()


async def test_data_json_cannot_carry_is_refused_at_the_call(
    redis_server: RedisServer, channel_watch: tuple[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    channel, published = channel_watch
    emitter = MultiplexerManager(redis_server.url, channel=channel, write_only=True)
    try:
        with pytest.raises(TypeError, match="not JSON serializable"):
            await emitter.emit("news", {"when": object()}, room=ROOM)
        assert published() == []
        stats = emitter.statistics()
        assert (stats.emits_published, stats.emits_failed) == (0, 0)
        await emitter.emit("news", "fine", room=ROOM)
        (sent,) = published()
        assert json.loads(sent)[SEQUENCE_KEY] == 1
    finally:
        await emitter.close()
    # The stock manager, for comparison: the same call returns, the error is logged as
    # a Redis failure, and nothing is published.
    stock = socketio.AsyncRedisManager(redis_server.url, channel=channel, write_only=True)
    with caplog.at_level(logging.ERROR, logger="socketio"):
        await stock.emit("news", {"when": object()}, room=ROOM)
    assert published() == []
    print(f"\nstock manager on unserialisable data: returned; logged {caplog.messages!r}")


# --------------------------------------------------------------------------- from Redis

MALFORMED = [
    b"\xff\xfe not utf-8",
    b"plain text",
    b"[1, 2, 3]",
    b'"method"',
    b'{"no": "method"}',
    b'{"method": 5}',
    b"[" * 100_000 + b"]" * 100_000,  # nested deeper than the JSON module recurses
]


async def test_what_is_not_an_event_is_counted_and_skipped(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="redismpx_socketio")
    channel = "socketio-malformed"
    async with deployment(lambda: MultiplexerManager(redis_server.url, channel=channel)) as nodes:
        await nodes.wait_subscribed(lambda: redis_server.pubsub_numsub(channel)[channel.encode()])
        for payload in MALFORMED:
            redis_server.command("PUBLISH", channel, payload)
        # An event python-socketio itself cannot handle (no 'event'): its own handler
        # error, logged by python-socketio, and the listener goes on.
        redis_server.command("PUBLISH", channel, b'{"method": "emit", "host_id": "x"}')
        for node in nodes:
            await wait_until(
                lambda node=node: node.manager.statistics().events_malformed == len(MALFORMED),
                10.0,
            )
        await nodes.delivered("still serving")
        text = "\n".join(r.getMessage() for r in caplog.records if r.name == "redismpx_socketio")
        assert "is not a Socket.IO event" in text
