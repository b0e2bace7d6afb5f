"""Conformance suite, part 2: delivery (SPEC 3.5 to 3.7).

What reaches which subscription, in which order, with which bytes; what a slow
consumer does (and does not do) to the others; bounded buffers and their overflow
policies; errors raised by callbacks.

Every test takes the ``driver`` fixture and reaches the driver only through
``driver.module``. Tests wait on conditions with deadlines; a test that proves
something does *not* happen first reaches a positive sync point (a later message
on the same connection has arrived: Redis delivers in order).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import anyio
import anyio.lowlevel
import hiredis
import pytest

from drivers.conftest import wait_until
from drivers.helpers import Inbox, b, numsub, round_trip, uniq, wait_server
from redis_servers import RedisServer, encode_command

# ----------------------------------------------------------------------------- helpers


def publish_burst(server: RedisServer, messages: list[tuple[str | bytes, bytes]]) -> list[int]:
    """PUBLISH every (channel, data) in one pipelined write over one connection: Redis
    handles them in order and the subscriber gets them back to back."""
    with server.connect() as sock:
        sock.sendall(b"".join(encode_command("PUBLISH", c, d) for c, d in messages))
        reader = hiredis.Reader()
        replies: list[int] = []
        while len(replies) < len(messages):
            reply = reader.gets()
            if reply is False:
                data = sock.recv(65536)
                assert data, "the server closed the connection"
                reader.feed(data)
                continue
            assert isinstance(reply, int), reply
            replies.append(reply)
    return replies


class AsyncInbox(Inbox):
    """An async on_message: records after a real suspension."""

    async def __call__(self, channel: bytes, data: bytes) -> None:  # type: ignore[override]
        await anyio.lowlevel.checkpoint()
        super().__call__(channel, data)


class Gate:
    """An async on_message that blocks on every message until released."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.entered: list[bytes] = []
        self.open = anyio.Event()

    async def __call__(self, channel: bytes, data: bytes) -> None:
        self.entered.append(data)
        await self.open.wait()
        self.messages.append((channel, data))

    def data(self) -> list[bytes]:
        return [d for _, d in self.messages]


async def subscribed(mpx: Any, inbox: Any, *names: str | bytes, **options: Any) -> Any:
    """A channel subscription holding ``names``, once Redis confirmed all of them."""
    active: list[bytes] = []
    sub = mpx.new_channel_subscription(inbox, on_activation=active.append, **options)
    sub.add(*names)
    await wait_until(lambda: len(active) == len(set(map(b, names))))
    return sub


# ============================================================================ content


PAYLOADS = [
    b"",
    b"\x00",
    bytes(range(256)),
    b"*2\r\n$7\r\nmessage\r\n$3\r\nfoo\r\n",  # looks like RESP: must not be parsed
    "ünïcödé ✓".encode(),
    b"\xff\xfe\xfd not utf-8",
    b"x" * (1 << 20),
]


def test_payloads_and_channel_names_are_bytes_and_intact(
    driver: Any, redis_server: RedisServer
) -> None:
    chan = b"bin:\x00\xff\r\n:" + uuid.uuid4().hex.encode()  # not UTF-8, contains CRLF

    async def body() -> None:
        sync_inbox, async_inbox = Inbox(), AsyncInbox()
        async with driver.Multiplexer(redis_server.url) as mpx:
            await subscribed(mpx, sync_inbox, chan)
            await subscribed(mpx, async_inbox, chan)
            async with mpx.subscribe(chan) as it:
                for payload in PAYLOADS:
                    assert await mpx.publish(chan, payload) == 1
                await wait_until(
                    lambda: (
                        len(sync_inbox.messages) == len(PAYLOADS)
                        and len(async_inbox.messages) == len(PAYLOADS)
                    ),
                    timeout=10,
                )
                expected = [(chan, p) for p in PAYLOADS]
                assert sync_inbox.messages == expected
                assert async_inbox.messages == expected
                assert sync_inbox.types == async_inbox.types == {(bytes, bytes)}
                with anyio.fail_after(5):
                    for payload in PAYLOADS:
                        msg = await it.__anext__()
                        assert (type(msg.channel), type(msg.data)) == (bytes, bytes)
                        assert (msg.channel, msg.data, msg.pattern) == (chan, payload, None)

    driver.run(body)


