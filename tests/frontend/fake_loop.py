"""A deterministic event loop for the front end: the Backend protocol with no sockets, no
threads and no real time.

Theory of operation
===================

:class:`FakeLoop` implements :class:`redismpx_frontend.Backend` for tests. A test
owns the loop and moves it on in steps; between steps nothing happens at all.

Tasks are plain coroutines. The loop drives each with ``send``/``throw``; a task
gives control back by yielding one of two *traps*: a checkpoint (run me again
later, unless I am cancelled) or a park (I wait until someone wakes me: a
signal set, bytes delivered to a stream I read, the last child of my task group
done). :meth:`FakeLoop.run_until_idle` runs tasks, in the order they became
runnable, until every task is parked: that is how each step of a test ends. A
task that never parks (a busy loop of checkpoints) would keep it busy forever,
so it gives up after ``max_steps`` resumptions and raises :class:`NeverIdle`.

Time is virtual: :meth:`FakeLoop.now` moves only in :meth:`FakeLoop.advance`,
which jumps from deadline to deadline up to its target and runs the loop until
idle at each, so that timers fire in order and what one timer's task does (say,
a reconnect) happens before the next one is due. :meth:`FakeLoop.random` is a
constant, or a seeded source the test gives.

Cancellation follows trio. A :class:`FakeCancelScope` is entered in one task and
chains to the scope that enclosed it (a child task's outermost scope is its task
group's). A task is *effectively cancelled* when a scope on its chain is
cancelled (``cancel()``, before or after entering, or its deadline reached), with
the walk stopping at a shielded scope. Cancellation is level-triggered: every
checkpoint or park of an effectively cancelled task raises :class:`Cancelled`,
again and again, until the exception leaves the cancelled scope, which absorbs
it (``cancelled_caught``) unless an enclosing scope is cancelled too (then that
one absorbs it). Parked tasks are checked whenever the run queue empties, so a
``cancel()`` or a deadline reaches a task blocked in a read or a wait.

Task groups (:meth:`FakeLoop.open_task_group`) own their children: leaving the
``async with`` waits for them all; cancelling the group's ``cancel_scope``
cancels them all; a child that raises anything but :class:`Cancelled` cancels its
siblings, is recorded in :attr:`FakeLoop.failures` at once, and is raised again
(in an ``ExceptionGroup``) when the group exits. A root task
(:meth:`FakeLoop.spawn`) that raises is recorded the same way. A recorded
failure makes the next :meth:`run_until_idle` raise :class:`TaskFailed`, so a bug
in the front end surfaces in the test that caused it, not later.

Connections reach in-memory servers (``tests/core/fake_redis.py``'s
``FakeConnection``) registered by address with :meth:`FakeLoop.listen`. Bytes
the client sends reach its server at once (the server executes them as it gets
them); bytes the server queues wait in the server until the test delivers them
(:meth:`FakeStream.deliver`, all or a chosen number of bytes), so that the test
chooses every interleaving of server output and client work. :meth:`FakeStream.
drop` breaks a connection (the server forgets its subscriptions, undelivered
output is lost, the client's next read raises ``ConnectionLost``); an address
marked down (:attr:`FakeLoop.down`) refuses connections, and one marked hanging
(:attr:`FakeLoop.hanging`) never answers, until the caller's deadline.
"""

from __future__ import annotations

import contextlib
import math
import random as _random
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from core.fake_redis import FakeConnection
from redismpx_core import ConnectionLost
from redismpx_frontend import Address

__all__ = (
    "Cancelled",
    "FakeCancelScope",
    "FakeLoop",
    "FakeSignal",
    "FakeStream",
    "FakeTaskGroup",
    "NeverIdle",
    "Task",
    "TaskFailed",
)

#: Where a stream connects: a unix socket's path, or (host, port).
Key = str | tuple[str, int]


class Cancelled(BaseException):
    """The fake loop's cancellation: raised at checkpoints and parks, absorbed by scopes."""


class NeverIdle(AssertionError):
    """A task kept running without ever waiting: the loop would never be idle."""


class TaskFailed(AssertionError):
    """A task raised: a bug surfaced (the exception is the cause)."""


_CHECKPOINT = object()


class _Park:
    __slots__ = ("abort",)

    def __init__(self, abort: Callable[[], object] | None) -> None:
        # Called when cancellation takes the task out of its wait; None: uncancellable.
        self.abort = abort


@types.coroutine
def _trap(request: object) -> Generator[object, Any, Any]:
    return (yield request)


