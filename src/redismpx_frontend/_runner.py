"""One connection's life, again and again: connect, handshake, read, write, time, reconnect.

The runner owns the socket. It reads and feeds the core, writes what the core
queues (one task owns the writes), fires the core's timers, and on any failure
closes the stream, reports the loss to the core and waits the backoff delay the
core chooses. It never parses a byte and makes no protocol decision: the core
decides, the runner carries out.

Each connection runs two tasks in a task group of its own: the reader (read, feed,
dispatch) and the writer (write what the core queued, then wait for more or for
the core's next deadline). Either one failing records why and cancels both; the
stream is then closed in a shielded, time-bounded scope, so that a peer that will
not finish a TLS close cannot hold the runner.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from redismpx_core import RedisMPXError

from ._backend import Backend, CancelScope, Stream
from ._connect import close_stream
from ._engine import Core, Events

__all__ = ("ConnectionRunner",)

logger = logging.getLogger("redismpx")


class ConnectionRunner:
    """Runs ``core`` over successive connections until stopped or cancelled.

    ``connect`` opens the next connection (raising ``ConnectionLost`` when it cannot);
    ``dispatch`` takes the events of every input; ``on_lost`` hears of every loss,
    after the core (so that it sees the core disconnected). ``role`` and ``target``
    name the connection in log lines (``target`` is a redacted URL).
    """

    def __init__(
        self,
        backend: Backend,
        core: Core,
        connect: Callable[[], Awaitable[Stream]],
        dispatch: Callable[[Events], None],
        on_lost: Callable[[], None],
        *,
        role: str,
        target: str,
    ) -> None:
        self.core = core
        self._backend = backend
        self._connect = connect
        self._dispatch = dispatch
        self._on_lost = on_lost
        self._role = role
        self._target = target
        self._wake = backend.new_signal()
        self._error: RedisMPXError | None = None
        self._scope: CancelScope | None = None
        # The scope of the attempt (connect, then the connection's tasks) under way, and
        # of the backoff wait under way: what reconnect() cancels.
        self._attempt: CancelScope | None = None
        self._waiting: CancelScope | None = None
        # reconnect(at_once=True) was called: the next attempt waits no backoff delay.
        self._at_once = False
        self._stopped = False

    def wake(self) -> None:
        """Tell the writer the core may have bytes to send or a new deadline."""
        self._wake.set()

    def stop(self) -> None:
        """End :meth:`run` (a cluster router no longer wants this connection)."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def reconnect(self, error: RedisMPXError, *, at_once: bool = False) -> None:
        """End the connection under way (or the attempt to make one) with ``error``,
        reported to the core and its subscriptions as any loss. The next attempt comes
        after the core's backoff delay; with ``at_once``, without waiting (a backoff
        wait under way ends too): the master moved, there is nothing to back off from.
        """
        if self._stopped:
            return
        if at_once:
            self._at_once = True
            if self._waiting is not None:
                self._waiting.cancel()
        if self._attempt is not None:
            self._fail(error, self._attempt)

    async def run(self) -> None:
        if self._stopped:
            return
        self._scope = self._backend.cancel_scope()
        with self._scope:
            await self._run()

    async def _run(self) -> None:
        backend = self._backend
        while True:
            error, connected = await self._connection()
            # The core first, so that whoever hears of the loss sees it disconnected.
            self._dispatch(self.core.connection_lost(error))
            self._on_lost()
            at_once, self._at_once = self._at_once, False
            delay = 0.0 if at_once else self.core.next_reconnect_delay()
            logger.info(
                "redismpx %s %s %s (%s); retrying %s",
                self._role,
                "connection lost to" if connected else "could not connect to",
                self._target,
                error,
                "at once" if at_once else f"in {delay:.3f} s",
            )
            if at_once:
                continue
            waiting = self._waiting = backend.cancel_scope(deadline=backend.now() + delay)
            try:
                with waiting:
                    await backend.new_signal().wait()  # never set: the deadline ends the wait
            finally:
                self._waiting = None
            self._at_once = False  # (set during the wait: it ended the wait)

    async def _connection(self) -> tuple[RedisMPXError, bool]:
        """One connection attempt, start to end: why it ended, and whether it was made."""
        backend = self._backend
        logger.debug("redismpx %s connecting to %s", self._role, self._target)
        self._error = None
        stream: Stream | None = None
        attempt = self._attempt = backend.cancel_scope()
        try:
            with attempt:
                try:
                    stream = made = await self._connect()
                except RedisMPXError as exc:
                    return exc, False
                logger.info("redismpx %s connected to %s", self._role, self._target)
                if self._stopped:
                    # A stopped runner's core is closed (a cluster router dropped it), and
                    # the stop's cancellation may not have reached this task yet: deliver
                    # it here, before the core is touched (and again after each read).
                    await backend.checkpoint()
                self._dispatch(self.core.connection_made(backend.now()))
                async with backend.open_task_group() as tasks:
                    scope = tasks.cancel_scope
                    tasks.start_soon(lambda: self._read(made, scope))
                    tasks.start_soon(lambda: self._write_and_time(made, scope))
        finally:
            self._attempt = None
            if stream is not None:
                await close_stream(backend, stream)
        assert self._error is not None, "an attempt ends only through _fail, once it connected"
        return self._error, stream is not None

    def _fail(self, error: RedisMPXError, scope: CancelScope) -> None:
        if self._error is None:
            self._error = error
        scope.cancel()

    async def _read(self, stream: Stream, scope: CancelScope) -> None:
        backend = self._backend
        core = self.core
        dispatch = self._dispatch
        while True:
            try:
                data = await stream.receive()
                if self._stopped:  # stopped during the read: see _connection
                    await backend.checkpoint()
                events = core.receive_data(data, backend.now())
            except RedisMPXError as exc:
                self._fail(exc, scope)
                return
            dispatch(events)
            if core.wants_write:
                self._wake.set()

    async def _write_and_time(self, stream: Stream, scope: CancelScope) -> None:
        backend = self._backend
        core = self.core
        while True:
            try:
                data = core.data_to_send()
                if data:
                    await stream.send(data)
                    continue  # more may have been queued while we were writing
                wake = self._wake
                deadline = core.next_deadline()
                with backend.cancel_scope(deadline=math.inf if deadline is None else deadline):
                    await wake.wait()
                if wake.is_set():
                    self._wake = backend.new_signal()
                now = backend.now()
                if deadline is None or now < deadline:
                    continue
                events = core.handle_timeout(now)
            except RedisMPXError as exc:
                self._fail(exc, scope)
                return
            self._dispatch(events)
