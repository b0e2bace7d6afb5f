"""The anyio Multiplexer: the shared front end, a task group, and connection runners."""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self, final

import anyio
import anyio.abc
import anyio.lowlevel

from redismpx_core._cluster_frontend import ClusterMultiplexerBase
from redismpx_core._frontend import MultiplexerBase, Signal

from ._runner import ConnectionRunner

__all__ = ("ClusterMultiplexer", "Multiplexer")


class _AnyioLoop:
    """The front end's view of anyio: signals, tasks, the clock, checkpoints."""

    __slots__ = ("_task_group",)

    def __init__(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group

    def new_signal(self) -> Signal:
        return anyio.Event()

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._task_group.start_soon(fn)

    def now(self) -> float:
        return anyio.current_time()

    async def checkpoint(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def wait(self, signal: Signal, deadline: float | None) -> None:
        with anyio.move_on_after(None if deadline is None else deadline - anyio.current_time()):
            await signal.wait()


class _TaskGroupOwner(MultiplexerBase):
    """Both multiplexers' anyio side: a task group, entered once, that owns every task."""

    _random = staticmethod(random.random)
    _runner_type = ConnectionRunner
    _task_group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        if self._started or self._closed:
            raise RuntimeError(f"a {type(self).__name__} can be entered only once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._start(_AnyioLoop(task_group))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        task_group = self._task_group
        assert task_group is not None
        # Stop the connections and consumers first, so that no reader feeds a closed
        # core; then fail what is left (promises, waiters in other tasks).
        task_group.cancel_scope.cancel()
        try:
            # The body's exception is not handed to the task group, which would wrap it
            # in an ExceptionGroup; our tasks raise nothing of their own, so it
            # propagates from here as it is.
            await task_group.__aexit__(None, None, None)
        finally:
            self._close()
        return None


@final
class Multiplexer(_TaskGroupOwner):
    """Many Pub/Sub subscriptions over one Redis connection, on anyio (asyncio or trio).

    ``async with Multiplexer("redis://localhost:6379/0") as mpx: ...`` The multiplexer
    owns a task group for its connections and its subscriptions' consumers; leaving
    the block closes everything: sockets, subscriptions, pending promises and waiters.
    """

    def __init__(self, url: str = "redis://localhost:6379/0", **options: Any) -> None:
        super().__init__(url, **options)


@final
class ClusterMultiplexer(_TaskGroupOwner, ClusterMultiplexerBase):
    """The Multiplexer's API over a Redis Cluster, on anyio (asyncio or trio).

    ``async with ClusterMultiplexer(["redis://10.0.0.1:7000", ...]) as mpx: ...``
    Channel and pattern subscriptions ride one node's connection; shard channels
    ride the connection of the master owning their slot, and follow it when the
    cluster changes. See docs/cluster.md.
    """

    def __init__(
        self,
        startup_urls: str | Sequence[str] = "redis://localhost:6379/0",
        **options: Any,
    ) -> None:
        super().__init__(startup_urls, **options)
