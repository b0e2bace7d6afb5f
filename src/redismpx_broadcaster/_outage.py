"""What the adapter tells about an outage: the ``redismpx.broadcaster`` logger and ``Outage``.

Redis Pub/Sub keeps nothing for a subscriber that is not connected, so what an
outage loses cannot be counted: it is every message published to the channels
held, from the moment the connection was lost until Redis confirmed them again.
That window and those channels are what the log line and :class:`Outage` give.
Channel names go to the hook only; the log gives counts, as the ``redismpx``
logger does (names may be personal data).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

__all__ = ("Outage", "OutageTracker", "logger")

logger = logging.getLogger("redismpx.broadcaster")


@dataclass(frozen=True, slots=True)
class Outage:
    """A lost connection, reported once every channel held is confirmed again.

    ``channels`` are those whose messages published between ``lost_at`` and
    ``restored_at`` (``time.time()`` values) never reached this process; ``error``
    is why the connection was lost.
    """

    error: Exception
    channels: frozenset[str]
    lost_at: float
    restored_at: float

    @property
    def duration(self) -> float:
        """Seconds without a subscription to every channel."""
        return self.restored_at - self.lost_at


class OutageTracker:
    """The outage under way, if any: which channels wait to be confirmed again."""

    __slots__ = ("_channels", "_error", "_lost_at", "_waiting")

    def __init__(self) -> None:
        self._error: Exception | None = None
        self._lost_at = 0.0
        self._channels: set[str] = set()
        self._waiting: set[str] = set()

    @property
    def ongoing(self) -> bool:
        return self._error is not None

    def lost(self, error: Exception, held: set[str]) -> None:
        """The connection carrying ``held`` was lost (again, if an outage is under way)."""
        if self._error is None:
            self._lost_at = time.time()
            self._channels = set(held)
            logger.warning(
                "redismpx.broadcaster: lost the connection to Redis (%s: %s); %d channel(s) "
                "will be subscribed again, and messages published to them until then are lost",
                type(error).__name__,
                error,
                len(held),
            )
        self._error = error
        self._waiting = set(held)

    def confirmed(self, channel: str) -> Outage | None:
        """``channel`` is active again; the outage if it was the last one waited for."""
        self._waiting.discard(channel)
        return self._end_if_done()

    def released(self, channel: str) -> Outage | None:
        """``channel`` was unsubscribed: nothing waits for it any more."""
        self._waiting.discard(channel)
        return self._end_if_done()

    def _end_if_done(self) -> Outage | None:
        error = self._error
        if error is None or self._waiting:
            return None
        outage = Outage(error, frozenset(self._channels), self._lost_at, time.time())
        self._error = None
        self._channels = set()
        logger.warning(
            "redismpx.broadcaster: subscribed again to %d channel(s) after %.3f s; messages "
            "published to them in that window were lost",
            len(outage.channels),
            outage.duration,
        )
        return outage
