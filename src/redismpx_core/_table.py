"""The name table: one record per name the core acts on, and who holds it.

Users change what they want (holders come and go); the server's confirmations
change what is. Every change of a record's state goes through :meth:`NameTable.enter`,
with the next state taken from the tables of :mod:`._state` (whose theory of
operation this module carries out). Records touched since the last write are
*dirty*; :meth:`NameTable.flush` turns them into the SUBSCRIBE/UNSUBSCRIBE batches
to write, at write time, so that changes of mind in between never reach the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Generic

from ._errors import ProtocolError, RedisMPXError, ServerError
from ._events import (
    Event,
    NameDeactivated,
    NameRejected,
    NamesActivated,
    P,
    S,
)
from ._handles import SubscriptionHandle, SubscriptionKind
from ._slots import key_slot
from ._state import (
    ACTIVE,
    CONFIRMATIONS,
    FLUSH_ACTIONS,
    IDLE,
    ON_CONNECTION_LOST,
    ON_SERVER_UNSUBSCRIBE,
    REJECTIONS,
    Command,
    NameKind,
    NameState,
    Reply,
)

__all__ = ("MAX_NAMES_PER_COMMAND", "Batch", "NameRecord", "NameTable")

#: Names per SUBSCRIBE-family command: large enough that a resubscription of
#: thousands of names is a handful of commands, small enough that one refused
#: batch (retried name by name) stays cheap.
MAX_NAMES_PER_COMMAND: Final = 1024

_IF_WANTED: Final = FLUSH_ACTIONS[True]
_IF_UNWANTED: Final = FLUSH_ACTIONS[False]
_PROMISE: Final = SubscriptionKind.PROMISE


class NameRecord(Generic[S, P]):
    """What the core knows of one name in one name space."""

    __slots__ = ("holders", "kind", "name", "promise_holders", "snapshot", "space", "state")

    def __init__(
        self,
        kind: NameKind,
        name: bytes,
        holder: SubscriptionHandle[S, P],
        space: dict[bytes, NameRecord[S, P]],
    ) -> None:
        self.kind = kind
        self.name = name
        # The table's records of this name space, which hold this one (by name) from
        # its creation until it is dropped: the one place that drops it, once per name
        # confirmed in a batch, needs no lookup of its own.
        self.space = space
        self.state = IDLE
        # The subscriptions holding the name: None, the only one, or a dict of two or
        # more in the order they came. Most names have one holder, and a dict for it
        # would be the largest part of the record.
        self.holders: SubscriptionHandle[S, P] | dict[SubscriptionHandle[S, P], None] | None = (
            holder
        )
        # Owners of the non-promise holders, rebuilt lazily after a change.
        self.snapshot: tuple[S, ...] | None = None
        self.promise_holders: tuple[SubscriptionHandle[S, P], ...] = ()

    def held_by(
        self,
    ) -> tuple[SubscriptionHandle[S, P], ...] | dict[SubscriptionHandle[S, P], None]:
        """The holders, in the order they came (iterate; do not change)."""
        holders = self.holders
        if holders is None:
            return ()
        if isinstance(holders, dict):
            return holders
        return (holders,)

    def refresh(self) -> tuple[S, ...]:
        holders = self.held_by()
        self.promise_holders = tuple(s for s in holders if s.kind is _PROMISE)
        if self.promise_holders:
            snapshot = tuple(s.owner for s in holders if s.kind is not _PROMISE)
        else:
            snapshot = tuple(s.owner for s in holders)
        self.snapshot = snapshot
        return snapshot


#: One command to write: its name space, its verb and the records of its names.
Batch = tuple[NameKind, Command, list[NameRecord[S, P]]]


def activated(events: list[Event[S, P]], subscriber: S, name: bytes) -> None:
    """Append the activation of ``name``, extending the last event if it is the same
    subscriber's activation (so that activations stay in order with everything else)."""
    if events:
        last = events[-1]
        if last.__class__ is NamesActivated and last.subscriber is subscriber:
            last.names.append(name)
            return
    events.append(NamesActivated(subscriber, [name]))


