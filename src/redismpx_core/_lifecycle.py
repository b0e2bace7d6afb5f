"""The connection's life: its states and transitions as one table, and the timers they run.

Theory of operation
===================

A core outlives its connections. Each connection goes through the same life, in
one :class:`ConnectionState` at a time:

    DISCONNECTED  no connection: before the first, between two, after a failed attempt
    HANDSHAKING   connected; the handshake is sent, its replies are not all in
    READY         the handshake completed; wanted names are being (re)subscribed
    BROKEN        an input raised: the connection is unusable, the driver must close
                  it and report connection_lost()
    CLOSED        close() was called; final

The driver's calls move it (:class:`ConnectionInput`), and :data:`TRANSITIONS`
lists every (state, input) pair there is, with the state it leads to. Any other
pair is the driver misusing the core (``connection_made()`` twice, say): it raises
:class:`RuntimeError`, a bug to fix rather than a condition to handle. A report of
a loss is accepted in every state: after a failed attempt (DISCONNECTED), and after
close (CLOSED, where it changes nothing), because a driver learns of both late.

Only a :data:`LIVE` connection (HANDSHAKING or READY) takes input, carries
commands, and runs its timers:

* the handshake deadline: a server that accepts and never answers (frozen, or
  refusing us with "max number of clients" too slowly) fails the attempt after
  ``connect_timeout``;
* the health check: after ``health_check_interval`` seconds with no byte received
  a PING goes out; no byte within ``health_check_timeout`` of it is a
  :class:`HealthCheckTimeout`;
* the stability timer: the backoff forgets past failures only once a connection
  has stayed READY for a full ``backoff_cap``, so that a server that accepts and
  drops at once still sees the capped rate of attempts.

A connection counts as made at CONNECTION_MADE and as lost when it is reported
lost after that (a failed attempt from DISCONNECTED is no connection lost).
"""

from __future__ import annotations

from typing import Final

from ._backoff import Backoff
from ._errors import ConnectionLost, HealthCheckTimeout
from ._state import IdentityEnum

__all__ = ("LIVE", "TRANSITIONS", "ConnectionInput", "ConnectionState", "Lifecycle")


class ConnectionState(IdentityEnum):
    DISCONNECTED = "disconnected"
    HANDSHAKING = "handshaking"
    READY = "ready"
    BROKEN = "broken"  # an input raised; waiting for connection_lost()
    CLOSED = "closed"


class ConnectionInput(IdentityEnum):
    CONNECTION_MADE = "connection_made()"
    HANDSHAKE_COMPLETED = "the handshake's last reply"
    INPUT_FAILED = "an input that raised"
    CONNECTION_LOST = "connection_lost()"
    CLOSE = "close()"


DISCONNECTED: Final = ConnectionState.DISCONNECTED
HANDSHAKING: Final = ConnectionState.HANDSHAKING
READY: Final = ConnectionState.READY
BROKEN: Final = ConnectionState.BROKEN
CLOSED: Final = ConnectionState.CLOSED

_MADE: Final = ConnectionInput.CONNECTION_MADE
_COMPLETED: Final = ConnectionInput.HANDSHAKE_COMPLETED
_FAILED: Final = ConnectionInput.INPUT_FAILED
_LOST: Final = ConnectionInput.CONNECTION_LOST
_CLOSE: Final = ConnectionInput.CLOSE

#: (state, input) -> next state. A pair not listed is a misuse: RuntimeError.
TRANSITIONS: Final[dict[tuple[ConnectionState, ConnectionInput], ConnectionState]] = {
    (DISCONNECTED, _MADE): HANDSHAKING,
    (HANDSHAKING, _COMPLETED): READY,
    (HANDSHAKING, _FAILED): BROKEN,
    (READY, _FAILED): BROKEN,
    (DISCONNECTED, _LOST): DISCONNECTED,
    (HANDSHAKING, _LOST): DISCONNECTED,
    (READY, _LOST): DISCONNECTED,
    (BROKEN, _LOST): DISCONNECTED,
    (CLOSED, _LOST): CLOSED,
    (DISCONNECTED, _CLOSE): CLOSED,
    (HANDSHAKING, _CLOSE): CLOSED,
    (READY, _CLOSE): CLOSED,
    (BROKEN, _CLOSE): CLOSED,
    (CLOSED, _CLOSE): CLOSED,
}

#: States with a connection in step with us: it takes input, carries commands, runs timers.
LIVE: Final = frozenset({HANDSHAKING, READY})

#: The health check's command, pre-encoded.
PING: Final = b"*1\r\n$4\r\nPING\r\n"


