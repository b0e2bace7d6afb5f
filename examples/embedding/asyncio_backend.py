"""redismpx on plain asyncio, without anyio: a :class:`redismpx_frontend.Backend` for it.

The front end (``redismpx_frontend``) is the whole public API, written once over a
small backend protocol: a clock, jitter, signals, task groups, cancel scopes and
connections (see docs/embedding.md). This file is that protocol on nothing but the
standard library's asyncio, which is also what Tornado, aiohttp, and Qt through
qasync or PySide6.QtAsyncio run on:

* signals are ``asyncio.Event``; the clock is ``loop.time()``;
* connections are ``asyncio.open_connection`` (TLS included) and
  ``open_unix_connection``, wrapped by the front end's ``LibraryStream`` with this
  file's error table;
* cancel scopes and task groups, which asyncio spells differently (its cancellation
  is a one-shot ``Task.cancel()``), are the two small classes below.

Then ``Multiplexer(url, backend=AsyncioBackend())`` is the same multiplexer as the
drivers', callbacks, iterators and promises included::

    python examples/embedding/asyncio_backend.py [HOST [PORT]]
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
import sys
import weakref
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

from redismpx_frontend import Address, LibraryStream, Multiplexer, StreamErrors

__all__ = ("AsyncioBackend", "main")

_ERRORS = StreamErrors(ended=(), failed=(OSError, ssl.SSLError))

#: Each task's cancel scopes, innermost last: a cancellation asks whether a shielded
#: scope stands between it and the task.
_SCOPES: weakref.WeakKeyDictionary[asyncio.Task[Any], list[CancelScope]] = (
    weakref.WeakKeyDictionary()
)


class CancelScope:
    """A trio-style cancel scope: cancelled by hand or at ``deadline`` (the loop's clock),
    it cancels the task inside it and absorbs that cancellation on exit. ``shield``
    holds back the cancellation of outer scopes until it exits.

    asyncio delivers a cancellation once (``Task.cancel()``); the front end never
    catches it, so once is enough: it unwinds to this scope, which takes it back
    (``Task.uncancel()``).
    """

    def __init__(self, deadline: float = math.inf, shield: bool = False) -> None:
        self.deadline = deadline
        self.shield = shield
        self.cancelled_caught = False
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._cancel_called = False
        self._delivered = False
        self._exited = False

    def __enter__(self) -> CancelScope:
        task = asyncio.current_task()
        assert task is not None, "a cancel scope is entered in a task"
        self._task = task
        _SCOPES.setdefault(task, []).append(self)
        if self._cancel_called:
            self._deliver()
        elif self.deadline != math.inf:
            self._timer = asyncio.get_running_loop().call_at(self.deadline, self.cancel)
        return self

    def cancel(self) -> None:
        if self._cancel_called or self._exited:
            return
        self._cancel_called = True
        if self._task is not None:
            self._deliver()

    def _deliver(self) -> None:
        task = self._task
        assert task is not None
        scopes = _SCOPES[task]
        inner = scopes[scopes.index(self) + 1 :]
        if self._delivered or any(scope.shield for scope in inner):
            return  # a shielded scope inside delivers it when it exits
        self._delivered = True
        task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self._exited = True
        if self._timer is not None:
            self._timer.cancel()
        task = self._task
        assert task is not None
        scopes = _SCOPES[task]
        scopes.remove(self)
        if self.shield:
            for outer in scopes:  # what the shield held back goes out now
                if outer._cancel_called:
                    outer._deliver()
        if self._delivered and exc_type is asyncio.CancelledError and task.uncancel() == 0:
            self.cancelled_caught = True
            return True
        return False


class TaskGroup:
    """Owns tasks: ``async with`` waits for them all; ``cancel_scope.cancel()`` cancels
    them (and the body, if it is still running)."""

    def __init__(self) -> None:
        self.cancel_scope = _GroupScope(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []

    async def __aenter__(self) -> TaskGroup:
        self.cancel_scope.__enter__()
        return self

    def start_soon(self, fn: Callable[[], Coroutine[Any, Any, None]], /) -> None:
        task = asyncio.get_running_loop().create_task(self._run(fn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        with self.cancel_scope.for_child():
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # a bug in the front end: stop the group, report it
                self._errors.append(exc)
                self.cancel_scope.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        cancelled: asyncio.CancelledError | None = None
        while self._tasks:
            try:
                await asyncio.wait(set(self._tasks))
            except asyncio.CancelledError as error:  # an outer scope: stop the children
                cancelled = error
                self.cancel_scope.cancel()
        error = cancelled or exc
        swallowed = self.cancel_scope.__exit__(type(error) if error else None, error, None)
        if self._errors:
            raise self._errors[0]
        if cancelled is not None and not swallowed:
            raise cancelled
        return swallowed and exc_type is asyncio.CancelledError


class _GroupScope(CancelScope):
    """A task group's scope: cancelling it cancels the body and every child's scope."""

    def __init__(self, group: TaskGroup) -> None:
        super().__init__()
        self._children: list[CancelScope] = []

    def for_child(self) -> CancelScope:
        child = CancelScope()
        if self._cancel_called:
            child.cancel()
        self._children.append(child)
        return child

    def cancel(self) -> None:
        if not self._exited and self._task is not None and not self._cancel_called:
            self._cancel_called = True
            self._deliver()
        self._cancel_called = True
        for child in self._children:
            child.cancel()


class AsyncioBackend:
    """:class:`redismpx_frontend.Backend` on plain asyncio."""

    random = staticmethod(random.random)
    new_signal = asyncio.Event
    open_task_group = TaskGroup

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    @staticmethod
    def cancel_scope(*, deadline: float = math.inf, shield: bool = False) -> CancelScope:
        return CancelScope(deadline, shield)

    @staticmethod
    async def checkpoint() -> None:
        await asyncio.sleep(0)

    @staticmethod
    async def connect(address: Address) -> LibraryStream:
        with _ERRORS.mapped():
            if address.path is not None:
                reader, writer = await asyncio.open_unix_connection(address.path)
            else:
                reader, writer = await asyncio.open_connection(
                    address.host,
                    address.port,
                    ssl=address.tls,
                    server_hostname=address.host if address.tls is not None else None,
                )

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        async def aclose() -> None:
            writer.close()
            await writer.wait_closed()

        return LibraryStream(reader.read, send, aclose, _ERRORS)


async def main(host: str, port: int) -> None:
    """The demo: subscriptions with callbacks, an iterator, a publish and a promise."""
    async with Multiplexer(f"redis://{host}:{port}/0", backend=AsyncioBackend()) as mpx:
        active = asyncio.Queue[bytes]()
        sub = mpx.new_channel_subscription(
            lambda channel, data: print(f"{channel.decode()}: {data.decode()}"),
            on_activation=active.put_nowait,
        )
        sub.add("news", "weather")
        for _ in range(2):
            print("active:", (await asyncio.wait_for(active.get(), 10)).decode())
        print("receivers:", await mpx.publish("news", b"hello"))
        async with mpx.subscribe("alerts") as alerts:  # the iterator form
            await mpx.publish("alerts", b"fire drill")
            print("alert:", (await alerts.__anext__()).data.decode())
        promises = mpx.new_promise_subscription("reply:")
        reply = await promises.wait_for_new_promise("42", 5)
        await mpx.publish("reply:42", b"the answer")
        print("promise:", (await reply).decode())


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1",
            int(sys.argv[2]) if len(sys.argv) > 2 else 6379,
        )
    )
