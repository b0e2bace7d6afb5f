"""Conformance suite, part 1: the public API of a driver (SPEC 2 and 3.1-3.4, 3.8, 3.12-3.15).

Every test takes the ``driver`` fixture and runs its async body with ``driver.run``;
it reaches the driver only through ``driver.module`` (its public names), so a new
driver joins by adding a row to ``DRIVERS`` in conftest.py.

Waiting is done on conditions with deadlines (``wait_until``, ``anyio.fail_after``).
To prove that something does *not* happen, a test first reaches a positive sync
point: a sentinel message published after the unwanted one on the same connection,
which Redis delivers in order, has arrived.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from drivers.conftest import wait_until
from drivers.helpers import (
    Inbox,
    b,
    clients_named,
    numpat,
    numsub,
    round_trip,
    shardnumsub,
    uniq,
    wait_server,
)
from redis_servers import RedisServer, acl_user, free_port
from server_matrix import server_has

# ----------------------------------------------------------------------------- helpers


# ============================================================================ construction


def test_construction_needs_no_running_loop(driver: Any, redis_server: RedisServer) -> None:
    # Built here, in plain sync code: no event loop exists yet.
    mpx = driver.Multiplexer(redis_server.url)
    default = driver.Multiplexer()  # the default URL is accepted too
    assert "localhost" in repr(default) or "127.0.0.1" in repr(default)

    async def body() -> None:
        inbox = Inbox()
        async with mpx as entered:
            assert entered is mpx
            with anyio.fail_after(5):
                await mpx.wait_connected()
            assert mpx.connected
            chan = uniq("noloop")
            sub = mpx.new_channel_subscription(inbox)
            sub.add(chan)
            await wait_server(lambda: numsub(redis_server, chan) == 1)
            assert await mpx.publish(chan, b"hi") == 1
            await wait_until(lambda: inbox.has(chan, b"hi"))

    driver.run(body)


MALFORMED_URLS = [
    "",
    "localhost:6379",
    "http://localhost:6379",
    "redis://",
    "redis://:6379",
    "redis://localhost:notaport",
    "redis://localhost:99999",
    "redis://localhost:0",
    "redis://localhost/notadb",
    "redis://localhost/-1",
    "redis://[::1",
    "redis://::1:6379",
    "redis://localhost/0#fragment",
    "redis://localhost/0?bogus=1",
    "redis://localhost/0?protocol=4",
    "redis://localhost/0?db",
    "unix://",
    "unix://host:6379/tmp/sock",
]


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_malformed_url_raises_value_error(driver: Any, url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        driver.Multiplexer(url)


def test_url_must_be_a_string(driver: Any) -> None:
    with pytest.raises(TypeError):
        driver.Multiplexer(b"redis://localhost")


def test_malformed_url_error_does_not_quote_the_password(driver: Any) -> None:
    secret = "Xq9SecretPw"
    for url in (
        f"redis://user:{secret}@localhost:notaport",
        f"redis://user:{secret}@localhost/notadb",
        f"redis://user:{secret}@[::1",
        f"redis://:{secret}@",
        f"redis://user:pa/{secret}@localhost",
    ):
        with pytest.raises(ValueError, match="URL") as info:
            driver.Multiplexer(url)
        assert secret not in str(info.value), url
        assert secret not in repr(info.value), url


@pytest.mark.parametrize(
    "options",
    [
        {"pasword": "x"},  # a typo
        {"timeout": 1.0},
        {"host": "localhost"},  # comes from the URL
        {"port": 6379},
        {"protocol": "3"},  # wrong types
        {"db": "1"},
        {"health_check_interval": "5"},
        {"password": 1234},
        {"buffer_size": "10"},
        {"overflow": 3},
        {"ssl": True},
    ],
    ids=lambda options: next(iter(options)),
)
def test_unknown_option_or_wrong_type_raises_type_error(
    driver: Any, options: dict[str, Any]
) -> None:
    with pytest.raises(TypeError):
        driver.Multiplexer("redis://localhost:6379", **options)


@pytest.mark.parametrize(
    "options",
    [
        {"protocol": 4},
        {"db": -1},
        {"buffer_size": 0},
        {"overflow": "drop-everything"},
        {"connect_timeout": -1.0},
        {"backoff_base": 5.0, "backoff_cap": 1.0},
    ],
    ids=lambda options: next(iter(options)),
)
def test_option_out_of_range_raises_value_error(driver: Any, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        driver.Multiplexer("redis://localhost:6379", **options)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://:pw@localhost/0", {"password": "pw2"}),
        ("redis://alice:pw@localhost/0", {"username": "alice"}),
        ("redis://localhost/2", {"db": 2}),
        ("redis://localhost/0?client_name=a", {"client_name": "b"}),
        ("redis://localhost/0?protocol=3", {"protocol": 3}),
    ],
    ids=["password", "username", "db", "client_name", "protocol"],
)
def test_option_given_twice_raises_value_error(
    driver: Any, url: str, options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="twice"):
        driver.Multiplexer(url, **options)


def test_password_never_in_repr_or_str(driver: Any, redis_server: RedisServer) -> None:
    in_url = "UrlS3cretPw"
    keyword = "KwS3cretPw"
    # Both are refused by the server (no user alice, no password configured); a long
    # backoff keeps them from trying again during the test.
    slow_retry = {"backoff_base": 5.0, "backoff_cap": 10.0}
    url_mpx = driver.Multiplexer(
        f"redis://alice:{in_url}@127.0.0.1:{redis_server.port}/0", **slow_retry
    )
    kw_mpx = driver.Multiplexer(redis_server.url, password=keyword, **slow_retry)

    def check() -> None:
        for mpx, secret in ((url_mpx, in_url), (kw_mpx, keyword)):
            for text in (repr(mpx), str(mpx), repr(mpx.settings), str(mpx.settings)):
                assert secret not in text

    check()
    assert "alice" in repr(url_mpx)  # the URL is shown, only redacted

    async def body() -> None:
        async with url_mpx, kw_mpx:
            check()  # connecting
            await wait_until(
                lambda: (
                    url_mpx.statistics().reconnect_attempts >= 1
                    and kw_mpx.statistics().reconnect_attempts >= 1
                )
            )
            check()  # refused, waiting to retry
        check()  # closed

    driver.run(body)


def test_wrong_password_leaks_nowhere(
    driver: Any, redis_server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory(password="right-password")
    secret = "Wr0ngS3cretPw"
    caplog.set_level(logging.DEBUG, logger="redismpx")
    errors: list[Exception] = []

    async def body() -> None:
        mpx = driver.Multiplexer(server.url, password=secret, backoff_base=5.0, backoff_cap=10.0)
        async with mpx:
            sub = mpx.new_channel_subscription(lambda c, d: None, errors.append)
            sub.add("x")
            # Refused; the failure is logged before the backoff delay starts.
            await wait_until(lambda: errors and mpx.statistics().reconnect_attempts >= 1)
            text = repr(mpx) + str(mpx)
        assert isinstance(errors[0], driver.module.AuthenticationError)
        for error in errors:
            assert secret not in str(error)
            assert secret not in repr(error)
            assert secret not in str(error.args)
        assert secret not in text
        assert secret not in caplog.text
        assert any(r.name == "redismpx" for r in caplog.records), "the failure is logged"
        for record in caplog.records:
            assert secret not in record.getMessage()
            if record.exc_info:
                assert secret not in repr(record.exc_info[1])

    driver.run(body)


def test_use_before_async_with_raises_runtime_error(driver: Any, redis_server: RedisServer) -> None:
    mpx = driver.Multiplexer(redis_server.url)

    def cb(channel: bytes, data: bytes) -> None:
        pass

    async def body() -> None:
        with pytest.raises(RuntimeError):
            mpx.new_channel_subscription(cb)
        with pytest.raises(RuntimeError):
            mpx.new_pattern_subscription("p:*", cb)
        with pytest.raises(RuntimeError):
            mpx.new_sharded_subscription(cb)
        with pytest.raises(RuntimeError):
            mpx.new_promise_subscription("pfx-")
        with pytest.raises(RuntimeError):
            mpx.subscribe("a")
        with pytest.raises(RuntimeError):
            mpx.psubscribe("a*")
        with pytest.raises(RuntimeError):
            mpx.ssubscribe("a")
        with pytest.raises(RuntimeError):
            await mpx.publish("a", b"x")
        with pytest.raises(RuntimeError):
            await mpx.wait_connected()
        # The refused calls left nothing behind, and the multiplexer still works.
        assert mpx.statistics().subscriptions == 0
        async with mpx:
            with anyio.fail_after(5):
                await mpx.wait_connected()
            assert mpx.statistics().subscriptions == 0

    driver.run(body)


def test_entering_twice_raises_runtime_error(driver: Any, redis_server: RedisServer) -> None:
    mpx = driver.Multiplexer(redis_server.url)

    async def body() -> None:
        inbox = Inbox()
        chan = uniq("twice")
        async with mpx:
            with pytest.raises(RuntimeError):
                async with mpx:
                    pytest.fail("entered a second time")
            # The failed second entry did not disturb the first.
            sub = mpx.new_channel_subscription(inbox)
            sub.add(chan)
            await wait_server(lambda: numsub(redis_server, chan) == 1)
            await mpx.publish(chan, b"still fine")
            await wait_until(lambda: inbox.has(chan, b"still fine"))
        with pytest.raises(RuntimeError):
            async with mpx:
                pytest.fail("re-entered after exit")

    driver.run(body)


# ============================================================================ channel subscriptions


def test_channel_add_remove_clear_close(driver: Any, redis_server: RedisServer) -> None:
    a, bb, c = uniq("a"), uniq("b"), uniq("c")
    uni = uniq("ünï")  # str names are UTF-8

    async def body() -> None:
        inbox = Inbox()
        active: list[bytes] = []
        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = mpx.new_channel_subscription(inbox, on_activation=active.append)
            assert isinstance(sub, driver.module.ChannelSubscription)
            assert sub.names == frozenset()
            sub.add(a, b(bb))  # str and bytes, several per call
            sub.add(c, uni)
            assert sub.names == {b(a), b(bb), b(c), uni.encode("utf-8")}
            await wait_until(lambda: len(active) == 4)
            assert sorted(active) == sorted(sub.names)
            for name in (a, bb, c, uni):
                assert numsub(redis_server, name) == 1
                assert await mpx.publish(name, b"to " + b(name)) == 1
            await wait_until(lambda: len(inbox.messages) == 4)
            assert sorted(inbox.messages) == sorted((b(n), b"to " + b(n)) for n in (a, bb, c, uni))
            assert inbox.types == {(bytes, bytes)}

            sub.remove(b(a), bb)
            assert sub.names == {b(c), b(uni)}
            await wait_server(
                lambda: numsub(redis_server, a) == 0 and numsub(redis_server, bb) == 0
            )
            assert numsub(redis_server, c) == 1
            sub.remove("never-added")  # names it lacks are ignored

            sub.clear()
            assert sub.names == frozenset()
            await wait_server(
                lambda: numsub(redis_server, c) == 0 and numsub(redis_server, uni) == 0
            )

            sub.add(a)  # a cleared subscription can be used again
            await wait_until(lambda: active.count(b(a)) == 2)
            assert not sub.closed
            sub.close()
            assert sub.closed
            sub.close()  # twice is fine
            await wait_server(lambda: numsub(redis_server, a) == 0)
            await round_trip(mpx)

    driver.run(body)


async def _record_async(log: list[tuple[bytes, bytes]], channel: bytes, data: bytes) -> None:
    await anyio.lowlevel.checkpoint()  # really asynchronous: recorded after a suspension
    log.append((channel, data))


class AsyncCallable:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []

    async def __call__(self, channel: bytes, data: bytes) -> None:
        await _record_async(self.messages, channel, data)


@pytest.mark.parametrize("kind", ["sync", "async_def", "async_callable_object", "lambda_coroutine"])
def test_callback_kinds(driver: Any, redis_server: RedisServer, kind: str) -> None:
    chan = uniq(kind)

    async def body() -> None:
        received: list[tuple[bytes, bytes]] = []
        activated: list[bytes] = []
        on_message: Any
        on_activation: Any
        if kind == "sync":
            on_message = lambda c, d: received.append((c, d))  # noqa: E731
            on_activation = activated.append
        elif kind == "async_def":

            async def on_message(c: bytes, d: bytes) -> None:
                await _record_async(received, c, d)

            async def on_activation(name: bytes) -> None:
                await anyio.lowlevel.checkpoint()
                activated.append(name)

        elif kind == "async_callable_object":
            obj = AsyncCallable()
            received = obj.messages
            on_message = obj

            class Activation:
                async def __call__(self, name: bytes) -> None:
                    await anyio.lowlevel.checkpoint()
                    activated.append(name)

            on_activation = Activation()
        else:
            on_message = lambda c, d: _record_async(received, c, d)  # noqa: E731

            async def _act(name: bytes) -> None:
                await anyio.lowlevel.checkpoint()
                activated.append(name)

            on_activation = lambda name: _act(name)  # noqa: E731

        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = mpx.new_channel_subscription(on_message, on_activation=on_activation)
            sub.add(chan)
            await wait_until(lambda: activated == [b(chan)])
            for i in range(20):
                await mpx.publish(chan, b"%d" % i)
            await wait_until(lambda: len(received) == 20)
            assert received == [(b(chan), b"%d" % i) for i in range(20)]
            assert activated == [b(chan)]

    driver.run(body)


def test_on_activation_once_per_subscription_and_name(
    driver: Any, redis_server: RedisServer
) -> None:
    a, c = uniq("act-a"), uniq("act-c")

    async def body() -> None:
        inbox1, inbox2 = Inbox(), Inbox()
        acts1: list[bytes] = []
        acts2: list[bytes] = []
        async with driver.Multiplexer(redis_server.url) as mpx:
            sub1 = mpx.new_channel_subscription(inbox1, on_activation=acts1.append)
            sub1.add(a, c)
            sub1.add(a)  # already held: nothing new
            await wait_until(lambda: len(acts1) >= 2)

            # Already active through sub1: sub2 hears of it at once, with no round trip.
            sub2 = mpx.new_channel_subscription(inbox2, on_activation=acts2.append)
            sub2.add(a)
            assert acts2 == [b(a)]

            # Sync point: a message on each name has come back through the connection.
            await mpx.publish(a, b"sync")
            await mpx.publish(c, b"sync")
            await wait_until(lambda: inbox1.has(c, b"sync") and inbox2.has(a, b"sync"))
            assert Counter(acts1) == {b(a): 1, b(c): 1}
            assert acts2 == [b(a)]

            # Removed and added again: it becomes active for sub1 once more (at once,
            # since sub2 kept it active on the server).
            sub1.remove(a)
            sub1.add(a)
            assert Counter(acts1) == {b(a): 2, b(c): 1}
            assert acts2 == [b(a)]

    driver.run(body)


def test_reference_counting_on_the_server(driver: Any, redis_server: RedisServer) -> None:
    shared, own = uniq("shared"), uniq("own")
    client_name = "refcount-" + uuid.uuid4().hex[:8]

    async def body() -> None:
        inboxes = [Inbox() for _ in range(3)]
        async with driver.Multiplexer(redis_server.url, client_name=client_name) as mpx:
            subs = [mpx.new_channel_subscription(inbox) for inbox in inboxes]
            for sub in subs:
                sub.add(shared)
            subs[0].add(own)
            await wait_server(lambda: numsub(redis_server, shared) == 1)
            assert numsub(redis_server, own) == 1
            (info,) = [c for c in clients_named(redis_server, client_name) if c["sub"] != "0"]
            assert info["sub"] == "2"  # each distinct name once on the connection

            # One connection receives it, every subscription gets it.
            assert await mpx.publish(shared, b"one") == 1
            await wait_until(lambda: all(i.has(shared, b"one") for i in inboxes))

            subs[0].remove(shared)
            subs[1].remove(shared)
            # Still held by subs[2]: still subscribed, still delivered to it alone.
            assert await mpx.publish(shared, b"two") == 1
            await wait_until(lambda: inboxes[2].has(shared, b"two"))
            assert numsub(redis_server, shared) == 1
            subs[2].remove(shared)
            await wait_server(lambda: numsub(redis_server, shared) == 0)
            assert numsub(redis_server, own) == 1
            assert not inboxes[0].has(shared, b"two")
            assert not inboxes[1].has(shared, b"two")
            await round_trip(mpx)

    driver.run(body)


def _commandstats(server: RedisServer) -> dict[str, int]:
    calls = {}
    for key, value in server.info("commandstats").items():
        if key.startswith("cmdstat_"):
            calls[key[len("cmdstat_") :]] = int(value.split(",")[0].split("=")[1])
    return calls


def test_batching_changes_before_a_write(driver: Any, redis_server_factory: Any) -> None:
    server = redis_server_factory()  # its own server: command counts are ours alone
    a, bb, c, d, e = (uniq(x) for x in "abcde")

    async def body() -> None:
        async with driver.Multiplexer(server.url) as mpx:
            with anyio.fail_after(5):
                await mpx.wait_connected()
            before = _commandstats(server)
            active: list[bytes] = []
            subs = [
                mpx.new_channel_subscription(lambda c, d: None, on_activation=active.append)
                for _ in range(3)
            ]
            # Changes made in one go: one SUBSCRIBE for all of them.
            subs[0].add(a, bb)
            subs[1].add(c)
            subs[2].add(a)
            await wait_until(lambda: len(active) == 4)
            after = _commandstats(server)
            assert after.get("subscribe", 0) - before.get("subscribe", 0) == 1

            # An add and a remove of the same name before the write cancel out; a remove
            # of a name another subscription holds sends nothing either.
            subs[0].add(d)
            subs[0].remove(d)
            subs[0].remove(a)
            await anyio.sleep(0.05)  # let the writer run (nothing should go out)
            subs[1].add(e)
            await wait_until(lambda: b(e) in active)
            final = _commandstats(server)
            assert final.get("subscribe", 0) - before.get("subscribe", 0) == 2
            assert final.get("unsubscribe", 0) - before.get("unsubscribe", 0) == 0
            assert numsub(server, d) == 0
            assert numsub(server, a) == 1

    driver.run(body)


# ----------------------------------------------------------------------------- races (SPEC 3.3)


async def _checkpoints(n: int) -> None:
    for _ in range(n):
        await anyio.lowlevel.checkpoint()


def test_race_remove_before_confirmation(driver: Any, redis_server: RedisServer) -> None:
    async def body() -> None:
        inbox = Inbox()
        sentinel = uniq("sentinel")
        # on_activation(name) is only ever called for a name the subscription holds.
        activations: list[tuple[bytes, bool]] = []
        async with driver.Multiplexer(redis_server.url) as mpx:
            with anyio.fail_after(5):
                await mpx.wait_connected()
            sub = mpx.new_channel_subscription(
                inbox, on_activation=lambda name: activations.append((name, name in sub.names))
            )
            sub.add(sentinel)
            await wait_until(lambda: activations == [(b(sentinel), True)])
            names = []
            for k in range(8):  # remove after k scheduler turns: before or during the write
                name = uniq(f"rbc{k}")
                names.append(name)
                sub.add(name)
                await _checkpoints(k)
                sub.remove(name)
            assert sub.names == {b(sentinel)}
            for name in names:
                await wait_server(lambda name=name: numsub(redis_server, name) == 0)
                await mpx.publish(name, b"late")
            await mpx.publish(sentinel, b"end")
            await wait_until(lambda: inbox.has(sentinel, b"end"))
            assert inbox.data() == [b"end"]
            assert all(held for _, held in activations), activations
            assert Counter(name for name, _ in activations)[b(sentinel)] == 1
            assert mpx.statistics().connections_lost == 0
            await round_trip(mpx)

    driver.run(body)


def test_race_add_and_remove_while_unsubscribe_in_flight(
    driver: Any, redis_server: RedisServer
) -> None:
    """remove(x) sends UNSUBSCRIBE; then add(x) and remove(x) again before the next
    write, while the UNSUBSCRIBE confirmation is already waiting on the socket. The net
    wish is "not subscribed"; nothing may break. (The blocking sleep only makes sure
    the confirmation is in the socket buffer, so that the reader sees it before the
    writer runs again; it is not used to wait for anything.)"""

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            for attempt in range(10):
                for k in range(6):
                    name = uniq(f"aru{attempt}.{k}")
                    active: list[bytes] = []
                    sub = mpx.new_channel_subscription(Inbox(), on_activation=active.append)
                    sub.add(name)
                    await wait_until(lambda active=active, name=name: active == [b(name)])
                    sub.remove(name)
                    await _checkpoints(3)  # the UNSUBSCRIBE goes out
                    time.sleep(0.002)  # noqa: ASYNC251 - ... and its confirmation comes back
                    await _checkpoints(k)
                    sub.add(name)
                    sub.remove(name)
                    await anyio.sleep(0.002)
                    assert sub.names == frozenset()
            last = uniq("aru-last")
            inbox = Inbox()
            mpx.new_channel_subscription(inbox).add(last)
            await wait_server(lambda: numsub(redis_server, last) == 1)
            await mpx.publish(last, b"alive")
            await wait_until(lambda: inbox.has(last, b"alive"))
            assert mpx.statistics().connections_lost == 0

    driver.run(body)


def test_race_add_while_unsubscribe_in_flight(driver: Any, redis_server: RedisServer) -> None:
    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            for k in range(8):
                name = uniq(f"awu{k}")
                inbox = Inbox()
                active: list[bytes] = []
                sub = mpx.new_channel_subscription(inbox, on_activation=active.append)
                sub.add(name)
                await wait_until(lambda active=active: len(active) == 1)
                sub.remove(name)
                await _checkpoints(k)  # the UNSUBSCRIBE is queued, sent or answered
                sub.add(name)
                await wait_until(lambda active=active: len(active) == 2)
                await wait_server(lambda name=name: numsub(redis_server, name) == 1)
                assert await mpx.publish(name, b"back") == 1
                await wait_until(lambda inbox=inbox, name=name: inbox.has(name, b"back"))
                sub.close()
                await wait_server(lambda name=name: numsub(redis_server, name) == 0)
            assert mpx.statistics().connections_lost == 0
            await round_trip(mpx)

    driver.run(body)


def test_race_add_by_other_subscription_while_unsubscribe_in_flight(
    driver: Any, redis_server: RedisServer
) -> None:
    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            for k in range(8):
                name = uniq(f"awo{k}")
                first, second = Inbox(), Inbox()
                acts: list[bytes] = []
                sub1 = mpx.new_channel_subscription(first, on_activation=acts.append)
                sub1.add(name)
                await wait_until(lambda acts=acts: len(acts) == 1)
                sub1.remove(name)
                await _checkpoints(k)
                sub2 = mpx.new_channel_subscription(second, on_activation=acts.append)
                sub2.add(name)
                await wait_until(lambda acts=acts: len(acts) == 2)
                await wait_server(lambda name=name: numsub(redis_server, name) == 1)
                await mpx.publish(name, b"m")
                await wait_until(lambda second=second, name=name: second.has(name, b"m"))
                assert first.messages == []
                sub1.close()
                sub2.close()
            assert mpx.statistics().connections_lost == 0
            await round_trip(mpx)

    driver.run(body)


def test_race_sub_unsub_sub_burst_and_close_twice(driver: Any, redis_server: RedisServer) -> None:
    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            with anyio.fail_after(5):
                await mpx.wait_connected()
            keep, drop, closed_name = uniq("keep"), uniq("drop"), uniq("closed")
            inbox = Inbox()
            sub = mpx.new_channel_subscription(inbox)
            # Ends subscribed.
            sub.add(keep)
            sub.remove(keep)
            sub.add(keep)
            # Ends unsubscribed.
            sub.add(drop)
            sub.remove(drop)
            sub.add(drop)
            sub.remove(drop)
            # Closed before anything was confirmed, twice.
            other = mpx.new_channel_subscription(Inbox())
            other.add(closed_name, keep)
            other.close()
            other.close()
            assert other.closed
            await wait_server(lambda: numsub(redis_server, keep) == 1)
            assert numsub(redis_server, drop) == 0
            await wait_server(lambda: numsub(redis_server, closed_name) == 0)
            assert sub.names == {b(keep)}
            assert await mpx.publish(keep, b"k") == 1
            await wait_until(lambda: inbox.has(keep, b"k"))
            # The same again, with scheduler turns between the steps.
            for k in range(1, 6):
                sub.remove(keep)
                await _checkpoints(k)
                sub.add(keep)
                await _checkpoints(k)
                sub.remove(keep)
                await _checkpoints(k)
                sub.add(keep)
            await wait_server(lambda: numsub(redis_server, keep) == 1)
            await mpx.publish(keep, b"k2")
            await wait_until(lambda: inbox.has(keep, b"k2"))
            sub.close()
            sub.close()
            await wait_server(lambda: numsub(redis_server, keep) == 0)
            assert mpx.statistics().connections_lost == 0
            assert mpx.statistics().subscriptions == 0
            await round_trip(mpx)

    driver.run(body)


def test_race_random_bursts_end_in_the_requested_state(
    driver: Any, redis_server: RedisServer
) -> None:
    """Random add/remove/clear bursts over 3 subscriptions and 4 names, with random
    scheduler turns between the steps; after each burst the server and the deliveries
    must match what the user asked for."""
    rng = random.Random(20240611)
    names = [uniq(f"rnd{i}") for i in range(4)]
    sentinel = uniq("rnd-sentinel")
    client_name = "races-" + uuid.uuid4().hex[:8]

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url, client_name=client_name) as mpx:
            inboxes = [Inbox() for _ in range(3)]
            subs = [mpx.new_channel_subscription(inbox) for inbox in inboxes]
            for sub in subs:
                sub.add(sentinel)
            model: list[set[bytes]] = [set() for _ in subs]
            for round_ in range(10):
                for _ in range(25):
                    i = rng.randrange(3)
                    op = rng.random()
                    picked = rng.sample(names, rng.randint(1, 2))
                    if op < 0.5:
                        subs[i].add(*picked)
                        model[i].update(b(n) for n in picked)
                    elif op < 0.9:
                        subs[i].remove(*picked)
                        model[i].difference_update(b(n) for n in picked)
                    else:
                        subs[i].clear()
                        subs[i].add(sentinel)
                        model[i].clear()
                    turns = rng.choice([0, 0, 1, 2, 5])
                    await _checkpoints(turns)
                    if rng.random() < 0.1:
                        await anyio.sleep(0.001)  # let replies arrive mid-burst
                for i, sub in enumerate(subs):
                    assert sub.names == model[i] | {b(sentinel)}
                wanted = set().union(*model)

                def settled(wanted: set[bytes] = wanted) -> bool:
                    # Every wanted name is active in the multiplexer (and so confirmed by
                    # the server), and the server holds exactly the wanted ones.
                    if mpx.statistics().active_channels != len(wanted) + 1:
                        return False
                    return all(
                        numsub(redis_server, name) == (1 if b(name) in wanted else 0)
                        for name in names
                    )

                await wait_server(settled)
                # Every name published once, then a sentinel everyone holds.
                tag = b"round%d" % round_
                for name in names:
                    await mpx.publish(name, tag)
                await mpx.publish(sentinel, tag)
                await wait_until(lambda tag=tag: all(x.has(sentinel, tag) for x in inboxes))
                for i, inbox in enumerate(inboxes):
                    got = {c for c, d in inbox.messages if d == tag and c != b(sentinel)}
                    assert got == model[i], (round_, i)
                # The connection holds each wanted name once, plus the sentinel.
                await wait_server(
                    lambda wanted=wanted: (
                        [int(c["sub"]) for c in clients_named(redis_server, client_name)]
                        in ([len(wanted) + 1], [len(wanted) + 1, 0], [0, len(wanted) + 1])
                    )
                )
            assert mpx.statistics().connections_lost == 0

    driver.run(body)


# ============================================================================ patterns


def test_pattern_subscription(driver: Any, redis_server_factory: Any) -> None:
    server = redis_server_factory()  # its own server: PUBSUB NUMPAT is server-wide
    base = uniq("pat")
    pattern = base + ":*"

    async def body() -> None:
        inbox, inbox2 = Inbox(), Inbox()
        active: list[bytes] = []
        async with driver.Multiplexer(server.url) as mpx:
            psub = mpx.new_pattern_subscription(pattern, inbox, on_activation=active.append)
            assert isinstance(psub, driver.module.PatternSubscription)
            assert psub.pattern == b(pattern)
            await wait_until(lambda: active == [b(pattern)])
            assert numpat(server) == 1
            # A second subscription to the same pattern: still one PSUBSCRIBE.
            psub2 = mpx.new_pattern_subscription(b(pattern), inbox2)
            assert await mpx.publish(base + ":one", b"1") == 1
            await mpx.publish(base + "-other", b"no match")
            await mpx.publish(base + ":two", b"\x00\xff2")
            await wait_until(lambda: len(inbox.messages) == 2 and len(inbox2.messages) == 2)
            # on_message gets the concrete channel, not the pattern.
            assert inbox.messages == [(b(base + ":one"), b"1"), (b(base + ":two"), b"\x00\xff2")]
            assert inbox2.messages == inbox.messages
            assert numpat(server) == 1
            assert mpx.statistics().active_patterns == 1
            psub.close()
            psub.close()
            assert psub.closed
            await mpx.publish(base + ":three", b"3")
            await wait_until(lambda: inbox2.has(base + ":three", b"3"))
            assert not inbox.has(base + ":three", b"3")
            assert numpat(server) == 1
            psub2.close()
            await wait_server(lambda: numpat(server) == 0)

            # Races: created and closed at once; closed and re-created.
            mpx.new_pattern_subscription(pattern, inbox).close()
            again = mpx.new_pattern_subscription(pattern, Inbox())
            again.close()
            last = Inbox()
            mpx.new_pattern_subscription(pattern, last)
            await wait_server(lambda: numpat(server) == 1)
            assert await mpx.publish(base + ":four", b"4") == 1
            await wait_until(lambda: last.has(base + ":four", b"4"))
            assert mpx.statistics().connections_lost == 0

    driver.run(body)


# ============================================================================ sharded


@pytest.mark.server_feature("sharded")
def test_sharded_subscription(driver: Any, redis_server: RedisServer) -> None:
    chan = "user:{" + uuid.uuid4().hex[:8] + "}:events"

    async def body() -> None:
        inbox, inbox2 = Inbox(), Inbox()
        active: list[bytes] = []
        async with driver.Multiplexer(redis_server.url) as mpx:
            ssub = mpx.new_sharded_subscription(inbox, on_activation=active.append)
            assert isinstance(ssub, driver.module.ShardedSubscription)
            ssub.add(chan)
            ssub2 = mpx.new_sharded_subscription(inbox2, on_activation=active.append)
            ssub2.add(b(chan))
            await wait_until(lambda: active == [b(chan), b(chan)])
            assert shardnumsub(redis_server, chan) == 1
            assert numsub(redis_server, chan) == 0  # not a plain SUBSCRIBE
            assert mpx.statistics().active_shard_channels == 1
            assert await mpx.spublish(chan, b"s1") == 1
            # A plain PUBLISH on the same name is another name space.
            assert await mpx.publish(chan, b"plain") == 0
            assert await mpx.spublish(chan, b"s2") == 1
            await wait_until(lambda: len(inbox.messages) == 2 and len(inbox2.messages) == 2)
            assert inbox.messages == [(b(chan), b"s1"), (b(chan), b"s2")]
            assert inbox2.messages == inbox.messages
            ssub.remove(chan)
            assert ssub.names == frozenset()
            assert shardnumsub(redis_server, chan) == 1
            ssub2.clear()
            await wait_server(lambda: shardnumsub(redis_server, chan) == 0)
            ssub.close()
            ssub2.close()
            await round_trip(mpx)

    driver.run(body)


# ============================================================================ iterators


def test_iterator_subscribe(driver: Any, redis_server: RedisServer) -> None:
    a, c = uniq("it-a"), uniq("it-b")

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            got: list[Any] = []
            with anyio.fail_after(10):
                async with mpx.subscribe(a, b(c)) as it:
                    assert isinstance(it, driver.module.MessageIterator)
                    # Entering waited for the confirmations: a publish right now is received.
                    assert redis_server.command("PUBLISH", a, b"first") == 1
                    assert await mpx.publish(c, b"\x00second\xff") == 1
                    await mpx.publish(a, b"third")
                    async for msg in it:
                        got.append(msg)
                        if len(got) == 3:
                            break
                # Leaving the block unsubscribed on the server.
                await wait_server(
                    lambda: numsub(redis_server, a) == 0 and numsub(redis_server, c) == 0
                )
            assert [(m.channel, m.data, m.pattern) for m in got] == [
                (b(a), b"first", None),
                (b(c), b"\x00second\xff", None),
                (b(a), b"third", None),
            ]
            assert all(isinstance(m, driver.module.Message) for m in got)
            assert mpx.statistics().subscriptions == 0
            await round_trip(mpx)

    driver.run(body)


def test_iterator_psubscribe(driver: Any, redis_server: RedisServer) -> None:
    base = uniq("itp")
    pattern = base + ".*"

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            with anyio.fail_after(10):
                async with mpx.psubscribe(pattern) as it:
                    assert await mpx.publish(base + ".x", b"1") == 1
                    await mpx.publish(base + ".y", b"2")
                    msgs = [await it.__anext__(), await it.__anext__()]
            assert [(m.channel, m.data, m.pattern) for m in msgs] == [
                (b(base + ".x"), b"1", b(pattern)),
                (b(base + ".y"), b"2", b(pattern)),
            ]
            assert await mpx.publish(base + ".z", b"gone") == 0
            await round_trip(mpx)

    driver.run(body)


@pytest.mark.server_feature("sharded")
def test_iterator_ssubscribe(driver: Any, redis_server: RedisServer) -> None:
    chan = "it:{" + uuid.uuid4().hex[:8] + "}"

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            with anyio.fail_after(10):
                async with mpx.ssubscribe(chan) as it:
                    assert await mpx.spublish(chan, b"s") == 1
                    async for msg in it:
                        assert (msg.channel, msg.data, msg.pattern) == (b(chan), b"s", None)
                        break
            await wait_server(lambda: shardnumsub(redis_server, chan) == 0)
            await round_trip(mpx)

    driver.run(body)


def test_iterator_ends_when_closed(driver: Any, redis_server: RedisServer) -> None:
    chan = uniq("itclose")

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            got = []
            with anyio.fail_after(10):
                async with mpx.subscribe(chan) as it:
                    await mpx.publish(chan, b"1")
                    async for msg in it:
                        got.append(msg.data)
                        it.close()  # ends the iteration: no exception
                    assert got == [b"1"]
                    it.close()
            await wait_server(lambda: numsub(redis_server, chan) == 0)
            await round_trip(mpx)

    driver.run(body)


def _acl_server(factory: Any) -> RedisServer:
    """A server where alice may use channels ``ok:*`` only (the default user may do anything)."""
    return factory(*acl_user("alice", "on", ">alicepw", "~*", "+@all", "resetchannels", "&ok:*"))


def test_rejected_name_raises_on_iterator_entry(driver: Any, redis_server_factory: Any) -> None:
    server = _acl_server(redis_server_factory)

    async def body() -> None:
        mpx = driver.Multiplexer(server.url, username="alice", password="alicepw")
        async with mpx:
            with anyio.fail_after(10):
                with pytest.raises(driver.module.ServerError) as info:
                    async with mpx.subscribe("ok:1", "denied:1"):
                        pytest.fail("entered although a name was refused")
                assert info.value.code == "NOPERM"
                with pytest.raises(driver.module.ServerError):
                    async with mpx.psubscribe("denied:*"):
                        pytest.fail("entered although the pattern was refused")
                # The refusal is no connection loss, and the allowed name works.
                async with mpx.subscribe("ok:2") as it:
                    assert await mpx.publish("ok:2", b"fine") == 1
                    msg = await it.__anext__()
                    assert msg.data == b"fine"
            await wait_server(lambda: numsub(server, "ok:1") == 0)
            assert mpx.statistics().connections_lost == 0
            assert mpx.statistics().subscriptions == 0
            await round_trip(mpx, "ok:rt")

    driver.run(body)


def test_rejected_name_reported_to_callback_subscription(
    driver: Any, redis_server_factory: Any
) -> None:
    server = _acl_server(redis_server_factory)

    async def body() -> None:
        inbox, other_inbox = Inbox(), Inbox()
        errors: list[Exception] = []
        other_errors: list[Exception] = []
        active: list[bytes] = []
        mpx = driver.Multiplexer(server.url, username="alice", password="alicepw")
        async with mpx:
            other = mpx.new_channel_subscription(other_inbox, other_errors.append)
            other.add("ok:other")
            sub = mpx.new_channel_subscription(inbox, errors.append, active.append)
            sub.add("ok:a", "denied:a", "ok:b")
            await wait_until(lambda: len(errors) == 1 and len(active) == 2)
            assert isinstance(errors[0], driver.module.ServerError)
            assert errors[0].code == "NOPERM"
            assert sorted(active) == [b"ok:a", b"ok:b"]
            assert sub.names == {b"ok:a", b"ok:b"}  # the refused name was dropped
            for chan in ("ok:a", "ok:b", "ok:other"):
                assert await mpx.publish(chan, b"x") == 1
            await wait_until(lambda: len(inbox.messages) == 2 and len(other_inbox.messages) == 1)
            assert other_errors == []
            assert mpx.statistics().connections_lost == 0

    driver.run(body)


def test_rejected_promise_prefix_does_not_hang_waiters(
    driver: Any, redis_server_factory: Any
) -> None:
    """SPEC 3.12: a refused name is reported to the subscription that asked for it. A
    promise subscription's only way to hear is its waiters: they must not hang."""
    server = _acl_server(redis_server_factory)

    async def body() -> None:
        mpx = driver.Multiplexer(server.url, username="alice", password="alicepw")
        async with mpx:
            promises = mpx.new_promise_subscription("denied:")
            with anyio.fail_after(2):
                with pytest.raises(driver.module.RedisMPXError) as info:
                    await promises.wait_for_activation()
            assert isinstance(
                info.value, driver.module.ServerError | driver.module.SubscriptionClosed
            )

    driver.run(body)


