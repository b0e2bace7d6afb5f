"""What a closed subscription or a settled promise leaves behind: nothing that only the
cyclic garbage collector could free (an application that disables or freezes the gc
must not leak them, and buffered payloads must go at once)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from drivers.conftest import Driver, wait_until
from drivers.helpers import uniq
from redis_servers import RedisServer


def alive(kind: type) -> int:
    """Objects of ``kind`` alive now (the library's classes are slotted: no weakref)."""
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


@contextmanager
def cyclic_gc_off() -> Iterator[None]:
    gc.collect()  # start from a clean slate, then leave reference counting alone
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def test_closed_subscriptions_and_iterators_are_freed_by_reference_counting(
    driver: Driver, redis_server: RedisServer
) -> None:
    m = driver.module

    async def body() -> None:
        async with m.Multiplexer(redis_server.url) as mpx:
            await closed_round_trip(mpx)
            with cyclic_gc_off():
                kinds: set[type] = set()
                for handler in (lambda c, d: None, _async_handler):
                    sub = mpx.new_channel_subscription(handler)
                    sub.add(uniq("ref"))
                    kinds.add(type(sub))
                    sub.close()
                    del sub
                async with mpx.subscribe(uniq("ref-it")) as iterator:
                    kinds.add(type(iterator))
                del iterator
                await closed_round_trip(mpx)
                assert len(kinds) == 2
                assert {kind: alive(kind) for kind in kinds} == dict.fromkeys(kinds, 0)

    driver.run(body)


async def closed_round_trip(mpx: Any) -> None:
    """A confirmed round trip on the connection, by a subscription closed after it."""
    active: list[bytes] = []
    sub = mpx.new_channel_subscription(lambda c, d: None, on_activation=active.append)
    sub.add(uniq("rt"))
    await wait_until(lambda: bool(active))
    sub.close()
    # On Python 3.12+, trio can leave a reference cycle (a traceback of a cancellation it
    # tried to deliver) that holds this frame while it waited: with the cyclic gc off,
    # the frame outlives the call, so it must not keep the subscription it counted.
    del sub


async def _async_handler(channel: bytes, data: bytes) -> None:
    return None


def test_failed_promises_are_freed_by_reference_counting(
    driver: Driver, redis_server: RedisServer
) -> None:
    """Awaiting a failed promise raises a fresh exception each time: the stored one
    never carries a traceback whose frames lead back to the promise."""
    m = driver.module

    async def body() -> None:
        async with m.Multiplexer(redis_server.url) as mpx:
            promises = mpx.new_promise_subscription(uniq("ref-promise") + ":")
            await promises.wait_for_activation()
            with cyclic_gc_off():
                promise = promises.new_promise("a", 0.01)
                kind = type(promise)
                errors = []
                for _ in range(2):
                    try:
                        await promise
                    except TimeoutError as exc:
                        errors.append((type(exc), str(exc)))
                assert len(errors) == 2
                assert errors[0] == errors[1]  # the same outcome, every await
                del promise
                assert alive(kind) == 0

    driver.run(body)
