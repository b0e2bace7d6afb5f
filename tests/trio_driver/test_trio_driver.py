"""trio-only behaviour of redismpx_trio: virtual time, cancellation, checkpoints.

trio's MockClock with autojump moves the clock forward whenever every task has
been blocked for ``autojump_threshold`` real seconds, so timeouts of minutes run
in milliseconds against a real redis-server (whose replies arrive long before the
threshold on loopback).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

import redismpx_frontend._iterator
from redis_servers import RedisServer
from redismpx_trio import HealthCheckTimeout, Multiplexer, SubscriptionClosed

AUTOJUMP = 0.05


def run_virtual(body: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """Run ``body`` under an autojumping MockClock; returns its result and the real time taken."""
    clock = trio.testing.MockClock(autojump_threshold=AUTOJUMP)
    start = time.monotonic()
    result = trio.run(body, clock=clock)
    return result, time.monotonic() - start


def test_a_promise_expires_on_virtual_time(redis_server: RedisServer) -> None:
    async def body() -> float:
        async with Multiplexer(redis_server.url) as mpx:
            promises = mpx.new_promise_subscription("trio-virtual-")
            await promises.wait_for_activation()
            start = trio.current_time()
            promise = promises.new_promise("never", 120)
            with pytest.raises(TimeoutError):
                await promise
            return trio.current_time() - start

    waited, real = run_virtual(body)
    assert 120 <= waited < 121
    assert real < 10


def test_a_frozen_server_is_detected_within_interval_plus_timeout(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    errors: list[tuple[float, Exception]] = []

    async def body() -> float:
        # Wait on events, not by polling: each poll would cost a real autojump threshold.
        disconnected = trio.Event()

        def on_disconnect(error: Exception) -> None:
            errors.append((trio.current_time(), error))
            disconnected.set()

        async with Multiplexer(
            server.url, health_check_interval=30, health_check_timeout=10, backoff_cap=5
        ) as mpx:
            sub = mpx.new_channel_subscription(lambda c, d: None, on_disconnect)
            activated = trio.Event()
            sub2 = mpx.new_channel_subscription(lambda c, d: None, None, lambda n: activated.set())
            sub.add("frozen")
            sub2.add("frozen")
            await activated.wait()
            frozen_at = trio.current_time()
            server.pause()
            try:
                with trio.fail_after(600):
                    await disconnected.wait()
            finally:
                server.resume()
            return errors[0][0] - frozen_at

    detected_after, real = run_virtual(body)
    assert isinstance(errors[0][1], HealthCheckTimeout)
    assert detected_after <= 30 + 10 + 1
    assert real < 20


def test_reconnect_attempts_back_off_to_a_bounded_rate(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    url = server.url
    server.stop()  # nothing listens: every attempt is refused at once
    failures: list[float] = []

    async def body() -> int:
        async with Multiplexer(url, backoff_base=0.1, backoff_cap=10) as mpx:
            sub = mpx.new_channel_subscription(lambda c, d: None, lambda e: None)
            sub.add("x")
            await trio.sleep(600)
            return mpx.statistics().reconnect_attempts

    import logging

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retrying in" in record.getMessage():
                failures.append(0)

    handler = Count()
    logging.getLogger("redismpx").addHandler(handler)
    logging.getLogger("redismpx").setLevel(logging.INFO)
    try:
        attempts, real = run_virtual(body)
    finally:
        logging.getLogger("redismpx").removeHandler(handler)
    # Full jitter with a 10 s cap averages one attempt per 5 s once grown: 600 s of
    # virtual time allow about 120; a storm would be thousands.
    assert attempts == len(failures)
    assert 20 <= attempts <= 250
    assert real < 30


def test_an_outer_cancel_scope_ends_everything_promptly(redis_server: RedisServer) -> None:
    async def body() -> None:
        start = trio.current_time()
        with trio.move_on_after(1) as scope:
            async with Multiplexer(redis_server.url) as mpx:
                promises = mpx.new_promise_subscription("trio-cancel-")
                await promises.wait_for_activation()
                await mpx.publish("elsewhere", b"x")
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert trio.current_time() - start < 1.5

    trio.run(body)


def test_closing_wakes_waiters_with_subscription_closed(redis_server: RedisServer) -> None:
    async def body() -> list[str]:
        outcomes: list[str] = []

        async def wait_activation(promises: Any) -> None:
            try:
                await promises.wait_for_activation()
                outcomes.append("activated")
            except SubscriptionClosed:
                outcomes.append("closed")

        # Port 1: nothing listens, so the subscription never becomes active.
        async with trio.open_nursery() as nursery, Multiplexer("redis://127.0.0.1:1") as mpx:
            promises = mpx.new_promise_subscription("p-")
            nursery.start_soon(wait_activation, promises)
            await trio.testing.wait_all_tasks_blocked()
        return outcomes

    assert trio.run(body) == ["closed"]


def test_async_methods_are_checkpoints(redis_server: RedisServer) -> None:
    async def body() -> None:
        async with Multiplexer(redis_server.url) as mpx:
            with trio.testing.assert_checkpoints():
                await mpx.wait_connected()
            with trio.testing.assert_checkpoints():
                await mpx.publish("trio-checkpoints", b"x")
            promises = mpx.new_promise_subscription("trio-checkpoints-")
            await promises.wait_for_activation()
            with trio.testing.assert_checkpoints():
                await promises.wait_for_activation()  # already active
            with trio.testing.assert_checkpoints():
                promise = await promises.wait_for_new_promise("a", 5)
            await mpx.publish("trio-checkpoints-a", b"v")
            await promise
            with trio.testing.assert_checkpoints():
                assert await promise == b"v"  # already settled
            every = redismpx_frontend._iterator.ITERATOR_CHECKPOINT_EVERY
            async with mpx.subscribe("trio-iter", buffer_size=every + 10) as it:
                for i in range(every + 10):
                    await mpx.publish("trio-iter", b"%d" % i)
                # Buffered messages are handed out without a schedule point each, but
                # never ITERATOR_CHECKPOINT_EVERY in a row without one (docs/usage.md).
                with trio.testing.assert_checkpoints():
                    for _ in range(every):
                        await it.__anext__()

    trio.run(body)
