"""Reconnect backoff: exponential growth, full jitter, no attempt limit.

A pure policy: the caller injects the random source and counts the attempts
by calling :meth:`Backoff.next_delay` once per failed attempt, whatever the cause
(refused, reset, rejected password...). Full jitter keeps a crowd of clients
from reconnecting in lockstep after a shared outage, and the cap bounds the
rate of attempts a failing server sees from above and below: on average one
per ``cap / 2`` seconds once the delay has grown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ._seconds import check_seconds

__all__ = ("Backoff",)


@dataclass(slots=True)
class Backoff:
    """``delay(n) = random() * min(cap, base * 2**n)`` for the n-th attempt in a row."""

    base: float = 0.1
    cap: float = 10.0
    random: Callable[[], float] = field(default=lambda: 0.5, repr=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        self.base = check_seconds("backoff_base", self.base)
        self.cap = check_seconds("backoff_cap", self.cap)
        if self.cap < self.base:
            raise ValueError(f"backoff cap ({self.cap}) must be >= backoff base ({self.base})")

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; counts one more attempt."""
        # Cap the exponent too, so that a long outage cannot overflow the float.
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempts, 64))
        self.attempts += 1
        return self.random() * ceiling

    def reset(self) -> None:
        """Forget past failures: the connection proved itself."""
        self.attempts = 0
