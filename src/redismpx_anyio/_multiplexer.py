"""The anyio Multiplexer: the shared front end, a task group, and connection runners."""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, final

import anyio
import anyio.abc
import anyio.lowlevel

from redismpx_core._frontend import MultiplexerBase, Signal

from ._runner import ConnectionRunner

__all__ = ("Multiplexer",)


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


@final
class Multiplexer(MultiplexerBase):
    """Many Pub/Sub subscriptions over one Redis connection, on anyio (asyncio or trio).

    ``async with Multiplexer("redis://localhost:6379/0") as mpx: ...`` The multiplexer
    owns a task group for its connections and its subscriptions' consumers; leaving
    the block closes everything: sockets, subscriptions, pending promises and waiters.
    """

    _random = staticmethod(random.random)
    _runner_type = ConnectionRunner

    def __init__(self, url: str = "redis://localhost:6379/0", **options: Any) -> None:
        super().__init__(url, **options)
        self._task_group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Multiplexer:
        if self._started or self._closed:
            raise RuntimeError("a Multiplexer can be entered only once")
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
