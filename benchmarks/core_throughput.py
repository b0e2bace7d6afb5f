"""Core throughput: events per second from MultiplexerCore.receive_data against a bare hiredis loop.

Feeds 200,000 pre-encoded RESP2 ``message`` frames (64-byte payloads) in 64 KiB
chunks, to the core (one subscription, then 1,000 on the same channel) and, in
the same run, to a bare ``hiredis.Reader`` loop. Prints messages per second
(median of 5 rounds each) and, last, ``core/hiredis ratio: X``.

    python benchmarks/core_throughput.py [--messages N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time

import hiredis

from redismpx_core import MessagesReceived, MultiplexerCore, SubscriptionKind

CHANNEL = b"bench"
CHUNK = 64 * 1024


def make_chunks(messages: int) -> list[bytes]:
    frame = hiredis.pack_command((b"message", CHANNEL, b"x" * 64))
    stream = frame * messages
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


def bare_hiredis(chunks: list[bytes]) -> int:
    """The baseline: each 64 KiB chunk fed whole, then every frame taken out."""
    sentinel = object()
    reader = hiredis.Reader(notEnoughData=sentinel)
    count = 0
    for chunk in chunks:
        reader.feed(chunk)
        while reader.gets() is not sentinel:
            count += 1
    return count


def sliced_hiredis(chunks: list[bytes]) -> int:
    """The same, fed in 8 KiB slices as the core does (hiredis moves its unparsed rest
    to the front every 1 KiB consumed, so smaller feeds copy less); printed so that
    the part of the ratio owed to slicing is visible."""
    sentinel = object()
    reader = hiredis.Reader(notEnoughData=sentinel)
    count = 0
    for chunk in chunks:
        for start in range(0, len(chunk), 8192):
            reader.feed(chunk, start, min(8192, len(chunk) - start))
            while reader.gets() is not sentinel:
                count += 1
    return count


def ready_core(subscriptions: int) -> MultiplexerCore:
    core = MultiplexerCore(random=lambda: 0.5, health_check_interval=None)
    for i in range(subscriptions):
        sub = core.open_subscription(SubscriptionKind.CHANNEL, owner=i)
        core.add(sub, [CHANNEL])
    core.connection_made(0.0)
    core.data_to_send()
    # The handshake (a lone PING), then the confirmation of the subscription.
    confirm = b"+PONG\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n"
    core.receive_data(confirm, 0.0)
    return core


def core_run(chunks: list[bytes], subscriptions: int) -> int:
    core = ready_core(subscriptions)
    count = 0
    receive = core.receive_data
    for chunk in chunks:
        for event in receive(chunk, 1.0):
            if event.__class__ is MessagesReceived:
                count += len(event.payloads)
    return count


def rate(fn, chunks: list[bytes], expected: int, rounds: int, *args: object) -> float:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        got = fn(chunks, *args)
        elapsed = time.perf_counter() - start
        if got != expected:
            raise SystemExit(f"{fn.__name__} delivered {got} of {expected} messages")
        rates.append(expected / elapsed)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    chunks = make_chunks(args.messages)
    rate(bare_hiredis, chunks, args.messages, 1)  # warm-up
    bare = rate(bare_hiredis, chunks, args.messages, args.rounds)
    sliced = rate(sliced_hiredis, chunks, args.messages, args.rounds)
    one = rate(core_run, chunks, args.messages, args.rounds, 1)
    many = rate(core_run, chunks, args.messages, args.rounds, 1000)
    print(f"bare hiredis:               {bare:12,.0f} msg/s")
    print(f"bare hiredis, 8 KiB feeds:  {sliced:12,.0f} msg/s ({sliced / bare:.2f} of bare)")
    print(f"core, 1 subscription:       {one:12,.0f} msg/s")
    print(f"core, 1,000 subscriptions:  {many:12,.0f} msg/s ({many / one:.2f} of 1 subscription)")
    print(f"core/sliced hiredis ratio: {one / sliced:.2f}")
    print(f"core/hiredis ratio: {one / bare:.2f}")


if __name__ == "__main__":
    main()
