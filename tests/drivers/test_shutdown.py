"""Conformance suite, part 3: leaving ``async with`` (SPEC 3.16).

Closing the multiplexer closes its sockets for real, fails every pending promise and
waiter with SubscriptionClosed, leaves no task, file descriptor or server-side
subscription behind, and lets no ExceptionGroup reach the user.

Every test takes the ``driver`` fixture and reaches the driver only through
``driver.module``.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from drivers.conftest import wait_until
from drivers.helpers import Inbox, clients_named, numsub, uniq, wait_server
from redis_servers import RedisServer, encode_command, free_port

# ----------------------------------------------------------------------------- helpers


def open_fds() -> list[str]:
    """What this process's file descriptors point to (sockets, pipes, files...)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listdir's own fd, gone already
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(targets)


def sockets() -> int:
    return sum(target.startswith("socket:") for target in open_fds())


async def outcome_of(awaitable: Callable[[], Awaitable[Any]], into: list[Any]) -> None:
    """Run ``awaitable()`` with a deadline; record what it returned or raised."""
    try:
        with anyio.fail_after(5):
            into.append(await awaitable())
    except Exception as exc:
        into.append(exc)


# ============================================================================ sockets


@pytest.mark.parametrize("protocol", [2, 3])
def test_exit_closes_the_sockets(driver: Any, redis_server: RedisServer, protocol: int) -> None:
    client_name = "shutdown-" + uuid.uuid4().hex[:8]
    chan = uniq("sock")

    async def body() -> None:
        inbox = Inbox()
        mpx = driver.Multiplexer(redis_server.url, client_name=client_name, protocol=protocol)
        async with mpx:
            active: list[bytes] = []
            mpx.new_channel_subscription(inbox, on_activation=active.append).add(chan)
            mpx.new_pattern_subscription(chan + ":*", inbox)
            await wait_until(lambda: bool(active))
            await mpx.publish(chan, b"x")  # RESP2: opens the publisher connection
            await wait_until(lambda: len(inbox.messages) == 1)
            assert len(clients_named(redis_server, client_name)) == (2 if protocol == 2 else 1)
        # The server sees every connection go, and with them the subscriptions.
        await wait_server(lambda: clients_named(redis_server, client_name) == [])
        assert numsub(redis_server, chan) == 0
        assert not mpx.connected
        assert "closed" in repr(mpx)

    driver.run(body)


def test_no_file_descriptor_or_task_leak(driver: Any, redis_server: RedisServer) -> None:
    async def body() -> None:
        async def cycle() -> None:
            chan = uniq("fd")
            async with driver.Multiplexer(redis_server.url) as mpx:
                active: list[bytes] = []
                inbox = Inbox()

                async def slow(channel: bytes, data: bytes) -> None:
                    await anyio.sleep_forever()  # its task must go with the multiplexer

                mpx.new_channel_subscription(inbox, on_activation=active.append).add(chan)
                mpx.new_channel_subscription(slow).add(chan)
                promises = mpx.new_promise_subscription(chan + "-")
                with anyio.fail_after(5):
                    await promises.wait_for_activation()
                    await wait_until(lambda: bool(active))
                    async with mpx.subscribe(chan + "-it"):
                        await mpx.publish(chan, b"x")  # the second connection
                    await wait_until(lambda: bool(inbox.messages))

        await cycle()  # warm-up: whatever the event loop creates lazily on first use
        fds = open_fds()
        tasks = len(anyio.get_running_tasks())
        for _ in range(3):
            await cycle()
        async with driver.Multiplexer(redis_server.url):
            pass  # left at once, maybe before the connection is up
        refused = f"redis://127.0.0.1:{free_port()}"
        async with driver.Multiplexer(refused, backoff_base=0.01, backoff_cap=0.02) as mpx:
            await wait_until(lambda: mpx.statistics().reconnect_attempts >= 3)
        assert open_fds() == fds
        assert len(anyio.get_running_tasks()) == tasks

    driver.run(body)


# ============================================================================ promises and waiters


def test_exit_fails_pending_promises(driver: Any, redis_server: RedisServer) -> None:
    prefix = uniq("shutprom") + "-"

    async def body() -> None:
        outcomes: list[Any] = []
        async with anyio.create_task_group() as tg:
            async with driver.Multiplexer(redis_server.url) as mpx:
                promises = mpx.new_promise_subscription(prefix)
                with anyio.fail_after(5):
                    await promises.wait_for_activation()
                awaited = [promises.new_promise(f"a{i}", 30) for i in range(2)]
                never_awaited = promises.new_promise("b", 30)
                for p in awaited:
                    tg.start_soon(outcome_of, lambda p=p: p, outcomes)
                await anyio.lowlevel.checkpoint()
                assert mpx.statistics().promises_pending == 3
            # Left the block: the tasks awaiting the promises are woken.
            await wait_until(lambda: len(outcomes) == 2)
        assert all(isinstance(o, driver.module.SubscriptionClosed) for o in outcomes), outcomes
        assert never_awaited.done
        with pytest.raises(driver.module.SubscriptionClosed):
            await never_awaited
        assert promises.closed
        with pytest.raises(driver.module.SubscriptionClosed):
            promises.new_promise("late", 1)
        assert mpx.statistics().promises_pending == 0

    driver.run(body)


