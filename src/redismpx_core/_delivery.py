"""Per-subscription delivery buffers: bounded, with an overflow policy, filtered at hand-off.

A subscription whose consumer is slow (an async callback, an iterator) must hold
back only itself (SPEC 3.6). The driver's reader appends every run of messages to
the subscription's :class:`DeliveryQueue` without waiting, and the subscription's
own consumer drains it. A run's :class:`Message` objects are built once, by
:func:`messages_of`, and shared by every queue it goes to: in a fan-out to a
thousand iterators, building a message per subscriber was most of the cost, and
most of the memory. The queue is pure (no I/O, no waiting); both drivers wrap
it with their own wake-up primitive, so the policy cannot drift between them.

Notices (activation, disconnect) travel in the same queue so that a consumer sees
them in order with the messages (messages already received come before the
disconnect notice), but they never count against the bound and are never dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container
from dataclasses import dataclass
from functools import partial
from itertools import islice, repeat
from typing import Any, Final, NamedTuple

from ._errors import SubscriptionOverflow
from ._settings import OverflowPolicy

__all__ = ("DeliveryQueue", "Message", "Notice", "messages_of")


class Message(NamedTuple):
    """One Pub/Sub message as an iterator hands it out: ``msg.channel``, ``msg.data``,
    ``msg.pattern`` (``None`` for channels). An immutable named tuple, because it is built
    once per message on the hot path."""

    channel: bytes
    data: bytes
    pattern: bytes | None = None


#: A Message from a (channel, data, pattern) tuple, in C: no Python frame per message.
#: (A frozen dataclass cost about 515 ns per message to build, more than the rest of
#: the iterator's path; see docs/benchmarks.md.)
_make_message = partial(tuple.__new__, Message)


def messages_of(channel: bytes, pattern: bytes | None, payloads: list[bytes]) -> list[Message]:
    """One run of messages (a channel's, or a pattern's) as Message objects, in order."""
    return list(map(_make_message, zip(repeat(channel), payloads, repeat(pattern))))


@dataclass(frozen=True, slots=True)
class Notice:
    """A non-message item for the consumer: ``kind`` is ``"activated"`` or ``"disconnected"``."""

    kind: str
    value: Any


_DROP_OLDEST: Final = OverflowPolicy.DROP_OLDEST
_DROP_NEWEST: Final = OverflowPolicy.DROP_NEWEST

#: Items in the queue: messages and notices, in the order they happened.
Item = Message | Notice


class DeliveryQueue:
    """A bounded FIFO of messages (and unbounded notices) for one subscription.

    ``push`` never waits: past ``bound`` messages it applies the policy. ``dropped``
    counts the messages lost to it. Under ``close`` the first overflow sets
    ``overflowed`` and the queue refuses everything after; the driver then closes the
    subscription with a :class:`SubscriptionOverflow`.
    """

    __slots__ = ("_items", "_notices", "bound", "dropped", "overflowed", "policy")

    def __init__(self, bound: int, policy: OverflowPolicy | str) -> None:
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
            raise ValueError(f"buffer_size must be a positive int, got {bound!r}")
        self.bound = bound
        self.policy = OverflowPolicy(policy)
        self._items: deque[Item] = deque()
        # Notices are counted rather than messages, so that a consumer taking a
        # message (the hot path) has no count to update.
        self._notices = 0
        self.dropped = 0
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def messages(self) -> int:
        """Messages waiting (notices not counted)."""
        return len(self._items) - self._notices

    def push(self, messages: list[Message]) -> bool:
        """Append a run of messages; returns False if the queue overflowed under ``close``.

        ``messages`` may be shared with other queues: it is read, never changed.
        """
        count = len(messages)
        if self.overflowed:
            self.dropped += count
            return False
        held = len(self._items) - self._notices
        room = self.bound - held
        if count <= room:
            self._items.extend(messages)
            return True
        if self.policy is _DROP_NEWEST:
            self._items.extend(islice(messages, room))
            self.dropped += count - room
            return True
        if self.policy is _DROP_OLDEST:
            excess = count - room
            if excess >= held:  # every buffered message goes, and some of the run
                self.dropped += excess
                self._drop_all_messages()
                messages = messages[excess - held :]
            else:
                self._drop_oldest(excess)
            self._items.extend(messages)
            return True
        self.overflowed = True
        self.dropped += count
        return False

    def discard_messages(self) -> None:
        """Drop every buffered message (counted as dropped), keep the notices."""
        self.dropped += len(self._items) - self._notices
        self._drop_all_messages()

    def push_notice(self, notice: Notice) -> None:
        self._items.append(notice)
        self._notices += 1

    def _drop_oldest(self, count: int) -> None:
        items = self._items
        kept: list[Item] = []
        while count:
            item = items.popleft()
            if item.__class__ is Notice:
                kept.append(item)
            else:
                count -= 1
                self.dropped += 1
        items.extendleft(reversed(kept))

    def _drop_all_messages(self) -> None:
        notices = [item for item in self._items if item.__class__ is Notice]
        self._items.clear()
        self._items.extend(notices)

    def take(self, held: Container[bytes]) -> list[Item]:
        """Everything queued, in order, minus messages of names no longer in ``held``.

        The check at hand-off is what makes ``remove(name)`` final even for messages
        that were already buffered when it was called.
        """
        items = list(self._items)
        self._items.clear()
        self._notices = 0
        return [
            item
            for item in items
            if item.__class__ is Notice
            or (item[2] if item[2] is not None else item[0]) in held  # type: ignore[index]
        ]

    def take_one(self, held: Container[bytes]) -> Item | None:
        """The oldest item still wanted, or None if there is none (for iterators)."""
        items = self._items
        while items:
            item = items.popleft()
            if item.__class__ is Notice:
                self._notices -= 1
                return item
            if (item[2] or item[0]) in held:  # type: ignore[index]
                return item
        return None

    def clear(self) -> None:
        self._items.clear()
        self._notices = 0