def test_iterator_bad_arguments(driver: Any, redis_server: RedisServer) -> None:
    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            with pytest.raises(ValueError, match="at least one"):
                mpx.subscribe()
            with pytest.raises(TypeError):
                mpx.subscribe("ok", 5)
            with pytest.raises(ValueError, match="empty"):
                mpx.subscribe("ok", "")
            with pytest.raises(TypeError):
                mpx.psubscribe(5)
            with pytest.raises(ValueError, match="empty"):
                mpx.psubscribe("")
            with pytest.raises(ValueError, match="buffer_size"):
                mpx.subscribe("ok", buffer_size=0)
            with pytest.raises(ValueError, match="overflow"):
                mpx.subscribe("ok", overflow="sometimes")
            assert mpx.statistics().subscriptions == 0

    driver.run(body)


# ============================================================================ promises


def test_promise_fulfilled_by_publish(driver: Any, redis_server: RedisServer) -> None:
    prefix = uniq("prom") + "-"

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            promises = mpx.new_promise_subscription(prefix)
            assert isinstance(promises, driver.module.PromiseSubscription)
            assert promises.prefix == b(prefix)
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            assert promises.active
            p = promises.new_promise("world", 10)
            assert isinstance(p, driver.module.Promise)
            assert p.channel == b(prefix + "world")
            assert not p.done
            assert mpx.statistics().promises_pending == 1
            assert await mpx.publish(prefix + "world", b"\x00payload\xff") == 1
            with anyio.fail_after(5):
                assert await p == b"\x00payload\xff"
            assert p.done
            assert await p == b"\x00payload\xff"  # awaiting again gives the same
            assert mpx.statistics().promises_pending == 0
            promises.close()
            await round_trip(mpx)

    driver.run(body)


