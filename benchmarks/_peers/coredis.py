"""coredis's Pub/Sub (coredis 6: anyio-based, RESP3, its own mypyc-compiled parser).

A coredis ``PubSub`` is an async context manager that leases one connection from the
client's pool for its lifetime and runs two tasks in its own task group: the
connection's reader (parses, queues push messages) and a consumer that turns each push
message into a ``PubSubMessage`` dict, calls the channel's handler if it has one, and
puts the message (``None`` when a handler took it) on the ``PubSub``'s own unbounded
stream, which ``async for message in pubsub`` / ``get_message()`` read. There is no
multiplexer: a second consumer of a channel is a second ``PubSub``, so ``fanout``
opens ``--subscribers`` connections (the pool is given ``max_connections`` to match:
its default of 64 would make the 65th ``PubSub`` wait for a connection forever).
Runs on asyncio (``asyncio.run``), like the other peers.

Variants (the two coredis 6 offers):

``callback``
    ``client.pubsub(channel_handlers={channel: handler})`` with a plain (sync) handler,
    which coredis's consumer task calls for every message; nothing else reads. (coredis
    still queues a ``None`` per handled message on the ``PubSub``'s unbounded stream,
    which only a reader would drain: 8 bytes a message, and part of ``rss_peak``.)
``iterator``
    ``client.pubsub(channels=[channel], ignore_subscribe_messages=True)`` and
    ``async for message in pubsub``, the use its documentation recommends.

Each subscriber is one task entering its ``PubSub`` context; entering returns once
Redis has confirmed the subscription (coredis waits for the ``subscribe`` replies, up to
``subscription_timeout``), and READY comes after every subscriber has entered.

``churn`` and ``memory`` use one ``PubSub`` built with the ``PubSub`` constructor (the
handbook's other documented way) so that ``unsubscription_timeout`` can be raised:
``client.pubsub()`` leaves it at 0.1 s, after which ``unsubscribe`` returns without
waiting for the confirmations. ``subscribe`` and ``unsubscribe`` each wait for Redis's
replies, and both timeouts are ``--timeout``, as a user subscribing thousands of
channels at once must set them (1 s and 0.1 s by default). ``churn`` passes all K names
to one ``subscribe`` call (``**{name: handler}`` for ``callback``, ``*names`` for
``iterator``; one SUBSCRIBE command), then one ``unsubscribe(*names)``; the clock starts
once the ``PubSub`` holds its connection. ``memory`` subscribes K channels on that one
``PubSub`` the same way (with one handler function shared by all for ``callback``); the
K name strings are built before the baseline and kept alive. For ``iterator`` an idle
``async for`` consumer runs, as it would for such a user, and reads (and drops) the K
subscribe replies that coredis queues on the ``PubSub``'s stream; for ``callback``
nothing reads that stream, so the K replies stay queued there, as they would for a
user who only registered handlers.

This file shares the library's name: it takes its own directory off ``sys.path`` while
importing coredis, else ``import coredis`` would import this script.

    python benchmarks/_peers/coredis.py MEASURE --port P [--variant callback|iterator] ...
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]
import anyio  # noqa: E402
import coredis  # noqa: E402
from anyio.abc import TaskStatus  # noqa: E402
from coredis.patterns.pubsub import PubSub  # noqa: E402

sys.path.insert(0, _HERE)
import common  # noqa: E402

VARIANTS = ("callback", "iterator")
#: Connections a fan-out run may open besides the subscribers' (stdio, the pool's spare...).
SPARE_FILES = 64



def check_version() -> None:
    major = int(coredis.__version__.split(".")[0])
    if major < 6:
        raise SystemExit(f"this adapter needs coredis 6 or later, not {coredis.__version__}")


async def subscriber(
    client: Any,
    args: Any,
    tally: common.Tally,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """One consumer of ``--channel``, subscribed (and confirmed) when it reports started."""
    if args.variant == "callback":
        async with client.pubsub(
            channel_handlers={args.channel: tally.on_message}, ignore_subscribe_messages=True
        ):
            task_status.started()
            await anyio.sleep_forever()
    else:
        async with client.pubsub(channels=[args.channel], ignore_subscribe_messages=True) as pubsub:
            task_status.started()
            on_message = tally.on_message
            async for message in pubsub:
                on_message(message)


async def consume(args: Any) -> None:
    """backlog, live, latency (one subscriber) and fanout (``--subscribers``)."""
    subscribers = args.subscribers if args.measure == "fanout" else 1
    common.raise_file_limit(subscribers + SPARE_FILES)
    latencies = common.Latencies() if args.measure == "latency" else None
    tally = common.Tally(args.expected, latencies, anyio.Event())
    client = coredis.Redis(host=args.host, port=args.port, max_connections=subscribers + 8)
    async with client, anyio.create_task_group() as group:
        for _ in range(subscribers):
            await group.start(subscriber, client, args, tally)
        await anyio.sleep(0.1)  # every consumer is now waiting on its socket
        start = common.ready()
        with anyio.move_on_after(args.timeout):
            await tally.done.wait()
        if not tally.done.is_set():
            raise SystemExit(
                f"coredis {args.variant}: {tally.count} of {args.expected} deliveries "
                f"after {args.timeout:g} s"
            )
        result: dict[str, Any] = {"deliveries": tally.count, "seconds": tally.end - start}
        if latencies is not None:
            result.update(latencies.figures())
        common.emit(**result)
        if subscribers > 1:
            # Measured and reported: skip the teardown, in which each PubSub sends
            # UNSUBSCRIBE and drains its connection for its unsubscription_timeout.
            os._exit(0)
        group.cancel_scope.cancel()


def ignore(message: Any) -> None:
    """The handler of ``churn`` and ``memory`` subscriptions (they get no messages)."""


def single_pubsub(client: Any, args: Any) -> Any:
    return PubSub(
        client.connection_pool,
        ignore_subscribe_messages=True,
        subscription_timeout=args.timeout,
        unsubscription_timeout=args.timeout,
    )


async def subscribe_names(args: Any, pubsub: Any, names: list[str]) -> None:
    """Returns once Redis has confirmed every name."""
    if args.variant == "callback":
        await pubsub.subscribe(**dict.fromkeys(names, ignore))
    else:
        await pubsub.subscribe(*names)


async def churn(args: Any) -> None:
    names = [f"{args.channel}:{index}" for index in range(args.names)]
    client = coredis.Redis(host=args.host, port=args.port)
    async with client, single_pubsub(client, args) as pubsub:
        start = time.perf_counter()
        await subscribe_names(args, pubsub, names)
        subscribed = len(pubsub.channels)
        await pubsub.unsubscribe(*names)
        seconds = time.perf_counter() - start
        if subscribed != len(names) or pubsub.channels:
            raise SystemExit(
                f"{subscribed} of {len(names)} channels subscribed, "
                f"{len(pubsub.channels)} left after unsubscribing"
            )
        common.emit(names=2 * len(names), seconds=seconds)


async def drain(pubsub: Any) -> None:
    """``memory``, ``iterator``: the idle consumer, which reads (and drops) confirmations."""
    async for _message in pubsub:
        pass


async def drained(pubsub: Any) -> None:
    """Wait until the consumer has read every reply queued on the ``PubSub``'s stream."""
    # coredis signals no such thing: poll the stream's fill.
    while pubsub._receive_stream.statistics().current_buffer_used:  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def memory(args: Any) -> None:
    names = [f"{args.channel}:{index}" for index in range(args.names)]
    client = coredis.Redis(host=args.host, port=args.port)
    async with client, single_pubsub(client, args) as pubsub, anyio.create_task_group() as group:
        await anyio.sleep(0.1)
        common.settle()
        baseline = common.rss_bytes()
        await subscribe_names(args, pubsub, names)
        if args.variant == "iterator":  # (it would end at once with no subscription)
            group.start_soon(drain, pubsub)
            with anyio.fail_after(args.timeout):
                await drained(pubsub)
        common.settle()
        loaded = common.rss_bytes()
        if len(pubsub.channels) != len(names):
            raise SystemExit(f"{len(pubsub.channels)} of {len(names)} channels subscribed")
        common.emit(
            bytes_per_subscription=(loaded - baseline) / len(names),
            subscriptions=len(names),
        )
        os._exit(0)  # skip the teardown's UNSUBSCRIBE of every name


def main() -> None:
    args = common.parse(VARIANTS)
    check_version()
    if args.measure == "churn":
        run = churn
    elif args.measure == "memory":
        run = memory
    else:
        run = consume
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
