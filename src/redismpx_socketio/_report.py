"""Saying what was lost: the manager's log lines and counters.

Redis Pub/Sub delivers to whoever is subscribed at the moment of the publish and keeps
nothing, so every outage of a server's subscription loses the events published in it,
and nothing can bring them back. What this module can do is say so, every time: when
the subscription is lost, when it is back and for how long it was away, how many events
of this package's publishers did not arrive (from their sequence numbers), how many
this server dropped because it fell behind, and how many of its own emits did not
reach Redis.

Lines that can come in floods (gaps in a publisher's numbers, drops, malformed messages)
are written at most once per :data:`REPEAT_SECONDS`, with the running total; every other
line is written once per occurrence, so an outage gives exactly one "lost" and one
"back" line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, final

from ._statistics import ManagerStatistics

__all__ = ("DEFAULT_LOGGER", "REPEAT_SECONDS", "Report")

#: The logger a manager writes to when none is given.
DEFAULT_LOGGER: Final = "redismpx_socketio"

#: Seconds between two lines about drops, or about malformed messages.
REPEAT_SECONDS: Final = 5.0


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "no reason given"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@final
class Report:
    """One manager's counters, and the lines that tell its log about them.

    Every method runs in the manager's event loop; :meth:`statistics` may be read from
    anywhere.
    """

    def __init__(
        self,
        logger: logging.Logger,
        channel: str,
        buffer: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._clock = clock
        self._channel = channel
        self._buffer = buffer
        self.subscribed = False
        self._ever_subscribed = False
        self._down_since: float | None = None
        self._publishing_down = False
        self._failed_in_streak = 0
        self._last_missed_line = -REPEAT_SECONDS
        self._missed_unlogged = 0
        self._last_drop_line = -REPEAT_SECONDS
        self._last_malformed_line = -REPEAT_SECONDS
        self.outages = 0
        self.resubscriptions = 0
        self.events_received = 0
        self.events_missed = 0
        self.events_dropped = 0
        self.events_malformed = 0
        self.emits_published = 0
        self.emits_failed = 0

    def statistics(self) -> ManagerStatistics:
        return ManagerStatistics(
            subscribed=self.subscribed,
            outages=self.outages,
            resubscriptions=self.resubscriptions,
            events_received=self.events_received,
            events_missed=self.events_missed,
            events_dropped=self.events_dropped,
            events_malformed=self.events_malformed,
            emits_published=self.emits_published,
            emits_failed=self.emits_failed,
        )

    # ---- the subscription (the multiplexer's callbacks)

    def lost(self, error: Exception) -> None:
        """``on_disconnect``: once per outage, however many attempts fail in it."""
        self.outages += 1
        self.subscribed = False
        if self._down_since is None:
            self._down_since = self._clock()
        self._log.warning(
            "lost the subscription to channel %r (%s): events published by other "
            "servers until it is back do not reach this server's clients, and Redis "
            "Pub/Sub keeps none of them to catch up",
            self._channel,
            _describe(error),
        )

    def activated(self, name: bytes) -> None:
        """``on_activation``: the first subscription, and each one after a loss or a move."""
        self.subscribed = True
        if not self._ever_subscribed:
            self._ever_subscribed = True
            self._down_since = None
            self._log.info("subscribed to channel %r", self._channel)
            return
        self.resubscriptions += 1
        down_since, self._down_since = self._down_since, None
        if down_since is None:
            # No loss of connection: the server gave the name up itself (a cluster slot
            # moved, or a failover) and it was subscribed again where it lives now.
            self._log.warning(
                "channel %r moved and is subscribed again: events published during "
                "the move were lost (Redis Pub/Sub does not replay them)",
                self._channel,
            )
            return
        self._log.warning(
            "subscribed to channel %r again after %.2f s without it: events that other "
            "servers published in that time were lost (Redis Pub/Sub does not replay "
            "them); those of redismpx managers are counted as their next events arrive",
            self._channel,
            self._clock() - down_since,
        )

    # ---- what arrives

    def missed(self, publisher: str, first: int, last: int) -> None:
        count = last - first + 1
        self.events_missed += count
        now = self._clock()
        if now - self._last_missed_line < REPEAT_SECONDS:
            # A buffer that overflows leaves a gap per drop: one line per gap would
            # flood the log, so the next line carries these in its total.
            self._missed_unlogged += count
            return
        self._last_missed_line = now
        earlier, self._missed_unlogged = self._missed_unlogged, 0
        self._log.warning(
            "missed %d event(s) of the server with host_id %s (its numbers %d to %d): "
            "published while this server was not subscribed, dropped here, or never "
            "published%s",
            count,
            publisher,
            first,
            last,
            f"; and {earlier} more in gaps since the last such line" if earlier else "",
        )

    def dropped(self, count: int) -> None:
        self.events_dropped += count
        now = self._clock()
        if now - self._last_drop_line < REPEAT_SECONDS:
            return
        self._last_drop_line = now
        self._log.warning(
            "this server fell behind the events on channel %r: its buffer (%s) was "
            "full, %d event(s) dropped so far",
            self._channel,
            self._buffer,
            self.events_dropped,
        )

    def malformed(self, why: str) -> None:
        self.events_malformed += 1
        now = self._clock()
        if now - self._last_malformed_line < REPEAT_SECONDS:
            return
        self._last_malformed_line = now
        self._log.warning(
            "ignored a message on channel %r that is not a Socket.IO event (%s); "
            "%d such message(s) so far",
            self._channel,
            why,
            self.events_malformed,
        )

    # ---- what this server publishes

    @property
    def publishing_down(self) -> bool:
        """A publish failed and none has succeeded since."""
        return self._publishing_down

    def published(self) -> None:
        self.emits_published += 1
        if self._publishing_down:
            self._publishing_down = False
            failed, self._failed_in_streak = self._failed_in_streak, 0
            self._log.warning(
                "publishing on channel %r works again: %d event(s) of this server did "
                "not reach Redis meanwhile, and no other server got them",
                self._channel,
                failed,
            )

    def publish_failed(self, error: BaseException | None) -> None:
        """One event of this server did not reach Redis (``error`` is ``None`` when it
        was not even tried, during an outage that a publish already waited out)."""
        self.emits_failed += 1
        self._failed_in_streak += 1
        if self._publishing_down:
            return
        self._publishing_down = True
        self._log.warning(
            "an event of this server did not reach Redis (%s): no other server gets "
            "it; the next failures are counted until publishing works again",
            _describe(error),
        )
