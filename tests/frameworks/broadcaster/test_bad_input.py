"""Bad input fails at the call site with a clear error, and changes nothing.

broadcaster defines no error of its own for these (its ``Broadcast`` asserts, and
its back ends raise their client's errors), so the adapter raises what Python and
redismpx raise: ``TypeError`` for a wrong type, ``ValueError`` for a wrong value,
``RuntimeError`` for a call out of order, the multiplexer's ``ServerError`` for a
channel Redis refuses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import broadcaster
import pytest

from redis_servers import RedisServer, acl_user, free_port
from redismpx_anyio import ServerError
from redismpx_broadcaster import Broadcast, RedisMPXBackend, SubscriberOverflow


@pytest.mark.parametrize(
    ("args", "options", "error", "match"),
    [
        ((42,), {}, TypeError, "url must be a str"),
        (("http://localhost",), {}, ValueError, "scheme"),
        (("redis://localhost",), {"buffer_size": 0}, ValueError, "buffer_size must be >= 1"),
        (("redis://localhost",), {"buffer_size": "10"}, TypeError, "buffer_size must be an int"),
        (("redis://localhost",), {"overflow": "close"}, ValueError, "would stop them all"),
        (("redis://localhost",), {"overflow": "sometimes"}, ValueError, "overflow must be one of"),
        (("redis://localhost",), {"sharded": "yes"}, TypeError, "sharded must be a bool"),
        (("redis://localhost",), {"startup_timeout": 0}, ValueError, "startup_timeout"),
        (("redis://localhost",), {"startup_timeout": "1"}, TypeError, "startup_timeout"),
        (("redis://localhost",), {"on_reconnect": 3}, TypeError, "on_reconnect must be callable"),
        (("redis://localhost",), {"helth_check_interval": 1}, TypeError, "did you mean"),
    ],
)
def test_backend_options_are_checked_at_construction(
    args: tuple[Any, ...], options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RedisMPXBackend(*args, **options)


def test_broadcast_arguments_are_checked() -> None:
    backend = RedisMPXBackend("redis://localhost")
    with pytest.raises(TypeError, match="either a url or a backend"):
        Broadcast()
    with pytest.raises(TypeError, match="either a url or a backend"):
        Broadcast("redis://localhost", backend=backend)
    with pytest.raises(TypeError, match="give them to the back end"):
        Broadcast(backend=backend, client_name="x")
    with pytest.raises(TypeError, match="must be a BroadcastBackend"):
        Broadcast(backend=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffer_size must be >= 1"):
        Broadcast(backend=backend, buffer_size=-1)
    with pytest.raises(ValueError, match="overflow must be one of"):
        Broadcast(backend=backend, overflow="drop-all")


def test_use_before_connect() -> None:
    async def main() -> None:
        backend = RedisMPXBackend("redis://localhost")
        for call in (
            backend.subscribe("room"),
            backend.unsubscribe("room"),
            backend.publish("room", "x"),
            backend.next_published(),
        ):
            with pytest.raises(RuntimeError, match="call connect\\(\\) first"):
                await call
        with pytest.raises(RuntimeError, match="never connected"):
            backend.statistics()
        await backend.disconnect()  # nothing to do, no error

        broadcast = Broadcast(backend=backend)
        with pytest.raises(RuntimeError, match="call connect\\(\\) first"):
            async with broadcast.subscribe("room"):
                pass
        await broadcast.disconnect()

    asyncio.run(main())


def test_wrong_types_change_nothing(redis_server: RedisServer) -> None:
    async def main() -> None:
        backend = RedisMPXBackend(redis_server.url)
        async with Broadcast(backend=backend) as broadcast:
            with pytest.raises(RuntimeError, match="connected already"):
                await broadcast.connect()
            with pytest.raises(RuntimeError, match="connected already"):
                await backend.connect()
            async with broadcast.subscribe("room") as subscriber:
                for channel, error in ((b"room", TypeError), (None, TypeError), ("", ValueError)):
                    with pytest.raises(error, match="channel"):
                        async with broadcast.subscribe(channel):  # type: ignore[arg-type]
                            pass
                    with pytest.raises(error, match="channel"):
                        await broadcast.publish(channel, "x")  # type: ignore[arg-type]
                    with pytest.raises(error, match="channel"):
                        await backend.unsubscribe(channel)  # type: ignore[arg-type]
                for message in ({"a": 1}, None, True, ["x"]):
                    with pytest.raises(TypeError, match="a message must be"):
                        await broadcast.publish("room", message)
                assert backend.channels == frozenset({"room"})
                # Nothing was published by the refused calls: the next event is this one.
                await broadcast.publish("room", 7)
                await broadcast.publish("room", b"bytes")
                async with asyncio.timeout(10):
                    assert (await subscriber.get()).message == "7"
                    assert (await subscriber.get()).message == "bytes"

    asyncio.run(main())


def test_a_message_that_is_not_text_is_skipped_and_counted(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """broadcaster's Event carries text: ours skips the rest, where the stock listener dies."""
    caplog.set_level(logging.WARNING, logger="redismpx.broadcaster")

    async def main() -> None:
        backend = RedisMPXBackend(redis_server.url)
        async with Broadcast(backend=backend) as broadcast, broadcast.subscribe("bin") as sub:
            redis_server.command("PUBLISH", "bin", b"\xff\xfe")
            redis_server.command("PUBLISH", "bin", "text")
            async with asyncio.timeout(10):
                assert (await sub.get()).message == "text"
            assert backend.undecodable == 1

    asyncio.run(main())
    assert any("not UTF-8 text" in r.getMessage() for r in caplog.records)


