"""Byte fixtures for the core's unit tests, and replay at every split point.

``arr``/``push``/``bulk``... encode RESP by hand so that a fixture reads like the
wire; ``replay_split`` feeds the same bytes whole, one byte at a time, and split at
every boundary, and checks that the events are the same each time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redismpx_core import Event, MessagesReceived, MultiplexerCore, NamesActivated


def bulk(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


def _item(value: Any) -> bytes:
    if isinstance(value, int):
        return b":%d\r\n" % value
    return bulk(value)


def arr(*items: Any) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(_item(i) for i in items)


def push(*items: Any) -> bytes:
    return b">%d\r\n" % len(items) + b"".join(_item(i) for i in items)


def frame(protocol: int, *items: Any) -> bytes:
    """A Pub/Sub frame as the server sends it: an array under RESP2, a push under RESP3."""
    return push(*items) if protocol == 3 else arr(*items)


def flatten(events: list[Event]) -> list[tuple[Any, ...]]:
    """Events as comparable tuples, one per message and per activation (runs are an
    encoding detail)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, MessagesReceived):
            for payload in event.payloads:
                out.append(("message", event.subscribers, event.channel, event.pattern, payload))
        elif isinstance(event, NamesActivated):  # one per name: batches are a detail too
            for name in event.names:
                out.append(("activated", repr(event.subscriber), repr(name)))
        else:
            out.append((type(event).__name__, *(repr(v) for v in _fields(event))))
    return out


def _fields(event: Event) -> list[Any]:
    return [getattr(event, name) for name in type(event).__slots__]  # type: ignore[attr-defined]


def feed(core: MultiplexerCore, data: bytes, now: float = 0.0) -> list[Event]:
    return core.receive_data(data, now)


def replay_split(
    make_core: Callable[[], MultiplexerCore], data: bytes, now: float = 0.0
) -> list[tuple[Any, ...]]:
    """Feed ``data`` whole, byte by byte, and split at every point; return the events.

    ``make_core`` must return a fresh core in the same state each time. Asserts the
    three ways give the same (flattened) events and the same outbound bytes.
    """
    whole_core = make_core()
    whole = flatten(whole_core.receive_data(data, now))
    whole_out = whole_core.data_to_send()

    byte_core = make_core()
    one_by_one: list[Event] = []
    for i in range(len(data)):
        one_by_one += byte_core.receive_data(data[i : i + 1], now)
    assert flatten(one_by_one) == whole, "byte-at-a-time replay differs"
    assert byte_core.data_to_send() == whole_out

    for cut in range(1, len(data)):
        split_core = make_core()
        events = split_core.receive_data(data[:cut], now)
        events += split_core.receive_data(data[cut:], now)
        assert flatten(events) == whole, f"split at byte {cut} differs"
        assert split_core.data_to_send() == whole_out
    return whole
