"""redismpx in a program with no event loop at all: a tiny scheduler on ``selectors``.

The front end (``redismpx_frontend``) is the whole public API, written once over a
small backend protocol (see docs/embedding.md). Its async parts are plain coroutines
that await only what the backend hands them, so any program that can drive
coroutines can run it. :class:`SelectorLoop` is such a driver, in one file and with
no asyncio, anyio or trio: tasks are coroutines it resumes; what they wait for is a
socket (``selectors``), a signal, or a deadline; cancel scopes and task groups work
as trio's do. It suits a blocking program, a thread of its own, a game or GUI loop:

* ``loop.run(coro)`` runs a coroutine to its end, and everything else meanwhile (like
  ``trio.run``);
* ``loop.run_once(timeout)`` does one turn, for a loop of your own that calls it.

Plain TCP and unix sockets only: TLS, which needs a non-blocking handshake, is left
out of this example (``rediss://`` fails with ``ConnectionLost``)::

    python examples/embedding/selectors_backend.py [HOST [PORT]]
"""

from __future__ import annotations

import errno
import heapq
import itertools
import math
import random
import selectors
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, TypeVar

from redismpx_core import ConnectionLost
from redismpx_frontend import Address, LibraryStream, Multiplexer, StreamErrors

__all__ = ("SelectorLoop", "main")

T = TypeVar("T")

_ERRORS = StreamErrors(ended=(), failed=(OSError,))


class Cancelled(BaseException):
    """Raised inside a cancelled scope at every wait, until the scope exits."""


class _Park:
    """What a task awaits to sleep: ``arm(task)`` arranges its wake-up, ``disarm(task)``
    undoes that when it is cancelled instead. A ``shielded`` park is not cancelled (a
    task group waiting for its children, which are cancelled in its place)."""

    __slots__ = ("arm", "disarm", "shielded")

    def __init__(
        self,
        arm: Callable[[_Task], None],
        disarm: Callable[[_Task], None],
        *,
        shielded: bool = False,
    ) -> None:
        self.arm = arm
        self.disarm = disarm
        self.shielded = shielded

    def __await__(self) -> Generator[_Park, Any, Any]:
        return (yield self)


def _nothing(task: _Task) -> None:
    pass


class _Task:
    __slots__ = ("coro", "done", "error", "on_done", "park", "result", "scopes", "send")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        scopes: list[CancelScope],
        on_done: Callable[[_Task], None] | None,
    ) -> None:
        self.coro = coro
        self.scopes = scopes  # the cancel scopes it runs in, outermost first
        self.on_done = on_done
        self.send: tuple[Any, BaseException | None] = (None, None)
        self.park: _Park | None = None  # what it waits for; None while ready or running
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def cancelled(self) -> bool:
        """Inside a cancelled scope that no shielded scope within it keeps out."""
        for scope in reversed(self.scopes):
            if scope.cancel_called:
                return True
            if scope.shield:
                return False
        return False


class CancelScope:
    """trio's cancel scope: cancelled by ``cancel()`` or at ``deadline``, it makes every
    wait inside it raise :class:`Cancelled` and absorbs that on exit."""

    def __init__(self, loop: SelectorLoop, deadline: float = math.inf, shield: bool = False):
        self._loop = loop
        self.deadline = deadline
        self.shield = shield
        self.cancel_called = False
        self.cancelled_caught = False
        self._tasks: list[_Task] = []

    def __enter__(self) -> CancelScope:
        task = self._loop.current
        task.scopes.append(self)
        self._tasks.append(task)
        if self.deadline != math.inf:
            self._loop.call_at(self.deadline, self.cancel)
        return self

    def cancel(self) -> None:
        if not self.cancel_called:
            self.cancel_called = True
            for task in self._tasks:
                self._loop.wake_if_cancelled(task)

    def adopt(self, task: _Task) -> None:
        """``task`` runs inside this scope too (a task group's child)."""
        self._tasks.append(task)

    def release(self, task: _Task) -> None:
        self._tasks.remove(task)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        task = self._loop.current
        task.scopes.remove(self)
        self._tasks.remove(task)
        if exc_type is Cancelled and self.cancel_called:
            self.cancelled_caught = True
            return True
        return False