def test_no_server_within_startup_timeout() -> None:
    async def main() -> None:
        backend = RedisMPXBackend(f"redis://127.0.0.1:{free_port()}", startup_timeout=0.3)
        with pytest.raises(TimeoutError, match=r"no connection to Redis within 0\.3 s"):
            await backend.connect()
        with pytest.raises(RuntimeError, match="call connect\\(\\) first"):
            await backend.subscribe("room")

    asyncio.run(main())


def test_a_channel_redis_refuses_raises_its_error(redis_server_factory: Any) -> None:
    server: RedisServer = redis_server_factory(
        *acl_user("limited", "on", ">pw", "+@all", "resetchannels", "&allowed*")
    )
    url = f"redis://limited:pw@127.0.0.1:{server.port}"

    async def main() -> None:
        backend = RedisMPXBackend(url)
        async with Broadcast(backend=backend) as broadcast:
            with pytest.raises(ServerError) as refused:
                async with broadcast.subscribe("forbidden"):
                    pass
            assert refused.value.code == "NOPERM"
            assert backend.channels == frozenset()
            async with broadcast.subscribe("allowed-room") as subscriber:
                await broadcast.publish("allowed-room", "ok")
                async with asyncio.timeout(10):
                    assert (await subscriber.get()).message == "ok"

    asyncio.run(main())


def test_close_policy_ends_the_slow_subscriber_alone(redis_server: RedisServer) -> None:
    async def main() -> None:
        broadcast = Broadcast(redis_server.url, buffer_size=3, overflow="close")
        async with broadcast, broadcast.subscribe("c") as slow, broadcast.subscribe("c") as fast:
            for i in range(5):
                await broadcast.publish("c", str(i))
                async with asyncio.timeout(10):
                    assert (await fast.get()).message == str(i)
            with pytest.raises(SubscriberOverflow):
                await slow.get()
            assert slow.dropped == 4  # the 3 it held and the one that did not fit
            assert [event async for event in slow] == []  # the iteration just ends
            assert isinstance(SubscriberOverflow(), broadcaster._base.Unsubscribed)

    asyncio.run(main())
