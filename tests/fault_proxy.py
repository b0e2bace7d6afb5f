"""A fault-injecting TCP proxy on loopback, owned by the tests and the chaos command.

:class:`FaultProxy` listens on a free loopback port and forwards every connection to
an upstream address (a real ``redis-server``). On command it injects the faults a
network produces, each on the live connections at the moment it is called:

- :meth:`FaultProxy.cut`: close every connection (with a TCP reset) after forwarding
  a chosen number of further bytes towards the client, so the cut can fall in the
  middle of a RESP frame; ``cut()`` with no offset closes at once.
- :meth:`FaultProxy.silence`: the connections stay open but nothing passes in either
  direction any more (a half-open connection: the peer is gone without a FIN). The
  proxy keeps draining both sockets so that nobody's writes block.
- :meth:`FaultProxy.delay`: every chunk is held for ``seconds`` before it is passed
  on, on the live connections and on new ones, until ``delay(0)``.
- :meth:`FaultProxy.refuse`: new connections are reset as soon as they are accepted,
  for ``seconds`` (or until :meth:`FaultProxy.accept_again`). A client sees a
  connection that fails before its handshake is answered, like a refused one.

If the upstream cannot be reached (the server was killed), the client's connection
is reset at once, as a direct connection would be refused.

It runs on plain threads and blocking sockets (two pumps per connection), so it is
independent of the event loop under test and can serve every driver.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Final

__all__ = ("FaultProxy",)

HOST: Final = "127.0.0.1"
_CHUNK: Final = 65536
#: SO_LINGER on, timeout 0: close() sends a RST instead of a FIN.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        # SHUT_RD wakes a pump blocked in recv() on this socket without sending a FIN
        # (SHUT_RDWR would: the peer would see an orderly EOF before the reset).
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One proxied connection: the client's socket, the upstream's, two pumps."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.silent = False
        #: bytes still to pass towards the client before the cut; None: no cut armed
        self.cut_after: int | None = None
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self.bytes_down = 0
        self.bytes_up = 0

    def start(self) -> None:
        directions = ((self.upstream, self.client, True), (self.client, self.upstream, False))
        for source, sink, down in directions:
            threading.Thread(
                target=self._pump, args=(source, sink, down), daemon=True, name="fault-proxy-pump"
            ).start()

    def close(self) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        self.proxy._forget(self)
        _reset(self.client)
        _reset(self.upstream)

    def arm_cut(self, after: int) -> None:
        with self._lock:
            self.cut_after = after
        if after == 0:
            self.close()

    def _pump(self, source: socket.socket, sink: socket.socket, down: bool) -> None:
        try:
            while not self.closed.is_set():
                chunk = source.recv(_CHUNK)
                if not chunk:
                    break
                if self.silent:
                    continue  # drained and dropped: a half-open peer
                delay = self.proxy.delay_seconds
                if delay > 0:
                    time.sleep(delay)
                    if self.silent or self.closed.is_set():
                        continue
                if down and not self._pass_down(sink, chunk):
                    return
                if not down:
                    sink.sendall(chunk)
                    self.bytes_up += len(chunk)
        except OSError:
            pass
        self.close()

    def _pass_down(self, sink: socket.socket, chunk: bytes) -> bool:
        """Send ``chunk`` towards the client, honouring an armed cut; False once cut."""
        with self._lock:
            budget = self.cut_after
            if budget is not None:
                chunk = chunk[:budget]
                self.cut_after = budget - len(chunk)
        if chunk:
            sink.sendall(chunk)
            self.bytes_down += len(chunk)
        if budget is not None and self.cut_after == 0:
            self.close()
            return False
        return True


class FaultProxy:
    """Forward ``HOST:port`` to ``upstream``; inject faults on command.

    Use as a context manager, or :meth:`start` and :meth:`close`. ``url`` is the
    ``redis://`` URL that reaches the upstream through the proxy.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay_seconds = 0.0
        self.accepted = 0
        self.refused = 0
        self._refuse_until: float | None = None
        self._links: set[_Link] = set()
        self._lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._closed = threading.Event()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept_loop, daemon=True, name="fault-proxy-accept").start()
        return self

    def close(self) -> None:
        """Stop listening and reset every live connection. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
        for link in self._live():
            link.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the proxy has not been started")
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections open through the proxy right now."""
        return len(self._live())

    # -- faults ------------------------------------------------------------------

    def cut(self, after_bytes: int = 0) -> int:
        """Reset every live connection once ``after_bytes`` more bytes have passed
        towards the client (0: at once). Returns how many connections were armed."""
        if isinstance(after_bytes, bool) or not isinstance(after_bytes, int):
            raise TypeError(f"after_bytes must be an int, not {type(after_bytes).__name__}")
        if after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")
        links = self._live()
        for link in links:
            link.arm_cut(after_bytes)
        return len(links)

    def silence(self) -> int:
        """Make every live connection half-open: open, but nothing passes any more.
        New connections are not affected. Returns how many were silenced."""
        links = self._live()
        for link in links:
            link.silent = True
        return len(links)

    def delay(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before passing it on (0 turns it off)."""
        if not seconds >= 0:  # also refuses NaN
            raise ValueError("seconds must be >= 0")
        self.delay_seconds = seconds

    def refuse(self, seconds: float | None = None) -> None:
        """Reset new connections on accept for ``seconds`` (None: until accept_again)."""
        if seconds is not None and not seconds >= 0:
            raise ValueError("seconds must be >= 0")
        self._refuse_until = float("inf") if seconds is None else time.monotonic() + seconds

    def accept_again(self) -> None:
        self._refuse_until = None

    # -- internals -----------------------------------------------------------------

    def _live(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _refusing(self) -> bool:
        until = self._refuse_until
        return until is not None and time.monotonic() < until

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self._refusing():
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=2.0)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                if self._closed.is_set():
                    link.close()
                    return
                self._links.add(link)
            link.start()
