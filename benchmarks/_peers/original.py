"""Adapter of ``benchmarks/peers.py`` for the original RedisMPX 0.5.2 (on aioredis 1.3.1).

Runs under the python of its own venv (``original_venv.python_for_original()``): it imports
only ``common.py`` and the library, and the standard library.

What the original offers, from its README and source: one ``Multiplexer`` (one Pub/Sub
connection, a reader task started in its constructor), ``new_channel_subscription(
on_message, on_disconnect, on_activation)`` whose ``on_message`` may be a plain function or
an ``async def`` (awaited inline by the reader, one at a time), ``sub.add(name)`` and
``sub.remove(name)``, and ``on_activation(name)`` once Redis has confirmed a SUBSCRIBE.

Variants: ``sync`` (plain callback) and ``async`` (``async def`` callback); ``iter`` emits
``unsupported``: there is no iterator. The variant only matters to the measures that
receive messages; ``churn`` and ``memory`` are the same for every variant.

How each measure waits for Redis:

* backlog, live, latency, fanout: READY after ``on_activation`` has fired for every
  subscription (the library's own confirmation);
* churn: one subscription, ``add`` of every name, then ``on_activation`` of each; then
  ``remove`` of every name. The original reports no UNSUBSCRIBE confirmation (its reader
  drops ``unsubscribe`` frames), so the end is taken from the server: a side connection
  polls ``CLIENT LIST`` (every millisecond) until the multiplexer's connection shows
  ``sub=0``. That is when Redis has processed the last UNSUBSCRIBE, not when the library
  has read its reply: at most a millisecond or so early, in the original's favour;
* memory: ``--names`` subscriptions with one name each (one shared ``on_message`` and
  ``on_activation``), then ``on_activation`` of each. Each name (bytes, as the library
  stores it) is made as its subscription is, after the baseline, so the names the
  library keeps count and no list of them held by the adapter does; the adapter keeps
  the subscription objects in a list, as a user must (8 bytes each).

Names are bytes (``<channel>:<i>``), built before the clock in ``churn``; the library
would encode a ``str`` itself.

Fan-out over one channel is broken in 0.5.2: ``redismpx.internal.List.prepend`` links the
new head with ``node.next`` where its iterator follows ``node._next``, so a channel's list
only ever yields its newest subscription. With 1,000 subscriptions on one channel, one gets
the messages and the activation, the other 999 get nothing. The adapter checks for that
bug (a two-node list) and, when present, emits ``unsupported`` for ``fanout`` with more
than one subscriber rather than a figure for one subscriber in a thousand.

The process ends with ``os._exit`` right after its result line: it is a throwaway, and
teardown (which the original cannot do for a subscription with channels: its
``ChannelSubscription.clear`` refers to an undefined name) is not measured.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

# This folder also holds the adapter of this project's library, ``redismpx.py``: import
# the original from its venv's site-packages, then ``common`` from here.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != HERE]
from redismpx import Multiplexer  # noqa: E402

sys.path.insert(0, HERE)
import common  # noqa: E402
from side import Side, finish  # noqa: E402
from side import within as _within  # noqa: E402

VARIANTS = ("sync", "async", "iter")
NO_ITERATOR = "RedisMPX 0.5.2 has callbacks only (plain or async def), no iterator"
FANOUT_BROKEN = (
    "RedisMPX 0.5.2 delivers each message to one subscription per channel: "
    "internal.List.prepend sets node.next, its iterator follows node._next, so only the "
    "newest subscription of a channel gets messages and activations"
)
T = TypeVar("T")


# ------------------------------------------------------------------ helpers


async def within(awaitable: Awaitable[T], seconds: float, what: str | Callable[[], str]) -> T:
    return await _within(awaitable, seconds, what, "original")


def fanout_is_broken() -> bool:
    """True if a channel's subscription list yields only its newest node (0.5.2's bug)."""
    from redismpx.internal import List, ListNode

    nodes = List(ListNode(tag=1))
    nodes.prepend(ListNode(tag=2))
    return sum(1 for _ in nodes) != 2


async def connect(args: Any) -> Multiplexer:
    mpx = Multiplexer(f"redis://{args.host}:{args.port}")
    await within(mpx.connected_event.wait(), args.timeout, "connection")
    return mpx


def address_of(mpx: Multiplexer) -> str:
    """The multiplexer's connection as CLIENT LIST's ``addr`` shows it."""
    host, port = mpx.connection._writer.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


class Countdown:
    """An event set once ``count`` calls have been made (activations)."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.event = asyncio.Event()
        if count <= 0:
            self.event.set()

    def __call__(self, name: bytes) -> None:
        self.left -= 1
        if self.left == 0:
            self.event.set()