class TaskGroup:
    """Owns tasks: ``async with`` waits for every one; cancelling ``cancel_scope`` cancels
    them all. A task that raises cancels the rest, and the group raises its error."""

    def __init__(self, loop: SelectorLoop) -> None:
        self._loop = loop
        self.cancel_scope = CancelScope(loop)
        self._children: set[_Task] = set()
        self._error: BaseException | None = None
        self._host: _Task | None = None

    async def __aenter__(self) -> TaskGroup:
        self.cancel_scope.__enter__()
        return self

    def start_soon(self, fn: Callable[[], Coroutine[Any, Any, None]], /) -> None:
        # The child runs in the scopes the group runs in: cancelling any of them cancels it.
        scopes = [*self._loop.current.scopes]
        child = self._loop.spawn(fn(), scopes, on_done=self._child_done)
        for scope in scopes:
            scope.adopt(child)
        self._children.add(child)

    def _child_done(self, child: _Task) -> None:
        self._children.discard(child)
        for scope in child.scopes:
            scope.release(child)
        if child.error is not None and not isinstance(child.error, Cancelled):
            self._error = self._error or child.error
            self.cancel_scope.cancel()
        if not self._children and self._host is not None:
            self._loop.schedule(self._host)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc is not None:
            self.cancel_scope.cancel()  # the body failed: the children stop
        while self._children:
            # Not cancellable: when a scope around the group is cancelled, so are the
            # children, and the group waits for them to finish.
            await _Park(self._wait_here, self._stop_waiting, shielded=True)
        if self._error is not None:
            self.cancel_scope.__exit__(type(self._error), self._error, None)
            raise self._error
        # Like every wait, leaving a group inside a cancelled scope raises Cancelled.
        error = exc if exc is not None or not self._loop.current.cancelled() else Cancelled()
        if self.cancel_scope.__exit__(type(error) if error else None, error, None):
            return True  # its own cancellation, absorbed
        if error is not exc:
            raise error  # type: ignore[misc]
        return False

    def _wait_here(self, task: _Task) -> None:
        self._host = task

    def _stop_waiting(self, task: _Task) -> None:
        self._host = None


class _Signal:
    """A one-shot event."""

    __slots__ = ("_flag", "_loop", "_waiters")

    def __init__(self, loop: SelectorLoop) -> None:
        self._loop = loop
        self._flag = False
        self._waiters: set[_Task] = set()

    def set(self) -> None:
        self._flag = True
        for task in self._waiters:
            self._loop.schedule(task)
        self._waiters.clear()

    def is_set(self) -> bool:
        return self._flag

    async def wait(self) -> None:
        if self._flag:
            await self._loop.checkpoint()
        else:
            await _Park(self._waiters.add, self._waiters.discard)