def _address_key(address: Address) -> Key:
    return address.path if address.path is not None else (address.host, address.port)


class Task:
    """One coroutine the loop drives; ``done``, then ``result`` or ``exception``."""

    def __init__(
        self,
        loop: FakeLoop,
        coro: Coroutine[Any, Any, Any],
        name: str,
        group: FakeTaskGroup | None,
    ) -> None:
        self.loop = loop
        self.coro = coro
        self.name = name
        self.group = group
        #: Scopes entered in this task, innermost last.
        self.scopes: list[FakeCancelScope] = []
        # A child's outermost scope is its group's; a root task has one of its own.
        self.outer: FakeCancelScope | None = group.cancel_scope if group is not None else None
        self.root_scope: FakeCancelScope | None = None
        self.park: _Park | None = None
        self.throw: BaseException | None = None
        self.done = False
        self.result: Any = None
        self.exception: BaseException | None = None

    def __repr__(self) -> str:
        state = "done" if self.done else ("parked" if self.park else "runnable")
        return f"<Task {self.name} {state}>"

    def innermost(self) -> FakeCancelScope | None:
        return self.scopes[-1] if self.scopes else self.outer

    def cancel(self) -> None:
        """Cancel a root task (its own scope)."""
        assert self.root_scope is not None, "only root tasks are cancelled this way"
        self.root_scope.cancel()

    @property
    def parked(self) -> bool:
        return self.park is not None


class FakeCancelScope:
    """trio's CancelScope, on the fake loop (see the module docstring)."""

    def __init__(self, loop: FakeLoop, deadline: float = math.inf, shield: bool = False) -> None:
        self._loop = loop
        self.deadline = deadline
        self.shield = shield
        self.cancel_called = False
        self.cancelled_caught = False
        self.parent: FakeCancelScope | None = None
        self._task: Task | None = None
        self._entered = False

    def __repr__(self) -> str:
        return f"<FakeCancelScope deadline={self.deadline} cancelled={self.cancel_called}>"

    def cancel(self) -> None:
        # Nothing to wake here: the loop looks at parked tasks whenever its queue empties.
        self.cancel_called = True

    def own_cancelled(self) -> bool:
        return self.cancel_called or self._loop.now() >= self.deadline

    def __enter__(self) -> FakeCancelScope:
        if self._entered:
            raise RuntimeError("a cancel scope is entered once")
        task = self._loop.current_task()
        self._entered = True
        self._task = task
        self.parent = task.innermost()
        task.scopes.append(self)
        self._loop._scopes[self] = None
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> bool:
        task = self._task
        assert task is not None
        self._loop._scopes.pop(self, None)
        if self._loop._current is None or isinstance(exc, GeneratorExit):
            # A task abandoned while parked, closed by the garbage collector: unwind.
            if self in task.scopes:
                task.scopes.remove(self)
            return False
        if self._loop._current is not task or not task.scopes or task.scopes[-1] is not self:
            raise RuntimeError("cancel scopes must be exited in their task, innermost first")
        task.scopes.pop()
        if isinstance(exc, Cancelled) and self.own_cancelled():
            outer_visible = not self.shield and _cancelled(self.parent)
            if not outer_visible:
                self.cancelled_caught = True
                return True
        return False


def _cancelled(scope: FakeCancelScope | None) -> bool:
    """Whether code running in ``scope`` is effectively cancelled."""
    while scope is not None:
        if scope.own_cancelled():
            return True
        if scope.shield:
            return False
        scope = scope.parent
    return False


class FakeSignal:
    """A one-shot event (trio's Event): waiting on a set signal is still a checkpoint."""

    def __init__(self, loop: FakeLoop) -> None:
        self._loop = loop
        self._set = False
        self._waiters: dict[Task, None] = {}

    def __repr__(self) -> str:
        return f"<FakeSignal {'set' if self._set else f'{len(self._waiters)} waiting'}>"

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, {}
        for task in waiters:
            self._loop._wake(task)

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        loop = self._loop
        if self._set:
            await loop.checkpoint()
            return
        task = loop.current_task()
        self._waiters[task] = None
        await loop.park(lambda: self._waiters.pop(task, None))


