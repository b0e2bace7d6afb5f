"""RedisMPXChannelLayer against the channel layer specification, on a real redis-server
and on a real Redis Cluster (where channels and groups are shard channels).

The layer is used as Channels uses it, without Django's settings: consumers only
call these coroutines. Every test runs its body in ``asyncio.run`` under a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull

from redis_cluster import RedisCluster
from redis_servers import RedisServer
from redismpx_anyio import SubscriptionOverflow
from redismpx_channels import LayerStatistics, RedisMPXChannelLayer

DEADLINE = 20.0


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(DEADLINE):
            return await body()

    return asyncio.run(bounded())


@pytest.fixture(params=["server", "cluster"])
def make_layer(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> Callable[..., RedisMPXChannelLayer]:
    """Layers on the shared server, or on the shared cluster (sharded)."""
    if request.param == "server":
        hosts, cluster = [redis_server.url], False
    else:
        shared: RedisCluster = request.getfixturevalue("redis_cluster")
        hosts, cluster = shared.startup_urls, True

    def make(**config: Any) -> RedisMPXChannelLayer:
        return RedisMPXChannelLayer(hosts=hosts, cluster=cluster, **config)

    return make


async def receive_soon(layer: RedisMPXChannelLayer, channel: str, within: float = 5.0) -> Any:
    async with asyncio.timeout(within):
        return await layer.receive(channel)


async def nothing_within(layer: RedisMPXChannelLayer, channel: str, seconds: float) -> bool:
    """True if no message comes within ``seconds``. (A receive kept waiting, then
    cancelled: the channel then has no receiver and is unsubscribed.)"""
    try:
        async with asyncio.timeout(seconds):
            await layer.receive(channel)
    except TimeoutError:
        return True
    return False


async def wait_for_stat(layer: RedisMPXChannelLayer, name: str, value: int) -> None:
    async with asyncio.timeout(5):
        while getattr(layer.statistics(), name) < value:  # noqa: ASYNC110 - counters announce nothing
            await asyncio.sleep(0.005)


def test_send_and_receive_between_two_layers(
    make_layer: Callable[..., RedisMPXChannelLayer],
) -> None:
    async def body() -> None:
        receiver, sender = make_layer(), make_layer()
        channel = await receiver.new_channel()
        assert re.fullmatch(r"asgispecific\.[0-9a-f]{32}", channel)
        assert channel != await receiver.new_channel()
        for n in range(5):
            await sender.send(channel, {"type": "test.message", "n": n, "data": b"\x00\xff"})
        got = [await receive_soon(receiver, channel) for _ in range(5)]
        assert got == [{"type": "test.message", "n": n, "data": b"\x00\xff"} for n in range(5)]
        # each receiver gets a dict of its own
        await sender.send(channel, {"type": "again"})
        message = await receive_soon(receiver, channel)
        message["type"] = "changed"
        await receiver.close()
        await sender.close()

    run(body)


def test_groups_add_send_discard(make_layer: Callable[..., RedisMPXChannelLayer]) -> None:
    async def body() -> None:
        layer, elsewhere = make_layer(), make_layer()
        one, two = await layer.new_channel(), await layer.new_channel()
        three = await elsewhere.new_channel()
        for channel in (one, two):
            await layer.group_add("room", channel)
        await layer.group_add("room", one)  # twice is once
        await elsewhere.group_add("room", three)
        await layer.group_send("room", {"type": "hello"})
        assert await receive_soon(layer, one) == {"type": "hello"}
        assert await receive_soon(layer, two) == {"type": "hello"}
        assert await receive_soon(elsewhere, three) == {"type": "hello"}
        assert layer.statistics().groups == 1
        await layer.group_discard("room", two)
        await layer.group_discard("room", two)  # not in it: no error
        await layer.group_discard("no-such-group", one)
        await elsewhere.group_send("room", {"type": "second"})
        assert await receive_soon(layer, one) == {"type": "second"}
        assert await receive_soon(elsewhere, three) == {"type": "second"}
        assert await nothing_within(layer, two, 0.3)
        # a channel name never seen before can join a group: it is made here
        await layer.group_add("room", "worker.tasks")
        await elsewhere.group_send("room", {"type": "third"})
        assert await receive_soon(layer, "worker.tasks") == {"type": "third"}
        await layer.close()
        await elsewhere.close()

    run(body)


def test_group_send_to_an_empty_group_is_no_error(
    make_layer: Callable[..., RedisMPXChannelLayer],
) -> None:
    async def body() -> LayerStatistics:
        layer = make_layer()
        await layer.group_send("nobody-here", {"type": "x"})
        await layer.close()
        return layer.statistics()

    assert run(body).sends_unreceived == 1


def test_capacity_channel_full_on_send_and_drops_by_policy(
    make_layer: Callable[..., RedisMPXChannelLayer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "redismpx_channels")

    async def body() -> None:
        layer = make_layer(capacity=3, channel_capacity={"big.*": 5})
        assert layer.get_capacity("big.one") == 5
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        for n in range(3):
            await layer.send(channel, {"type": "m", "n": n})
        # Redis brings them to the buffer; from then on a send sees it full. (Probes
        # sent before that arrive after the three, into a full buffer: dropped.)
        async with asyncio.timeout(5):
            while True:
                try:
                    await layer.send(channel, {"type": "probe"})
                except ChannelFull:
                    break
                await asyncio.sleep(0.01)
        # what Redis brings to a full channel is dropped (drop-newest by default)
        before = layer.statistics().messages_dropped
        for n in range(4):
            await layer.group_send("g", {"type": "g", "n": n})
        await wait_for_stat(layer, "messages_dropped", before + 4)
        got = [await receive_soon(layer, channel) for _ in range(3)]
        assert got == [{"type": "m", "n": n} for n in range(3)]
        await layer.group_send("g", {"type": "after"})
        assert await receive_soon(layer, channel) == {"type": "after"}
        assert layer.statistics().messages_dropped >= 4
        await layer.close()

    run(body)
    assert any("messages dropped: channel buffers full" in r.getMessage() for r in caplog.records)


def test_overflow_drop_oldest_keeps_the_newest(
    make_layer: Callable[..., RedisMPXChannelLayer],
) -> None:
    async def body() -> None:
        layer = make_layer(capacity=3, overflow="drop-oldest")
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        for n in range(10):
            await layer.group_send("g", {"type": "g", "n": n})
        await layer.group_send("g", {"type": "last"})
        await wait_for_stat(layer, "messages_dropped", 8)
        got = [await receive_soon(layer, channel) for _ in range(3)]
        assert got == [{"type": "g", "n": 8}, {"type": "g", "n": 9}, {"type": "last"}]
        assert layer.statistics().messages_dropped == 8
        await layer.close()

    run(body)


def test_overflow_close_ends_the_receive_with_the_error(
    make_layer: Callable[..., RedisMPXChannelLayer],
) -> None:
    async def body() -> None:
        layer = make_layer(capacity=2, overflow="close")
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        for n in range(3):
            await layer.group_send("g", {"type": "g", "n": n})
        await wait_for_stat(layer, "messages_dropped", 3)  # what it held, and the third

        async def drain() -> None:
            async with asyncio.timeout(5):
                while True:
                    await layer.receive(channel)

        with pytest.raises(SubscriptionOverflow):
            await drain()
        assert layer.statistics().groups == 0  # the channel and its memberships went
        await layer.close()

    run(body)


def test_expiry_drops_unread_messages_and_leaves_groups(
    make_layer: Callable[..., RedisMPXChannelLayer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "redismpx_channels")

    async def body() -> None:
        layer = make_layer(expiry=0.2)
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        await layer.send(channel, {"type": "old"})
        async with asyncio.timeout(5):
            while layer.statistics().messages_expired == 0:  # noqa: ASYNC110 - as above
                await asyncio.sleep(0.05)
        # expired unread: the channel left its group (the specification's advice)
        assert layer.statistics().groups == 0
        await layer.close()

    run(body)
    messages = [r.getMessage() for r in caplog.records]
    assert any("expired unread" in m for m in messages)
    assert any("leaves its 1 groups" in m for m in messages)


def test_flush_drops_channels_and_groups(make_layer: Callable[..., RedisMPXChannelLayer]) -> None:
    async def body() -> None:
        layer = make_layer()
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        await layer.send(channel, {"type": "pending"})
        assert layer.statistics().channels == 1
        await layer.flush()
        assert (layer.statistics().channels, layer.statistics().groups) == (0, 0)
        # usable as new
        again = await layer.new_channel()
        await layer.send(again, {"type": "new"})
        assert await receive_soon(layer, again) == {"type": "new"}
        await layer.close()

    run(body)


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("send", ("bad name!x y", {"type": "x"})),
        ("send", ("a" * 100, {"type": "x"})),
        ("send", (b"bytes", {"type": "x"})),
        ("receive", ("chan!suffix",)),
        ("group_add", ("bad group!", "chan")),
        ("group_add", ("group", "bad chan name")),
        ("group_discard", ("g" * 100, "chan")),
        ("group_send", ("bad/group", {"type": "x"})),
        ("send", ("chan", ["not", "a", "dict"])),
        ("send", ("chan", {"type": "x", "value": object()})),
        ("group_send", ("group", "text")),
    ],
)
def test_bad_input_raises_type_error_and_changes_nothing(
    redis_server: RedisServer, call: str, args: tuple[Any, ...]
) -> None:
    async def body() -> None:
        layer = RedisMPXChannelLayer(hosts=[redis_server.url])
        with pytest.raises(TypeError):
            await getattr(layer, call)(*args)
        assert layer.statistics() == LayerStatistics(0, 0, 0, 0, 0.0, 0, 0, 0, 0, 0)
        await layer.close()

    run(body)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"hosts": "redis://localhost"}, ValueError),
        ({"hosts": ["redis://a", "redis://b"]}, ValueError),
        ({"hosts": [{"address": "redis://a", "ssl_cert_reqs": None}]}, ValueError),
        ({"hosts": ["http://nope"]}, ValueError),
        ({"capacity": 0}, ValueError),
        ({"expiry": "60"}, TypeError),
        ({"overflow": "block"}, ValueError),
        ({"on_disconnect": 1}, TypeError),
        ({"helth_check_interval": 1}, TypeError),
    ],
)
def test_bad_config_fails_when_the_layer_is_made(config: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        RedisMPXChannelLayer(**config)


def test_one_multiplexer_per_event_loop_and_async_to_sync(redis_server: RedisServer) -> None:
    layer = RedisMPXChannelLayer(hosts=[redis_server.url])

    async def body() -> None:
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        # a Django view in a thread: async_to_sync runs each call on a loop of its own
        threads = [
            threading.Thread(
                target=async_to_sync(layer.group_send), args=("g", {"type": "t", "n": n})
            )
            for n in range(3)
        ]
        for thread in threads:
            thread.start()
        got = {(await receive_soon(layer, channel))["n"] for _ in range(3)}
        for thread in threads:
            await asyncio.to_thread(thread.join, 5)
        assert got == {0, 1, 2}
        # the threads' loops are closed, and their multiplexers with them
        assert layer.statistics().event_loops == 1
        await layer.close()

    run(body)
    assert layer.statistics().event_loops == 0


def test_cluster_uses_shard_channels(redis_cluster: RedisCluster) -> None:
    async def body() -> None:
        layer = RedisMPXChannelLayer(hosts=redis_cluster.startup_urls, cluster=True)
        channels = [await layer.new_channel() for _ in range(6)]
        for channel in channels:
            await layer.group_add("everyone", channel)
        shard: set[bytes] = set()
        plain: set[bytes] = set()
        for node in redis_cluster.nodes:
            shard.update(node.command("PUBSUB", "SHARDCHANNELS"))
            plain.update(node.command("PUBSUB", "CHANNELS"))
        names = {c.encode() for c in channels} | {b"asgi__group__everyone"}
        assert names <= shard
        assert not names & plain
        await layer.group_send("everyone", {"type": "all"})
        for channel in channels:
            assert await receive_soon(layer, channel) == {"type": "all"}
        await layer.close()

    run(body)