def test_all_pending_promises_on_a_channel_fulfilled_by_next_message(
    driver: Any, redis_server: RedisServer
) -> None:
    prefix = uniq("promall") + ":"

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            promises = mpx.new_promise_subscription(prefix)
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            same = [promises.new_promise("job", 10) for _ in range(3)]
            same.append(promises.new_promise(b"job", 10))
            other = promises.new_promise("other", 0.5)
            await mpx.publish(prefix + "job", b"first")
            await mpx.publish(prefix + "job", b"second")
            with anyio.fail_after(5):
                results = [await p for p in same]
            assert results == [b"first"] * 4
            later = promises.new_promise("job", 10)
            await mpx.publish(prefix + "job", b"third")
            with anyio.fail_after(5):
                assert await later == b"third"
            # Not fulfilled by the messages of other channels: it expires.
            with anyio.fail_after(5), pytest.raises(TimeoutError):
                await other

    driver.run(body)


def test_promise_expiry_raises_timeout_error(driver: Any, redis_server: RedisServer) -> None:
    prefix = uniq("promexp") + "-"

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            promises = mpx.new_promise_subscription(prefix)
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            start = anyio.current_time()
            p = promises.new_promise("never", 0.2)
            never_awaited = promises.new_promise("never2", 0.2)
            with anyio.fail_after(5), pytest.raises(TimeoutError):
                await p
            assert anyio.current_time() - start >= 0.19
            # A promise never awaited leaves nothing behind after its timeout.
            await wait_until(lambda: mpx.statistics().promises_pending == 0)
            assert never_awaited.done
            # A message after the expiry does not resurrect it.
            await mpx.publish(prefix + "never", b"late")
            with pytest.raises(TimeoutError):
                await p

    driver.run(body)


