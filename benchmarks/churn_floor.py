"""Subscription churn: how close any multiplexer can come to the raw SUBSCRIBE loop.

``benchmarks/peers.py`` compares churn (names subscribed and confirmed, then
unsubscribed and confirmed) with a raw loop that pipelines ``SUBSCRIBE`` commands and
only counts the confirmations. A multiplexer must do more for each name: remember it
(to subscribe it again after a reconnect, and to route its messages) and tell the
subscriber when it is active. This script measures, in one process and one run:

* ``raw``: the peers' raw loop: commands of 1,024 names, all written at once, every
  confirmation parsed and counted; then the same for ``UNSUBSCRIBE``;
* ``floor``: the same loop doing the least a multiplexer must do per name: a ``dict``
  entry when the name is added, an ``on_activation(name)`` call when it is confirmed,
  the entry deleted when the unsubscription is confirmed;
* ``model``: ``_churn_model.ChurnModel`` in the same loop: the least per-name *state* a
  multiplexer keeps (who wants the name, what is confirmed or in flight, what changed
  since the last write; each confirmation checked against the command in flight), for
  this measure's case only and in bulk C operations, so cheaper than any real core;
* ``redismpx``: ``redismpx_anyio.Multiplexer`` on asyncio, as in peers.py: one
  subscription, ``add`` of every name, until ``on_activation`` has fired for each, then
  ``remove`` of all, until a name subscribed after them is confirmed.

Every round measures the three in turn; the ratios are medians of the rounds' ratios.

    PYTHONPATH=src python benchmarks/churn_floor.py [--names N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import hiredis
from _churn_model import ChurnModel
from _redis import HOST, RedisServer

NAMES_PER_COMMAND = 1024  # as redismpx_core.MAX_NAMES_PER_COMMAND
READ_SIZE = 64 * 1024
LABELS = ("raw", "floor", "model", "redismpx")
NOTHING = object()


def packed(command: bytes, names: list[bytes]) -> bytes:
    return b"".join(
        hiredis.pack_command((command, *names[start : start + NAMES_PER_COMMAND]))
        for start in range(0, len(names), NAMES_PER_COMMAND)
    )


async def confirmations(
    stream: anyio.abc.ByteStream,
    reader: hiredis.Reader,
    kind: bytes,
    count: int,
    on_name: Callable[[bytes], None] | None,
) -> None:
    seen = 0
    while seen < count:
        reader.feed(await stream.receive(READ_SIZE))
        while (reply := reader.gets()) is not NOTHING:
            if reply[0] != kind:
                raise SystemExit(f"churn_floor: expected {kind!r}, got {reply!r}")
            if on_name is not None:
                on_name(reply[1])
            seen += 1


async def raw_loop(port: int, names: list[bytes], bookkeeping: bool) -> float:
    held: dict[bytes, bool] = {}
    activated = 0

    def on_activation(name: bytes) -> None:
        nonlocal activated
        activated += 1

    def subscribed(name: bytes) -> None:
        held[name] = True
        on_activation(name)

    def unsubscribed(name: bytes) -> None:
        del held[name]

    async with await anyio.connect_tcp(HOST, port) as stream:
        reader = hiredis.Reader(notEnoughData=NOTHING)
        start = time.perf_counter()
        if bookkeeping:
            held.update(dict.fromkeys(names, False))
        await stream.send(packed(b"SUBSCRIBE", names))
        await confirmations(
            stream, reader, b"subscribe", len(names), subscribed if bookkeeping else None
        )
        await stream.send(packed(b"UNSUBSCRIBE", names))
        await confirmations(
            stream, reader, b"unsubscribe", len(names), unsubscribed if bookkeeping else None
        )
        seconds = time.perf_counter() - start
    if bookkeeping and (held or activated != len(names)):
        raise SystemExit("churn_floor: the floor loop lost count")
    return 2 * len(names) / seconds


async def model_loop(port: int, names: list[bytes]) -> float:
    activated = 0

    def on_activation(name: bytes) -> None:
        nonlocal activated
        activated += 1

    async with await anyio.connect_tcp(HOST, port) as stream:
        model = ChurnModel()
        start = time.perf_counter()
        model.add(names)
        await stream.send(model.data_to_send())
        while activated < len(names):
            for name in model.receive_data(await stream.receive(READ_SIZE)):
                on_activation(name)
        model.remove(names)
        await stream.send(model.data_to_send())
        while not model.settled:
            model.receive_data(await stream.receive(READ_SIZE))
        seconds = time.perf_counter() - start
    return 2 * len(names) / seconds


async def redismpx_churn(port: int, names: list[bytes]) -> float:
    from redismpx_anyio import Multiplexer

    active = 0
    all_active = anyio.Event()

    def on_activation(name: bytes) -> None:
        nonlocal active
        active += 1
        if active == len(names):
            all_active.set()

    async with Multiplexer(f"redis://{HOST}:{port}/0") as mpx:
        await mpx.wait_connected()
        sub = mpx.new_channel_subscription(lambda c, d: None, on_activation=on_activation)
        start = time.perf_counter()
        sub.add(*names)
        await all_active.wait()
        sub.remove(*names)
        async with mpx.subscribe(b"churn-floor:round-trip"):
            seconds = time.perf_counter() - start
            if sub.names or mpx.statistics().active_channels != 1:
                raise SystemExit("churn_floor: names left after the churn")
    return 2 * len(names) / seconds


async def measure(port: int, names: list[bytes], rounds: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {label: [] for label in LABELS}
    for _ in range(rounds):
        rates["raw"].append(await raw_loop(port, names, bookkeeping=False))
        rates["floor"].append(await raw_loop(port, names, bookkeeping=True))
        rates["model"].append(await model_loop(port, names))
        rates["redismpx"].append(await redismpx_churn(port, names))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    names = [f"churn-floor:{index}".encode() for index in range(args.names)]
    with RedisServer() as server:
        rates: Any = anyio.run(measure, server.port, names, args.rounds, backend="asyncio")

    def ratio(top: str, bottom: str) -> float:
        return statistics.median(a / b for a, b in zip(rates[top], rates[bottom], strict=True))

    print(f"churn of {args.names:,} names, {args.rounds} rounds (names/s: medians)")
    for label in LABELS:
        print(f"  {label:9} {statistics.median(rates[label]):>12,.0f} names/s")
    print(f"floor / raw: {ratio('floor', 'raw'):.2f}")
    print(f"model / raw: {ratio('model', 'raw'):.2f}")
    print(f"redismpx / raw: {ratio('redismpx', 'raw'):.2f}")
    print(f"redismpx / floor: {ratio('redismpx', 'floor'):.2f}")


if __name__ == "__main__":
    main()