def test_order_preserved_per_subscription(driver: Any, redis_server: RedisServer) -> None:
    a, c = uniq("ord-a"), uniq("ord-b")
    base = uniq("ord-p")
    x, y = base + ":x", base + ":y"
    count = 300
    burst = [((a, c)[i % 2], b"%d" % i) for i in range(count)]
    burst_p = [((x, y)[i % 2], b"%d" % i) for i in range(count)]
    expected = [(b(ch), d) for ch, d in burst]

    async def body() -> None:
        sync_inbox, async_inbox = Inbox(), AsyncInbox()
        pattern_inbox = Inbox()
        switched: list[tuple[bytes, bytes]] = []

        def sometimes_async(channel: bytes, data: bytes) -> Any:
            # Plain for most messages, a coroutine for every third: still in order.
            if int(data) % 3:
                switched.append((channel, data))
                return None

            async def later() -> None:
                await anyio.lowlevel.checkpoint()
                switched.append((channel, data))

            return later()

        async with driver.Multiplexer(redis_server.url) as mpx:
            await subscribed(mpx, sync_inbox, a, c)
            await subscribed(mpx, async_inbox, a, c)
            await subscribed(mpx, sometimes_async, a, c)
            pattern_active: list[bytes] = []
            mpx.new_pattern_subscription(base + ":*", pattern_inbox, None, pattern_active.append)
            await wait_until(lambda: bool(pattern_active))
            iterated: list[tuple[bytes, bytes]] = []
            async with mpx.subscribe(a, c) as it:
                publish_burst(redis_server, burst)
                publish_burst(redis_server, burst_p)
                with anyio.fail_after(10):
                    async for msg in it:
                        iterated.append((msg.channel, msg.data))
                        if len(iterated) == count:
                            break
                await wait_until(
                    lambda: (
                        len(sync_inbox.messages) == count
                        and len(async_inbox.messages) == count
                        and len(switched) == count
                        and len(pattern_inbox.messages) == count
                    ),
                    timeout=10,
                )
            assert sync_inbox.messages == expected
            assert async_inbox.messages == expected
            assert switched == expected
            assert iterated == expected
            assert pattern_inbox.messages == [(b(ch), d) for ch, d in burst_p]
            await round_trip(mpx)

    driver.run(body)


def test_every_holder_gets_every_message_once(driver: Any, redis_server: RedisServer) -> None:
    base = uniq("every")
    chan = base + ":c"

    async def body() -> None:
        inboxes = [Inbox() for _ in range(3)]
        pattern_inbox = Inbox()
        async with driver.Multiplexer(redis_server.url) as mpx:
            first = await subscribed(mpx, inboxes[0], chan)
            await subscribed(mpx, inboxes[1], chan, base + ":other")
            first.add(chan)  # holding it twice changes nothing
            active: list[bytes] = []
            mpx.new_pattern_subscription(base + ":*", pattern_inbox, None, active.append)
            await wait_until(lambda: bool(active))
            # A name already active is delivered at once to a new holder: no round trip.
            late = mpx.new_channel_subscription(inboxes[2])
            late.add(chan)
            # One connection; Redis counts the channel and the pattern match apart.
            assert await mpx.publish(chan, b"m") == 2
            await wait_until(lambda: all(i.messages for i in inboxes) and pattern_inbox.messages)
            await mpx.publish(base + ":other", b"end")
            await wait_until(lambda: inboxes[1].has(base + ":other", b"end"))
            await wait_until(lambda: len(pattern_inbox.messages) == 2)
            for inbox in inboxes:
                assert inbox.data(chan) == [b"m"]
            assert pattern_inbox.messages == [(b(chan), b"m"), (b(base + ":other"), b"end")]

    driver.run(body)


