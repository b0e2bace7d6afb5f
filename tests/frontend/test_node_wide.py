"""Node-wide subscriptions through the front end, on the fake loop: callbacks and
iterators held on every master of a FakeCluster, with per-node notices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.fake_redis import FakeRedis
from frontend.fake_loop import FakeLoop
from frontend.test_harness_findings import NODES, Running, cluster_on, new_loop
from redismpx_core import NodeConnectionLost
from redismpx_frontend import Multiplexer

__all__ = ("new_loop",)  # the fixture, used by name

EXPIRED = "__keyevent@0__:expired"


def test_callbacks_hear_every_master_once_and_each_loss_by_name(
    new_loop: Callable[..., FakeLoop],
) -> None:
    loop = new_loop()
    cluster, running = cluster_on(loop, health_check_interval=None)
    messages: list[tuple[bytes, bytes]] = []
    activations: list[bytes] = []
    losses: list[Exception] = []
    running.mpx.new_node_wide_channel_subscription(
        lambda channel, data: messages.append((channel, data)),
        losses.append,
        activations.append,
    ).add(EXPIRED)
    keys = running.mpx.new_node_wide_pattern_subscription(
        "__keyspace@0__:*", lambda channel, data: messages.append((channel, data))
    )
    running.settle()
    assert cluster.channel_holders(EXPIRED.encode()) == NODES
    assert cluster.pattern_holders(b"__keyspace@0__:*") == NODES
    assert activations == [EXPIRED.encode()] * len(NODES)
    for node in NODES:
        cluster.servers[node].publish(EXPIRED.encode(), str(node).encode())
        cluster.servers[node].publish(b"__keyspace@0__:k", str(node).encode())
    running.settle()
    assert sorted(messages) == sorted(
        [(EXPIRED.encode(), str(n).encode()) for n in NODES]
        + [(b"__keyspace@0__:k", str(n).encode()) for n in NODES]
    )
    cluster.kill(NODES[2])
    for _ in range(5):
        running.settle()
        loop.advance(1.0)
    assert [type(e) for e in losses] == [NodeConnectionLost]
    assert isinstance(losses[0], NodeConnectionLost)
    assert losses[0].node == NODES[2]
    assert cluster.channel_holders(EXPIRED.encode()) == NODES[:2]
    keys.close()
    running.settle()
    assert cluster.pattern_holders(b"__keyspace@0__:*") == []
    running.close()


def test_an_iterator_is_entered_once_every_master_confirmed(
    new_loop: Callable[..., FakeLoop],
) -> None:
    loop = new_loop()
    cluster, running = cluster_on(loop, health_check_interval=None)
    seen: list[Any] = []

    async def listen() -> None:
        async with running.mpx.subscribe_node_wide(EXPIRED) as it:
            seen.append(cluster.channel_holders(EXPIRED.encode()))
            async for message in it:
                seen.append(message.data)
                if len(seen) == 1 + len(NODES):
                    return

    running.settle()  # the topology known, before the iterator
    loop.spawn(listen)
    loop.run_until_idle()
    late = (NODES[2].host, NODES[2].port)
    for _ in range(5):  # every master but one answers
        for stream in loop.open_streams():
            if stream.key != late:
                stream.deliver()
        loop.run_until_idle()
    assert cluster.channel_holders(EXPIRED.encode()) == NODES
    assert seen == []  # two masters confirmed it: not entered yet
    running.settle()
    assert seen == [NODES]  # entered once each master had confirmed it
    for node in NODES:
        cluster.servers[node].publish(EXPIRED.encode(), str(node).encode())
    running.settle()
    assert sorted(seen[1:]) == sorted(str(n).encode() for n in NODES)
    running.settle()
    assert cluster.channel_holders(EXPIRED.encode()) == []  # left: unsubscribed everywhere
    running.close()


def test_on_one_server_it_is_an_ordinary_subscription(
    new_loop: Callable[..., FakeLoop],
) -> None:
    loop = new_loop()
    server = FakeRedis()
    loop.listen(("redis", 6379), server.connect)
    running = Running(loop, Multiplexer("redis://redis:6379", backend=loop))
    got: list[bytes] = []
    running.mpx.new_node_wide_channel_subscription(lambda c, d: got.append(d)).add(EXPIRED)
    running.settle()
    assert server.publish(EXPIRED.encode(), b"k") == 1
    running.settle()
    assert got == [b"k"]
    running.close()
