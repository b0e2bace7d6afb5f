"""``statistics()``: a frozen snapshot of a multiplexer's counters, the same for every driver."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("Statistics",)


@dataclass(frozen=True, slots=True)
class Statistics:
    """Counters of one multiplexer at one moment (see docs/statistics.md)."""

    #: The subscription connection has completed its handshake and is up.
    connected: bool
    #: Connections opened (handshake started) since the multiplexer started.
    connections_made: int
    #: Connections lost after being opened.
    connections_lost: int
    #: Failed connection attempts in a row right now (0 once a connection is stable).
    reconnect_attempts: int
    #: Open subscriptions of every kind.
    subscriptions: int
    #: Distinct names Redis has confirmed on the current connection, per name space.
    active_channels: int
    active_patterns: int
    active_shard_channels: int
    #: Messages received for at least one subscription.
    messages_received: int
    #: Messages handed to a callback or an iterator (one per subscription per message).
    messages_delivered: int
    #: Messages lost to full subscription buffers (overflow policies).
    messages_dropped: int
    #: Promises created and not yet settled.
    promises_pending: int