def test_promise_prefix_glob_characters_match_literally(
    driver: Any, redis_server: RedisServer
) -> None:
    prefix = uniq("glob") + ":job[1]*-"

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            promises = mpx.new_promise_subscription(prefix)
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            p = promises.new_promise("abc", 10)
            # Would match `...:job[1]*-*` if the glob were live: nobody receives it.
            lookalike = prefix.replace("job[1]*-", "job1XYZ-") + "abc"
            assert await mpx.publish(lookalike, b"wrong") == 0
            assert await mpx.publish(prefix.replace("[1]", "1") + "abc", b"wrong") == 0
            assert not p.done
            assert await mpx.publish(prefix + "abc", b"right") == 1
            with anyio.fail_after(5):
                assert await p == b"right"

    driver.run(body)


def test_promise_subscription_close_fails_pending_promises(
    driver: Any, redis_server: RedisServer
) -> None:
    prefix = uniq("promclose") + "-"

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            promises = mpx.new_promise_subscription(prefix)
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            pending = [promises.new_promise(f"s{i}", 30) for i in range(3)]
            outcomes: list[BaseException] = []

            async def awaiter(p: Any) -> None:
                try:
                    await p
                except BaseException as exc:
                    outcomes.append(exc)

            async with anyio.create_task_group() as tg:
                for p in pending:
                    tg.start_soon(awaiter, p)
                await anyio.lowlevel.checkpoint()
                promises.close()
                promises.close()  # twice is fine
            assert len(outcomes) == 3
            assert all(isinstance(e, driver.module.SubscriptionClosed) for e in outcomes)
            assert promises.closed
            assert not promises.active
            with pytest.raises(driver.module.SubscriptionClosed):
                promises.new_promise("late", 1)
            with pytest.raises(driver.module.SubscriptionClosed):
                await promises.wait_for_activation()
            with pytest.raises(driver.module.SubscriptionClosed):
                await promises.wait_for_new_promise("late", 1)
            assert mpx.statistics().promises_pending == 0
            await wait_until(lambda: mpx.statistics().active_patterns == 0)
            await round_trip(mpx)

    driver.run(body)


