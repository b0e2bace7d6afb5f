"""A tiny driver for the core, used only by the tests: one peer, one loop.

A *peer* is the far end of the core's connection. Two kinds, one interface:

* :class:`SocketPeer`: a plain blocking ``socket`` connected to a real
  ``redis-server``;
* :class:`FakePeer`: a ``FakeConnection`` of the in-memory ``FakeRedis``
  (``tests/core/fake_redis.py``), optionally read a few bytes at a time so that
  frames arrive split.

``send(data)`` writes; ``recv(timeout)`` returns the bytes available (``b""`` when
none arrived within ``timeout``) or ``None`` once the server has closed the
connection; ``close()`` closes it from the client side.

:class:`Harness` is the driver loop of ``redismpx_core``'s module docstring, with
the I/O done synchronously: ``step()`` flushes ``core.data_to_send()`` to the
peer, reads what is available, feeds it to ``core.receive_data`` and collects the
events, normalised by :func:`normalise` into comparable tuples.
``run_until(condition)`` steps until the condition holds, with a deadline and no
fixed sleeps (a socket peer waits in ``select`` a short while per step).
Exceptions from the core propagate to the test; ``lose(error)`` then plays the
driver's part (``connection_lost``) and ``reconnect(peer)`` starts over.
"""

from __future__ import annotations

import itertools
import select
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import hiredis

from redismpx_core import (
    ConnectionEstablished,
    Event,
    MessagesReceived,
    MultiplexerCore,
    NameDeactivated,
    NameRejected,
    NamesActivated,
    PromiseExpired,
    PromiseFailed,
    PromiseFulfilled,
    PublishCompleted,
    PublishFailed,
    RedisMPXError,
    SubscriptionDisconnected,
)

__all__ = (
    "FakePeer",
    "Harness",
    "Peer",
    "SocketPeer",
    "commands_in",
    "normalise",
)

#: How long one step of a socket peer waits for data before giving control back.
POLL_INTERVAL = 0.02


class Peer(Protocol):
    def send(self, data: bytes) -> None: ...

    def recv(self, timeout: float) -> bytes | None: ...

    def close(self) -> None: ...


class SocketPeer:
    """A blocking TCP socket to a real server."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes | None:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return b""
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            return None
        return data or None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()

    def recv_until(self, predicate: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
        """Raw bytes until ``predicate(all bytes so far)`` holds (for debugging a peer)."""
        deadline = time.monotonic() + timeout
        buffer = b""
        while not predicate(buffer):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"predicate not met within {timeout} s; got {buffer!r}")
            chunk = self.recv(min(left, POLL_INTERVAL))
            if chunk is None:
                raise ConnectionError(f"the server closed the connection; got {buffer!r}")
            buffer += chunk
        return buffer


class FakePeer:
    """A ``FakeConnection`` of the in-memory fake server.

    Like a socket's ``recv``, one read returns at most ``max_read`` bytes. With
    ``chunks`` the reads cycle through those sizes instead, so that the core sees
    frames split at arbitrary points.
    """

    def __init__(
        self,
        connection: Any,
        *,
        chunks: tuple[int, ...] | None = None,
        max_read: int = 1 << 16,
    ) -> None:
        self.connection = connection
        self.sizes = itertools.cycle(chunks or (max_read,))
        self.buffer = b""
        self.offset = 0
        self.closed = False

    def send(self, data: bytes) -> None:
        self.connection.feed(data)

    def recv(self, timeout: float) -> bytes | None:  # the fake is synchronous: no waiting
        if self.offset >= len(self.buffer):
            self.buffer = bytes(self.connection.take())
            self.offset = 0
            if not self.buffer:
                return None if _fake_closed(self.connection) else b""
        end = self.offset + next(self.sizes)
        data = self.buffer[self.offset : end]
        self.offset = end
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.connection.close()


def _fake_closed(connection: Any) -> bool:
    for attribute in ("closed", "is_closed"):
        value = getattr(connection, attribute, None)
        if value is not None:
            return bool(value() if callable(value) else value)
    return False


# --------------------------------------------------------------------------- events


def normalise(events: Iterable[Event]) -> list[tuple[Any, ...]]:
    """Events as comparable tuples; a run of messages becomes one tuple per
    (payload, subscriber), in delivery order."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, MessagesReceived):
            for payload in event.payloads:
                for owner in event.subscribers:
                    out.append(("message", owner, event.channel, event.pattern, payload))
        elif isinstance(event, ConnectionEstablished):
            out.append(("established",))
        elif isinstance(event, NamesActivated):
            for name in event.names:
                out.append(("activated", event.subscriber, name))
        elif isinstance(event, NameRejected):
            out.append(("rejected", event.subscriber, event.name, event.error.code))
        elif isinstance(event, NameDeactivated):
            out.append(("deactivated", event.subscriber, event.name, type(event.error).__name__))
        elif isinstance(event, SubscriptionDisconnected):
            out.append(("disconnected", event.subscriber, type(event.error).__name__))
        elif isinstance(event, PublishCompleted):
            out.append(("published", event.token, event.receivers))
        elif isinstance(event, PublishFailed):
            code = getattr(event.error, "code", type(event.error).__name__)
            out.append(("publish_failed", event.token, code))
        elif isinstance(event, PromiseFulfilled):
            out.append(("fulfilled", event.promise, event.data))
        elif isinstance(event, PromiseExpired):
            out.append(("expired", event.promise))
        elif isinstance(event, PromiseFailed):
            out.append(("promise_failed", event.promise, type(event.error).__name__))
        else:  # pragma: no cover - a new event type must be added here
            raise AssertionError(f"unknown event {event!r}")
    return out


