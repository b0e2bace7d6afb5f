"""redis-py's asyncio Pub/Sub (``redis.asyncio``, with hiredis), as its users consume it.

redis-py has no multiplexer: a ``PubSub`` object owns one connection, and a second
consumer of the same channel takes a second ``PubSub`` (so ``fanout`` opens
``--subscribers`` connections, and the pool is given ``max_connections`` to match: its
default, 100 in redis-py 8, would refuse the 101st). Defaults are otherwise the
library's own (RESP3 since redis-py 8, no health checks, ``decode_responses=False``);
the hiredis parser is required, and its class is reported in the result (``"parser"``).

Variants:

``callback``
    ``await pubsub.subscribe(**{channel: handler})`` with a plain (sync) handler, and a
    task looping on ``await pubsub.get_message(ignore_subscribe_messages=True,
    timeout=None)``, in which redis-py calls the channel's handler itself. This is the
    fastest way redis-py offers to run handlers (about twice ``run()``'s rate here).
``callback-run``
    The same handlers run by ``pubsub.run()`` in a task, redis-py's documented callback
    loop for asyncio. It polls ``get_message(..., timeout=1.0)`` (a timer per read)
    and yields to the loop after every message, hence the difference.
``iterator``
    ``await pubsub.subscribe(channel)``, then ``async for message in pubsub.listen()``,
    keeping ``message["type"] == "message"`` (listen also hands out confirmations). As
    fast as a ``get_message(ignore_subscribe_messages=True, timeout=None)`` loop, the
    consumer of redis-py's asyncio examples, within the noise of this machine.

Confirmation: after ``subscribe`` the adapter reads the ``subscribe`` reply of every
``PubSub`` with ``get_message(timeout=None)`` before READY (redis-py offers no other
way to know Redis has confirmed; ``run()`` would drop that reply unseen).

``churn``: one ``PubSub`` on a connection opened before the clock starts; one
``subscribe`` call with all K names (``**{name: handler}`` for the callback variants,
``*names`` for ``iterator``: one SUBSCRIBE command, the fastest way the API offers), its K
confirmations read, then ``unsubscribe(*names)`` and its K confirmations.

``memory``: what a user holding K subscriptions would do: one ``PubSub`` (one
connection) with K channels, each with the handler (one function shared by all:
redis-py stores ``{name: handler}``, so a per-channel closure would measure the
user's closures, not the library) for the callback variants, without one for
``iterator``. The
K name strings are built before the baseline and kept alive, so what is counted is
what redis-py itself keeps per subscription.

    python benchmarks/_peers/redispy.py MEASURE --port P [--variant V] ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio
from redis.utils import HIREDIS_AVAILABLE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

VARIANTS = ("callback", "iterator", "callback-run")
#: Files a fan-out run may open besides the subscribers' connections (stdio, the pool's...).
SPARE_FILES = 64



def parser_name(pubsub: Any) -> str:
    """The class of the connection's reply parser; SystemExit unless it is hiredis."""
    parser = type(pubsub.connection._parser).__name__
    if not HIREDIS_AVAILABLE or "Hiredis" not in parser:
        raise SystemExit(f"redis-py is not using hiredis (parser {parser})")
    return parser


async def confirm(pubsub: Any, kind: str, count: int) -> None:
    """Read ``count`` replies of ``kind`` (``subscribe``/``unsubscribe``) from Redis."""
    for _ in range(count):
        message = await pubsub.get_message(timeout=None)
        if message is None or message["type"] != kind:
            raise SystemExit(f"expected a {kind} confirmation, got {message!r}")


async def dispatch(pubsub: Any) -> None:
    """``callback``: get_message calls the channel's handler and returns None."""
    get_message = pubsub.get_message
    while True:
        await get_message(ignore_subscribe_messages=True, timeout=None)


async def iterate(pubsub: Any, on_message: Callable[[Any], None]) -> None:
    """``iterator``: ``async for`` over ``listen()``."""
    async for message in pubsub.listen():
        if message["type"] == "message":
            on_message(message)