class SelectorLoop:
    """A :class:`redismpx_frontend.Backend`, and the scheduler that runs it."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._ready: deque[_Task] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._current: _Task | None = None

    # ---- the backend protocol

    now = staticmethod(time.monotonic)
    random = staticmethod(random.random)

    def new_signal(self) -> _Signal:
        return _Signal(self)

    def open_task_group(self) -> TaskGroup:
        return TaskGroup(self)

    def cancel_scope(self, *, deadline: float = math.inf, shield: bool = False) -> CancelScope:
        return CancelScope(self, deadline, shield)

    async def checkpoint(self) -> None:
        await _Park(self.schedule, _nothing)

    async def connect(self, address: Address) -> LibraryStream:
        if address.tls is not None:
            raise ConnectionLost("TLS is left out of this example")
        family = socket.AF_UNIX if address.path is not None else socket.AF_INET
        with _ERRORS.mapped():
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                target = address.path if address.path is not None else (address.host, address.port)
                if sock.connect_ex(target) not in (0, errno.EINPROGRESS, errno.EAGAIN):
                    sock.connect(target)  # raises the error connect_ex returned
                await self._wait(sock, selectors.EVENT_WRITE)
                failure = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if failure:
                    raise OSError(failure, errno.errorcode.get(failure, "connect failed"))
            except BaseException:
                sock.close()
                raise
        return LibraryStream(*_SocketIO(self, sock).methods(), _ERRORS)

    # ---- running

    @property
    def current(self) -> _Task:
        assert self._current is not None, "not inside a task of this loop"
        return self._current

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` (and every task it starts) until it returns; its result."""
        root = self.spawn(coro, [])
        while not root.done:
            self.run_once(math.inf)
        if root.error is not None:
            raise root.error
        result: T = root.result
        return result

    def run_once(self, timeout: float) -> None:
        """One turn: wait for a socket or a timer (at most ``timeout`` seconds, none if
        a task is ready), then run every task that became ready."""
        if self._ready:
            timeout = 0
        elif self._timers:
            timeout = min(timeout, max(0.0, self._timers[0][0] - time.monotonic()))
        if self._selector.get_map():
            for key, _ in self._selector.select(None if timeout == math.inf else timeout):
                self._selector.unregister(key.fileobj)
                self.schedule(key.data)
        elif timeout == math.inf:
            raise RuntimeError("nothing can wake any task: the program waits for nothing")
        else:
            time.sleep(timeout)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            heapq.heappop(self._timers)[2]()
        for _ in range(len(self._ready)):
            self._step(self._ready.popleft())

    def spawn(
        self,
        coro: Coroutine[Any, Any, Any],
        scopes: list[CancelScope],
        on_done: Callable[[_Task], None] | None = None,
    ) -> _Task:
        task = _Task(coro, scopes, on_done)
        self._ready.append(task)
        return task

    def schedule(self, task: _Task, value: Any = None, error: BaseException | None = None) -> None:
        if task.park is None:
            return  # already scheduled
        task.park = None
        task.send = (value, error)
        self._ready.append(task)

    def wake_if_cancelled(self, task: _Task) -> None:
        if task.park is not None and not task.park.shielded and task.cancelled():
            task.park.disarm(task)
            self.schedule(task, error=Cancelled())

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._order), fn))

    def _step(self, task: _Task) -> None:
        value, error = task.send
        self._current = task
        try:
            park = task.coro.throw(error) if error is not None else task.coro.send(value)
        except StopIteration as stop:
            task.done, task.result = True, stop.value
        except BaseException as exc:
            task.done, task.error, task.result = True, exc, None
        else:
            if task.cancelled() and not park.shielded:
                self._ready.append(task)  # every wait in a cancelled scope raises at once
                task.send = (None, Cancelled())
                return
            task.park = park
            park.arm(task)
            return
        finally:
            self._current = None
        if task.on_done is not None:
            task.on_done(task)

    async def _wait(self, sock: socket.socket, event: int) -> None:
        def arm(task: _Task) -> None:
            self._selector.register(sock, event, task)

        def disarm(task: _Task) -> None:
            self._selector.unregister(sock)

        await _Park(arm, disarm)


class _SocketIO:
    """A non-blocking socket's reads, writes and close, as coroutines on the loop."""

    def __init__(self, loop: SelectorLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock

    def methods(self) -> tuple[Any, Any, Any]:
        return self.receive, self.send, self.aclose

    async def receive(self, size: int) -> bytes:
        while True:
            try:
                return self._sock.recv(size)  # b"": the peer closed it
            except BlockingIOError:
                await self._loop._wait(self._sock, selectors.EVENT_READ)

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view) :]
            except BlockingIOError:
                await self._loop._wait(self._sock, selectors.EVENT_WRITE)

    async def aclose(self) -> None:
        self._sock.close()


async def demo(host: str, port: int, loop: SelectorLoop) -> None:
    """Subscriptions with callbacks, an iterator, a publish and a promise."""
    async with Multiplexer(f"redis://{host}:{port}/0", backend=loop) as mpx:
        active: list[bytes] = []
        both_active = loop.new_signal()

        def on_activation(name: bytes) -> None:
            active.append(name)
            if len(active) == 2:
                both_active.set()

        sub = mpx.new_channel_subscription(
            lambda channel, data: print(f"{channel.decode()}: {data.decode()}"),
            on_activation=on_activation,
        )
        sub.add("news", "weather")
        await both_active.wait()
        print("active:", ", ".join(name.decode() for name in sorted(active)))
        print("receivers:", await mpx.publish("news", b"hello"))
        async with mpx.subscribe("alerts") as alerts:  # the iterator form
            await mpx.publish("alerts", b"fire drill")
            print("alert:", (await alerts.__anext__()).data.decode())
        promises = mpx.new_promise_subscription("reply:")
        reply = await promises.wait_for_new_promise("42", 5)
        await mpx.publish("reply:42", b"the answer")
        print("promise:", (await reply).decode())


def main(host: str = "127.0.0.1", port: int = 6379) -> None:
    loop = SelectorLoop()
    loop.run(demo(host, port, loop))


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1",
        int(sys.argv[2]) if len(sys.argv) > 2 else 6379,
    )