def test_async_callback_runs_one_at_a_time(driver: Any, redis_server: RedisServer) -> None:
    chan = uniq("serial")

    async def body() -> None:
        running = 0
        peak = 0
        seen: list[bytes] = []

        async def on_message(channel: bytes, data: bytes) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            seen.append(data)
            running -= 1

        async with driver.Multiplexer(redis_server.url) as mpx:
            await subscribed(mpx, on_message, chan)
            publish_burst(redis_server, [(chan, b"%d" % i) for i in range(50)])
            await wait_until(lambda: len(seen) == 50)
            assert seen == [b"%d" % i for i in range(50)]
            assert peak == 1

    driver.run(body)


# ============================================================================ remove is final


def test_remove_inside_a_callback_stops_the_run(driver: Any, redis_server: RedisServer) -> None:
    a, end = uniq("rm-a"), uniq("rm-end")

    async def body() -> None:
        got: list[tuple[bytes, bytes]] = []
        sub: Any = None

        def on_message(channel: bytes, data: bytes) -> None:
            got.append((channel, data))
            if channel == b(a) and data == b"5":
                sub.remove(a)

        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = await subscribed(mpx, on_message, a, end)
            # One pipelined burst: the messages after "5" are already on their way
            # (likely in the same read) when remove() is called.
            publish_burst(redis_server, [(a, b"%d" % i) for i in range(50)] + [(end, b"end")])
            await wait_until(lambda: (b(end), b"end") in got)
            assert [d for c, d in got if c == b(a)] == [b"%d" % i for i in range(6)]
            await wait_server(lambda: numsub(redis_server, a) == 0)
            await round_trip(mpx)

    driver.run(body)


@pytest.mark.parametrize("how", ["remove", "clear"])
def test_remove_drops_messages_already_buffered(
    driver: Any, redis_server: RedisServer, how: str
) -> None:
    """An async-callback subscription whose buffer holds messages of a name when
    remove(name) is called gets none of them."""
    a, keep, end = uniq("buf-a"), uniq("buf-keep"), uniq("buf-end")

    async def body() -> None:
        gate = Gate()
        observer = Inbox()
        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = await subscribed(mpx, gate, a, keep, end)
            await subscribed(mpx, observer, a, keep, end)
            await mpx.publish(a, b"first")
            await wait_until(lambda: gate.entered == [b"first"])  # blocked in the callback
            publish_burst(
                redis_server,
                [(a, b"a%d" % i) for i in range(20)] + [(keep, b"k%d" % i) for i in range(5)],
            )
            # All of them have reached the subscription's buffer (the observer, served
            # by the same reads, has them all).
            await wait_until(lambda: len(observer.messages) == 26)
            if how == "remove":
                sub.remove(a)
                expected = [b"first"] + [b"k%d" % i for i in range(5)] + [b"end"]
            else:
                sub.clear()
                sub.add(end)  # active through the observer: no round trip needed
                expected = [b"first", b"end"]
            gate.open.set()
            await mpx.publish(end, b"end")
            await wait_until(lambda: (b(end), b"end") in gate.messages)
            assert gate.data() == expected
            await round_trip(mpx)

    driver.run(body)


def test_close_drops_messages_already_buffered(driver: Any, redis_server: RedisServer) -> None:
    chan = uniq("close-buf")

    async def body() -> None:
        gate = Gate()
        observer = Inbox()
        finished: list[bytes] = []

        async def on_message(channel: bytes, data: bytes) -> None:
            await gate(channel, data)
            finished.append(data)

        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = await subscribed(mpx, on_message, chan)
            await subscribed(mpx, observer, chan)
            await mpx.publish(chan, b"first")
            await wait_until(lambda: gate.entered == [b"first"])
            publish_burst(redis_server, [(chan, b"%d" % i) for i in range(10)])
            await wait_until(lambda: len(observer.messages) == 11)
            sub.close()
            gate.open.set()
            await wait_until(lambda: finished == [b"first"])
            # The next buffered message would be handed over right after the first
            # callback returned, without waiting for anything: a few turns suffice.
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            assert gate.entered == [b"first"]
            await round_trip(mpx)

    driver.run(body)


# ======================================================================= no head-of-line blocking