def test_exit_wakes_tasks_waiting_for_a_connection(driver: Any) -> None:
    """Nothing listens on the port: every waiter stays blocked until the exit."""
    url = f"redis://127.0.0.1:{free_port()}"

    async def body() -> None:
        outcomes: list[Any] = []
        started = 0

        def counted(fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
            async def run() -> Any:
                nonlocal started
                started += 1
                return await fn()

            return run

        async with anyio.create_task_group() as tg:
            async with driver.Multiplexer(url, backoff_base=0.05, backoff_cap=0.1) as mpx:
                promises = mpx.new_promise_subscription("p-")
                for fn in (
                    mpx.wait_connected,
                    promises.wait_for_activation,
                    lambda: promises.wait_for_new_promise("x", 5),
                    lambda: mpx.publish("chan", b"never sent"),
                ):
                    tg.start_soon(outcome_of, counted(fn), outcomes)
                await wait_until(lambda: started == 4)
                await anyio.sleep(0.05)  # they block: no connection ever comes up
                assert outcomes == []
            await wait_until(lambda: len(outcomes) == 4)
        assert all(isinstance(o, driver.module.SubscriptionClosed) for o in outcomes), outcomes

    driver.run(body)


def test_exit_wakes_an_iterator_consumer(driver: Any, redis_server: RedisServer) -> None:
    chan = uniq("shutit")

    async def body() -> None:
        outcomes: list[Any] = []
        got: list[bytes] = []

        async with anyio.create_task_group() as tg:
            async with driver.Multiplexer(redis_server.url) as mpx:
                it = mpx.subscribe(chan)
                with anyio.fail_after(5):
                    await it.__aenter__()

                async def consume() -> str:
                    async for msg in it:
                        got.append(msg.data)
                    return "iteration ended without an error"

                tg.start_soon(outcome_of, consume, outcomes)
                await mpx.publish(chan, b"one")
                await wait_until(lambda: got == [b"one"])  # now blocked in __anext__
            await wait_until(lambda: len(outcomes) == 1)
        assert isinstance(outcomes[0], driver.module.SubscriptionClosed), outcomes

    driver.run(body)


def test_use_after_exit_raises_subscription_closed(driver: Any, redis_server: RedisServer) -> None:
    chan = uniq("after")

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = mpx.new_channel_subscription(Inbox())
            sub.add(chan)
            promises = mpx.new_promise_subscription(chan + "-")
        closed = driver.module.SubscriptionClosed
        assert sub.closed
        for call in (
            lambda: mpx.new_channel_subscription(Inbox()),
            lambda: mpx.new_pattern_subscription("x*", Inbox()),
            lambda: mpx.new_sharded_subscription(Inbox()),
            lambda: mpx.new_promise_subscription("y-"),
            lambda: mpx.subscribe("x"),
            lambda: sub.add("other"),
            lambda: sub.remove(chan),
            lambda: promises.new_promise("z", 1),
        ):
            with pytest.raises(closed):
                call()
        for coro in (
            lambda: mpx.publish("x", b"y"),
            mpx.wait_connected,
            promises.wait_for_activation,
        ):
            with anyio.fail_after(5), pytest.raises(closed):
                await coro()
        sub.close()  # still fine
        stats = mpx.statistics()
        assert stats.connected is False
        assert stats.subscriptions == 0

    driver.run(body)


# ============================================================================ exceptions


@pytest.mark.parametrize("error", [KeyError("body"), ValueError("body"), "redismpx"])
def test_body_exception_comes_out_unwrapped(
    driver: Any, redis_server: RedisServer, error: Any
) -> None:
    chan = uniq("exc")

    async def body() -> None:
        raised = driver.module.InactiveSubscription("body") if error == "redismpx" else error
        release = anyio.Event()
        entered: list[bytes] = []

        async def slow(channel: bytes, data: bytes) -> None:
            entered.append(data)
            await release.wait()

        async def scenario() -> None:
            async with driver.Multiplexer(redis_server.url) as mpx:
                active: list[bytes] = []
                mpx.new_channel_subscription(slow, on_activation=active.append).add(chan)
                promises = mpx.new_promise_subscription(chan + "-")
                with anyio.fail_after(5):
                    await promises.wait_for_activation()
                    await wait_until(lambda: bool(active))
                promises.new_promise("pending", 30)
                await mpx.publish(chan, b"blocks the slow callback")
                await wait_until(lambda: bool(entered))
                raise raised

        with pytest.raises(type(raised)) as info:
            await scenario()
        assert info.value is raised  # the body's own exception, not a group around it
        assert not isinstance(info.value, BaseExceptionGroup)

    driver.run(body)


def test_exit_while_messages_are_arriving(driver: Any, redis_server: RedisServer) -> None:
    """Leaving the block while Redis is still sending messages is an ordinary exit:
    no error, and certainly no ExceptionGroup."""
    chan = uniq("flood")
    burst = b"".join(encode_command("PUBLISH", chan, b"m%d" % i) for i in range(20000))

    async def body() -> None:
        for _ in range(10):
            flowing = anyio.Event()
            count = 0

            def on_message(channel: bytes, data: bytes, flowing: Any = flowing) -> None:
                nonlocal count
                count += 1
                if count == 50:
                    flowing.set()

            with redis_server.connect() as sock:
                async with driver.Multiplexer(redis_server.url) as mpx:
                    active: list[bytes] = []
                    mpx.new_channel_subscription(on_message, on_activation=active.append).add(chan)
                    await wait_until(lambda active=active: bool(active))
                    sock.sendall(burst)  # its replies are never read: Redis just sends on
                    with anyio.fail_after(5):
                        await flowing.wait()
                    # leave now, with thousands of messages still on their way
                assert 50 <= count < 20000

    driver.run(body)


def test_exit_just_as_a_message_arrives(driver: Any, redis_server: RedisServer) -> None:
    """The same, with one message that has reached the socket (and been noticed by the
    event loop) but not yet been read when the block is left. (The blocking sleep only
    makes sure the message is in the socket buffer; it waits for nothing else.)"""
    chan = uniq("onemsg")

    async def body() -> None:
        for turns in range(4):
            for _ in range(5):
                async with driver.Multiplexer(redis_server.url) as mpx:
                    active: list[bytes] = []
                    mpx.new_channel_subscription(Inbox(), on_activation=active.append).add(chan)
                    await wait_until(lambda active=active: bool(active))
                    assert redis_server.command("PUBLISH", chan, b"x") == 1
                    time.sleep(0.002)  # noqa: ASYNC251 - see the docstring
                    for _ in range(turns):
                        await anyio.lowlevel.checkpoint()

    driver.run(body)


# ============================================================================ cancellation


def test_cancellation_from_outside_is_prompt(driver: Any, redis_server: RedisServer) -> None:
    chan = uniq("cancel")

    async def body() -> None:
        release = anyio.Event()
        cancelled: list[bool] = []
        entered: list[bytes] = []

        async def slow(channel: bytes, data: bytes) -> None:
            entered.append(data)
            try:
                await release.wait()
            finally:
                cancelled.append(True)

        p: Any = None
        with anyio.CancelScope() as scope:  # the caller's scope, outside the block
            async with driver.Multiplexer(redis_server.url) as mpx:
                active: list[bytes] = []
                mpx.new_channel_subscription(slow, on_activation=active.append).add(chan)
                promises = mpx.new_promise_subscription(chan + "-")
                with anyio.fail_after(5):
                    await wait_until(lambda: bool(active))
                    await mpx.publish(chan, b"x")
                    await wait_until(lambda: bool(entered))  # a callback task is busy
                    p = await promises.wait_for_new_promise("never", 60)
                start = anyio.current_time()
                scope.deadline = start + 0.2  # as anyio.move_on_after(0.2) would
                await p  # blocks until the deadline cancels us
        elapsed = anyio.current_time() - start
        assert scope.cancelled_caught
        assert elapsed < 1.5, elapsed
        assert cancelled == [True]  # the callback's task was cancelled, not abandoned
        assert p.done
        with pytest.raises(driver.module.SubscriptionClosed):
            await p

    driver.run(body)


def test_cancellation_while_the_server_does_not_answer(
    driver: Any, redis_server_factory: Any
) -> None:
    server = redis_server_factory()
    server.pause()  # the kernel accepts the connection; the handshake gets no answer

    async def body() -> None:
        start = anyio.current_time()
        with anyio.move_on_after(0.3) as scope:
            async with driver.Multiplexer(server.url, connect_timeout=30) as mpx:
                await mpx.wait_connected()
        assert scope.cancelled_caught
        assert anyio.current_time() - start < 2.0

    try:
        driver.run(body)
    finally:
        server.resume()
