"""Per-subscription delivery buffers: bounded, with an overflow policy, filtered at hand-off.

A subscription whose consumer is slow (an async callback, an iterator) must hold
back only itself (SPEC 3.6). The reader appends every run of messages to the
subscription's :class:`DeliveryQueue` without waiting, and the subscription's own
consumer takes them out. A run's :class:`Message` objects are built once, by
:func:`messages_of`, and shared by every queue it goes to: in a fan-out to a
thousand iterators, building a message per subscriber was most of the cost, and
most of the memory. The queue is pure: no I/O, no waiting.

Notices
=======

A :class:`Notice` tells the consumer, in this order, that its names stopped being
active (``error``: an outage), that some names stopped alone (``named``: refused
for good, or unsubscribed by the server itself, each with its own
error), and that some became active (``names``). Notices travel in the same queue
as the messages, so that the consumer sees everything in the order it happened
(messages already received come before the disconnect), and they count against
the same bound, so that a consumer stuck through any number of reconnects holds at
most ``bound`` items. What a stuck consumer must hear, however long the history,
is what the history adds up to (each name's activations and disconnects alternate,
never two activations in a row), and that needs few notices:

* an activation, or a name that stops alone, joins the newest item when that is a
  notice (nothing came between them): a batch of activations, or many batches in a
  row, is one notice, and an activation after a disconnect rides on the disconnect's
  notice; a notice keeps one error per name that stopped alone, the latest;
* a disconnect supersedes the activations queued before it of the names it stops
  (all of them for an outage; only its own for a name that stops alone): telling of
  them late would only mislead;
* a message never displaces a notice, and a notice never displaces a notice: a
  notice that finds the buffer full drops the oldest message to make room, and when
  the newest item is a notice, an outage joins it (the later error is told, once,
  for both outages).

A notice's errors for names that stopped alone are bounded by the names the
subscription holds, and an outage does not take their place: each such name's
holder hears why it stopped (a refused name has left the subscription, and only
its error says so). So a full buffer holds at least one message whenever its
newest item is a message, and a notice always finds room or a notice to join;
under the ``close`` policy a notice that would have to drop a message closes the
subscription instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container
from functools import partial
from itertools import islice, repeat
from typing import Final, NamedTuple

from redismpx_core import OverflowPolicy, RedisMPXError

__all__ = ("DeliveryQueue", "Item", "Message", "Notice", "messages_of")


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


class Notice:
    """For the consumer: ``error`` (an outage, if not None), then each error of
    ``named`` (names that stopped alone: refused for good, or unsubscribed by the
    server), then ``names`` (an activation of these names, if any)."""

    __slots__ = ("error", "named", "names")

    def __init__(
        self,
        error: RedisMPXError | None = None,
        named: dict[bytes, RedisMPXError] | None = None,
        names: list[bytes] | None = None,
    ) -> None:
        self.error = error
        self.named = named
        self.names = names

    def __repr__(self) -> str:
        parts = [] if self.error is None else ["disconnected"]
        parts += [] if not self.named else [f"{len(self.named)} names stopped"]
        parts += [] if self.names is None else [f"activated {len(self.names)}"]
        return f"<Notice {', then '.join(parts)}>"


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

    __slots__ = ("_notices", "bound", "dropped", "items", "overflowed", "policy")

    def __init__(self, bound: int, policy: OverflowPolicy) -> None:
        self.bound = bound
        self.policy = policy
        #: The items, oldest first. Consumers take them with :meth:`pop`.
        self.items: deque[Item] = deque()
        # Notices queued, so that a push of messages knows how many it may drop.
        self._notices = 0
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
            # The newest `bound - notices` of the buffered messages and the run stay.
            keep = self.bound - self._notices
            if count > keep:
                self.dropped += count - keep
                messages = messages[count - keep :]
                count = keep
            self._drop_oldest_messages(count - room)
            items.extend(messages)
            return True
        self.overflowed = True
        self.dropped += count
        return False

    def push_activated(self, names: list[bytes]) -> bool:
        """Tell the consumer these names became active; False if that overflowed ``close``."""
        if self.overflowed:
            return False
        newest = self._newest_notice()
        if newest is not None:  # nothing between them: one notice
            newest.names = [*newest.names, *names] if newest.names else list(names)
            return True
        return self._append(Notice(names=list(names)))

    def push_disconnected(self, error: RedisMPXError) -> bool:
        """Tell the consumer its names stopped being active (an outage); False if that
        overflowed ``close``. It supersedes the activations queued before it."""
        if self.overflowed:
            return False
        self.drop_activations()
        if len(self.items) >= self.bound:
            newest = self._newest_notice()
            if newest is not None:
                newest.error = error  # one more outage while stuck: told once, the latest
                return True
        return self._append(Notice(error))

    def push_stopped(self, name: bytes, error: RedisMPXError) -> bool:
        """Tell the consumer ``name`` alone stopped (refused for good, or to be activated
        again); False if that overflowed ``close``. It supersedes the activations of
        ``name`` queued before it, and joins the newest notice: one error per name there,
        the latest."""
        if self.overflowed:
            return False
        self.drop_activations(name)
        newest = self._newest_notice()
        if newest is not None:
            if newest.named is None:
                newest.named = {}
            newest.named.pop(name, None)  # (told in the order they happened)
            newest.named[name] = error
            return True
        return self._append(Notice(named={name: error}))

    def push_final(self, error: RedisMPXError) -> None:
        """The last notice of a subscription closed by an overflow (past the bound)."""
        self.items.append(Notice(error))
        self._notices += 1

    def pop(self, held: Container[bytes]) -> Item | None:
        """The oldest item still wanted, or None if there is none.

        Messages of names no longer in ``held`` are dropped on the way: the check at
        hand-off is what makes ``remove(name)`` final even for messages buffered
        before it was called. (A consumer on the hot path may take from :attr:`items`
        itself, by the same rules: ``popleft()``, :meth:`notice_taken` after taking a
        notice, and a message's name, ``msg[2] or msg[0]``, checked against ``held``: a
        method call per message is a tenth of an async callback's whole cost.)
        """
        items = self.items
        while items:
            item = items.popleft()
            if item.__class__ is Notice:
                self._notices -= 1
                return item
            if (item[2] or item[0]) in held:  # type: ignore[index]
                return item
        return None

    def notice_taken(self) -> None:
        """A consumer took a notice out of :attr:`items` itself (see :meth:`pop`)."""
        self._notices -= 1

    def discard_messages(self) -> None:
        """Drop every buffered message (counted as dropped), keep the notices."""
        notices = [item for item in self.items if item.__class__ is Notice]
        self.dropped += len(self.items) - len(notices)
        self.items.clear()
        self.items.extend(notices)

    def drop_activations(self, name: bytes | None = None) -> None:
        """Forget the queued activations of ``name`` (of every name, if None): it stopped
        being active, whether or not the consumer is told (it may have no callback for
        it)."""
        if not self._notices:
            return
        kept: list[Item] = []
        for item in self.items:
            if item.__class__ is Notice:
                assert isinstance(item, Notice)
                if item.names is not None:
                    if name is None:
                        item.names = None
                    elif name in item.names:
                        item.names = [n for n in item.names if n != name] or None
                if item.error is None and not item.named and item.names is None:
                    self._notices -= 1
                    continue  # nothing left to tell
            kept.append(item)
        self.items.clear()
        self.items.extend(kept)

    def _newest_notice(self) -> Notice | None:
        items = self.items
        newest = items[-1] if items else None
        return newest if newest.__class__ is Notice else None

    def _append(self, notice: Notice) -> bool:
        if len(self.items) >= self.bound:
            if self.policy is _CLOSE:
                self.overflowed = True
                return False
            self._drop_oldest_messages(1)  # there is one: the newest item is a message
        self.items.append(notice)
        self._notices += 1
        return True

    def _drop_oldest_messages(self, count: int) -> None:
        """Drop the ``count`` oldest messages, leaving the notices where they are."""
        items = self.items
        kept: list[Item] = []
        while count and items:
            item = items.popleft()
            if item.__class__ is Notice:
                kept.append(item)
            else:
                count -= 1
                self.dropped += 1
        items.extendleft(reversed(kept))