def test_promise_close_wakes_activation_waiters(driver: Any) -> None:
    """Nothing listens on the port: the subscription never activates, waiters block."""
    url = f"redis://127.0.0.1:{free_port()}"

    async def body() -> None:
        async with driver.Multiplexer(url, backoff_base=0.05, backoff_cap=0.2) as mpx:
            promises = mpx.new_promise_subscription("pfx-")
            outcomes: list[BaseException] = []
            waiting = 0

            async def waiter(wait: Callable[[], Any]) -> None:
                nonlocal waiting
                waiting += 1
                try:
                    await wait()
                except BaseException as exc:
                    outcomes.append(exc)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter, promises.wait_for_activation)
                    tg.start_soon(waiter, promises.wait_for_activation)
                    tg.start_soon(waiter, lambda: promises.wait_for_new_promise("x", 1))
                    await wait_until(lambda: waiting == 3)
                    await anyio.sleep(0.05)  # they are blocked, not done
                    assert outcomes == []
                    with pytest.raises(driver.module.InactiveSubscription):
                        promises.new_promise("x", 1)
                    promises.close()
            assert len(outcomes) == 3
            assert all(isinstance(e, driver.module.SubscriptionClosed) for e in outcomes)

    driver.run(body)


def test_new_promise_before_activation_raises_inactive(
    driver: Any, redis_server: RedisServer
) -> None:
    prefix = uniq("prominact") + "-"

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            promises = mpx.new_promise_subscription(prefix)
            assert not promises.active
            with pytest.raises(driver.module.InactiveSubscription):
                promises.new_promise("x", 5)
            # wait_for_new_promise waits for the activation, then makes it.
            with anyio.fail_after(5):
                p = await promises.wait_for_new_promise("x", 5)
            assert promises.active
            assert await mpx.publish(prefix + "x", b"done") == 1
            with anyio.fail_after(5):
                assert await p == b"done"

    driver.run(body)


