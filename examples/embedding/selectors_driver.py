"""A complete redismpx driver with no async at all: ``selectors``, a socket, a loop.

The sans-I/O core (``redismpx_core.MultiplexerCore``) does all the Redis work; this
file only moves bytes and time in and out of it (see docs/embedding.md). The caller
owns the loop: ``run_once(timeout)`` waits for the socket or the core's next deadline,
then reads and feeds, dispatches callbacks, fires timers and writes:

    mpx = BlockingMultiplexer("127.0.0.1", 6379)
    mpx.subscribe(["news"], lambda channel, data: print(channel, data))
    while True:
        mpx.run_once(1.0)

The socket is non-blocking (connect included), so a stalled server never stops the
timers: health checks, promise expiry and the reconnect backoff keep their times.
Like the asyncio example it speaks RESP3 (Redis >= 6) so PUBLISH shares the connection.

    python examples/embedding/selectors_driver.py [HOST [PORT]]
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import selectors
import socket
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from redismpx_core import (
    ConnectionEstablished,
    ConnectionLost,
    ConnectionState,
    Event,
    MessagesReceived,
    MultiplexerCore,
    NameRejected,
    NamesActivated,
    PromiseExpired,
    PromiseFailed,
    PromiseFulfilled,
    PublishCompleted,
    PublishFailed,
    RedisMPXError,
    Subscription,
    SubscriptionClosed,
    SubscriptionDisconnected,
    SubscriptionKind,
    coerce_name,
)

__all__ = ("BlockingMultiplexer", "Handle")

logger = logging.getLogger("redismpx.examples")
READ_SIZE = 64 * 1024
_LIVE = (ConnectionState.HANDSHAKING, ConnectionState.READY)
_IN_PROGRESS = (0, errno.EINPROGRESS, errno.EWOULDBLOCK)

MessageCallback = Callable[[bytes, bytes], object]
ActivationCallback = Callable[[bytes], object]
DisconnectCallback = Callable[[Exception], object]
Names = str | bytes | Iterable[str | bytes]


@dataclass(eq=False)
class Handle:
    """One subscription: the user's callbacks and the core's handle (``sub``)."""

    on_message: MessageCallback | None
    on_activation: ActivationCallback | None
    on_disconnect: DisconnectCallback | None
    sub: Subscription = field(init=False)


def _call(callback: Callable[..., object] | None, *args: Any) -> None:
    """Run a user callback; what it raises is logged, never let into the loop."""
    if callback is not None:
        try:
            callback(*args)
        except Exception:
            logger.exception("a redismpx callback raised")


def _as_list(names: Names) -> Iterable[str | bytes]:
    # The core iterates `names`: a lone "chan" would subscribe to "c", "h", "a", "n".
    return [names] if isinstance(names, str | bytes) else names


def _settle(fut: Future[Any], result: Any = None, error: Exception | None = None) -> None:
    if not fut.done():  # its caller may have cancelled it
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)


class BlockingMultiplexer:
    """Pub/Sub multiplexer over one Redis connection, driven by ``run_once``/``run_until``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, **options: Any) -> None:
        self.host, self.port = host, port
        self.core = MultiplexerCore(random=random.random, protocol=3, **options)
        self._selector = selectors.DefaultSelector()
        self._sock: socket.socket | None = None
        self._connect_by: float | None = None  # set while the TCP connect is in progress
        self._retry_at = 0.0  # the next connection attempt (the first: at once)
        self._out = bytearray()  # what the socket did not take yet
        self._publishes: dict[int, Future[int]] = {}  # token -> future
        self._unsent: list[tuple[bytes, bytes, Future[int]]] = []  # while disconnected
        self._closed = False

    @property
    def connected(self) -> bool:
        return self.core.state is ConnectionState.READY

    # ---------------------------------------------------------------- the loop

    def run_until(self, predicate: Callable[[], object], timeout: float) -> bool:
        """Run the loop until ``predicate()`` is true (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return False
            self.run_once(remaining)
        return True

    def run_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the socket or a timer, then handle what is due."""
        if self._closed:
            return
        now = time.monotonic()
        if self._sock is None and now >= self._retry_at:
            self._connect(now)
        try:
            self._write()
            wake: list[float | None] = [now + timeout, self.core.next_deadline()]
            wake.append(self._retry_at if self._sock is None else self._connect_by)
            wait = max(0.0, min(t for t in wake if t is not None) - now)
            if self._sock is None:
                time.sleep(wait)  # nothing to select on (select() wants a socket on Windows)
            else:
                for _, mask in self._selector.select(wait):
                    if self._connect_by is not None:
                        self._connected()
                    elif mask & selectors.EVENT_READ:
                        self._read()
            now = time.monotonic()
            deadline = self.core.next_deadline()
            if deadline is not None and now >= deadline:
                self._dispatch(self.core.handle_timeout(now))
            if self._connect_by is not None and now >= self._connect_by:
                raise ConnectionLost("connect timed out")
            self._write()
        except RedisMPXError as exc:  # the core says the connection is unusable
            self._lost(exc)
        except OSError as exc:  # so does the socket
            self._lost(ConnectionLost(f"{type(exc).__name__}: {exc}"))

    def _connect(self, now: float) -> None:
        try:  # getaddrinfo blocks: give an IP address where that matters
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM
            )[0]
            self._sock = socket.socket(family, kind, proto)
            self._sock.setblocking(False)
            self._selector.register(self._sock, selectors.EVENT_WRITE)  # writable: connected
            self._connect_by = now + (self.core.connect_timeout or float("inf"))
            if (code := self._sock.connect_ex(address)) not in _IN_PROGRESS:
                raise OSError(code, os.strerror(code))
        except OSError as exc:
            self._lost(ConnectionLost(f"{type(exc).__name__}: {exc}"))

    def _connected(self) -> None:
        assert self._sock is not None
        if code := self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            raise OSError(code, os.strerror(code))
        self._connect_by = None
        self._selector.modify(self._sock, selectors.EVENT_READ)
        self._dispatch(self.core.connection_made(time.monotonic()))

    def _read(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionLost("the server closed the connection")
        self._dispatch(self.core.receive_data(data, time.monotonic()))

    def _write(self) -> None:
        """The one writer: what the core queued goes out as far as the socket takes it."""
        if self._sock is None or self._connect_by is not None:
            return
        self._out += self.core.data_to_send()
        if self._out:
            with contextlib.suppress(BlockingIOError):  # full: try again when writable
                del self._out[: self._sock.send(self._out)]
        # Wake for writability only while something waits to go out.
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0)
        self._selector.modify(self._sock, events)

    def _lost(self, error: RedisMPXError) -> None:
        """After every connection or failed attempt: close, tell the core, back off."""
        if self._sock is not None:
            self._selector.unregister(self._sock)
            self._sock.close()
            self._sock = None
        self._connect_by = None
        self._out.clear()
        self._dispatch(self.core.connection_lost(error))
        self._retry_at = time.monotonic() + self.core.next_reconnect_delay()

    # ---------------------------------------------------------------- the API

    def subscribe(
        self,
        names: Names,
        on_message: MessageCallback,
        on_activation: ActivationCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
    ) -> Handle:
        """Channels. ``on_activation`` may run before this returns (a name already active)."""
        handle = Handle(on_message, on_activation, on_disconnect)
        handle.sub = self.core.open_subscription(SubscriptionKind.CHANNEL, handle)
        self.add(handle, names)
        return handle

    def add(self, handle: Handle, names: Names) -> None:
        self._dispatch(self.core.add(handle.sub, _as_list(names)))

    def psubscribe(
        self,
        pattern: str | bytes,
        on_message: MessageCallback,
        on_activation: ActivationCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
    ) -> Handle:
        """One glob pattern; ``on_message`` gets the channel each message came on."""
        handle = Handle(on_message, on_activation, on_disconnect)
        handle.sub, events = self.core.open_pattern_subscription(pattern, handle)
        self._dispatch(events)
        return handle

    def promises(
        self,
        prefix: str | bytes,
        on_activation: ActivationCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
    ) -> Handle:
        """A promise subscription (PSUBSCRIBE prefix*): ``promise()`` once it is active."""
        handle = Handle(None, on_activation, on_disconnect)
        handle.sub, events = self.core.open_promise_subscription(prefix, handle)
        self._dispatch(events)
        return handle

    def unsubscribe(self, handle: Handle, names: Names | None = None) -> None:
        """Remove ``names`` from a channel subscription; with no names, close the handle."""
        if names is None:
            self._dispatch(self.core.close_subscription(handle.sub))
        else:
            self.core.remove(handle.sub, _as_list(names))

    def promise(self, handle: Handle, suffix: str | bytes, timeout: float) -> Future[bytes]:
        """The next message on prefix + suffix, or TimeoutError after ``timeout`` seconds.

        Raises InactiveSubscription until the promise subscription is active.
        """
        future: Future[bytes] = Future()
        self.core.new_promise(handle.sub, suffix, timeout, time.monotonic(), future)
        return future

    def publish(self, channel: str | bytes, data: bytes) -> Future[int]:
        """PUBLISH; the future gets the number of receivers (sent once connected)."""
        if self._closed:
            raise SubscriptionClosed("the multiplexer is closed")
        name = coerce_name(channel, "channel")
        if not isinstance(data, bytes):
            raise TypeError("data must be bytes")
        future: Future[int] = Future()
        if self.core.state in _LIVE:
            self._publishes[self.core.publish(name, data)] = future
        else:
            self._unsent.append((name, data, future))
        return future

    def close(self) -> None:
        """Close every subscription, fail what is pending, close the socket."""
        if self._closed:
            return
        self._closed = True
        self._dispatch(self.core.close())
        for _, _, future in self._unsent:
            _settle(future, error=SubscriptionClosed("the multiplexer was closed"))
        self._unsent.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._selector.close()

    # ---------------------------------------------------------------- events to callbacks

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            match event:
                case MessagesReceived(subscribers, channel, pattern, payloads):
                    name = channel if pattern is None else pattern
                    for handle in subscribers:
                        for data in payloads:
                            if name not in handle.sub.names:
                                break  # a callback of this run unsubscribed it
                            _call(handle.on_message, channel, data)
                case NamesActivated(handle, names):
                    for name in names:
                        _call(handle.on_activation, name)
                case SubscriptionDisconnected(handle, error):
                    _call(handle.on_disconnect, error)
                case NameRejected(_, name, error):
                    logger.warning("Redis refused %r: %s", name, error)
                case PromiseFulfilled(future, data):
                    _settle(future, data)
                case PromiseExpired(future):
                    _settle(future, error=TimeoutError("the promise expired"))
                case PromiseFailed(future, error):
                    _settle(future, error=error)
                case PublishCompleted(token, receivers):
                    _settle(self._publishes.pop(token), receivers)
                case PublishFailed(token, error):
                    _settle(self._publishes.pop(token), error=error)
                case ConnectionEstablished():
                    unsent, self._unsent = self._unsent, []
                    for name, data, future in unsent:
                        if not future.cancelled():
                            self._publishes[self.core.publish(name, data)] = future


def main(host: str, port: int) -> None:
    mpx = BlockingMultiplexer(host, port)
    activated: list[bytes] = []
    mpx.subscribe(
        ["news", "weather"],
        lambda channel, data: print(f"{channel.decode()}: {data.decode()}"),
        on_activation=activated.append,
    )
    promises = mpx.promises("reply:", on_activation=activated.append)
    if not mpx.run_until(lambda: len(activated) == 3, timeout=10):
        sys.exit(f"no connection to {host}:{port}")
    print("active:", ", ".join(name.decode() for name in activated))
    sent = mpx.publish("news", b"hello")
    mpx.run_until(sent.done, timeout=5)
    print("receivers:", sent.result())
    reply = mpx.promise(promises, "42", timeout=5)
    mpx.publish("reply:42", b"the answer")
    mpx.run_until(reply.done, timeout=10)
    print("promise:", reply.result().decode())
    mpx.close()


if __name__ == "__main__":
    logging.basicConfig()
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    main(host, int(sys.argv[2]) if len(sys.argv) > 2 else 6379)
