"""Conformance suite: slow consumers at rate (SPEC 3.6, bounded buffers, drop counts).

tests/drivers/test_delivery.py checks each rule on a few dozen messages: a slow
consumer delays only itself (50 messages), each overflow policy on a burst of 100
into a buffer of 10, the delivered-or-dropped accounting, an iterator's ``dropped``.
This file puts the same rules under load: tens of thousands of messages, in runs
interleaved over two channels, published from a worker thread while the event loop
consumes them, with a consumer that never returns (an async callback stuck on an
event, an iterator never read) next to fast consumers of every form:

* the fast ones get every message, in order, and drop nothing;
* the stuck ones never hold more than their buffer (sampled all along the run), and
  their drops are exact: received - buffered - delivered, whatever the policy; what
  they keep is the newest (drop-oldest) or the oldest (drop-newest); ``close`` closes
  that subscription alone, with ``SubscriptionOverflow``;
* the socket reader and the health check are unaffected: health-check PINGs go out and
  are answered while a consumer is stuck, and the connection is never lost;
* memory stays bounded: 200,000 messages to stuck consumers grow RSS by a few MiB at
  most (an unbounded buffer would take tens).

The two tests at the end reproduce bugs this file found (a consumer that took its
whole buffer at once could hold twice its bound; a close-policy overflow notified once
per run of messages in the read instead of once).

Every test takes the ``driver`` fixture and reaches the driver only through
``driver.module``; waits are on conditions with deadlines.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import hiredis
import pytest

from drivers.conftest import wait_until
from drivers.helpers import b, numsub, round_trip, uniq, wait_server
from redis_servers import RedisServer, RedisServerFactory

POLICIES = ["drop-oldest", "drop-newest", "close"]

# ----------------------------------------------------------------------------- helpers


def rss_bytes() -> int:
    """This process's resident set size (VmRSS), or skip where /proc is not there."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pytest.skip("needs /proc/self/status (Linux) to read the RSS")


def ping_calls(server: RedisServer) -> int:
    """How many PINGs the server has answered (INFO commandstats)."""
    line = server.info("commandstats").get("cmdstat_ping", "calls=0")
    return int(line.split(",")[0].partition("=")[2])


class Pipeline:
    """One blocking connection that PUBLISHes a run of messages at a time, pipelined.

    ``publish`` is called from a worker thread (``anyio.to_thread.run_sync``), so that
    the event loop under test keeps reading while Redis takes the messages; it returns
    once Redis has answered every PUBLISH, i.e. has queued every message for the
    subscriber.
    """

    def __init__(self, server: RedisServer) -> None:
        self.sock: socket.socket = server.connect(timeout=30)
        self.reader = hiredis.Reader()

    def publish(self, commands: bytes, count: int) -> None:
        self.sock.sendall(commands)
        replies = 0
        while replies < count:
            reply = self.reader.gets()
            if reply is False:
                data = self.sock.recv(1 << 16)
                assert data, "the server closed the publishing connection"
                self.reader.feed(data)
                continue
            assert isinstance(reply, int), reply
            replies += 1

    def close(self) -> None:
        self.sock.close()


def pack(messages: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join(hiredis.pack_command((b"PUBLISH", c, d)) for c, d in messages)  # type: ignore[arg-type]


async def flood(
    pipeline: Pipeline,
    messages: list[tuple[bytes, bytes]],
    received: Callable[[], int],
    *,
    chunk: int = 2000,
    window: int = 6000,
    check: Callable[[], None] | None = None,
) -> None:
    """Publish ``messages`` in pipelined chunks from a worker thread, never more than
    ``window`` ahead of ``received()`` (what a fast, inline consumer has got): the
    reader keeps pace with Redis instead of piling up a backlog in its output buffer.
    ``check`` runs between chunks, at points where no dispatch is half done."""
    sent = 0
    for start in range(0, len(messages), chunk):
        run = messages[start : start + chunk]
        commands = pack(run)
        await anyio.to_thread.run_sync(pipeline.publish, commands, len(run))
        sent += len(run)
        if check is not None:
            check()
        behind = sent - window
        await wait_until(lambda: received() >= behind, timeout=30)  # noqa: B023 - awaited here
    await wait_until(lambda: received() >= sent, timeout=30)
    if check is not None:
        check()


class Stuck:
    """An async on_message that never returns unless released: the slow consumer."""

    def __init__(self) -> None:
        self.entered: list[bytes] = []  # data of every call that started
        self.release = anyio.Event()

    async def __call__(self, channel: bytes, data: bytes) -> None:
        self.entered.append(data)
        await self.release.wait()


class Ordered:
    """A fast consumer's record of one channel: data, in arrival order."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def __call__(self, channel: bytes, data: bytes) -> None:
        self.data.append(data)


class Counter:
    """A sync on_message that counts and keeps nothing (for the memory test)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, channel: bytes, data: bytes) -> None:
        self.count += 1


