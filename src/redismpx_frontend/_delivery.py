"""Per-subscription delivery buffers: bounded, with an overflow policy, filtered at hand-off.

A subscription whose consumer is slow (an async callback, an iterator) must hold
back only itself (SPEC 3.6). The reader appends every run of messages to the
subscription's :class:`DeliveryQueue` without waiting, and the subscription's own
consumer takes them out. A run's :class:`Message` objects are built once, by
:func:`messages_of`, and shared by every queue it goes to: in a fan-out to a
thousand iterators, building a message per subscriber was most of the cost, and
most of the memory. The queue is pure: no I/O, no waiting.

Notices (a batch of activations, a disconnect, an awaitable to await) travel in
the same queue, so that a consumer sees them in order with the messages: messages
already received come before the disconnect notice. They count against the same
bound, so that a consumer stuck through many reconnects holds a bounded buffer:

* an activation batch (one ``NamesActivated`` event, say the 2,000 names of a
  resubscription) is one notice;
* a disconnect notice supersedes the activation notices queued before it (those
  names are no longer active: telling of them late would only mislead);
* a notice that finds the buffer full makes room by dropping the oldest message
  (counted as dropped), or the oldest notice when only notices are left, under
  any policy but ``close``, which closes the subscription as a message would.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Container
from functools import partial
from itertools import islice, repeat
from typing import Final, NamedTuple

from redismpx_core import OverflowPolicy

__all__ = ("DeliveryQueue", "Message", "Notice", "NoticeKind", "messages_of")


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


class NoticeKind(enum.Enum):
    ACTIVATED = "activated"  # value: the list of names of one batch
    DISCONNECTED = "disconnected"  # value: the error
    AWAIT = "await"  # value: what a sync-looking callback returned, to await in order

    __hash__ = object.__hash__


class Notice:
    """A non-message item for a subscription's consumer."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: NoticeKind, value: object) -> None:
        self.kind = kind
        self.value = value

    def __repr__(self) -> str:
        return f"<Notice {self.kind.value}>"


_DROP_OLDEST: Final = OverflowPolicy.DROP_OLDEST
_DROP_NEWEST: Final = OverflowPolicy.DROP_NEWEST
_CLOSE: Final = OverflowPolicy.CLOSE

#: Items in the queue: messages and notices, in the order they happened.
Item = Message | Notice


class DeliveryQueue:
    """A FIFO of at most ``bound`` items (messages and notices) for one subscription.

    Pushing never waits: past the bound the policy applies (see the module docstring).
    ``dropped`` counts the messages lost to it. Under ``close`` the first overflow sets
    ``overflowed`` and the queue refuses everything after; the owner then closes the
    subscription with a :class:`~redismpx_core.SubscriptionOverflow`.
    """

    __slots__ = ("_activations", "bound", "dropped", "items", "overflowed", "policy")

    def __init__(self, bound: int, policy: OverflowPolicy) -> None:
        self.bound = bound
        self.policy = policy
        #: The items, oldest first. Consumers pop from the left; everything else goes
        #: through the methods.
        self.items: deque[Item] = deque()
        # Activation notices queued: a disconnect looks for them only when there are any.
        self._activations = 0
        self.dropped = 0
        self.overflowed = False

    def __len__(self) -> int:
        return len(self.items)

    def push(self, messages: list[Message]) -> bool:
        """Append a run of messages; False if the queue overflowed under ``close``.

        ``messages`` may be shared with other queues: it is read, never changed.
        """
        count = len(messages)
        if self.overflowed:
            self.dropped += count
            return False
        items = self.items
        room = self.bound - len(items)
        if count <= room:
            items.extend(messages)
            return True
        policy = self.policy
        if policy is _DROP_NEWEST:
            items.extend(islice(messages, room))
            self.dropped += count - room
            return True
        if policy is _DROP_OLDEST:
            if count > self.bound:  # the run alone overflows: only its newest can stay
                self.dropped += count - self.bound
                messages = messages[count - self.bound :]
                count = self.bound
            self._evict(count - room)
            items.extend(messages)
            return True
        self.overflowed = True
        self.dropped += count
        return False

    def push_notice(self, kind: NoticeKind, value: object) -> bool:
        """Append a notice (see the module docstring); False if that overflowed ``close``."""
        if self.overflowed:
            return False
        if kind is NoticeKind.DISCONNECTED:
            self.drop_activations()
        if len(self.items) >= self.bound:
            if self.policy is _CLOSE:
                self.overflowed = True
                return False
            self._evict(1)
        if kind is NoticeKind.ACTIVATED:
            self._activations += 1
        self.items.append(Notice(kind, value))
        return True

    def pop(self, held: Container[bytes]) -> Item | None:
        """The oldest item still wanted, or None if there is none.

        Messages of names no longer in ``held`` are dropped on the way: the check at
        hand-off is what makes ``remove(name)`` final even for messages buffered
        before it was called.
        """
        items = self.items
        while items:
            item = items.popleft()
            if item.__class__ is Notice:
                if item.kind is NoticeKind.ACTIVATED:
                    self._activations -= 1
                return item
            if (item[2] or item[0]) in held:  # type: ignore[index]
                return item
        return None

    def discard_messages(self) -> None:
        """Drop every buffered message (counted as dropped), keep the notices."""
        notices = [item for item in self.items if item.__class__ is Notice]
        self.dropped += len(self.items) - len(notices)
        self.items.clear()
        self.items.extend(notices)

    def _evict(self, count: int) -> None:
        """Drop ``count`` items, oldest messages first, then oldest notices."""
        items = self.items
        kept: list[Item] = []
        while count and items:
            item = items.popleft()
            if item.__class__ is Notice:
                kept.append(item)
            else:
                count -= 1
                self.dropped += 1
        while count and kept:  # only notices were left: the oldest go
            notice = kept.pop(0)
            if notice.kind is NoticeKind.ACTIVATED:  # type: ignore[union-attr]
                self._activations -= 1
            count -= 1
        items.extendleft(reversed(kept))

    def push_final(self, kind: NoticeKind, value: object) -> None:
        """The last notice of a subscription closed by an overflow (past the bound)."""
        self.items.append(Notice(kind, value))

    def drop_activations(self) -> None:
        """Forget the activation notices queued: a disconnect supersedes them."""
        if not self._activations:
            return
        kept = [
            item
            for item in self.items
            if item.__class__ is not Notice or item.kind is not NoticeKind.ACTIVATED
        ]
        self.items.clear()
        self.items.extend(kept)
        self._activations = 0