class NameTable(Generic[S, P]):
    """Every name some subscription holds or some command is still about."""

    __slots__ = ("alone", "channels", "dirty", "patterns", "shards", "spaces")

    def __init__(self) -> None:
        self.spaces: dict[NameKind, dict[bytes, NameRecord[S, P]]] = {k: {} for k in NameKind}
        self.channels = self.spaces[NameKind.CHANNEL]
        self.patterns = self.spaces[NameKind.PATTERN]
        self.shards = self.spaces[NameKind.SHARD]
        # Records touched since the last write, in the order they were touched.
        self.dirty: dict[NameRecord[S, P], None] = {}
        # Records to send alone at the next flush: each was in a batch that Redis refused
        # as a whole (a refusal makes its records dirty, so the next flush sees them all).
        self.alone: set[NameRecord[S, P]] = set()

    # ------------------------------------------------------------------ holders

    def add(self, sub: SubscriptionHandle[S, P], names: Iterable[bytes]) -> list[Event[S, P]]:
        """``sub`` holds ``names`` too; returns the activations of those already ACTIVE."""
        kind = sub.kind.name_kind
        records = self.spaces[kind]
        held = sub.names
        dirty = self.dirty
        events: list[Event[S, P]] = []
        for name in names:
            if name in held:
                continue
            held[name] = None
            record = records.get(name)
            if record is None:
                record = records[name] = NameRecord(kind, name, sub, records)
                dirty[record] = None
                continue
            holders = record.holders
            if holders is None:
                record.holders = sub
                dirty[record] = None
            elif isinstance(holders, dict):
                holders[sub] = None
            else:
                record.holders = {holders: None, sub: None}
            record.snapshot = None
            if record.state is ACTIVE:
                activated(events, sub.owner, name)
        return events

    def remove(self, sub: SubscriptionHandle[S, P], names: Iterable[bytes]) -> None:
        """``sub`` lets go of ``names`` (those it does not hold are skipped)."""
        records = self.spaces[sub.kind.name_kind]
        held = sub.names
        dirty = self.dirty
        for name in names:
            if name not in held:
                continue
            del held[name]
            record = records[name]
            holders = record.holders
            if isinstance(holders, dict):
                del holders[sub]
                if len(holders) == 1:
                    record.holders = next(iter(holders))
            else:  # sub was the only holder
                record.holders = None
                dirty[record] = None
            record.snapshot = None

    def is_active(self, sub: SubscriptionHandle[S, P], name: bytes) -> bool:
        if name not in sub.names:
            return False
        record = self.spaces[sub.kind.name_kind].get(name)
        return record is not None and record.state is ACTIVE

    # ------------------------------------------------------------------ the one transition

    def enter(self, record: NameRecord[S, P], state: NameState, events: list[Event[S, P]]) -> None:
        """Move ``record`` to ``state``: activate its holders on entering ACTIVE, queue the
        flush decision if the wish and the state now differ, drop an unwanted IDLE record.

        This runs once per name confirmed: the common cases come first, and the
        activation of a lone holder is :func:`activated` written out.
        """
        record.state = state
        holders = record.holders
        if holders is None:
            if state is IDLE:
                # A record is dropped only here (and at flush) and only in IDLE, so the
                # one in hand is still the current one for its name.
                del record.space[record.name]
                if self.dirty:  # touched again while its command was out: moot now
                    self.dirty.pop(record, None)
            elif state in _IF_UNWANTED:
                self.dirty[record] = None
            return
        if state is ACTIVE:
            name = record.name
            if holders.__class__ is SubscriptionHandle:
                owner = holders.owner
                last = events[-1] if events else None
                if last.__class__ is NamesActivated and last.subscriber is owner:
                    last.names.append(name)
                else:
                    events.append(NamesActivated(owner, [name]))
            else:
                for sub in holders:  # type: ignore[union-attr]
                    activated(events, sub.owner, name)
            return  # wanted and ACTIVE: in step (FLUSH_ACTIONS[True] has no ACTIVE)
        if state in _IF_WANTED:
            self.dirty[record] = None

    # ------------------------------------------------------------------ what the server says

    def confirm(self, record: NameRecord[S, P], reply: Reply, events: list[Event[S, P]]) -> None:
        """Redis confirmed the command in flight for ``record``."""
        state = CONFIRMATIONS[reply].get(record.state)
        if state is None:
            raise ProtocolError(f"{reply.value} while the name is {record.state.value}")
        self.enter(record, state, events)

    def refused(
        self, records: list[NameRecord[S, P]], error: ServerError, events: list[Event[S, P]]
    ) -> None:
        """Redis refused a SUBSCRIBE of ``records`` with a per-name error (NOPERM, say)."""
        if len(records) > 1:
            # ACLs refuse a whole command for one forbidden name: retry each name
            # alone, so that only the forbidden one is dropped.
            self.alone.update(records)
            for record in records:
                self.enter(record, REJECTIONS[record.state], events)
            return
        self.drop_refused(records[0], error, events)

    def drop_refused(
        self, record: NameRecord[S, P], error: ServerError, events: list[Event[S, P]]
    ) -> None:
        """Drop a refused name from every holder and tell each of them."""
        self.drop_holders(record, error, events)
        self.enter(record, REJECTIONS[record.state], events)

    def drop_holders(
        self, record: NameRecord[S, P], error: ServerError, events: list[Event[S, P]]
    ) -> None:
        name = record.name
        for sub in record.held_by():
            del sub.names[name]
            events.append(NameRejected(sub.owner, name, error))
        record.holders = None
        record.snapshot = None

    def tell_holders(
        self, record: NameRecord[S, P], error: RedisMPXError, events: list[Event[S, P]]
    ) -> None:
        """The name leaves ACTIVE while its holders keep it: each hears that messages on it
        may be lost until its next activation."""
        name = record.name
        for sub in record.held_by():
            events.append(NameDeactivated(sub.owner, name, error))

    def server_unsubscribed(self, record: NameRecord[S, P], events: list[Event[S, P]]) -> None:
        """The server dropped an ACTIVE name of its own accord (its holders were dealt with)."""
        self.enter(record, ON_SERVER_UNSUBSCRIBE[record.state], events)

    def connection_lost(self) -> None:
        """The server forgot us: every record goes back (to IDLE), each wanted one to be
        subscribed on the next connection, each unwanted one dropped."""
        self.dirty.clear()
        self.alone.clear()
        events: list[Event[S, P]] = []  # IDLE activates nobody
        for records in self.spaces.values():
            for record in list(records.values()):
                self.enter(record, ON_CONNECTION_LOST[record.state], events)

    def clear(self) -> None:
        self.dirty.clear()
        self.alone.clear()
        for records in self.spaces.values():
            records.clear()

    # ------------------------------------------------------------------ the flush decision

    def flush(self) -> list[Batch[S, P]]:
        """The commands that bring the server in line with the dirty records, in order."""
        batches: dict[tuple[NameKind, Command], list[NameRecord[S, P]]] = {}
        solos: list[Batch[S, P]] = []
        # The batch of the last record: names of one kind and command mostly come in a row.
        batch: list[NameRecord[S, P]] = []
        batch_kind: NameKind | None = None
        batch_command: Command | None = None
        alone = self.alone
        for record in self.dirty:
            if record.holders is None:
                action = _IF_UNWANTED.get(record.state)
                if action is None:
                    if record.state is IDLE:
                        del record.space[record.name]
                    continue
            else:
                action = _IF_WANTED.get(record.state)
                if action is None:
                    continue
            command, record.state = action
            if alone and record in alone:
                solos.append((record.kind, command, [record]))
                continue
            if command is not batch_command or record.kind is not batch_kind:
                batch_kind, batch_command = record.kind, command
                batch = batches.setdefault((batch_kind, batch_command), [])
            batch.append(record)
        self.dirty.clear()
        alone.clear()
        out: list[Batch[S, P]] = []
        for (kind, command), records in batches.items():
            groups: Iterable[list[NameRecord[S, P]]] = (records,)
            if kind is NameKind.SHARD:
                # Redis Cluster refuses (CROSSSLOT) a command whose names span slots.
                by_slot: dict[int, list[NameRecord[S, P]]] = {}
                for record in records:
                    by_slot.setdefault(key_slot(record.name), []).append(record)
                groups = by_slot.values()
            for group in groups:
                for start in range(0, len(group), MAX_NAMES_PER_COMMAND):
                    out.append((kind, command, group[start : start + MAX_NAMES_PER_COMMAND]))
        out += solos
        return out

    # ------------------------------------------------------------------ counts

    def active_counts(self) -> dict[NameKind, int]:
        return {
            kind: [r.state for r in records.values()].count(ACTIVE)
            for kind, records in self.spaces.items()
        }

    def wanted_counts(self) -> tuple[int, int, int]:
        spaces = self.spaces
        return (
            sum(1 for r in spaces[NameKind.CHANNEL].values() if r.holders is not None),
            sum(1 for r in spaces[NameKind.PATTERN].values() if r.holders is not None),
            sum(1 for r in spaces[NameKind.SHARD].values() if r.holders is not None),
        )