async def active(mpx: Any, on_message: Any, *names: str | bytes, **options: Any) -> Any:
    """A channel subscription holding ``names``, once Redis confirmed all of them."""
    confirmed: list[bytes] = []
    sub = mpx.new_channel_subscription(
        on_message, options.pop("on_disconnect", None), confirmed.append, **options
    )
    sub.add(*names)
    await wait_until(lambda: len(confirmed) == len(names))
    return sub


# ======================================================================= stuck consumers at rate


@pytest.mark.parametrize("policy", POLICIES)
def test_stuck_consumers_at_rate_hold_back_only_themselves(
    driver: Any, redis_server_factory: RedisServerFactory, policy: str
) -> None:
    """A stuck async callback and a never-read iterator, each with a buffer of 64,
    share channel A with fast consumers (sync, async, iterator) while 30,000 messages
    arrive, interleaved with channel C's. The fast ones get everything; the stuck
    ones' buffers stay within 64 and every other message is counted as dropped."""
    server = redis_server_factory()  # its own: INFO commandstats counts only our PINGs
    chan_a, chan_c = b(uniq("slow-a")), b(uniq("slow-c"))
    per_channel = 15_000
    bound = 64
    flood_a = [b"a%d" % i for i in range(per_channel)]
    flood_c = [b"c%d" % i for i in range(per_channel)]
    interleaved = [m for pair in zip(flood_a, flood_c, strict=True) for m in pair]
    messages = [(chan_a if d[:1] == b"a" else chan_c, d) for d in interleaved]
    module = driver.module

    async def body() -> None:
        stuck = Stuck()
        stuck_errors: list[Exception] = []
        fast_a, fast_c = Ordered(), Ordered()
        fast_async: list[bytes] = []
        iterated: list[tuple[bytes, bytes]] = []
        worst = {"callback": 0, "iterator": 0}

        async def on_async(channel: bytes, data: bytes) -> None:
            await anyio.lowlevel.checkpoint()
            fast_async.append(data)

        async with driver.Multiplexer(
            server.url, health_check_interval=0.2, health_check_timeout=1.0
        ) as mpx:
            await mpx.wait_connected()
            await active(mpx, fast_a, chan_a)
            await active(mpx, fast_c, chan_c)
            await active(mpx, on_async, chan_a, buffer_size=per_channel + 10)
            slow = await active(
                mpx,
                stuck,
                chan_a,
                on_disconnect=stuck_errors.append,
                buffer_size=bound,
                overflow=policy,
            )
            async with (
                mpx.subscribe(chan_a, buffer_size=bound, overflow=policy) as idle,
                mpx.subscribe(chan_a, chan_c, buffer_size=3 * per_channel) as fast_iterator,
                anyio.create_task_group() as tg,
            ):

                async def read_fast_iterator() -> None:
                    async for msg in fast_iterator:
                        iterated.append((msg.channel, msg.data))

                tg.start_soon(read_fast_iterator)
                # The stuck callback starts on a message of its own, then never returns:
                # everything after it waits in its buffer (or is dropped).
                assert await mpx.publish(chan_a, b"first") == 1  # one connection
                await wait_until(lambda: stuck.entered == [b"first"] and fast_a.data)

                def received_a() -> int:
                    return len(fast_a.data)  # fast_a gets all of A, in the same dispatch

                def bounded() -> None:
                    """The stuck consumers hold at most ``bound`` messages, and every
                    message they received is delivered, buffered or counted as dropped."""
                    if not slow.closed:
                        buffered = received_a() - len(stuck.entered) - slow.dropped
                        worst["callback"] = max(worst["callback"], buffered)
                        assert 0 <= buffered <= bound, (buffered, slow.dropped)
                    if not idle.closed:
                        buffered = received_a() - idle.dropped
                        worst["iterator"] = max(worst["iterator"], buffered)
                        assert 0 <= buffered <= bound, (buffered, idle.dropped)

                async def sample() -> None:  # between reads too, not only between chunks
                    while True:
                        bounded()
                        await anyio.sleep(0.001)

                tg.start_soon(sample)
                await flood(
                    Pipeline(server),
                    messages,
                    lambda: len(fast_a.data) + len(fast_c.data),
                    check=bounded,
                )
                total = len(messages) + 1
                await wait_until(
                    lambda: len(iterated) == total and len(fast_async) == per_channel + 1,
                    timeout=30,
                )
                tg.cancel_scope.cancel()

                # Every fast consumer got every message, in order, and dropped none.
                assert fast_a.data == [b"first", *flood_a]
                assert fast_c.data == flood_c
                assert fast_async == [b"first", *flood_a]
                assert iterated == [(chan_a, b"first"), *messages]
                assert fast_iterator.dropped == 0

                received = per_channel + 1  # by each stuck consumer, "first" included
                stats = mpx.statistics()
                if policy == "close":
                    # Closed at the overflow, alone; its buffer counts as dropped.
                    assert slow.closed
                    assert idle.closed
                    assert slow.names == frozenset()
                    assert bound < slow.dropped <= per_channel
                    assert bound < idle.dropped <= received
                    with pytest.raises(module.SubscriptionOverflow):
                        await idle.__anext__()
                    assert stats.subscriptions == 4  # the fast ones
                else:
                    # Nothing closed; the drops are exact.
                    assert not slow.closed
                    assert not idle.closed
                    assert slow.dropped == received - 1 - bound  # 1 delivered, 64 buffered
                    assert idle.dropped == received - bound
                    assert worst == {"callback": bound, "iterator": bound}
                    assert stats.subscriptions == 6
                assert stats.messages_dropped == slow.dropped + idle.dropped
                assert stats.connections_lost == 0
                assert stats.connected

                # A quiet spell with the consumers still stuck: the health check sends
                # PINGs and reads their answers (each PING follows the previous answer).
                pings = ping_calls(server)
                await wait_server(lambda: ping_calls(server) >= pings + 3)
                stats = mpx.statistics()
                assert (stats.connections_made, stats.connections_lost) == (1, 0)
                assert mpx.connected

                # Released, the stuck consumers get what their policy kept, then new ones.
                stuck.release.set()
                assert await mpx.publish(chan_a, b"end") == 1
                await wait_until(lambda: fast_a.data[-1] == b"end")
                if policy == "close":
                    # The notice was queued behind the stuck call (in order with messages).
                    await wait_until(lambda: len(stuck_errors) >= 1)
                    assert len(stuck_errors) == 1, stuck_errors
                    assert all(isinstance(e, module.SubscriptionOverflow) for e in stuck_errors)
                    for _ in range(10):  # any buffered message would follow at once
                        await anyio.lowlevel.checkpoint()
                    assert stuck.entered == [b"first"]
                    assert numsub(server, chan_a) == 1  # the others still hold A
                else:
                    await wait_until(lambda: stuck.entered[-1:] == [b"end"])
                    kept = flood_a[-bound:] if policy == "drop-oldest" else flood_a[:bound]
                    assert stuck.entered == [b"first", *kept, b"end"]
                    got = [(await idle.__anext__()).data for _ in range(bound + 1)]
                    oldest = [b"first", *flood_a][:bound]
                    kept = flood_a[-bound:] if policy == "drop-oldest" else oldest
                    assert got == [*kept, b"end"]
                    # Delivered + dropped = received, for both.
                    assert len(stuck.entered) + slow.dropped == received + 1
                    assert bound + 1 + idle.dropped == received + 1
                assert mpx.statistics().messages_dropped == slow.dropped + idle.dropped
                assert mpx.statistics().connections_lost == 0
            await round_trip(mpx)

    driver.run(body)


