"""The backend protocol: what the front end needs from an event loop, and nothing more.

Everything above this protocol (subscriptions, delivery, iterators, promises, the
connection runner with its handshake, timers and backoff, Sentinel discovery, the
cluster's connections) is written once, in this package. A *backend* adapts one
I/O library to it: ``redismpx_anyio`` and ``redismpx_trio`` are each one backend
and a few names; docs/embedding.md shows two more (plain asyncio, and a blocking
program on ``selectors``). Implement :class:`Backend` for your loop and
``Multiplexer(url, backend=YourBackend())`` gives you the whole public API.

The shapes are those of structured concurrency (trio's, which anyio shares): a
task group that owns tasks, cancel scopes with deadlines, one-shot signals. anyio's
and trio's own objects satisfy :class:`Signal`, :class:`CancelScope` and
:class:`TaskGroup` as they are; a backend writes only the clock, the jitter, and
the streams, whose errors it maps to :class:`~redismpx_core.ConnectionLost` at
exactly one boundary.

The contract, beyond the signatures:

* Cancellation is level-triggered and scoped: once a scope is cancelled (or its
  deadline passes), every ``await`` inside it that has not finished raises the
  loop's cancellation exception, which the scope absorbs on exit. The front end
  never catches that exception. A scope made with ``shield=True`` keeps outer
  cancellation out (only its own deadline applies): the front end uses one, with
  a deadline, to close a stream on its way out.
* A task group's ``async with`` waits for every task started in it; cancelling the
  group's ``cancel_scope`` cancels them all. The front end's tasks never raise
  (they report errors through events), so a group never has more than one error
  to raise, and none reaches the user.
* Streams raise :class:`~redismpx_core.ConnectionLost` (and nothing else of their
  own) when the connection fails or the peer closes it; ``receive`` never returns
  ``b""``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ssl import SSLContext

__all__ = ("Backend", "CancelScope", "Signal", "Stream", "TaskGroup")


class Signal(Protocol):
    """A one-shot event: ``set()`` from anywhere in the loop's thread, ``await wait()``
    from a task (returns at once if already set). ``anyio.Event``, ``trio.Event``."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> object: ...


class CancelScope(Protocol):
    """``with scope:`` cancels what runs inside it at its deadline, or when ``cancel()``
    is called (before or after it is entered); it absorbs its own cancellation, and
    ``cancelled_caught`` then tells that it did. ``anyio.CancelScope``,
    ``trio.CancelScope``."""

    def __enter__(self) -> object: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None: ...
    def cancel(self) -> None: ...
    @property
    def cancelled_caught(self) -> bool: ...


class TaskGroup(Protocol):
    """Owns tasks: its ``async with`` waits for them all. ``anyio.abc.TaskGroup``,
    ``trio.Nursery``."""

    @property
    def cancel_scope(self) -> CancelScope: ...
    def start_soon(self, fn: Callable[[], Coroutine[Any, Any, None]], /) -> object: ...


class Stream(Protocol):
    """One connection's bytes, both ways. Every failure is a ``ConnectionLost``."""

    async def receive(self) -> bytes:
        """The next bytes (up to a buffer's worth, never empty); raises ``ConnectionLost``
        on end of stream."""
        ...

    async def send(self, data: bytes) -> None:
        """All of ``data``, in order; one task at a time calls this."""
        ...

    async def aclose(self) -> None:
        """Close the connection (a TLS close may talk to the peer: the front end bounds
        it with a shielded scope)."""
        ...


class Backend(Protocol):
    """One event loop, as the front end sees it: clock, jitter, signals, tasks,
    cancel scopes and connections."""

    def now(self) -> float:
        """The loop's monotonic clock, in seconds: every deadline is in this clock."""
        ...

    def random(self) -> float:
        """A float in [0, 1): the jitter of reconnect backoff (inject a constant in tests)."""
        ...

    def new_signal(self) -> Signal: ...

    def open_task_group(self) -> AbstractAsyncContextManager[TaskGroup]: ...

    def cancel_scope(self, *, deadline: float = ..., shield: bool = False) -> CancelScope:
        """A new, unentered scope; ``deadline`` in :meth:`now`'s clock (no deadline by
        default: a scope to cancel by hand)."""
        ...

    async def checkpoint(self) -> None:
        """Let other tasks run (and deliver a pending cancellation)."""
        ...

    async def connect_tcp(self, host: str, port: int, tls: SSLContext | None) -> Stream:
        """A TCP connection, over TLS when ``tls`` is given (its handshake done, ``host``
        as the name to verify). Raises ``ConnectionLost`` when it cannot be made."""
        ...

    async def connect_unix(self, path: str) -> Stream:
        """A unix-socket connection; raises ``ConnectionLost`` when it cannot be made."""
        ...
