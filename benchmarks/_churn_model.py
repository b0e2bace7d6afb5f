"""The least per-name state a multiplexer keeps, kept as cheaply as Python allows.

``churn_floor.py``'s ``model`` row runs this against the server: a lower bound on the
churn of any pure-Python multiplexer that keeps, for each name,

* whether it is wanted, and by whom (to route its messages and tell its holder);
* what the server has confirmed, and what is in flight (to subscribe it again after a
  reconnect, and to make sense of a confirmation);
* that it changed since the last write (so changes made between two writes go out
  together, as one command per 1,024 names);

and that checks each confirmation against the command in flight. It handles only the
cheapest case, which is all the churn measure needs: one subscriber, every name new
when added and every name held when removed; anything else raises. Every step is a
bulk operation done in C (``dict.fromkeys``, ``set(map(...))``, list comparison) where
the library does one Python step per name, so it costs less than any real core could.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import hiredis

NAMES_PER_COMMAND: Final = 1024
SUBSCRIBING: Final = "subscribing"
ACTIVE: Final = "active"
UNSUBSCRIBING: Final = "unsubscribing"
NOTHING: Final = object()


class ChurnModel:
    def __init__(self) -> None:
        self.held: dict[bytes, None] = {}  # the subscriber's names
        self.wanted: dict[bytes, bool] = {}  # name -> held by the subscriber
        self.states: dict[bytes, str] = {}  # name -> confirmed / in flight
        self.changed: dict[bytes, None] = {}  # names touched since the last write
        self.in_flight: deque[tuple[bytes, list[bytes]]] = deque()  # reply kind, names
        self.confirmed = 0  # names of in_flight[0] already confirmed
        self.reader = hiredis.Reader(notEnoughData=NOTHING)

    @property
    def settled(self) -> bool:
        return not self.states and not self.in_flight

    def add(self, names: list[bytes]) -> None:
        if set(map(type, names)) != {bytes} or len(set(names)) != len(names):
            raise TypeError("names must be distinct bytes")
        if not (self.held.keys().isdisjoint(names) and self.wanted.keys().isdisjoint(names)):
            raise NotImplementedError("only new names")
        self.held.update(dict.fromkeys(names))
        self.wanted.update(dict.fromkeys(names, True))
        self.changed.update(dict.fromkeys(names))

    def remove(self, names: list[bytes]) -> None:
        if self.held.keys() != set(names):
            raise NotImplementedError("only every name held")
        self.held.clear()
        self.wanted.update(dict.fromkeys(names, False))
        self.changed.update(dict.fromkeys(names))

    def data_to_send(self) -> bytes:
        names = list(self.changed)
        self.changed.clear()
        states = set(map(self.states.get, names))
        wishes = set(map(self.wanted.__getitem__, names))
        if states == {None} and wishes == {True}:
            command, reply, state = b"SUBSCRIBE", b"subscribe", SUBSCRIBING
        elif states == {ACTIVE} and wishes == {False}:
            command, reply, state = b"UNSUBSCRIBE", b"unsubscribe", UNSUBSCRIBING
        else:
            raise NotImplementedError("only a change of every name the same way")
        self.states.update(dict.fromkeys(names, state))
        out = bytearray()
        for start in range(0, len(names), NAMES_PER_COMMAND):
            batch = names[start : start + NAMES_PER_COMMAND]
            out += hiredis.pack_command((command, *batch))
            self.in_flight.append((reply, batch))
        return bytes(out)

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed bytes read; returns the names that became active."""
        self.reader.feed(data)
        gets = self.reader.gets
        reply = self.in_flight[0][0]
        names: list[bytes] = []
        append = names.append
        while (frame := gets()) is not NOTHING:
            if frame.__class__ is not list or len(frame) != 3 or frame[0] != reply:
                raise NotImplementedError("only confirmations of the command in flight")
            append(frame[1])
        activated: list[bytes] = []
        while names:
            reply, batch = self.in_flight[0]
            due = batch[self.confirmed :]
            taken, names = names[: len(due)], names[len(due) :]
            if taken != due[: len(taken)]:
                raise ValueError("a confirmation out of order")
            self.confirmed += len(taken)
            if self.confirmed == len(batch):
                self.in_flight.popleft()
                self.confirmed = 0
            activated += self._confirm(reply, taken)
        return activated

    def _confirm(self, reply: bytes, names: list[bytes]) -> list[bytes]:
        states = self.states
        if reply == b"subscribe":
            if set(map(states.__getitem__, names)) != {SUBSCRIBING}:
                raise NotImplementedError("only names still wanted")
            states.update(dict.fromkeys(names, ACTIVE))
            return names
        if set(map(states.__getitem__, names)) != {UNSUBSCRIBING}:
            raise NotImplementedError("only names still unwanted")
        wanted = self.wanted
        for name in names:
            del states[name], wanted[name]
        return []
