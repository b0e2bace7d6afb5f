"""The faults that break the stock Pub/Sub layer, against it and against ours.

Each fault runs on ``channels_redis.pubsub.RedisPubSubChannelLayer`` and on
``RedisMPXChannelLayer`` alike, each on a redis-server of its own. For the stock layer
the test records what happens (``record_property``; docs/frameworks/channels.md has
the findings) within a bounded wait, and asserts nothing; ours must recover and tell.

Messages are published by a plain Redis client outside the layer (a process on the
other side of the outage), msgpack-encoded as both layers write them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import redis
from channels_redis.pubsub import RedisPubSubChannelLayer

from redis_servers import RedisServer, RedisServerFactory
from redismpx_channels import RedisMPXChannelLayer

GROUP_KEY = "asgi__group__room"
#: How long a layer may take to deliver again after the fault. Ours takes tens of
#: milliseconds; the bound is there for the stock layer, which may never recover.
RECOVERY_WAIT = 6.0


def make(kind: str, url: str, **config: Any) -> Any:
    hooks = {"on_disconnect": "redis.disconnect", "on_reconnect": "redis.reconnect"}
    if kind == "stock":
        return RedisPubSubChannelLayer(hosts=[url], **hooks)
    return RedisMPXChannelLayer(hosts=[url], **hooks, **config)


def publish(server: RedisServer, message: dict[str, Any], name: str = GROUP_KEY) -> int:
    receivers: int = server.command("PUBLISH", name, msgpack.packb(message), timeout=2.0)
    return receivers


async def joined(layer: Any) -> str:
    channel: str = await layer.new_channel()
    await layer.group_add("room", channel)
    return channel


async def deliveries_after(
    layer: Any, channel: str, server: RedisServer, fault: Callable[[], None]
) -> dict[str, Any]:
    """Check delivery, inject the fault, then publish a numbered message every 50 ms
    until one arrives (or RECOVERY_WAIT passes); what the channel got meanwhile."""
    publish(server, {"type": "chat.message", "n": -1})
    async with asyncio.timeout(5):
        assert (await layer.receive(channel))["n"] == -1
    await asyncio.to_thread(fault)
    started = time.monotonic()
    got: list[Any] = []

    async def pump() -> None:
        n = 0
        while True:
            with contextlib.suppress(OSError):  # the server is not back yet
                await asyncio.to_thread(publish, server, {"type": "chat.message", "n": n})
            n += 1
            await asyncio.sleep(0.05)

    async def collect() -> None:
        while True:
            message = await layer.receive(channel)
            got.append(message["type"] if message["type"] != "chat.message" else message["n"])
            if message["type"] == "chat.message":
                return

    pumping = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(RECOVERY_WAIT):
            await collect()
        recovered: float | None = time.monotonic() - started
    except TimeoutError:
        recovered = None
    finally:
        pumping.cancel()
        await asyncio.wait({pumping})
    return {"recovered_after_s": recovered, "received": got}


def sigkill_and_restart(server: RedisServer) -> Callable[[], None]:
    def fault() -> None:
        server.kill()
        server.restart()

    return fault


def output_buffer_kill(server: RedisServer) -> Callable[[], None]:
    def fault() -> None:
        server.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 64kb 0 0")
        publish(server, {"type": "chat.message", "n": -2, "blob": b"x" * 200_000})

    return fault


FAULTS = {"sigkill-restart": sigkill_and_restart, "output-buffer-limit": output_buffer_kill}


@pytest.mark.parametrize("fault", FAULTS)
def test_stock_layer_under_fault(
    redis_server_factory: RedisServerFactory,
    caplog: pytest.LogCaptureFixture,
    record_property: Callable[[str, object], None],
    fault: str,
) -> None:
    caplog.set_level(logging.WARNING, "channels_redis")
    server = redis_server_factory()

    async def body() -> dict[str, Any]:
        layer = make("stock", server.url)
        channel = await joined(layer)
        seen = await deliveries_after(layer, channel, server, FAULTS[fault](server))
        await layer.flush()
        return seen

    seen = asyncio.run(body())
    said = [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.name == "channels_redis.pubsub"
    ]
    record_property("stock_recovered_after_s", seen["recovered_after_s"])
    # notices (none, if on_disconnect/on_reconnect are never sent), then the number of
    # the first message after the fault: the ones before it were lost
    record_property("stock_received", seen["received"])
    record_property("stock_log", said)
    print(f"stock layer, {fault}: {seen}; its log: {said}")


@pytest.mark.parametrize("fault", FAULTS)
def test_our_layer_recovers_and_tells(
    redis_server_factory: RedisServerFactory,
    caplog: pytest.LogCaptureFixture,
    record_property: Callable[[str, object], None],
    fault: str,
) -> None:
    caplog.set_level(logging.WARNING, "redismpx_channels")
    server = redis_server_factory()

    async def body() -> tuple[dict[str, Any], Any]:
        layer = make("ours", server.url)
        channel = await joined(layer)
        seen = await deliveries_after(layer, channel, server, FAULTS[fault](server))
        await layer.close()
        return seen, layer.statistics()

    seen, stats = asyncio.run(body())
    record_property("ours_recovered_after_s", seen["recovered_after_s"])
    record_property("ours_received", seen["received"])
    assert seen["recovered_after_s"] is not None
    # the consumer was told, in order, before the first message after the outage
    assert seen["received"][:2] == ["redis.disconnect", "redis.reconnect"]
    assert isinstance(seen["received"][2], int)
    assert stats.outages == 1
    assert stats.channels_interrupted == 1
    said = [r.getMessage() for r in caplog.records if r.name == "redismpx_channels"]
    assert any("connection lost" in m and "1 channels and 1 groups" in m for m in said)
    assert any("connection back after" in m and "were lost" in m for m in said)


SLOW_MESSAGES = 20_000


def flood(server: RedisServer, count: int) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        pipe = client.pipeline(transaction=False)
        for n in range(count):
            pipe.publish(GROUP_KEY, msgpack.packb({"type": "chat.message", "n": n}))
        pipe.execute()
    finally:
        client.close()


def test_stock_layer_slow_consumer(
    redis_server_factory: RedisServerFactory, record_property: Callable[[str, object], None]
) -> None:
    server = redis_server_factory()

    async def body() -> int:
        layer = make("stock", server.url)
        channel = await joined(layer)
        await asyncio.to_thread(flood, server, SLOW_MESSAGES)
        queue = layer._get_layer().channels[channel]  # only to record its length
        deadline = time.monotonic() + RECOVERY_WAIT
        while queue.qsize() < SLOW_MESSAGES and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        held: int = queue.qsize()
        await layer.flush()
        return held

    held = asyncio.run(body())
    record_property("stock_messages_held_for_a_consumer_that_reads_none", held)
    print(f"stock layer, slow consumer: holds {held} of {SLOW_MESSAGES} messages unread")


def test_our_layer_slow_consumer_is_bounded_and_told(
    redis_server_factory: RedisServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "redismpx_channels")
    server = redis_server_factory()
    capacity = 100

    async def body() -> None:
        layer = make("ours", server.url, capacity=capacity)
        channel = await joined(layer)
        await asyncio.to_thread(flood, server, SLOW_MESSAGES)
        async with asyncio.timeout(10):
            while layer.statistics().messages_dropped < SLOW_MESSAGES - capacity:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        # the buffer held the first `capacity` messages (drop-newest), nothing more
        got = [(await layer.receive(channel))["n"] for _ in range(capacity)]
        assert got == list(range(capacity))
        publish(server, {"type": "chat.message", "n": "fresh"})
        async with asyncio.timeout(5):
            assert (await layer.receive(channel))["n"] == "fresh"
        assert layer.statistics().messages_dropped == SLOW_MESSAGES - capacity
        await layer.close()

    asyncio.run(body())
    assert any("messages dropped: channel buffers full" in r.getMessage() for r in caplog.records)