def ignore(channel: bytes, data: bytes) -> None:
    pass


# ------------------------------------------------------------------ measures


async def receive(args: Any) -> None:
    """backlog, live, latency, fanout: count deliveries from GO to the --expected-th."""
    if args.variant == "iter":
        finish(unsupported=NO_ITERATOR)
    subscribers = args.subscribers if args.measure == "fanout" else 1
    if subscribers > 1 and fanout_is_broken():
        finish(unsupported=FANOUT_BROKEN)
    expected = args.expected
    done = asyncio.Event()
    count = 0
    end = 0.0
    latencies = common.Latencies()
    add, latency_ns = latencies.add, common.latency_ns

    def on_sync(channel: bytes, data: bytes) -> None:
        nonlocal count, end
        count += 1
        if count == expected:
            end = time.perf_counter()
            done.set()

    async def on_async(channel: bytes, data: bytes) -> None:
        nonlocal count, end
        count += 1
        if count == expected:
            end = time.perf_counter()
            done.set()

    def on_sync_latency(channel: bytes, data: bytes) -> None:
        nonlocal count, end
        add(latency_ns(data))
        count += 1
        if count == expected:
            end = time.perf_counter()
            done.set()

    async def on_async_latency(channel: bytes, data: bytes) -> None:
        nonlocal count, end
        add(latency_ns(data))
        count += 1
        if count == expected:
            end = time.perf_counter()
            done.set()

    callbacks = {
        ("sync", False): on_sync,
        ("async", False): on_async,
        ("sync", True): on_sync_latency,
        ("async", True): on_async_latency,
    }
    on_message = callbacks[args.variant, args.measure == "latency"]
    mpx = await connect(args)
    activated = Countdown(subscribers)
    subscriptions = []
    for _ in range(subscribers):
        subscription = mpx.new_channel_subscription(on_message, None, activated)
        subscription.add(args.channel)
        subscriptions.append(subscription)
    await within(activated.event.wait(), args.timeout, "activation")
    go = common.ready()
    await within(done.wait(), args.timeout, lambda: f"{expected} deliveries (got {count})")
    result: dict[str, Any] = {"deliveries": count, "seconds": end - go}
    if args.measure == "latency":
        result.update(latencies.figures())
    finish(**result)


async def churn(args: Any) -> None:
    """One subscription: add --names names, all activated; remove them, Redis confirms."""
    mpx = await connect(args)
    side = await Side.open(args.host, args.port)
    addr = address_of(mpx)
    names = [f"{args.channel}:{index}".encode() for index in range(args.names)]
    activated = Countdown(len(names))
    subscription = mpx.new_channel_subscription(ignore, None, activated)
    start = time.perf_counter()
    for name in names:
        subscription.add(name)
    await within(activated.event.wait(), args.timeout, "activation of every name")
    subscribed = time.perf_counter()
    for name in names:
        subscription.remove(name)
    await within(side.wait_subscriptions("addr", addr, 0), args.timeout, "sub=0 on Redis")
    end = time.perf_counter()
    finish(
        names=2 * len(names),
        seconds=end - start,
        subscribe_seconds=subscribed - start,
        unsubscribe_seconds=end - subscribed,
        unsubscribe_confirmed_by="server: CLIENT LIST sub=0 (the original reports none)",
    )


async def memory(args: Any) -> None:
    """--names idle subscriptions of one name each, all activated: RSS above the baseline."""
    mpx = await connect(args)
    common.settle()
    baseline = common.rss_bytes()
    activated = Countdown(args.names)
    subscriptions = []
    for index in range(args.names):
        subscription = mpx.new_channel_subscription(ignore, None, activated)
        subscription.add(f"{args.channel}:{index}".encode())
        subscriptions.append(subscription)
    await within(activated.event.wait(), args.timeout, "activation of every subscription")
    common.settle()
    after = common.rss_bytes()
    finish(
        bytes_per_subscription=(after - baseline) / max(1, args.names),
        subscriptions=args.names,
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