async def consume(args: Any) -> None:
    """backlog, live, latency (one subscriber) and fanout (``--subscribers``)."""
    subscribers = args.subscribers if args.measure == "fanout" else 1
    common.raise_file_limit(subscribers + SPARE_FILES)
    latencies = common.Latencies() if args.measure == "latency" else None
    tally = common.Tally(args.expected, latencies, asyncio.Event())
    client = redis.asyncio.Redis(
        host=args.host, port=args.port, max_connections=subscribers + SPARE_FILES
    )
    pubsubs = [client.pubsub() for _ in range(subscribers)]
    for pubsub in pubsubs:
        if args.variant != "iterator":
            await pubsub.subscribe(**{args.channel: tally.on_message})
        else:
            await pubsub.subscribe(args.channel)
        await confirm(pubsub, "subscribe", 1)
    parser = parser_name(pubsubs[0])
    if args.variant == "callback":
        tasks = [asyncio.create_task(dispatch(pubsub)) for pubsub in pubsubs]
    elif args.variant == "callback-run":
        tasks = [asyncio.create_task(pubsub.run()) for pubsub in pubsubs]
    else:
        tasks = [asyncio.create_task(iterate(pubsub, tally.on_message)) for pubsub in pubsubs]
    await asyncio.sleep(0.1)  # every consumer is now waiting on its socket
    start = common.ready()
    try:
        await asyncio.wait_for(tally.done.wait(), args.timeout)
    except TimeoutError:
        raise SystemExit(
            f"redispy {args.variant}: {tally.count} of {args.expected} deliveries "
            f"after {args.timeout:g} s"
        ) from None
    result: dict[str, Any] = {
        "deliveries": tally.count,
        "seconds": tally.end - start,
        "parser": parser,
    }
    if latencies is not None:
        result.update(latencies.figures())
    common.emit(**result)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for pubsub in pubsubs:
        with contextlib.suppress(Exception):
            await pubsub.aclose()
    await client.aclose()


def ignore(message: Any) -> None:
    """The handler of ``churn`` and ``memory`` subscriptions (they get no messages)."""


async def subscribe_names(args: Any, pubsub: Any, names: list[str]) -> None:
    if args.variant != "iterator":
        await pubsub.subscribe(**dict.fromkeys(names, ignore))
    else:
        await pubsub.subscribe(*names)
    await confirm(pubsub, "subscribe", len(names))


async def churn(args: Any) -> None:
    client = redis.asyncio.Redis(host=args.host, port=args.port)
    pubsub = client.pubsub()
    await pubsub.connect()
    names = [f"{args.channel}:{index}" for index in range(args.names)]
    start = time.perf_counter()
    await subscribe_names(args, pubsub, names)
    await pubsub.unsubscribe(*names)
    await confirm(pubsub, "unsubscribe", len(names))
    seconds = time.perf_counter() - start
    if pubsub.channels:
        raise SystemExit(f"{len(pubsub.channels)} channels still subscribed")
    common.emit(names=2 * len(names), seconds=seconds, parser=parser_name(pubsub))
    await pubsub.aclose()
    await client.aclose()


async def memory(args: Any) -> None:
    client = redis.asyncio.Redis(host=args.host, port=args.port)
    pubsub = client.pubsub()
    await pubsub.connect()
    names = [f"{args.channel}:{index}" for index in range(args.names)]
    await asyncio.sleep(0.1)
    common.settle()
    baseline = common.rss_bytes()
    await subscribe_names(args, pubsub, names)
    common.settle()
    loaded = common.rss_bytes()
    if len(pubsub.channels) != len(names):
        raise SystemExit(f"{len(pubsub.channels)} of {len(names)} channels subscribed")
    common.emit(
        bytes_per_subscription=(loaded - baseline) / len(names),
        subscriptions=len(names),
        parser=parser_name(pubsub),
    )
    await pubsub.aclose()
    await client.aclose()


def main() -> None:
    args = common.parse(VARIANTS)
    if args.measure == "churn":
        run = churn
    elif args.measure == "memory":
        run = memory
    else:
        run = consume
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
