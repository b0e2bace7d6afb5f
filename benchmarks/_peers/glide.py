"""Valkey GLIDE's Pub/Sub (``valkey-glide`` 2.6, asyncio), as its users consume it.

A ``GlideClient`` is one connection to the server, driven by GLIDE's Rust core on threads
of its own; the Rust side hands every reply and every push message to Python through a
pipe that the event loop reads. RESP3 is GLIDE's default, and Pub/Sub needs it: a pushed
message is parsed in Rust and reaches Python as a ``PubSubMsg(message, channel,
pattern)`` of bytes. There is no multiplexer: every subscriber of a channel is a client
of its own, so ``fanout`` creates ``--subscribers`` clients (and connections).

Variants (the two consumers GLIDE offers):

``callback``
    ``GlideClientConfiguration(..., pubsub_subscriptions=PubSubSubscriptions(
    channels_and_patterns={Exact: {channel}}, callback=on_message, context=None))``: the
    channel is named when the client is created, and GLIDE calls the plain function
    ``on_message(msg, context)`` on the event loop's thread, from the pipe reader, for
    every message. Its fastest path.
``polling``
    The same configuration without a callback, and a task per client looping on ``await
    client.get_pubsub_message()``; GLIDE queues the messages nobody has asked for yet
    in a list, and completes each waiting future with the oldest.

Confirmation: ``GlideClient.create`` subscribes the configured channel while it connects;
before READY the adapter also asks each client for ``get_subscriptions()`` until the
channel is among its ``actual_subscriptions`` (the state GLIDE keeps from Redis's
replies), so nothing is published before Redis has confirmed.

``churn`` and ``memory`` use one client, created with the variant's configuration and no
channel (``channels_and_patterns={}``), and GLIDE's dynamic subscriptions (since 2.3):
``await client.subscribe(names, timeout_ms=...)`` returns once Redis has confirmed
every name, ``await client.unsubscribe(names, timeout_ms=...)`` likewise; ``timeout_ms``
is ``--timeout`` (0 would wait forever). ``churn`` passes all K names to one
``subscribe`` call (a set: the API takes one), then all to one ``unsubscribe``, the
clock running from just after ``create``; afterwards (unclocked) ``get_subscriptions``
must show none left. ``memory`` subscribes K names with one call on that client; the K
name strings and their set are built before the baseline and kept alive, so what is
counted is what GLIDE keeps (in Python and in its Rust core: RSS sees both).

Every client is closed before the process ends (``close()`` stops its connection in the
Rust core), so the process exits by itself: no ``os._exit``.

This file shares the library's import name: it takes its own directory off ``sys.path``
while importing ``glide``, else ``import glide`` would import this script.

    python benchmarks/_peers/glide.py MEASURE --port P [--variant callback|polling] ...
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]
from glide import GlideClient, GlideClientConfiguration, NodeAddress  # noqa: E402

sys.path.insert(0, _HERE)
import common  # noqa: E402

VARIANTS = ("callback", "polling")
EXACT = GlideClientConfiguration.PubSubChannelModes.Exact
#: Files a fan-out run may open besides the subscribers' connections (stdio, the pipe...).
SPARE_FILES = 64
CONFIRM_POLL_SECONDS = 0.001



async def create(args: Any, channels: set[str], callback: Callable[[Any, Any], None] | None) -> Any:
    """A client subscribed at creation to ``channels`` (none: dynamic subscriptions only)."""
    subscriptions = GlideClientConfiguration.PubSubSubscriptions(
        channels_and_patterns={EXACT: channels} if channels else {},
        callback=callback,
        context=None,
    )
    config = GlideClientConfiguration(
        [NodeAddress(args.host, args.port)], pubsub_subscriptions=subscriptions
    )
    return await GlideClient.create(config)


async def subscribed(client: Any) -> set[str]:
    """The exact channels Redis has confirmed to this client, by GLIDE's account."""
    state = await client.get_subscriptions()
    return {
        name.decode() if isinstance(name, bytes) else name
        for name in state.actual_subscriptions.get(EXACT, ())
    }


async def confirmed(client: Any, channel: str) -> None:
    while channel not in await subscribed(client):  # noqa: ASYNC110 - asks GLIDE
        await asyncio.sleep(CONFIRM_POLL_SECONDS)


