"""Counting the events a server missed, from the sequence numbers the publishers stamp.

Redis Pub/Sub keeps nothing for a subscriber that is away, so what was published while
a server was not subscribed cannot be replayed; but it can be counted. Every event a
manager of this package publishes carries its own running number (under
:data:`SEQUENCE_KEY`, beside python-socketio's ``host_id``), and a receiving manager that
sees the numbers of one publisher jump knows how many of its events it did not get.

Only publishers of this package stamp their events: events of stock managers and of
other emitters carry no number, and their losses cannot be counted.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, final

__all__ = ("SEQUENCE_KEY", "Gap", "SequenceTracker")

#: The key of the sequence number in a published event. python-socketio's handlers read
#: the keys they know and ignore the others, so stock managers accept stamped events.
SEQUENCE_KEY: Final = "redismpx_seq"

#: Publishers remembered at once: each restart of a server is a new publisher (a new
#: ``host_id``), so the oldest are forgotten rather than kept forever.
DEFAULT_PUBLISHERS = 1024

#: (first missed, last missed) sequence numbers of one publisher.
Gap = tuple[int, int]


@final
class SequenceTracker:
    """The highest sequence number seen from each of the last ``limit`` publishers."""

    __slots__ = ("_highest", "_limit")

    def __init__(self, limit: int = DEFAULT_PUBLISHERS) -> None:
        self._highest: OrderedDict[str, int] = OrderedDict()
        self._limit = limit

    def observe(self, publisher: str, number: int) -> Gap | None:
        """Record ``number`` from ``publisher``; the numbers skipped since its last one.

        The first number of a publisher only sets where it stands. A number at or below
        the highest seen (an event overtaken on its way) is no gap and changes nothing.
        """
        highest = self._highest
        last = highest.get(publisher)
        if last is None:
            highest[publisher] = number
            if len(highest) > self._limit:
                highest.popitem(last=False)
            return None
        highest.move_to_end(publisher)
        if number <= last:
            return None
        highest[publisher] = number
        if number == last + 1:
            return None
        return (last + 1, number - 1)
