"""What the layer counts and says about what it loses.

Pub/Sub loses messages in three places, and the stock layer is silent about all
three: while a connection is down (Redis keeps no backlog), in a full channel buffer,
and when a message waits unread past its expiry. Each loss is counted
(:class:`LayerStatistics`) and said on the ``redismpx_channels`` logger; losses
that come by the thousand (a slow consumer's drops) are summed over a second per
log line rather than logged one by one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

__all__ = ("Counters", "LayerStatistics", "LossLog", "logger")

logger = logging.getLogger("redismpx_channels")

#: Seconds between two log lines of one kind of loss.
LOG_INTERVAL = 1.0
#: Channel names a summed log line names, at most.
NAMES_SHOWN = 3


@dataclass(frozen=True, slots=True)
class LayerStatistics:
    """Counters of one layer, summed over its event loops (``layer.statistics()``)."""

    #: Event loops with a multiplexer of this layer now.
    event_loops: int
    #: Channels with a buffer in this process now, and groups they belong to.
    channels: int
    groups: int
    #: Connection losses (one per outage, however many channels it touched) and their
    #: total length in seconds, until every channel was subscribed again.
    outages: int
    outage_seconds: float
    #: Channels that an outage cut off (a channel counts once per outage).
    channels_interrupted: int
    #: Messages lost to full channel buffers (the overflow policy).
    messages_dropped: int
    #: Messages that waited unread past ``expiry``.
    messages_expired: int
    #: Messages from Redis that were not a msgpack-encoded dict, skipped.
    messages_undecodable: int
    #: ``send``/``group_send`` calls that Redis delivered to no subscriber.
    sends_unreceived: int


@dataclass(slots=True)
class Counters:
    """The mutable counters of one event loop's layer."""

    outages: int = 0
    outage_seconds: float = 0.0
    channels_interrupted: int = 0
    messages_dropped: int = 0
    messages_expired: int = 0
    messages_undecodable: int = 0
    sends_unreceived: int = 0

    def add(self, other: Counters) -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


class LossLog:
    """One kind of loss, logged at most once per :data:`LOG_INTERVAL` with the sum."""

    __slots__ = ("_count", "_last", "_names", "_text")

    def __init__(self, text: str) -> None:
        # text has two %s: the count, and the channels it concerns
        self._text = text
        self._count = 0
        self._names: list[str] = []
        self._last = float("-inf")

    def add(self, name: str, count: int, now: float) -> None:
        self._count += count
        if len(self._names) < NAMES_SHOWN and name not in self._names:
            self._names.append(name)
        if now - self._last >= LOG_INTERVAL:
            self.flush(now)

    def flush(self, now: float) -> None:
        if not self._count:
            return
        names = ", ".join(self._names)
        logger.warning(self._text, self._count, names)
        self._count = 0
        self._names.clear()
        self._last = now
