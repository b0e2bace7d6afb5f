"""One connection's life, again and again: connect, handshake, read, write, time, reconnect.

The runner owns the socket. It reads and feeds the core, writes what the core
queues (one task owns the writes), fires the core's timers, and on any failure
closes the stream, reports the loss to the core and sleeps the backoff delay the
core chooses. It never parses a byte and makes no protocol decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
import trio.lowlevel

from redismpx_core import (
    ConnectionLost,
    Event,
    MultiplexerCore,
    RedisMPXError,
    Settings,
)

from ._backend import map_exceptions, open_stream

__all__ = ("ConnectionRunner",)

logger = logging.getLogger("redismpx")

READ_SIZE = 64 * 1024
#: How long closing a stream may take (a TLS close_notify to a dead peer must not hang us).
CLOSE_TIMEOUT = 1.0


class ConnectionRunner:
    """Runs ``core`` over successive connections until cancelled."""

    def __init__(
        self,
        core: MultiplexerCore,
        settings: Settings,
        dispatch: Callable[[list[Event]], None],
        on_lost: Callable[[], None],
        role: str,
    ) -> None:
        self.core = core
        self._settings = settings
        self._dispatch = dispatch
        self._on_lost = on_lost
        self._role = role
        self._wake = trio.Event()
        self._error: RedisMPXError | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped = False

    def wake(self) -> None:
        """Tell the writer the core may have bytes to send or a new deadline."""
        self._wake.set()

    def stop(self) -> None:
        """End :meth:`run` (a cluster router no longer wants this connection)."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        if self._stopped:
            return
        with trio.CancelScope() as self._scope:
            await self._run()

    async def _run(self) -> None:
        target = self._settings.redacted_url()
        while True:
            error, connected = await self._connection(target)
            # The core first, so that whoever hears of the loss sees it disconnected.
            self._dispatch(self.core.connection_lost(error))
            self._on_lost()
            delay = self.core.next_reconnect_delay()
            logger.info(
                "redismpx %s %s %s (%s); retrying in %.3f s",
                self._role,
                "connection lost to" if connected else "could not connect to",
                target,
                error,
                delay,
            )
            await trio.sleep(delay)

    async def _connection(self, target: str) -> tuple[RedisMPXError, bool]:
        """One connection attempt, start to end: why it ended, and whether it was made."""
        logger.debug("redismpx %s connecting to %s", self._role, target)
        try:
            stream = await open_stream(self._settings)
        except RedisMPXError as exc:
            return exc, False
        logger.info("redismpx %s connected to %s", self._role, target)
        self._error = None
        try:
            if self._stopped:
                # A stopped runner's core is closed (a cluster router dropped it), and the
                # stop's cancellation may not have reached this task yet: deliver it here,
                # before the core is touched (and again after each read).
                await trio.lowlevel.checkpoint()
            self._dispatch(self.core.connection_made(trio.current_time()))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, stream, nursery.cancel_scope)
                nursery.start_soon(self._write_and_time, stream, nursery.cancel_scope)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await stream.aclose()
        assert self._error is not None
        return self._error, True

    def _fail(self, error: RedisMPXError, scope: trio.CancelScope) -> None:
        if self._error is None:
            self._error = error
        scope.cancel()

    async def _read(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        core = self.core
        dispatch = self._dispatch
        try:
            while True:
                with map_exceptions():
                    data = await stream.receive_some(READ_SIZE)
                if not data:
                    raise ConnectionLost("the server closed the connection")
                if self._stopped:  # stopped during the read: see _connection
                    await trio.lowlevel.checkpoint()
                dispatch(core.receive_data(data, trio.current_time()))
                if core.wants_write:
                    self._wake.set()
        except RedisMPXError as exc:
            self._fail(exc, scope)

    async def _write_and_time(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        core = self.core
        try:
            while True:
                data = core.data_to_send()
                if data:
                    with map_exceptions():
                        await stream.send_all(data)
                    continue  # more may have been queued while we were writing
                wake = self._wake
                deadline = core.next_deadline()
                if deadline is None:
                    await wake.wait()
                else:
                    with trio.move_on_at(deadline):
                        await wake.wait()
                if wake.is_set():
                    self._wake = trio.Event()
                now = trio.current_time()
                if deadline is not None and now >= deadline:
                    self._dispatch(core.handle_timeout(now))
        except RedisMPXError as exc:
            self._fail(exc, scope)
