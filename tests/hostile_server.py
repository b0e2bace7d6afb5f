"""A scripted fake Redis on loopback, for servers that misbehave on purpose.

:class:`HostileServer` listens on a free loopback port and answers every connection
by a **script**: a callable ``script(number, command)`` called with the connection's
number (1, 2, ... in order of accept) and

- ``None`` once, when the connection has just been accepted (a greeting, such as
  Redis' ``-ERR max number of clients reached``), then
- each command the client sent, parsed (``[b"SUBSCRIBE", b"a", b"b"]``),

and returning what to do:

- ``bytes``: send them;
- ``None``: send nothing;
- :class:`Close`: send its data, then hang up (half-close, then wait for the client
  to close its end, so that the data is never lost to a reset);
- any other iterable of ``bytes`` (a generator): stream it chunk by chunk until it
  ends or the client goes away (a never-ending bulk string, say).

``server.script`` may be swapped at any time; the next call uses the new one.
:func:`like_redis` answers as a well-behaved Redis 7 would under RESP2, and is the
default. :meth:`HostileServer.send` pushes bytes on a live connection at a moment
the test chooses; :meth:`HostileServer.drop` hangs up on every live connection.

The server counts connections (``connections``), records the commands each one sent
(``commands[number]``) and the bytes sent to it (``sent[number]``). It runs on plain
threads and blocking sockets, so it is independent of the event loop under test.

Also here, for tests of what such a server can make a client hold:
:func:`address_space_capped` and :func:`resident_bytes`.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import hiredis
import pytest

__all__ = (
    "Close",
    "HostileServer",
    "Reply",
    "Script",
    "address_space_capped",
    "confirmations",
    "like_redis",
    "resident_bytes",
)

HOST: Final = "127.0.0.1"
_CHUNK: Final = 65536


@dataclass(frozen=True)
class Close:
    """Send ``data``, then hang up."""

    data: bytes = b""


Reply = bytes | Close | Iterable[bytes] | None
Script = Callable[[int, list[bytes] | None], Reply]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def confirmations(kind: bytes, names: list[bytes]) -> bytes:
    """The RESP2 confirmations of a SUBSCRIBE-family command, one per name."""
    return b"".join(
        b"*3\r\n" + _bulk(kind) + _bulk(name) + b":%d\r\n" % (i + 1) for i, name in enumerate(names)
    )


def like_redis(number: int, command: list[bytes] | None) -> Reply:
    """What a well-behaved Redis 7 answers under RESP2 (Pub/Sub and the handshake)."""
    if command is None:
        return None
    verb = command[0].upper()
    if verb == b"PING":
        return b"+PONG\r\n"
    if verb in (b"AUTH", b"SELECT", b"CLIENT"):
        return b"+OK\r\n"
    if verb in (b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"):
        return confirmations(verb.lower(), command[1:])
    if verb in (b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE"):
        return b"".join(
            b"*3\r\n" + _bulk(verb.lower()) + _bulk(name) + b":0\r\n" for name in command[1:]
        )
    if verb in (b"PUBLISH", b"SPUBLISH"):
        return b":0\r\n"
    return b"-ERR unknown command '%s'\r\n" % verb


class _Connection:
    def __init__(self, server: HostileServer, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.number = number
        self.lock = threading.Lock()  # one writer at a time: the handler or send()
        self.closed = False

    def run(self) -> None:
        reader = hiredis.Reader()
        try:
            if not self._act(self.server.script(self.number, None)):
                return
            while True:
                data = self.sock.recv(_CHUNK)
                if not data:
                    return
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    self.server._record(self.number, command)
                    if not self._act(self.server.script(self.number, command)):
                        return
        except (OSError, hiredis.HiredisError):
            pass
        finally:
            self.close()

    def _act(self, reply: Reply) -> bool:
        """Carry out one reply; False once the connection is over."""
        if reply is None:
            return True
        if isinstance(reply, bytes):
            return self.send(reply)
        if isinstance(reply, Close):
            if self.send(reply.data):
                self._hang_up()
            return False
        return self.send_all(reply)

    def send_all(self, chunks: Iterable[bytes]) -> bool:
        return all(self.send(chunk) for chunk in chunks)

    def send(self, data: bytes) -> bool:
        view = memoryview(data)
        try:
            with self.lock:
                for start in range(0, len(view), _CHUNK):
                    piece = view[start : start + _CHUNK]
                    self.sock.sendall(piece)
                    self.server._count_sent(self.number, len(piece))
        except OSError:
            return False
        return True

    def _hang_up(self) -> None:
        """FIN, then drain until the client closes: what was sent is read, not reset."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(5.0)
            while self.sock.recv(_CHUNK):
                pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server._forget(self)


@contextlib.contextmanager
def address_space_capped(headroom: int = 2 * 1024**3) -> Iterator[None]:
    """Cap this process' address space at what it uses now plus ``headroom`` (Linux).

    hiredis allocates an aggregate's list when it reads the header, 8 bytes per
    announced element: whether ``*4294967295`` (32 GiB) can be had depends on the
    machine's memory and overcommit policy. Under the cap it cannot, on any machine,
    so the allocation-failure path is the one tested everywhere. Skips the test where
    the cap cannot be set.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("the address-space cap needs /proc and RLIMIT_AS (Linux)")
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = used + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def resident_bytes() -> int:
    """This process' resident set size now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


class HostileServer:
    """A fake Redis on ``127.0.0.1:port`` that follows ``script``. A context manager."""

    def __init__(self, script: Script = like_redis) -> None:
        self.script: Script = script
        self.connections = 0
        self.commands: dict[int, list[list[bytes]]] = {}
        self.sent: dict[int, int] = {}
        self._lock = threading.Lock()
        self._live: dict[int, _Connection] = {}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((HOST, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="hostile-accept")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                number = self.connections
                self.commands[number] = []
                self.sent[number] = 0
                conn = self._live[number] = _Connection(self, sock, number)
            threading.Thread(target=conn.run, daemon=True, name=f"hostile-{number}").start()

    def _record(self, number: int, command: list[bytes]) -> None:
        with self._lock:
            self.commands[number].append(command)

    def _count_sent(self, number: int, size: int) -> None:
        with self._lock:
            self.sent[number] += size

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._live.pop(conn.number, None)

    def live(self) -> list[int]:
        """Numbers of the connections still open, oldest first."""
        with self._lock:
            return sorted(self._live)

    def send(self, data: bytes | Iterable[bytes], number: int | None = None) -> bool:
        """Push ``data`` (bytes, or an iterable of chunks to stream) on connection
        ``number``, the newest live one by default; False if it is gone or goes away.
        Blocks while the client does not read: from an event loop, call it in a thread.
        """
        with self._lock:
            if number is None:
                number = max(self._live, default=0)
            conn = self._live.get(number)
        if conn is None:
            return False
        return conn.send_all([data] if isinstance(data, bytes) else data)

    def drop(self) -> None:
        """Hang up on every live connection at once (a FIN, like CLIENT KILL)."""
        with self._lock:
            live = list(self._live.values())
        for conn in live:
            conn.close()

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=5)
        self.drop()