def test_promise_bad_arguments(driver: Any, redis_server: RedisServer) -> None:
    prefix = uniq("prombad") + "-"

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            with pytest.raises(TypeError):
                mpx.new_promise_subscription(5)
            promises = mpx.new_promise_subscription(prefix)
            with anyio.fail_after(5):
                await promises.wait_for_activation()
            with pytest.raises(TypeError):
                promises.new_promise(5, 1)
            with pytest.raises(TypeError):
                promises.new_promise("x", "1")
            with pytest.raises(ValueError, match="timeout"):
                promises.new_promise("x", 0)
            with pytest.raises(ValueError, match="timeout"):
                promises.new_promise("x", -1)
            assert mpx.statistics().promises_pending == 0

    driver.run(body)


# ============================================================================ publish


@pytest.mark.parametrize("protocol", [2, 3])
def test_publish_returns_receiver_counts(
    driver: Any, redis_server: RedisServer, protocol: int, request: pytest.FixtureRequest
) -> None:
    chan = uniq(f"pub{protocol}")
    client_name = "pub-" + uuid.uuid4().hex[:8]

    async def body() -> None:
        inbox = Inbox()
        mpx = driver.Multiplexer(redis_server.url, protocol=protocol, client_name=client_name)
        async with mpx, driver.Multiplexer(redis_server.url, protocol=protocol) as other:
            assert await mpx.publish(chan, b"nobody") == 0
            active: list[bytes] = []
            subs = [mpx.new_channel_subscription(inbox, on_activation=active.append)]
            subs += [mpx.new_channel_subscription(Inbox()) for _ in range(2)]
            for sub in subs:
                sub.add(chan)
            await wait_until(lambda: active == [b(chan)])
            assert await mpx.publish(chan, b"one") == 1  # three subscriptions, one connection
            other_inbox = Inbox()
            other_active: list[bytes] = []
            other.new_channel_subscription(other_inbox, on_activation=other_active.append).add(chan)
            await wait_until(lambda: other_active == [b(chan)])
            assert await mpx.publish(b(chan), b"two") == 2
            assert await other.publish(chan, b"three") == 2
            await wait_until(lambda: len(inbox.messages) == 3 and len(other_inbox.messages) == 2)
            assert inbox.data() == [b"one", b"two", b"three"]
            connections = clients_named(redis_server, client_name)
            # RESP3 shares the subscription connection; RESP2 needs a second one.
            assert len(connections) == (1 if protocol == 3 else 2)
            # (which only RESP3 allows: the line above is the proof everywhere)
            if protocol == 3 and server_has(request, redis_server, "client-list-resp"):
                assert connections[0]["resp"] == "3"

    driver.run(body)