class FakeTaskGroup:
    """A nursery: ``cancel_scope`` and ``start_soon``; its context manager waits for all."""

    def __init__(self, loop: FakeLoop, name: str) -> None:
        self._loop = loop
        self.name = name
        self.cancel_scope = FakeCancelScope(loop)
        self.children: dict[Task, None] = {}
        self.errors: list[BaseException] = []
        self._waiter: Task | None = None
        self._closed = False
        self._started = 0

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: object) -> Task:
        if self._closed:
            raise RuntimeError("start_soon() on a task group that has exited")
        self._started += 1
        name = f"{self.name}.{getattr(fn, '__qualname__', 'task')}#{self._started}"
        task = Task(self._loop, fn(*args), name, self)
        self.children[task] = None
        self._loop._start(task)
        return task

    def _child_done(self, task: Task) -> None:
        del self.children[task]
        exc = task.exception
        if exc is not None:
            self.errors.append(exc)
            if not isinstance(exc, Cancelled):
                self.cancel_scope.cancel()
                self._loop.failures.append((task.name, exc))
        if not self.children and self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            self._loop._wake(waiter)


class _TaskGroupManager:
    def __init__(self, loop: FakeLoop) -> None:
        self._loop = loop
        self._group: FakeTaskGroup | None = None

    async def __aenter__(self) -> FakeTaskGroup:
        loop = self._loop
        loop._groups += 1
        group = self._group = FakeTaskGroup(loop, f"{loop.current_task().name}/g{loop._groups}")
        group.cancel_scope.__enter__()
        return group

    async def __aexit__(
        self, exc_type: object, exc: BaseException | None, traceback: object
    ) -> bool:
        group = self._group
        assert group is not None
        loop = self._loop
        if loop._current is None or isinstance(exc, GeneratorExit):
            group.cancel_scope.__exit__(type(exc), exc, traceback)  # abandoned: unwind
            return False
        if exc is not None:
            group.cancel_scope.cancel()
        # Uncancellable, as a nursery's: cancellation reaches the children through
        # their scopes, and we wait for them.
        while group.children:
            group._waiter = loop.current_task()
            await loop.park(None)
        group._closed = True
        errors = [*group.errors, *([exc] if exc is not None else [])]
        real = [e for e in errors if not isinstance(e, Cancelled)]
        if real:
            group.cancel_scope.__exit__(None, None, None)
            raise BaseExceptionGroup(f"task group {group.name} failed", real)
        if errors:
            caught = group.cancel_scope.__exit__(Cancelled, errors[0], None)
            if caught:
                return True
            if exc is not None:
                return False  # the body's own Cancelled goes on up
            raise Cancelled
        group.cancel_scope.__exit__(None, None, None)
        return False


class FakeStream:
    """The client's end of one connection to a fake server (see the module docstring)."""

    def __init__(self, loop: FakeLoop, server: FakeConnection, key: Key) -> None:
        self._loop = loop
        #: The server's end: what it holds, what it queued (``pending()``).
        self.server = server
        self.key = key
        self._inbox = bytearray()
        self._reader: Task | None = None
        #: Broken by the test (``drop``) or by the server (it closed): reads fail once
        #: what was delivered is read.
        self.broken = False
        #: Closed by the client (``aclose``).
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("broken" if self.broken else "open")
        return f"<FakeStream {self.key} #{self.server.id} {state}>"

    @property
    def open(self) -> bool:
        return not self.closed and not self.broken

    # ---- the test's side

    def pending(self) -> int:
        """Bytes the server queued that the client has not been given yet."""
        return 0 if self.closed else self.server.pending()

    def deliver(self, count: int | None = None) -> int:
        """Hand the client the server's queued output (all of it, or ``count`` bytes)."""
        if self.closed:
            return 0
        data = self.server.take(count)
        self._inbox += data
        if self.server.closed and not self.server.pending():
            self.broken = True  # the server closed it (QUIT, a protocol error): end of stream
        if data or self.broken:
            self._wake_reader()
        return len(data)

    def drop(self) -> None:
        """The connection breaks: the server forgets it, its undelivered output is lost."""
        if self.closed or self.broken:
            return
        self.broken = True
        self.server.take()
        self.server.close()
        self._wake_reader()

    def _wake_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            self._loop._wake(reader)

    # ---- the client's side (the Stream protocol)

    async def receive(self) -> bytes:
        loop = self._loop
        await loop.checkpoint()
        while True:
            if self.closed:
                raise ConnectionLost("the stream is closed")
            if self._inbox:
                data = bytes(self._inbox)
                self._inbox.clear()
                return data
            if self.broken:
                raise ConnectionLost("the server closed the connection")
            if self._reader is not None:
                raise RuntimeError("two tasks read one stream")
            self._reader = loop.current_task()
            await loop.park(self._forget_reader)

    def _forget_reader(self) -> None:
        self._reader = None

    async def send(self, data: bytes) -> None:
        await self._loop.checkpoint()
        if self.closed or self.broken or self.server.closed:
            self.broken = not self.closed
            raise ConnectionLost("the connection is broken")
        self.server.feed(bytes(data))
        if self.server.closed and not self.server.pending():
            self.broken = True
            self._wake_reader()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.close()
            self._wake_reader()
        await self._loop.checkpoint()