# ============================================================================ memory bound


def test_memory_stays_bounded_with_stuck_consumers(driver: Any, redis_server: RedisServer) -> None:
    """200,000 messages of 100 bytes to a stuck callback and a never-read iterator
    (buffers of 1,000, drop-oldest): RSS grows by a few MiB at most. Kept, the
    messages would take over 40 MiB per consumer."""
    chan = b(uniq("slow-mem"))
    bound = 1000
    warmup, count = 20_000, 200_000
    payload = b"m" * 100
    chunk = 5000
    commands = pack([(chan, payload)] * chunk)

    async def body() -> None:
        stuck = Stuck()
        counter = Counter()
        pipeline = Pipeline(redis_server)
        async with driver.Multiplexer(redis_server.url) as mpx:
            await active(mpx, counter, chan)
            slow = await active(mpx, stuck, chan, buffer_size=bound)
            async with mpx.subscribe(chan, buffer_size=bound) as idle:

                async def publish(messages: int) -> None:
                    target = counter.count + messages
                    for _ in range(messages // chunk):
                        await anyio.to_thread.run_sync(pipeline.publish, commands, chunk)
                        behind = target - messages + chunk  # at most two chunks in flight
                        await wait_until(lambda: counter.count >= behind, timeout=30)  # noqa: B023
                    await wait_until(lambda: counter.count == target, timeout=30)

                await mpx.publish(chan, b"first")
                await wait_until(lambda: stuck.entered == [b"first"])
                await publish(warmup)  # the buffers are full, the allocator has its pools
                before = rss_bytes()
                await publish(count)
                growth = rss_bytes() - before
                pipeline.close()

                received = 1 + warmup + count
                assert counter.count == received
                assert stuck.entered == [b"first"]
                assert slow.dropped == received - 1 - bound
                assert idle.dropped == received - bound
                stats = mpx.statistics()
                assert stats.messages_dropped == slow.dropped + idle.dropped
                assert stats.connections_lost == 0
                assert growth < 6 * 1024 * 1024, f"RSS grew {growth / 2**20:.1f} MiB"
                stuck.release.set()
                await wait_until(lambda: len(stuck.entered) == 1 + bound)

    driver.run(body)


# ===================================================================== bugs found under load, fixed


@pytest.mark.parametrize("policy", ["drop-oldest", "drop-newest"])
def test_callback_buffer_bound_holds_when_the_consumer_gets_stuck_after_a_burst(
    driver: Any, redis_server: RedisServer, policy: str
) -> None:
    """The consumer is busy while a burst fills its buffer, then takes the next message
    and gets stuck there: it must still hold at most ``buffer_size`` messages."""
    chan = b(uniq(f"slow-take-{policy}"))
    bound = 10

    async def body() -> None:
        first_done = anyio.Event()
        forever = anyio.Event()
        entered: list[bytes] = []
        observer = Ordered()

        async def on_message(channel: bytes, data: bytes) -> None:
            entered.append(data)
            await (first_done if data == b"first" else forever).wait()

        async with driver.Multiplexer(redis_server.url) as mpx:
            await active(mpx, observer, chan)
            sub = await active(mpx, on_message, chan, buffer_size=bound, overflow=policy)
            pipeline = Pipeline(redis_server)
            await mpx.publish(chan, b"first")
            await wait_until(lambda: entered == [b"first"])
            burst_x = [b"x%d" % i for i in range(100)]
            burst_y = [b"y%d" % i for i in range(100)]
            await anyio.to_thread.run_sync(pipeline.publish, pack((chan, d) for d in burst_x), 100)
            await wait_until(lambda: len(observer.data) == 101)
            first_done.set()  # takes the next message and is stuck on it for good
            await wait_until(lambda: len(entered) == 2)
            await anyio.to_thread.run_sync(pipeline.publish, pack((chan, d) for d in burst_y), 100)
            await wait_until(lambda: len(observer.data) == 201)
            pipeline.close()
            buffered = len(observer.data) - len(entered) - sub.dropped
            everything = [b"first", *burst_x, *burst_y]
            forever.set()
            await wait_until(lambda: len(entered) == len(observer.data) - sub.dropped)
            assert buffered <= bound, f"{buffered} messages held with a buffer of {bound}"
            # What a buffer of 10 keeps: after burst x, x90-x99 (drop-oldest) or x0-x9
            # (drop-newest); the consumer takes the first of them and is stuck; burst y
            # then pushes out the 9 left (drop-oldest) or fills the one free place.
            if policy == "drop-oldest":
                expected = [b"first", burst_x[90], *burst_y[-bound:]]
            else:
                expected = [b"first", *burst_x[:bound], burst_y[0]]
            assert entered == expected
            assert sub.dropped == len(everything) - len(expected)
            await round_trip(mpx)

    driver.run(body)


def test_close_policy_overflow_notifies_on_disconnect_once(
    driver: Any, redis_server: RedisServer
) -> None:
    """Messages of two channels, interleaved in one burst, overflow a stuck callback
    subscription that holds both: on_disconnect hears of it once."""
    chan_a, chan_c = b(uniq("slow-once-a")), b(uniq("slow-once-c"))

    async def body() -> None:
        stuck = Stuck()
        errors: list[Exception] = []
        observer = Ordered()
        async with driver.Multiplexer(redis_server.url) as mpx:
            await active(mpx, observer, chan_a, chan_c)
            sub = await active(
                mpx,
                stuck,
                chan_a,
                chan_c,
                on_disconnect=errors.append,
                buffer_size=10,
                overflow="close",
            )
            await mpx.publish(chan_a, b"first")
            await wait_until(lambda: stuck.entered == [b"first"])
            pipeline = Pipeline(redis_server)
            burst = [((chan_a, chan_c)[i % 2], b"%d" % i) for i in range(100)]
            await anyio.to_thread.run_sync(pipeline.publish, pack(burst), len(burst))
            pipeline.close()
            await wait_until(lambda: len(observer.data) == 101)
            assert sub.closed
            stuck.release.set()
            await wait_until(lambda: bool(errors))
            await round_trip(mpx)  # any further notice would have been handed over by now
            assert len(errors) == 1, errors
            assert isinstance(errors[0], driver.module.SubscriptionOverflow)

    driver.run(body)


def test_a_stuck_consumer_holds_a_bounded_buffer_through_reconnects(
    driver: Any, redis_server_factory: RedisServerFactory
) -> None:
    """Defect 4 of issue 14: a stuck async consumer (``buffer_size=16``) holding 2,000
    names held one notice per name per activation: 2,001 after one reconnect, 10,005
    after five. Notices now count against the bound: a batch of activations is one
    notice, and a disconnect supersedes the activations queued before it."""
    server = redis_server_factory()
    names = [b"stuck-notices:%d" % i for i in range(2000)]

    async def body() -> None:
        gate = anyio.Event()
        log: list[tuple[str, object]] = []  # ("activated", name) and ("disconnected", error)

        async def on_activation(name: bytes) -> None:
            log.append(("activated", name))
            await gate.wait()  # stuck on the very first activation

        async def on_disconnect(error: Exception) -> None:
            log.append(("disconnected", error))

        async def on_message(channel: bytes, data: bytes) -> None:
            pass

        def since_last_disconnect() -> set[object]:
            kinds = [kind for kind, _ in log]
            if kinds.count("disconnected") < 5:
                return set()
            last = len(kinds) - 1 - kinds[::-1].index("disconnected")
            return {value for kind, value in log[last:] if kind == "activated"}

        options = {"backoff_base": 0.01, "backoff_cap": 0.05}
        async with driver.Multiplexer(server.url, **options) as mpx:
            sub = mpx.new_channel_subscription(
                on_message, on_disconnect, on_activation, buffer_size=16
            )
            sub.add(*names)
            await wait_until(lambda: log == [("activated", names[0])])
            queue = sub._consumer.queue
            for reconnect in range(1, 6):
                server.command("CLIENT", "KILL", "TYPE", "pubsub")
                await wait_until(
                    lambda: mpx.statistics().connections_made == reconnect + 1  # noqa: B023
                    and mpx.statistics().active_channels == len(names)
                )
                assert len(queue) <= 16, f"{len(queue)} items after {reconnect} reconnects"
            notices = [item for item in queue.items if hasattr(item, "error")]
            assert len(notices) == len(queue.items)  # nothing but notices: no message came
            assert [n.error is not None for n in notices] == [True] * 5  # one per loss
            # Only the newest activation is left, riding on the last disconnect.
            assert [n.names is not None for n in notices] == [False] * 4 + [True]
            gate.set()
            # Each outage is told once, and after the last every name is active again.
            await wait_until(lambda: since_last_disconnect() == set(names))
            assert [kind for kind, _ in log].count("disconnected") == 5

    driver.run(body)