def test_slow_consumer_delays_only_itself(driver: Any, redis_server: RedisServer) -> None:
    chan, other = uniq("hol"), uniq("hol-other")
    count = 50

    async def body() -> None:
        slow = Gate()
        fast_sync, fast_async, fast_other = Inbox(), AsyncInbox(), Inbox()
        iterated: list[bytes] = []
        async with driver.Multiplexer(redis_server.url) as mpx:
            await subscribed(mpx, slow, chan, other)
            await subscribed(mpx, fast_sync, chan)
            await subscribed(mpx, fast_async, chan)
            await subscribed(mpx, fast_other, other)
            async with (
                mpx.subscribe(chan) as it,
                mpx.subscribe(chan, other) as idle_iterator,  # never read: slow too
                anyio.create_task_group() as tg,
            ):
                assert idle_iterator is not None

                async def consume() -> None:
                    async for msg in it:
                        iterated.append(msg.data)

                tg.start_soon(consume)
                for i in range(count):
                    await mpx.publish(chan, b"%d" % i)
                    await mpx.publish(other, b"o%d" % i)
                expected = [b"%d" % i for i in range(count)]
                await wait_until(
                    lambda: (
                        fast_sync.data() == expected
                        and fast_async.data() == expected
                        and iterated == expected
                        and len(fast_other.messages) == count
                    )
                )
                # Meanwhile the slow one is still in its first callback.
                assert slow.entered == [b"0"]
                assert slow.messages == []
                assert mpx.connected
                # Released, it gets everything (its buffer holds 1000 by default), in order.
                slow.open.set()
                await wait_until(lambda: len(slow.messages) == 2 * count)
                assert slow.data()[0::2] == expected
                assert slow.data()[1::2] == [b"o%d" % i for i in range(count)]
                tg.cancel_scope.cancel()
            assert mpx.statistics().messages_dropped == 0

    driver.run(body)


def test_slow_async_on_activation_delays_only_itself(
    driver: Any, redis_server: RedisServer
) -> None:
    chan = uniq("slow-act")

    async def body() -> None:
        release = anyio.Event()
        slow_inbox, fast_inbox = Inbox(), Inbox()

        async def slow_activation(name: bytes) -> None:
            await release.wait()

        async with driver.Multiplexer(redis_server.url) as mpx:
            slow = mpx.new_channel_subscription(slow_inbox, on_activation=slow_activation)
            slow.add(chan)
            await subscribed(mpx, fast_inbox, chan)
            await mpx.publish(chan, b"1")
            await wait_until(lambda: fast_inbox.data() == [b"1"])
            # The activation notice comes first for the slow one, so it has nothing yet.
            assert slow_inbox.messages == []
            release.set()
            await wait_until(lambda: slow_inbox.data() == [b"1"])

    driver.run(body)


# ============================================================================ overflow policies


@pytest.mark.parametrize("policy", ["drop-oldest", "drop-newest", "close"])
def test_overflow_policy_of_a_callback_subscription(
    driver: Any, redis_server: RedisServer, policy: str
) -> None:
    chan = uniq(f"ovf-{policy}")
    count = 100

    async def body() -> None:
        slow = Gate()
        observer = Inbox()
        errors: list[Exception] = []
        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = mpx.new_channel_subscription(slow, errors.append, buffer_size=10, overflow=policy)
            sub.add(chan)
            await subscribed(mpx, observer, chan)
            await mpx.publish(chan, b"first")
            await wait_until(lambda: slow.entered == [b"first"])  # the buffer is empty now
            publish_burst(redis_server, [(chan, b"%d" % i) for i in range(count)])
            await wait_until(lambda: len(observer.messages) == count + 1)
            stats = mpx.statistics()
            numbers = [b"%d" % i for i in range(count)]

            if policy == "close":
                assert sub.closed  # closed at the overflow, not when the consumer resumes
                assert 90 <= sub.dropped <= 100
                assert stats.messages_dropped == sub.dropped
                slow.open.set()
                await wait_until(lambda: len(errors) == 1)
                assert isinstance(errors[0], driver.module.SubscriptionOverflow)
                assert isinstance(errors[0], driver.module.SubscriptionClosed)
                data = slow.data()
                assert data[0] == b"first"
                assert data[1:] == numbers[: len(data) - 1]  # a prefix, in order
                with pytest.raises(driver.module.SubscriptionClosed):
                    sub.add(chan)
                # The observer still holds the name: still delivered to it.
                assert await mpx.publish(chan, b"after") == 1
                await wait_until(lambda: observer.has(chan, b"after"))
                assert slow.data() == data
            else:
                assert not sub.closed
                assert sub.dropped == 90
                assert stats.messages_dropped == 90
                slow.open.set()
                await wait_until(lambda: len(slow.messages) == 11)
                await mpx.publish(chan, b"end")
                await wait_until(lambda: len(slow.messages) == 12)
                kept = numbers[-10:] if policy == "drop-oldest" else numbers[:10]
                assert slow.data() == [b"first", *kept, b"end"]
                assert errors == []
                assert sub.dropped == 90
            assert mpx.statistics().messages_dropped == sub.dropped
            await round_trip(mpx)

    driver.run(body)