def test_publish_bad_arguments(driver: Any, redis_server: RedisServer) -> None:
    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            with pytest.raises(TypeError):
                await mpx.publish("chan", "not bytes")
            with pytest.raises(TypeError):
                await mpx.publish("chan", 5)
            with pytest.raises(ValueError, match="empty"):
                await mpx.publish("", b"x")
            with pytest.raises(TypeError):
                await mpx.publish(5, b"x")
            with pytest.raises(TypeError):
                await mpx.spublish("chan", "not bytes")
            with pytest.raises(ValueError, match="empty"):
                await mpx.spublish(b"", b"x")
            assert await mpx.publish("chan-" + uuid.uuid4().hex, b"") == 0  # empty data is fine

    driver.run(body)


# ============================================================================ statistics


def test_statistics(driver: Any, redis_server: RedisServer) -> None:
    a, c = uniq("st-a"), uniq("st-b")

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            with anyio.fail_after(5):
                await mpx.wait_connected()
            s0 = mpx.statistics()
            assert isinstance(s0, driver.module.Statistics)
            assert dataclasses.is_dataclass(s0)
            with pytest.raises(dataclasses.FrozenInstanceError):
                s0.messages_received = 5  # type: ignore[misc]
            assert s0.connected is True
            assert (s0.connections_made, s0.connections_lost) == (1, 0)
            assert (s0.subscriptions, s0.active_channels) == (0, 0)
            assert (s0.messages_received, s0.messages_delivered) == (0, 0)
            assert (s0.messages_dropped, s0.promises_pending) == (0, 0)

            inbox1, inbox2 = Inbox(), Inbox()
            active: list[bytes] = []
            sub1 = mpx.new_channel_subscription(inbox1, on_activation=active.append)
            sub2 = mpx.new_channel_subscription(inbox2, on_activation=active.append)
            assert mpx.statistics().subscriptions == 2
            sub1.add(a, c)
            sub2.add(a)
            await wait_until(lambda: len(active) == 3)
            assert mpx.statistics().active_channels == 2
            for i in range(5):
                await mpx.publish(a, b"%d" % i)  # to both subscriptions
            for i in range(3):
                await mpx.publish(c, b"%d" % i)  # to sub1 only
            await wait_until(lambda: len(inbox1.messages) == 8 and len(inbox2.messages) == 5)
            s1 = mpx.statistics()
            assert s1.messages_received == 8
            assert s1.messages_delivered == 13
            assert s1.messages_dropped == 0
            assert s0.messages_received == 0  # a snapshot, not a live view

            sub2.close()
            assert mpx.statistics().subscriptions == 1
            sub1.remove(c)
            await wait_until(lambda: mpx.statistics().active_channels == 1)
            sub1.close()
            await wait_until(lambda: mpx.statistics().active_channels == 0)
            assert mpx.statistics().subscriptions == 0
            await round_trip(mpx)

    driver.run(body)


# ============================================================================ bad input (SPEC 3.14)