class Lifecycle:
    """One core's connection state, its timers (absolute times in the driver's clock),
    the reconnect backoff and the connection counters."""

    __slots__ = (
        "backoff",
        "connect_timeout",
        "connections_lost",
        "connections_made",
        "handshake_deadline",
        "handshake_pending",
        "health_check_interval",
        "health_check_timeout",
        "last_received",
        "ping_sent_at",
        "stable_at",
        "state",
    )

    def __init__(
        self,
        *,
        backoff: Backoff,
        health_check_interval: float | None,
        health_check_timeout: float,
        connect_timeout: float | None,
    ) -> None:
        self.state = DISCONNECTED
        self.backoff = backoff
        self.health_check_interval = health_check_interval
        self.health_check_timeout = health_check_timeout
        self.connect_timeout = connect_timeout
        self.handshake_pending = 0
        self.last_received = 0.0
        self.ping_sent_at: float | None = None
        self.handshake_deadline: float | None = None
        self.stable_at: float | None = None
        self.connections_made = 0
        self.connections_lost = 0

    def _process(self, event: ConnectionInput) -> None:
        state = TRANSITIONS.get((self.state, event))
        if state is None:
            raise RuntimeError(f"{event.value} while {self.state.value}: a misuse by the driver")
        self.state = state

    def check_live(self, call: str) -> None:
        """Input only reaches a live connection: anything else is the driver's mistake."""
        if self.state not in LIVE:
            raise RuntimeError(f"{call} while {self.state.value}")

    # ------------------------------------------------------------------ transitions

    def connection_made(self, now: float, replies_due: int) -> None:
        """A connection is open and its handshake (``replies_due`` replies) is sent."""
        self._process(_MADE)
        self.connections_made += 1
        self.handshake_pending = replies_due
        self.last_received = now
        self.ping_sent_at = None
        self.stable_at = None
        timeout = self.connect_timeout
        self.handshake_deadline = None if timeout is None else now + timeout

    def handshake_reply(self, now: float) -> bool:
        """One handshake reply arrived; true if it was the last (the connection is READY)."""
        self.handshake_pending -= 1
        if self.handshake_pending:
            return False
        self._process(_COMPLETED)
        self.handshake_deadline = None
        self.stable_at = now + self.backoff.cap
        return True

    def input_failed(self) -> None:
        self._process(_FAILED)

    def connection_lost(self) -> bool:
        """The connection is gone (or never came up); false if the core is closed."""
        before = self.state
        self._process(_LOST)
        if before is CLOSED:
            return False
        if before is not DISCONNECTED:
            self.connections_lost += 1
        self.handshake_pending = 0
        self.ping_sent_at = None
        self.handshake_deadline = None
        self.stable_at = None
        return True

    def close(self) -> bool:
        """Closed for good; false if it already was."""
        before = self.state
        self._process(_CLOSE)
        return before is not CLOSED

    # ------------------------------------------------------------------ timers

    def data_received(self, now: float) -> None:
        """Any byte proves the server alive: the health check starts over."""
        self.last_received = now
        self.ping_sent_at = None

    def next_deadline(self) -> float | None:
        """The earliest of the connection's timers, or ``None``."""
        if self.state not in LIVE:
            return None
        candidates: list[float] = []
        if self.handshake_deadline is not None:
            candidates.append(self.handshake_deadline)
        if self.stable_at is not None:
            candidates.append(self.stable_at)
        if self.ping_sent_at is not None:
            candidates.append(self.ping_sent_at + self.health_check_timeout)
        elif self.health_check_interval is not None:
            candidates.append(self.last_received + self.health_check_interval)
        return min(candidates) if candidates else None

    def handle_timeout(self, now: float) -> bool:
        """Run the timers due at ``now``; true if a health-check PING must go out now.

        Raises :class:`ConnectionLost` for a handshake past ``connect_timeout`` and
        :class:`HealthCheckTimeout` for a PING unanswered past its timeout.
        """
        if self.state not in LIVE:
            return False
        if self.handshake_deadline is not None and now >= self.handshake_deadline:
            raise ConnectionLost("the handshake did not complete within connect_timeout")
        if self.stable_at is not None and now >= self.stable_at:
            self.stable_at = None
            self.backoff.reset()
        if self.ping_sent_at is not None:
            if now >= self.ping_sent_at + self.health_check_timeout:
                raise HealthCheckTimeout(
                    f"no reply to PING within {self.health_check_timeout:g} s"
                )
            return False
        interval = self.health_check_interval
        if interval is not None and now >= self.last_received + interval:
            self.ping_sent_at = now
            return True
        return False