def test_close_policy_overflow_releases_the_name_on_the_server(
    driver: Any, redis_server: RedisServer
) -> None:
    chan = uniq("ovf-release")

    async def body() -> None:
        slow = Gate()
        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = await subscribed(mpx, slow, chan, buffer_size=5, overflow="close")
            await mpx.publish(chan, b"first")
            await wait_until(lambda: slow.entered == [b"first"])
            publish_burst(redis_server, [(chan, b"%d" % i) for i in range(20)])
            await wait_server(lambda: numsub(redis_server, chan) == 0)
            assert sub.closed
            assert sub.names == frozenset()
            assert mpx.statistics().subscriptions == 0
            slow.open.set()
            await round_trip(mpx)

    driver.run(body)


@pytest.mark.parametrize("policy", ["drop-oldest", "drop-newest", "close"])
def test_overflow_policy_of_an_iterator(
    driver: Any, redis_server: RedisServer, policy: str
) -> None:
    chan = uniq(f"itovf-{policy}")
    count = 100

    async def body() -> None:
        observer = Inbox()
        numbers = [b"%d" % i for i in range(count)]
        async with driver.Multiplexer(redis_server.url) as mpx:
            await subscribed(mpx, observer, chan)
            async with mpx.subscribe(chan, buffer_size=10, overflow=policy) as it:
                publish_burst(redis_server, [(chan, n) for n in numbers])
                await wait_until(lambda: len(observer.messages) == count)
                got: list[bytes] = []
                with anyio.fail_after(5):
                    if policy == "close":
                        with pytest.raises(driver.module.SubscriptionOverflow):
                            got.extend([msg.data async for msg in it])
                        assert got == numbers[: len(got)]
                        assert mpx.statistics().messages_dropped >= 90
                    else:
                        for _ in range(10):
                            got.append((await it.__anext__()).data)
                        await mpx.publish(chan, b"end")
                        got.append((await it.__anext__()).data)
                        kept = numbers[-10:] if policy == "drop-oldest" else numbers[:10]
                        assert got == [*kept, b"end"]
                        assert mpx.statistics().messages_dropped == 90
            await round_trip(mpx)

    driver.run(body)


@pytest.mark.parametrize("form", ["callback", "iterator"])
@pytest.mark.parametrize("policy", ["drop-oldest", "drop-newest", "close"])
def test_every_message_is_delivered_or_counted_as_dropped(
    driver: Any, redis_server: RedisServer, policy: str, form: str
) -> None:
    """SPEC 3.6: drops are counted. Whatever the policy, each message Redis sent to a
    subscription is either handed to its consumer or counted in ``messages_dropped``
    (here some messages are already buffered when the overflow happens)."""
    chan = uniq(f"acct-{policy}")

    async def body() -> None:
        observer = Inbox()
        got: list[bytes] = []
        async with driver.Multiplexer(redis_server.url) as mpx:
            await subscribed(mpx, observer, chan)
            if form == "callback":
                slow = Gate()
                sub = await subscribed(mpx, slow, chan, buffer_size=10, overflow=policy)
                await mpx.publish(chan, b"first")
                await wait_until(lambda: slow.entered == [b"first"])
                sent = 1
            else:
                it = mpx.subscribe(chan, buffer_size=10, overflow=policy)
                await it.__aenter__()
                sent = 0
            publish_burst(redis_server, [(chan, b"a%d" % i) for i in range(5)])
            await wait_until(lambda: len(observer.messages) == sent + 5)
            publish_burst(redis_server, [(chan, b"%d" % i) for i in range(100)])
            await wait_until(lambda: len(observer.messages) == sent + 105)
            sent += 105
            if form == "callback":
                slow.open.set()
                if policy != "close":
                    await wait_until(lambda: len(slow.messages) == 11)
                else:
                    await wait_until(lambda: sub.closed and len(slow.messages) >= 1)
                    for _ in range(10):  # any buffered message would follow at once
                        await anyio.lowlevel.checkpoint()
                got = slow.data()
            else:
                with anyio.fail_after(5):
                    try:
                        while len(got) < 10:
                            got.append((await it.__anext__()).data)
                    except driver.module.SubscriptionOverflow:
                        assert policy == "close"
                await it.__aexit__(None, None, None)
            assert len(got) + mpx.statistics().messages_dropped == sent, (got, policy)
            await round_trip(mpx)

    driver.run(body)


