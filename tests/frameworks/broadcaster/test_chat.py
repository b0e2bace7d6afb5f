"""The normal flow end to end: a Starlette chat app on broadcaster, two WebSocket clients.

Run with broadcaster's own ``Broadcast(backend=RedisMPXBackend(url))`` (the one-line
change) and with ``redismpx_broadcaster.Broadcast(url)`` (bounded subscribers), on
a plain server and on a Redis Cluster (shard channels).
"""

from __future__ import annotations

import asyncio
import contextlib

import broadcaster
import pytest

from frameworks.asgi_server import serve
from frameworks.broadcaster.chat import chat_app, join, receive_until, wait_until
from redis_cluster import RedisCluster
from redis_servers import RedisServer
from redismpx_broadcaster import Broadcast, RedisMPXBackend


def _stock_with_our_backend(url: str) -> broadcaster.Broadcast:
    return broadcaster.Broadcast(backend=RedisMPXBackend(url))


def _ours(url: str) -> broadcaster.Broadcast:
    return Broadcast(url)


@pytest.mark.parametrize("make", [_stock_with_our_backend, _ours], ids=["backend", "broadcast"])
def test_two_clients_chat_through_redis(redis_server: RedisServer, make) -> None:
    app = chat_app(make(redis_server.url))
    with serve(app) as base, join(base, "lobby") as alice, join(base, "lobby") as bob:
        alice.send("hello from alice")
        assert bob.recv(timeout=10) == "hello from alice"
        assert alice.recv(timeout=10) == "hello from alice"  # the sender is in the room too
        bob.send("hi alice")
        assert alice.recv(timeout=10) == "hi alice"
        assert bob.recv(timeout=10) == "hi alice"
        # Messages arrive in order, each once.
        for i in range(50):
            alice.send(f"m{i}")
        sent = [f"m{i}" for i in range(50)]
        assert [bob.recv(timeout=10) for _ in sent] == sent
        assert [alice.recv(timeout=10) for _ in sent] == sent


def test_rooms_are_separate_and_left_rooms_are_unsubscribed(redis_server: RedisServer) -> None:
    broadcast = Broadcast(redis_server.url)
    app = chat_app(broadcast)
    with serve(app) as base, join(base, "room-a") as alice, join(base, "room-b") as bob:
        alice.send("for a")
        bob.send("for b")
        assert alice.recv(timeout=10) == "for a"
        assert bob.recv(timeout=10) == "for b"
        assert redis_server.pubsub_numsub("room-a", "room-b") == {b"room-a": 1, b"room-b": 1}
        bob.close()
        backend = broadcast.backend
        assert isinstance(backend, RedisMPXBackend)
        assert wait_until(lambda: backend.channels == frozenset({"room-a"}), within=10)
        assert wait_until(lambda: redis_server.pubsub_numsub("room-b") == {b"room-b": 0}, within=10)


def test_cluster_with_shard_channels(redis_cluster: RedisCluster) -> None:
    """Two app processes' worth of broadcasts on one cluster: SPUBLISH on one reaches
    the other's clients through the master that owns the channel's slot."""
    urls = redis_cluster.startup_urls
    first = Broadcast(backend=RedisMPXBackend.cluster(urls, sharded=True))
    second = Broadcast(backend=RedisMPXBackend.cluster(urls, sharded=True))
    rooms = ["room:{1}", "room:{2}", "room:{3}"]
    with serve(chat_app(first)) as base1, serve(chat_app(second)) as base2:
        for room in rooms:
            with join(base1, room) as alice, join(base2, room) as bob:
                alice.send(f"to {room}")
                assert bob.recv(timeout=10) == f"to {room}"
                assert redis_cluster.shardnumsub(room) == 2
    owners = {redis_cluster.owner_of(room).port for room in rooms}
    assert len(owners) > 1  # the rooms really were spread over masters


def test_stock_back_end_chat_recorded(redis_server: RedisServer, record_property) -> None:
    """The same flow on broadcaster's stock Redis back end, recorded, not asserted.

    With redis-py 8, its listener often stops at the first subscription for good
    (``PubSub.listen()`` ends at once when it starts before redis-py has recorded
    the channel), and then nothing reaches any subscriber until a new channel is
    subscribed.
    """
    app = chat_app(broadcaster.Broadcast(redis_server.url))
    with serve(app) as base, join(base, "stock-lobby") as alice, join(base, "stock-lobby") as bob:
        alice.send("hello from alice")
        heard = receive_until(bob, lambda text: True, within=3)
        outcome = "delivered" if heard is not None else "nothing delivered within 3 s"
        record_property("stock:first room", outcome)
        print(f"[stock] first room of a fresh app: {outcome}")


@pytest.mark.parametrize("kind", ["stock", "redismpx"])
def test_subscribers_arriving_together_on_a_new_channel(
    kind: str, redis_server: RedisServer, record_property
) -> None:
    """Ten subscribers enter ``subscribe`` of one new channel at the same time.

    The stock Broadcast registers a channel's subscriber set after the back end's
    subscribe returns, so each of them makes a new set and only the last is kept:
    recorded. Ours registers first: all ten receive.
    """

    async def main() -> tuple[int, str]:
        url = redis_server.url
        if kind == "stock":
            broadcast = broadcaster.Broadcast(url)
        else:
            broadcast = Broadcast(backend=RedisMPXBackend(url))
        received, leaving = 0, "left cleanly"
        async with broadcast, broadcast.subscribe(f"warm-up-{kind}"):
            stack = contextlib.AsyncExitStack()
            subscribers = await asyncio.gather(
                *(
                    stack.enter_async_context(broadcast.subscribe(f"together-{kind}"))
                    for _ in range(10)
                )
            )
            await broadcast.publish(f"together-{kind}", "to all")
            for subscriber in subscribers:
                try:
                    async with asyncio.timeout(0.5 if kind == "stock" else 10):
                        await subscriber.get()
                    received += 1
                except TimeoutError:
                    pass
            try:
                await stack.aclose()
            except Exception as exc:  # the stock one's bookkeeping breaks: recorded
                if kind != "stock":
                    raise
                leaving = f"leaving raised {type(exc).__name__}: {exc}"
        return received, leaving

    received, leaving = asyncio.run(main())
    outcome = f"{received} of 10 received; {leaving}"
    record_property(f"{kind}:subscribers arriving together", outcome)
    print(f"[{kind}] subscribers arriving together: {outcome}")
    if kind == "redismpx":
        assert (received, leaving) == (10, "left cleanly")