class Consumers:
    """The callbacks (the same code as the raw loop's and the other adapters') and the
    polling loops, counting deliveries in one closure cell."""

    def __init__(self, expected: int, latency: bool) -> None:
        delivered = 0
        self.end = 0.0
        done = self.done = asyncio.Event()
        latencies = self.latencies = common.Latencies() if latency else None
        add, latency_ns = (latencies.add, common.latency_ns) if latencies else (None, None)

        def finished() -> None:
            self.end = time.perf_counter()
            done.set()

        def callback() -> Callable[[Any, Any], None]:
            """One subscriber's ``callback(msg, context)``."""
            if add is not None and latency_ns is not None:

                def on_latency(msg: Any, context: Any) -> None:
                    nonlocal delivered
                    add(latency_ns(msg.message))
                    delivered += 1
                    if delivered == expected:
                        finished()

                return on_latency

            def on_message(msg: Any, context: Any) -> None:
                nonlocal delivered
                delivered += 1
                if delivered == expected:
                    finished()

            return on_message

        async def poll(client: Any) -> None:
            """One subscriber's ``get_pubsub_message()`` loop, until cancelled."""
            nonlocal delivered
            get_pubsub_message = client.get_pubsub_message
            if add is not None and latency_ns is not None:
                while True:
                    msg = await get_pubsub_message()
                    add(latency_ns(msg.message))
                    delivered += 1
                    if delivered == expected:
                        finished()
            while True:
                await get_pubsub_message()
                delivered += 1
                if delivered == expected:
                    finished()

        def count() -> int:
            return delivered

        self.callback, self.poll, self.count = callback, poll, count


async def close_all(clients: list[Any]) -> None:
    await asyncio.gather(*(client.close() for client in clients))


async def consume(args: Any) -> None:
    """backlog, live, latency (one subscriber) and fanout (``--subscribers``)."""
    subscribers = args.subscribers if args.measure == "fanout" else 1
    common.raise_file_limit(subscribers + SPARE_FILES)
    consumers = Consumers(args.expected, args.measure == "latency")
    clients: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for _ in range(subscribers):
            callback = consumers.callback() if args.variant == "callback" else None
            clients.append(await create(args, {args.channel}, callback))
        try:
            async with asyncio.timeout(args.timeout):
                for client in clients:
                    await confirmed(client, args.channel)
        except TimeoutError:
            raise SystemExit(
                f"glide: {args.channel!r} not confirmed after {args.timeout:g} s"
            ) from None
        if args.variant == "polling":
            tasks = [asyncio.create_task(consumers.poll(client)) for client in clients]
        await asyncio.sleep(0.1)  # every consumer is now waiting
        start = common.ready()
        try:
            await asyncio.wait_for(consumers.done.wait(), args.timeout)
        except TimeoutError:
            raise SystemExit(
                f"glide {args.variant}: {consumers.count()} of {args.expected} deliveries "
                f"after {args.timeout:g} s"
            ) from None
        result: dict[str, Any] = {"deliveries": consumers.count(), "seconds": consumers.end - start}
        if consumers.latencies is not None:
            result.update(consumers.latencies.figures())
        common.emit(**result)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_all(clients)


def ignore(msg: Any, context: Any) -> None:
    """The callback of ``churn`` and ``memory`` clients (they get no messages)."""


async def names_client(args: Any) -> Any:
    """The one client of ``churn`` and ``memory``: the variant's consumer, no channel."""
    return await create(args, set(), ignore if args.variant == "callback" else None)


async def churn(args: Any) -> None:
    names = {f"{args.channel}:{index}" for index in range(args.names)}
    timeout_ms = round(args.timeout * 1000)
    client = await names_client(args)
    try:
        start = time.perf_counter()
        await client.subscribe(names, timeout_ms=timeout_ms)
        await client.unsubscribe(names, timeout_ms=timeout_ms)
        seconds = time.perf_counter() - start
        left = await subscribed(client)
        if left:
            raise SystemExit(f"glide: {len(left)} channels still subscribed")
        common.emit(names=2 * len(names), seconds=seconds)
    finally:
        await client.close()


async def memory(args: Any) -> None:
    names = {f"{args.channel}:{index}" for index in range(args.names)}
    client = await names_client(args)
    try:
        await asyncio.sleep(0.1)
        common.settle()
        baseline = common.rss_bytes()
        await client.subscribe(names, timeout_ms=round(args.timeout * 1000))
        common.settle()
        loaded = common.rss_bytes()
        count = len(await subscribed(client))
        if count != len(names):
            raise SystemExit(f"glide: {count} of {len(names)} channels subscribed")
        common.emit(bytes_per_subscription=(loaded - baseline) / len(names), subscriptions=count)
    finally:
        await client.close()


def main() -> None:
    args = common.parse(VARIANTS)
    run = {"churn": churn, "memory": memory}.get(args.measure, consume)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
