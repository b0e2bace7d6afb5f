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

import random
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol

from redismpx_core import ConnectionLost
from redismpx_core._errors import describe_cause

if TYPE_CHECKING:
    from ssl import SSLContext

__all__ = (
    "READ_SIZE",
    "Address",
    "Backend",
    "CancelScope",
    "LibraryStream",
    "Signal",
    "Stream",
    "StreamErrors",
    "StructuredBackend",
    "TaskGroup",
    "TrioNames",
)

#: Bytes asked of a socket per read.
READ_SIZE: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Address:
    """Where to connect: a unix socket's ``path``, or else ``host`` and ``port``, over TLS
    when ``tls`` is given (verifying ``host`` as its context says)."""

    host: str = ""
    port: int = 0
    tls: SSLContext | None = None
    path: str | None = None


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

    async def receive(self) -> bytes | bytearray:
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

    async def connect(self, address: Address, /) -> Stream:
        """A connection to ``address`` (over TLS when it says so, the handshake done);
        raises ``ConnectionLost`` when it cannot be made."""
        ...


class StreamErrors:
    """How an I/O library says a connection is over: ``ended`` (the peer closed it) and
    ``failed`` (anything else that breaks it). :meth:`mapped` turns them into
    ``ConnectionLost``: the one boundary where a backend's errors become ours."""

    __slots__ = ("ended", "failed")

    def __init__(
        self, *, ended: tuple[type[BaseException], ...], failed: tuple[type[BaseException], ...]
    ) -> None:
        self.ended = ended
        self.failed = failed

    @contextmanager
    def mapped(self) -> Iterator[None]:
        try:
            yield
        except self.ended:
            raise ConnectionLost("the server closed the connection") from None
        except self.failed as exc:
            raise ConnectionLost(describe_cause(exc)) from exc


class LibraryStream:
    """An I/O library's byte stream as a :class:`Stream`: its own ``receive(max_bytes)``
    (an empty read is the end of the stream), ``send`` and ``aclose``, with its errors
    mapped by ``errors``."""

    __slots__ = ("_aclose", "_errors", "_receive", "_send")

    def __init__(
        self,
        receive: Callable[[int], Awaitable[bytes | bytearray]],
        send: Callable[[bytes], Awaitable[None]],
        aclose: Callable[[], Awaitable[None]],
        errors: StreamErrors,
    ) -> None:
        self._receive = receive
        self._send = send
        self._aclose = aclose
        self._errors = errors

    async def receive(self) -> bytes | bytearray:
        # No context manager here: this runs once per read, on the hot path.
        errors = self._errors
        try:
            data = await self._receive(READ_SIZE)
        except errors.ended:
            data = b""
        except errors.failed as exc:
            raise ConnectionLost(describe_cause(exc)) from exc
        if not data:
            raise ConnectionLost("the server closed the connection")
        return data

    async def send(self, data: bytes) -> None:
        with self._errors.mapped():
            await self._send(data)

    async def aclose(self) -> None:
        with self._errors.mapped():
            await self._aclose()


class TrioNames(Protocol):
    """A library that names its clock, events and cancel scopes as trio does: the
    ``trio`` module, and the ``anyio`` module, which follows trio's names."""

    def current_time(self) -> float: ...
    @property
    def Event(self) -> Callable[[], Signal]: ...
    @property
    def CancelScope(self) -> Callable[..., CancelScope]: ...


class StructuredBackend:
    """A :class:`Backend` on a structured-concurrency library (``library``: its module),
    given what it keeps elsewhere or spells its own way: its checkpoint, how it opens a
    task group, and how it connects. Jitter comes from :func:`random.random`."""

    __slots__ = (
        "cancel_scope",
        "checkpoint",
        "connect",
        "new_signal",
        "now",
        "open_task_group",
        "random",
    )

    def __init__(
        self,
        library: TrioNames,
        checkpoint: Callable[[], Coroutine[Any, Any, None]],
        open_task_group: Callable[[], AbstractAsyncContextManager[TaskGroup]],
        connect: Callable[[Address], Coroutine[Any, Any, Stream]],
    ) -> None:
        self.now = library.current_time
        self.random = random.random
        self.new_signal = library.Event
        self.cancel_scope = library.CancelScope
        self.checkpoint = checkpoint
        self.open_task_group = open_task_group
        self.connect = connect