def commands_in(data: bytes) -> list[list[bytes]]:
    """The commands a client wrote, parsed back (a client writes RESP arrays)."""
    reader = hiredis.Reader()
    reader.feed(data)
    commands: list[list[bytes]] = []
    while (command := reader.gets()) is not False:
        commands.append(command)
    return commands


# --------------------------------------------------------------------------- driver


class PeerClosed(AssertionError):
    """The server closed the connection while the condition was still unmet."""


class Harness:
    """Drives ``core`` over ``peer``: flush, read, feed, collect.

    ``events`` holds every normalised event since the last :meth:`take`; ``sent``
    every byte written since the last :meth:`take_sent`.
    """

    def __init__(
        self,
        core: MultiplexerCore,
        peer: Peer,
        *,
        clock: Callable[[], float] = time.monotonic,
        connect: bool = True,
    ) -> None:
        self.core = core
        self.peer = peer
        self.clock = clock
        self.events: list[tuple[Any, ...]] = []
        self.sent = bytearray()
        self.eof = False
        if connect:
            self._record(core.connection_made(clock()))

    # -- the loop ------------------------------------------------------------

    def _record(self, events: list[Event]) -> list[tuple[Any, ...]]:
        normalised = normalise(events)
        self.events += normalised
        return normalised

    def flush(self) -> None:
        out = self.core.data_to_send()
        if out:
            self.sent += out
            self.peer.send(out)

    def step(self, timeout: float = POLL_INTERVAL) -> list[tuple[Any, ...]]:
        """One turn: write what the core has, read what the peer has, feed it."""
        new: list[tuple[Any, ...]] = []
        now = self.clock()
        deadline = self.core.next_deadline()
        if deadline is not None and now >= deadline:
            new += self._record(self.core.handle_timeout(now))
        self.flush()
        if self.eof:
            return new
        data = self.peer.recv(timeout)
        if data is None:
            self.eof = True
        elif data:
            new += self._record(self.core.receive_data(data, self.clock()))
            self.flush()
        return new

    def run_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Step until ``condition()`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.eof:
                raise PeerClosed(f"the peer closed the connection; events: {self.events!r}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"condition not met within {timeout} s; events: {self.events!r}"
                )
            self.step()

    def run_until_events(self, count: int, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        """Step until at least ``count`` events are collected; take them all."""
        self.run_until(lambda: len(self.events) >= count, timeout)
        return self.take()

    def settle(self, steps: int = 3) -> list[tuple[Any, ...]]:
        """A few more steps (for checking that nothing else happens); take the events."""
        for _ in range(steps):
            self.step()
        return self.take()

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events

    def take_sent(self) -> list[list[bytes]]:
        """The commands written since the last call, parsed."""
        data, self.sent = bytes(self.sent), bytearray()
        return commands_in(data)

    # -- connection lifecycle ---------------------------------------------------

    def lose(self, error: RedisMPXError) -> list[tuple[Any, ...]]:
        """The driver's part after a failure: close the peer, ``connection_lost``."""
        self.peer.close()
        self.eof = True
        return self._record(self.core.connection_lost(error))

    def reconnect(self, peer: Peer) -> list[tuple[Any, ...]]:
        self.peer = peer
        self.eof = False
        return self._record(self.core.connection_made(self.clock()))
