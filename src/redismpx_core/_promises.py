"""Promise timers: every pending promise settles once, by a message, its deadline, or a failure.

Deadlines sit in a heap. A promise settled early (fulfilled or failed) leaves its
entry behind rather than paying for a removal from the middle of the heap; the
entry lets go of the owner at once, and dead entries are swept out once they are
the majority, so that promises with long timeouts cannot pin every promise
settled since.
"""

from __future__ import annotations

import heapq
from typing import Final, Generic

from ._errors import RedisMPXError
from ._events import Event, P, PromiseExpired, PromiseFailed, PromiseFulfilled, S
from ._handles import PromiseHandle, SubscriptionHandle

__all__ = ("PromiseTimers",)

#: Dead entries tolerated before a sweep is considered.
_SWEEP_AFTER: Final = 64


class PromiseTimers(Generic[S, P]):
    __slots__ = ("_dead", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, PromiseHandle[S, P]]] = []
        # Heap entries of promises settled before their deadline.
        self._dead = 0
        self._seq = 0

    @property
    def entries(self) -> int:
        """Heap entries, settled ones waiting to be swept included."""
        return len(self._heap)

    def pending(self) -> int:
        return sum(1 for _, _, p in self._heap if not p.settled)

    def add(
        self, sub: SubscriptionHandle[S, P], channel: bytes, deadline: float, owner: P
    ) -> PromiseHandle[S, P]:
        promise = PromiseHandle(sub, channel, deadline, owner)
        if sub.promises is None:
            sub.promises = {}
        sub.promises.setdefault(channel, []).append(promise)
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, promise))
        return promise

    def fulfil(
        self,
        promises: dict[bytes, list[PromiseHandle[S, P]]],
        channel: bytes,
        data: bytes,
        events: list[Event[S, P]],
    ) -> None:
        """A message on ``channel`` settles every promise pending on it."""
        for promise in promises.pop(channel, ()):
            events.append(PromiseFulfilled(promise.owner, data))
            self._settled_early(promise)

    def fail(self, sub: SubscriptionHandle[S, P], error: RedisMPXError) -> list[Event[S, P]]:
        """Every promise pending on ``sub`` fails with ``error``."""
        events: list[Event[S, P]] = []
        if sub.promises:
            for promises in sub.promises.values():
                for promise in promises:
                    events.append(PromiseFailed(promise.owner, error))
                    self._settled_early(promise)
            sub.promises.clear()
        return events

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].settled:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def expire(self, now: float, events: list[Event[S, P]]) -> None:
        """Every promise whose deadline is ``now`` or past expires."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, promise = heapq.heappop(heap)
            if promise.settled:
                self._dead -= 1
                continue
            promises = promise.subscription.promises
            if promises is not None and promise.channel in promises:
                pending = promises[promise.channel]
                pending.remove(promise)
                if not pending:
                    del promises[promise.channel]
            events.append(PromiseExpired(promise.owner))
            promise.settle()

    def clear(self) -> None:
        self._heap.clear()
        self._dead = 0

    def _settled_early(self, promise: PromiseHandle[S, P]) -> None:
        promise.settle()
        self._dead += 1
        heap = self._heap
        if self._dead > _SWEEP_AFTER and self._dead * 2 > len(heap):
            heap[:] = [entry for entry in heap if not entry[2].settled]
            heapq.heapify(heap)
            self._dead = 0