def test_iterator_counts_its_drops(driver: Any, redis_server: RedisServer) -> None:
    """SPEC 3.6: drops are counted per subscription (as ``sub.dropped`` is for
    callback subscriptions) and in statistics()."""
    chan = uniq("itdrops")

    async def body() -> None:
        observer = Inbox()
        async with driver.Multiplexer(redis_server.url) as mpx:
            await subscribed(mpx, observer, chan)
            async with mpx.subscribe(chan, buffer_size=10) as it:
                publish_burst(redis_server, [(chan, b"%d" % i) for i in range(30)])
                await wait_until(lambda: len(observer.messages) == 30)
                assert mpx.statistics().messages_dropped == 20
                assert it.dropped == 20

    driver.run(body)


# ============================================================================ callback errors


class Boom(Exception):
    pass


def _errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("redismpx") and r.levelno >= logging.ERROR and r.exc_info
    ]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_callback_errors_are_logged_and_affect_nothing_else(
    driver: Any, redis_server: RedisServer, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    chan = uniq(f"err-{kind}")
    caplog.set_level(logging.ERROR, logger="redismpx")

    async def body() -> None:
        got: list[bytes] = []
        other = Inbox()

        def sync_cb(channel: bytes, data: bytes) -> None:
            if data.startswith(b"boom"):
                raise Boom(data.decode())
            got.append(data)

        async def async_cb(channel: bytes, data: bytes) -> None:
            await anyio.lowlevel.checkpoint()
            sync_cb(channel, data)

        async with driver.Multiplexer(redis_server.url) as mpx:
            await subscribed(mpx, sync_cb if kind == "sync" else async_cb, chan)
            await subscribed(mpx, other, chan)
            for data in (b"1", b"boom1", b"2", b"boom2", b"3"):
                await mpx.publish(chan, data)
            await wait_until(lambda: got == [b"1", b"2", b"3"] and len(other.messages) == 5)
            await wait_until(lambda: len(_errors_logged(caplog)) == 2)
            for record in _errors_logged(caplog):
                assert record.name == "redismpx"
                assert isinstance(record.exc_info[1], Boom)  # type: ignore[index]
            assert mpx.connected
            assert mpx.statistics().connections_lost == 0

    driver.run(body)


def test_activation_callback_errors_are_logged(
    driver: Any, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    chan = uniq("err-act")
    caplog.set_level(logging.ERROR, logger="redismpx")

    async def body() -> None:
        inbox = Inbox()
        calls: list[bytes] = []

        def on_activation(name: bytes) -> None:
            calls.append(name)
            raise Boom("activation")

        async with driver.Multiplexer(redis_server.url) as mpx:
            sub = mpx.new_channel_subscription(inbox, on_activation=on_activation)
            sub.add(chan)
            await wait_until(lambda: calls == [b(chan)])
            assert await mpx.publish(chan, b"still delivered") == 1
            await wait_until(lambda: inbox.data() == [b"still delivered"])
            logged = _errors_logged(caplog)
            assert len(logged) == 1
            assert isinstance(logged[0].exc_info[1], Boom)  # type: ignore[index]
            assert sub.names == {b(chan)}

    driver.run(body)
