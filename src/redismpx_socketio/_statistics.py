"""What a manager counts: the figures behind its log lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = ("ManagerStatistics",)


@final
@dataclass(frozen=True, slots=True)
class ManagerStatistics:
    """A snapshot of one manager's counters (``manager.statistics()``).

    Events are what python-socketio puts on the channel: emits, and the room, disconnect
    and callback notices that servers send each other.
    """

    #: Whether the manager's channel is subscribed now (``False`` for a write-only one).
    subscribed: bool
    #: Losses of the connection the channel rides on (each one loses events).
    outages: int
    #: Times the channel was subscribed again after an outage or a move.
    resubscriptions: int
    #: Events taken from Redis and handed to python-socketio.
    events_received: int
    #: Events of other managers of this package that never arrived here, counted from
    #: the gaps in their sequence numbers (published while this server was not
    #: subscribed, dropped here, or never published). Unknowable for other publishers.
    events_missed: int
    #: Events dropped here because this server fell ``buffer_size`` events behind.
    events_dropped: int
    #: Messages on the channel that are not Socket.IO events, ignored.
    events_malformed: int
    #: Events this manager published.
    emits_published: int
    #: Events this manager could not publish (Redis unreachable, timed out, refused).
    emits_failed: int
