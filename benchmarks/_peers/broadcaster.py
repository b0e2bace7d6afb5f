"""Adapter of ``benchmarks/peers.py`` for encode/broadcaster with its redis backend.

``Broadcast("redis://host:port")`` keeps one redis-py ``PubSub`` connection (redis-py's
defaults: RESP3, hiredis when installed) and a listener task that puts every message
(decoded to ``str``) into an unbounded queue per subscriber; users consume with
``async with broadcast.subscribe(channel) as subscriber: async for event in subscriber``.

Variants: ``iter`` (that iterator, one task per subscriber). ``sync`` and ``async`` emit
``unsupported``: broadcaster has no callbacks. ``churn`` and ``memory`` run with ``iter``.

Confirmation: broadcaster reports none (``subscribe`` returns once redis-py has *sent*
SUBSCRIBE; its listener drops the replies). So a side connection polls ``CLIENT LIST``
(every millisecond) until the Broadcast's connection, found by the ``client_name`` given
in its URL, shows the expected ``sub=`` count: Redis has processed the commands, and its
replies are on their way, ahead of any message published after. For churn that is up to
a millisecond or so early, in broadcaster's favour.

Two bugs of broadcaster 0.3.1 (with redis-py 8.1) that any user meets, and how the
adapter gets past them the way a user could:

* The first subscription of a Broadcast never receives. ``subscribe`` sets the backend's
  ``_ready`` event, then awaits redis-py's ``PubSub.subscribe``, which suspends *before*
  it records the channel; the listener wakes in that gap, finds no channel, so
  ``PubSub.listen()`` returns at once, and it clears ``_ready`` and sleeps until the next
  subscription of a new channel. The adapter therefore opens one warm-up subscription
  (``<channel>:warm-up``, never published to) right after connecting, and keeps it; the
  measured subscriptions all come after it, with the listener running.
* Concurrent first subscriptions to one channel overwrite each other: each awaits the
  backend before recording ``{queue}`` for the channel, so all but one subscriber are
  lost (and their exit raises ``KeyError``). For ``fanout`` the first subscriber enters
  alone; the other ``--subscribers - 1`` then find the channel and join without a Redis
  command.

Subscriptions in ``churn`` and ``memory`` are entered one after the other in one task
(``await cm.__aenter__()``, the context managers kept in a list: the lightest holder,
8 bytes each; no consumer task each, which a real subscriber would add). Names are
``str`` (broadcaster matches events by their decoded channel name). In ``memory`` each
name is made as its subscription is, after the baseline, so the names broadcaster and
redis-py keep count, and the adapter keeps none; after Redis has confirmed all, the
adapter sleeps 0.2 s so that the listener has read the confirmations before RSS is taken.

The process ends with ``os._exit`` right after its result line: it is a throwaway, and
teardown (100,000 UNSUBSCRIBE in ``memory``) is not measured.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

# This file is named like the library: import broadcaster from site-packages, not itself,
# then ``common`` from this folder.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != HERE]
from broadcaster import Broadcast  # noqa: E402

sys.path.insert(0, HERE)
import common  # noqa: E402
from side import Side, finish  # noqa: E402
from side import within as _within  # noqa: E402

VARIANTS = ("iter", "sync", "async")
NO_CALLBACKS = "broadcaster has no callbacks: subscribers are async iterators only"
DRAIN_SECONDS = 0.2
T = TypeVar("T")


# ------------------------------------------------------------------ helpers


async def within(awaitable: Awaitable[T], seconds: float, what: str | Callable[[], str]) -> T:
    return await _within(awaitable, seconds, what, "broadcaster")


class Countdown:
    """An event set once it has been called ``count`` times."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.event = asyncio.Event()
        if count <= 0:
            self.event.set()

    def __call__(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.event.set()


class Session:
    """A connected Broadcast, its warm-up subscription, and the side connection."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.client_name = f"peers-broadcaster-{os.getpid()}"
        url = f"redis://{args.host}:{args.port}?client_name={self.client_name}"
        self.broadcast = Broadcast(url)
        self.side: Side | None = None

    async def start(self) -> Session:
        await self.broadcast.connect()
        self.side = await Side.open(self.args.host, self.args.port)
        warm_up = self.broadcast.subscribe(f"{self.args.channel}:warm-up")
        await warm_up.__aenter__()
        self.warm_up = warm_up  # kept: the listener runs while a channel is subscribed
        await self.confirmed(0)
        return self

    async def confirmed(self, count: int) -> None:
        """Wait until Redis shows ``count`` subscriptions besides the warm-up."""
        assert self.side is not None
        await within(
            self.side.wait_subscriptions("name", self.client_name, count + 1),
            self.args.timeout,
            f"sub={count + 1} on Redis",
        )


# ------------------------------------------------------------------ measures


async def receive(args: Any) -> None:
    """backlog, live, latency, fanout: count deliveries from GO to the --expected-th."""
    if args.variant != "iter":
        finish(unsupported=NO_CALLBACKS)
    subscribers = args.subscribers if args.measure == "fanout" else 1
    expected = args.expected
    done = asyncio.Event()
    count = 0
    end = 0.0
    latencies = common.Latencies()
    add, latency_ns = latencies.add, common.latency_ns
    session = await Session(args).start()
    broadcast = session.broadcast
    entered = Countdown(subscribers)
    first = asyncio.Event()

    def entering() -> None:
        entered()
        first.set()

    async def consume() -> None:
        nonlocal count, end
        async with broadcast.subscribe(args.channel) as subscriber:
            entering()
            async for _event in subscriber:
                count += 1
                if count == expected:
                    end = time.perf_counter()
                    done.set()

    async def consume_latency() -> None:
        nonlocal count, end
        async with broadcast.subscribe(args.channel) as subscriber:
            entering()
            async for event in subscriber:
                add(latency_ns(event.message))
                count += 1
                if count == expected:
                    end = time.perf_counter()
                    done.set()

    consumer = consume_latency if args.measure == "latency" else consume
    tasks = [asyncio.create_task(consumer())]  # the first alone: see the docstring
    await within(first.wait(), args.timeout, "entry of the first subscriber")
    tasks += [asyncio.create_task(consumer()) for _ in range(subscribers - 1)]
    await within(entered.event.wait(), args.timeout, "entry of every subscriber")
    await session.confirmed(1)
    go = common.ready()
    await within(done.wait(), args.timeout, lambda: f"{expected} deliveries (got {count})")
    result: dict[str, Any] = {"deliveries": count, "seconds": end - go}
    if args.measure == "latency":
        result.update(latencies.figures())
    finish(**result)


async def churn(args: Any) -> None:
    """--names subscribe contexts entered, Redis confirms; all exited, Redis confirms."""
    session = await Session(args).start()
    broadcast = session.broadcast
    names = [f"{args.channel}:{index}" for index in range(args.names)]
    held = []
    start = time.perf_counter()
    for name in names:
        context = broadcast.subscribe(name)
        await context.__aenter__()
        held.append(context)
    await session.confirmed(len(names))
    subscribed = time.perf_counter()
    for context in reversed(held):
        await context.__aexit__(None, None, None)
    await session.confirmed(0)
    end = time.perf_counter()
    finish(
        names=2 * len(names),
        seconds=end - start,
        subscribe_seconds=subscribed - start,
        unsubscribe_seconds=end - subscribed,
        confirmed_by="server: CLIENT LIST sub= (broadcaster reports no confirmation)",
    )


async def memory(args: Any) -> None:
    """--names idle subscribe contexts, confirmed by Redis: RSS above the baseline."""
    session = await Session(args).start()
    broadcast = session.broadcast
    common.settle()
    baseline = common.rss_bytes()
    held = []
    for index in range(args.names):
        context = broadcast.subscribe(f"{args.channel}:{index}")
        await context.__aenter__()
        held.append(context)
    await session.confirmed(args.names)
    await asyncio.sleep(DRAIN_SECONDS)  # the listener reads the last confirmations
    common.settle()
    after = common.rss_bytes()
    finish(
        bytes_per_subscription=(after - baseline) / max(1, args.names),
        subscriptions=len(held),
        rss_baseline=baseline,
        rss_after=after,
    )


async def main() -> None:
    args = common.parse(VARIANTS)
    if args.measure == "churn":
        await churn(args)
    elif args.measure == "memory":
        await memory(args)
    else:
        await receive(args)


if __name__ == "__main__":
    asyncio.run(main())