class FakeLoop:
    """The Backend protocol on a deterministic scheduler (see the module docstring).

    ``jitter``: what :meth:`random` returns (a constant) or a seeded ``random.Random``
    to draw from. ``schedule``: a seeded ``random.Random`` to pick the next runnable
    task with (default: first come, first run). ``max_steps``: resumptions allowed in
    one :meth:`run_until_idle` before it raises :class:`NeverIdle`.
    """

    def __init__(
        self,
        *,
        jitter: float | _random.Random = 0.5,
        schedule: _random.Random | None = None,
        max_steps: int = 20_000,
    ) -> None:
        self._now = 0.0
        self._jitter = jitter
        self._schedule = schedule
        self.max_steps = max_steps
        self._runnable: deque[Task] = deque()
        self._parked: dict[Task, None] = {}
        self._current: Task | None = None
        self._scopes: dict[FakeCancelScope, None] = {}
        self._groups = 0
        self._spawned = 0
        self._servers: dict[Key, Callable[[], FakeConnection | None]] = {}
        #: Addresses that refuse connections, and addresses that never answer.
        self.down: set[Key] = set()
        self.hanging: set[Key] = set()
        #: Every stream ever connected, oldest first.
        self.streams: list[FakeStream] = []
        #: (task name, exception) of every task that raised, in order.
        self.failures: list[tuple[str, BaseException]] = []
        self._reported = 0
        #: Resumptions so far, over the loop's life.
        self.steps = 0

    # ---- the Backend protocol

    def now(self) -> float:
        return self._now

    def random(self) -> float:
        jitter = self._jitter
        return jitter.random() if isinstance(jitter, _random.Random) else jitter

    def new_signal(self) -> FakeSignal:
        return FakeSignal(self)

    def open_task_group(self) -> _TaskGroupManager:
        return _TaskGroupManager(self)

    def cancel_scope(self, *, deadline: float = math.inf, shield: bool = False) -> FakeCancelScope:
        return FakeCancelScope(self, deadline, shield)

    async def checkpoint(self) -> None:
        await _trap(_CHECKPOINT)

    async def connect(self, address: Address) -> FakeStream:
        await self.checkpoint()
        key = _address_key(address)
        if key in self.hanging:
            await self.park(lambda: None)  # until the caller's deadline cancels it
        accept = self._servers.get(key)
        server = None if accept is None or key in self.down else accept()
        if server is None:
            raise ConnectionLost(f"connection refused by {key}")
        stream = FakeStream(self, server, key)
        self.streams.append(stream)
        return stream

    # ---- servers

    def listen(self, key: Key, accept: Callable[[], FakeConnection | None]) -> None:
        """Serve ``key`` (``(host, port)`` or a unix path): ``accept`` makes each server
        end (``FakeRedis.connect``), or returns None to refuse."""
        self._servers[key] = accept

    @property
    def addresses(self) -> list[Key]:
        """Every address a server listens at."""
        return list(self._servers)

    def open_streams(self) -> list[FakeStream]:
        return [stream for stream in self.streams if stream.open]

    def deliver_all(self) -> int:
        """Every open stream's queued server output, to its client; the bytes moved."""
        return sum(stream.deliver() for stream in self.streams if not stream.closed)

    # ---- tasks

    def current_task(self) -> Task:
        if self._current is None:
            raise RuntimeError("not in a task of the fake loop")
        return self._current

    def spawn(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: object, name: str = ""
    ) -> Task:
        """A root task running ``fn(*args)`` in a cancel scope of its own (``task.cancel()``)."""
        self._spawned += 1
        name = name or f"{getattr(fn, '__qualname__', 'task')}#{self._spawned}"
        task = Task(self, self._rooted(fn, args), name, None)
        task.root_scope = FakeCancelScope(self)
        self._start(task)
        return task

    async def _rooted(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[object, ...]
    ) -> Any:
        scope = self.current_task().root_scope
        assert scope is not None
        with scope:
            return await fn(*args)
        return None  # cancelled

    def close(self) -> None:
        """End every task left, as a cancelled program would: every scope that is not
        shielded is cancelled and the tasks run until they wait again (their ``finally``
        blocks run inside the loop); what still waits is then closed where it is."""
        for scope in list(self._scopes):
            if not scope.shield:
                scope.cancel()
        for task in self.tasks():
            if task.root_scope is not None:
                task.root_scope.cancel()
        with contextlib.suppress(TaskFailed, NeverIdle):  # no longer the test's concern
            self.run_until_idle()
        for task in self.tasks():
            self._current = task
            try:
                for _ in range(100):
                    task.coro.throw(GeneratorExit)  # again at each await in a finally
            except BaseException:  # unwound, however it ended
                pass
            finally:
                self._current = None
            task.done = True
        self._runnable.clear()
        self._parked.clear()

    def tasks(self) -> list[Task]:
        """Every task not done: runnable first, then parked."""
        return [*self._runnable, *self._parked]

    def _start(self, task: Task) -> None:
        self._runnable.append(task)

    async def park(self, abort: Callable[[], object] | None) -> Any:
        """Wait until woken (:meth:`_wake`); ``abort`` undoes the registration when
        cancellation takes the task out first (None: the wait cannot be cancelled)."""
        return await _trap(_Park(abort))

    def _wake(self, task: Task, exc: BaseException | None = None) -> None:
        if task.done or task.park is None:
            return
        del self._parked[task]
        task.park = None
        task.throw = exc
        self._runnable.append(task)

    def _step(self, task: Task) -> None:
        self._current = task
        self.steps += 1
        try:
            exc, task.throw = task.throw, None
            request = task.coro.send(None) if exc is None else task.coro.throw(exc)
        except StopIteration as stop:
            self._finish(task, stop.value, None)
            return
        except BaseException as error:
            self._finish(task, None, error)
            return
        finally:
            self._current = None
        if request is _CHECKPOINT:
            if _cancelled(task.innermost()):
                task.throw = Cancelled()
            self._runnable.append(task)
        elif isinstance(request, _Park):
            task.park = request
            self._parked[task] = None
            if request.abort is not None and _cancelled(task.innermost()):
                request.abort()
                self._wake(task, Cancelled())
        else:
            task.throw = TypeError(f"a task of the fake loop awaited a foreign object: {request!r}")
            self._runnable.append(task)

    def _finish(self, task: Task, result: Any, exc: BaseException | None) -> None:
        task.done = True
        task.result = result
        task.exception = exc
        task.coro.close()
        if task.group is not None:
            task.group._child_done(task)
        elif exc is not None:
            self.failures.append((task.name, exc))

    def _pick(self) -> Task:
        runnable = self._runnable
        if self._schedule is None or len(runnable) == 1:
            return runnable.popleft()
        index = self._schedule.randrange(len(runnable))
        task = runnable[index]
        del runnable[index]
        return task

    def run_until_idle(self) -> None:
        """Run until every task is parked; raise :class:`TaskFailed` if one raised,
        :class:`NeverIdle` if the tasks never all wait."""
        self._notice_closed_servers()
        steps = 0
        while True:
            while self._runnable:
                steps += 1
                if steps > self.max_steps:
                    names = sorted({task.name for task in self._runnable})
                    raise NeverIdle(f"still running after {self.max_steps} steps: {names}")
                self._step(self._pick())
            # Cancellation is level-triggered: a parked task in a cancelled scope wakes.
            woke = False
            for task in list(self._parked):
                park = task.park
                if park is not None and park.abort is not None and _cancelled(task.innermost()):
                    park.abort()
                    self._wake(task, Cancelled())
                    woke = True
            if not woke:
                break
        if len(self.failures) > self._reported:
            name, exc = self.failures[self._reported]
            self._reported = len(self.failures)
            raise TaskFailed(f"task {name} raised {exc!r}") from exc

    def _notice_closed_servers(self) -> None:
        # A server may close its end on its own (a killed node, CLIENT KILL): once its
        # last output is delivered, the client's read sees the end of the stream.
        for stream in self.streams:
            if stream.open and stream.server.closed and not stream.server.pending():
                stream.broken = True
                stream._wake_reader()

    # ---- time

    def next_deadline(self) -> float | None:
        """The earliest deadline of an entered scope still ahead, if any."""
        now = self._now
        ahead = [
            scope.deadline
            for scope in self._scopes
            if not scope.cancel_called and now < scope.deadline < math.inf
        ]
        return min(ahead, default=None)

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, stopping at every deadline on the way (in order)
        to run the loop until idle there."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        target = self._now + seconds
        self.run_until_idle()
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            self._now = deadline
            self.run_until_idle()
        self._now = target
        self.run_until_idle()
