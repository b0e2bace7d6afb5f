"""A complete redismpx driver on plain asyncio: one ``asyncio.Protocol``, no anyio.

The sans-I/O core (``redismpx_core.MultiplexerCore``) does all the Redis work; this
file only moves bytes and time in and out of it (see docs/embedding.md):

* ``loop.create_connection`` opens the socket; ``data_received`` feeds the core;
* ``_flush`` is the one writer: it writes ``core.data_to_send()`` and re-arms one
  ``loop.call_at`` timer at ``core.next_deadline()``, which calls ``handle_timeout``;
* an input that raises closes the transport, ``connection_lost`` tells the core, and
  ``loop.call_later(core.next_reconnect_delay(), ...)`` connects again.

It speaks RESP3 (Redis >= 6), so PUBLISH shares the subscription connection; under
RESP2 a second core with no subscriptions, run the same way, would publish.

    python examples/embedding/asyncio_protocol.py [HOST [PORT]]
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from collections.abc import Callable, Iterable
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

__all__ = ("Handle", "ProtocolMultiplexer")

logger = logging.getLogger("redismpx.examples")
_LIVE = (ConnectionState.HANDSHAKING, ConnectionState.READY)

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


def _settle(fut: asyncio.Future[Any], result: Any = None, error: Exception | None = None) -> None:
    if not fut.done():  # its caller may have cancelled it
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)


class ProtocolMultiplexer(asyncio.Protocol):
    """Pub/Sub multiplexer over one Redis connection.

    ``start()`` it in a running loop; subscriptions may be opened before, promises and
    publishes after.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, **options: Any) -> None:
        self.host, self.port = host, port
        self.core = MultiplexerCore(random=random.random, protocol=3, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._error: RedisMPXError | None = None  # why we closed the transport
        self._timer: asyncio.TimerHandle | None = None  # at core.next_deadline()
        self._retry: asyncio.TimerHandle | None = None  # the next connection attempt
        self._connecting: asyncio.Task[None] | None = None
        self._flush_soon: asyncio.Handle | None = None
        self._publishes: dict[int, asyncio.Future[int]] = {}  # token -> future
        self._unsent: list[tuple[bytes, bytes, asyncio.Future[int]]] = []  # while disconnected
        self._closed = False

    @property
    def connected(self) -> bool:
        return self.core.state is ConnectionState.READY

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("call start() first")
        return self._loop

    # ---------------------------------------------------------------- the API

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._connect()

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
        self._kick()

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
        self._kick()
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
        self._kick()
        return handle

    def unsubscribe(self, handle: Handle, names: Names | None = None) -> None:
        """Remove ``names`` from a channel subscription; with no names, close the handle."""
        if names is None:
            self._dispatch(self.core.close_subscription(handle.sub))
        else:
            self.core.remove(handle.sub, _as_list(names))
        self._kick()

    def promise(self, handle: Handle, suffix: str | bytes, timeout: float) -> asyncio.Future[bytes]:
        """The next message on prefix + suffix, or TimeoutError after ``timeout`` seconds.

        Raises InactiveSubscription until the promise subscription is active.
        """
        future: asyncio.Future[bytes] = self.loop.create_future()
        self.core.new_promise(handle.sub, suffix, timeout, self.loop.time(), future)
        self._kick()  # a new deadline
        return future

    def publish(self, channel: str | bytes, data: bytes) -> asyncio.Future[int]:
        """PUBLISH; the future gets the number of receivers (sent once connected)."""
        if self._closed:
            raise SubscriptionClosed("the multiplexer is closed")
        name = coerce_name(channel, "channel")
        if not isinstance(data, bytes):
            raise TypeError("data must be bytes")
        future: asyncio.Future[int] = self.loop.create_future()
        if self.core.state in _LIVE:
            self._publishes[self.core.publish(name, data)] = future
            self._kick()
        else:
            self._unsent.append((name, data, future))
        return future

    def close(self) -> None:
        """Close every subscription, fail what is pending, stop reconnecting, close the socket."""
        if self._closed:
            return
        self._closed = True
        self._dispatch(self.core.close())
        for _, _, future in self._unsent:
            _settle(future, error=SubscriptionClosed("the multiplexer was closed"))
        self._unsent.clear()
        for pending in (self._timer, self._retry, self._flush_soon, self._connecting):
            if pending is not None:
                pending.cancel()
        if self._transport is not None:
            self._transport.close()

    # ---------------------------------------------------------------- connecting

    def _connect(self) -> None:
        self._retry = None
        self._connecting = self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            async with asyncio.timeout(self.core.connect_timeout):
                await self.loop.create_connection(lambda: self, self.host, self.port)
        except OSError as exc:  # refused, unreachable, TimeoutError...
            self._lost(ConnectionLost(f"{type(exc).__name__}: {exc}"))

    def _lost(self, error: RedisMPXError) -> None:
        """After every connection or failed attempt: tell the core, then back off."""
        self._dispatch(self.core.connection_lost(error))
        if not self._closed:
            self._retry = self.loop.call_later(self.core.next_reconnect_delay(), self._connect)
        self._reschedule()

    def _drop(self, error: RedisMPXError) -> None:
        """An input raised: the connection is unusable. connection_lost() follows."""
        self._error = error
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._closed:  # closed while connecting
            transport.close()
            return
        self._transport, self._error = transport, None
        self._dispatch(self.core.connection_made(self.loop.time()))
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.core.receive_data(data, self.loop.time())
        except RedisMPXError as exc:
            self._drop(exc)  # the events before the error come back from connection_lost
            return
        self._dispatch(events)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        detail = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
        self._lost(self._error or ConnectionLost(detail))

    # ---------------------------------------------------------------- writing and time

    def _kick(self) -> None:
        """After an API call: flush on the loop's next turn (calls in one turn coalesce)."""
        if self._flush_soon is None and self._loop is not None and not self._closed:
            self._flush_soon = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """The one writer: send what the core has queued, then re-arm the timer."""
        self._flush_soon = None
        if self._transport is not None and (data := self.core.data_to_send()):
            self._transport.write(data)
        self._reschedule()

    def _reschedule(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None or (self._timer is not None and self._timer.when() <= deadline):
            return  # a timer that fires early is harmless: handle_timeout() then does nothing
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            events = self.core.handle_timeout(self.loop.time())
        except RedisMPXError as exc:  # HealthCheckTimeout, or a handshake too slow
            self._drop(exc)
            return
        self._dispatch(events)
        self._flush()

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


async def main(host: str, port: int) -> None:
    mpx = ProtocolMultiplexer(host, port)
    mpx.start()
    activated: asyncio.Queue[bytes] = asyncio.Queue()
    mpx.subscribe(
        ["news", "weather"],
        lambda channel, data: print(f"{channel.decode()}: {data.decode()}"),
        on_activation=activated.put_nowait,
    )
    promises = mpx.promises("reply:", on_activation=activated.put_nowait)
    for _ in range(3):  # news, weather and the promises' reply:* pattern
        print("active:", (await asyncio.wait_for(activated.get(), 10)).decode())
    print("receivers:", await mpx.publish("news", b"hello"))
    reply = mpx.promise(promises, "42", timeout=5)
    await mpx.publish("reply:42", b"the answer")
    print("promise:", (await reply).decode())
    mpx.close()


if __name__ == "__main__":
    logging.basicConfig()
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    asyncio.run(main(host, int(sys.argv[2]) if len(sys.argv) > 2 else 6379))