def test_bad_names_change_nothing(driver: Any, redis_server: RedisServer) -> None:
    ok = uniq("ok")

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = mpx.new_channel_subscription(Inbox())
            with pytest.raises(TypeError):
                sub.add(5)
            with pytest.raises(TypeError):
                sub.add(None)
            with pytest.raises(TypeError):
                sub.add(bytearray(b"x"))
            with pytest.raises(ValueError, match="empty"):
                sub.add("")
            with pytest.raises(ValueError, match="empty"):
                sub.add(b"")
            with pytest.raises(TypeError):
                sub.add(ok, 5)
            assert sub.names == frozenset()  # "ok" was not half-added
            with pytest.raises(ValueError, match="empty"):
                sub.add(ok, "")
            assert sub.names == frozenset()
            sub.add(ok)
            with pytest.raises(TypeError):
                sub.remove(ok, 5)
            assert sub.names == {b(ok)}  # nor half-removed
            with pytest.raises(ValueError, match="empty"):
                sub.remove("")
            with pytest.raises(TypeError):
                mpx.new_pattern_subscription(5, Inbox())
            with pytest.raises(ValueError, match="empty"):
                mpx.new_pattern_subscription("", Inbox())
            assert mpx.statistics().subscriptions == 1
            await wait_server(lambda: numsub(redis_server, ok) == 1)

    driver.run(body)


def test_non_callable_callbacks_raise_type_error(driver: Any, redis_server: RedisServer) -> None:
    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            ok = Inbox()
            for make in (
                lambda *a, **k: mpx.new_channel_subscription(*a, **k),
                lambda *a, **k: mpx.new_sharded_subscription(*a, **k),
                lambda *a, **k: mpx.new_pattern_subscription("p:*", *a, **k),
            ):
                with pytest.raises(TypeError):
                    make("not callable")
                with pytest.raises(TypeError):
                    make(None)
                with pytest.raises(TypeError):
                    make(ok, on_disconnect=42)
                with pytest.raises(TypeError):
                    make(ok, on_activation="nope")
                with pytest.raises(ValueError, match="buffer_size"):
                    make(ok, buffer_size=0)
                with pytest.raises(ValueError, match="overflow"):
                    make(ok, overflow="whatever")
            assert mpx.statistics().subscriptions == 0
            assert mpx.statistics().active_patterns == 0

    driver.run(body)


def test_calls_on_a_closed_subscription_raise_subscription_closed(
    driver: Any, redis_server: RedisServer
) -> None:
    chan = uniq("closed")

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = mpx.new_channel_subscription(Inbox())
            sub.add(chan)
            sub.close()
            for call in (
                lambda: sub.add(chan),
                lambda: sub.add("other"),
                lambda: sub.remove(chan),
                lambda: sub.clear(),
            ):
                with pytest.raises(driver.module.SubscriptionClosed):
                    call()
            assert issubclass(driver.module.SubscriptionClosed, driver.module.RedisMPXError)
            sub.close()  # closing again is not an error
            assert sub.names == frozenset()
            await wait_server(lambda: numsub(redis_server, chan) == 0)
            await round_trip(mpx)

    driver.run(body)


def test_exceptions_are_exported(driver: Any) -> None:
    m = driver.module
    for name in (
        "InactiveSubscription",
        "SubscriptionClosed",
        "SubscriptionOverflow",
        "PromiseInterrupted",
        "ProtocolError",
        "ConnectionLost",
        "HealthCheckTimeout",
        "ServerError",
        "AuthenticationError",
    ):
        assert issubclass(getattr(m, name), m.RedisMPXError), name
    assert issubclass(m.HealthCheckTimeout, m.ConnectionLost)
    assert issubclass(m.AuthenticationError, m.ServerError)
    assert issubclass(m.SubscriptionOverflow, m.SubscriptionClosed)
    assert not issubclass(TimeoutError, m.RedisMPXError)


def test_an_iterator_raises_a_refusal_on_resubscription(
    driver: Any, redis_server_factory: Any
) -> None:
    """Defect 1 of issue 14: an ACL change drops the client, and on reconnect Redis
    refuses the iterator's name. The iterator used to end up with no names, not closed,
    and blocked for good; the refusal must reach its reader (SPEC 3.12)."""
    server = redis_server_factory(
        *acl_user("u", "on", ">pw", "~*", "+@all", "resetchannels", "&chan")
    )

    async def body() -> None:
        errors: list[Exception] = []
        mpx = driver.Multiplexer(
            server.url, username="u", password="pw", backoff_base=0.01, backoff_cap=0.05
        )
        async with mpx:
            sub = mpx.new_channel_subscription(lambda c, d: None, errors.append)
            async with mpx.subscribe("chan") as it:
                sub.add("chan")
                await wait_server(lambda: numsub(server, "chan") == 1)
                # Redis drops the clients of a user whose channel permissions shrink.
                server.command("ACL", "SETUSER", "u", "resetchannels", "&other")
                with anyio.fail_after(5):
                    with pytest.raises(driver.module.ServerError) as info:
                        await it.__anext__()
                assert info.value.code == "NOPERM"
                assert it.closed
                with pytest.raises(driver.module.ServerError):  # and again, not a hang
                    await it.__anext__()
            await wait_until(lambda: any(isinstance(e, driver.module.ServerError) for e in errors))
            assert sub.names == frozenset()
            assert mpx.statistics().subscriptions == 1  # the callback one, with no names

    driver.run(body)


def test_an_iterator_never_entered_subscribes_nothing(
    driver: Any, redis_server: RedisServer
) -> None:
    """Defect 6 of issue 14: ``mpx.subscribe(...)`` subscribed at once and held the name
    until the multiplexer closed, even when never entered. It subscribes on entering."""
    chan = uniq("never-entered")

    async def body() -> None:
        async with driver.Multiplexer(redis_server.url) as mpx:
            it = mpx.subscribe(chan)  # the arguments are checked, nothing is subscribed
            await round_trip(mpx)  # anything queued before now has reached the server
            assert numsub(redis_server, chan) == 0
            assert mpx.statistics().subscriptions == 1  # the round trip's own
            assert not it.closed
            async with it:
                assert numsub(redis_server, chan) == 1
            await wait_server(lambda: numsub(redis_server, chan) == 0)
            with pytest.raises(driver.module.SubscriptionClosed):
                async with it:
                    pytest.fail("entered twice")
            with pytest.raises(RuntimeError, match="enter"):
                await mpx.subscribe(chan).__anext__()

    driver.run(body)


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("size", [16 * 1024, 256 * 1024])
def test_large_messages_published_by_the_subscribing_multiplexer(
    driver: Any, redis_server: RedisServer, protocol: int, size: int
) -> None:
    """Under RESP3 the multiplexer publishes on its subscribed connection, so the server
    sends the message back on the connection that published it (Valkey 9.0 tore such
    frames from 16 KiB up; every server of the matrix runs this)."""
    chan = uniq(f"large{protocol}")
    payloads = [bytes([i]) * size for i in range(3)]

    async def body() -> None:
        inbox, active = Inbox(), []
        async with driver.Multiplexer(redis_server.url, protocol=protocol) as mpx:
            mpx.new_channel_subscription(inbox, on_activation=active.append).add(chan)
            await wait_until(lambda: active == [b(chan)])
            for payload in payloads:
                assert await mpx.publish(chan, payload) == 1
            await wait_until(lambda: len(inbox.messages) == len(payloads))
            assert inbox.data() == payloads

    driver.run(body)
