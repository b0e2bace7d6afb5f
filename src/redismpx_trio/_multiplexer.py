"""The trio Multiplexer: the shared front end, a nursery, and connection runners."""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self, final

import trio
import trio.lowlevel

from redismpx_core._cluster_frontend import ClusterMultiplexerBase
from redismpx_core._frontend import MultiplexerBase, Signal

from ._runner import ConnectionRunner

__all__ = ("ClusterMultiplexer", "Multiplexer")


class _TrioLoop:
    """The front end's view of trio: events, tasks, the clock, checkpoints."""

    __slots__ = ("_nursery",)

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def new_signal(self) -> Signal:
        return trio.Event()

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._nursery.start_soon(fn)

    def now(self) -> float:
        return trio.current_time()

    async def checkpoint(self) -> None:
        await trio.lowlevel.checkpoint()

    async def wait(self, signal: Signal, deadline: float | None) -> None:
        with trio.move_on_at(float("inf") if deadline is None else deadline):
            await signal.wait()


class _NurseryOwner(MultiplexerBase):
    """Both multiplexers' trio side: a nursery, entered once, that owns every task."""

    _random = staticmethod(random.random)
    _runner_type = ConnectionRunner
    _nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
    _nursery: trio.Nursery | None = None

    async def __aenter__(self) -> Self:
        if self._started or self._closed:
            raise RuntimeError(f"a {type(self).__name__} can be entered only once")
        manager = trio.open_nursery()
        nursery = await manager.__aenter__()
        self._nursery_manager = manager
        self._nursery = nursery
        self._start(_TrioLoop(nursery))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None
        assert self._nursery_manager is not None
        # Stop the connections and consumers first, so that no reader feeds a closed
        # core; then fail what is left (promises, waiters in other tasks).
        self._nursery.cancel_scope.cancel()
        try:
            # The body's exception is not handed to the nursery, which would wrap it in
            # an ExceptionGroup; our tasks raise nothing of their own, so it propagates
            # from here as it is.
            await self._nursery_manager.__aexit__(None, None, None)
        finally:
            self._close()
        return None


@final
class Multiplexer(_NurseryOwner):
    """Many Pub/Sub subscriptions over one Redis connection, on trio.

    ``async with Multiplexer("redis://localhost:6379/0") as mpx: ...`` The multiplexer
    owns a nursery for its connections and its subscriptions' consumers; leaving the
    block closes everything: sockets, subscriptions, pending promises and waiters.
    """

    def __init__(self, url: str = "redis://localhost:6379/0", **options: Any) -> None:
        super().__init__(url, **options)


@final
class ClusterMultiplexer(_NurseryOwner, ClusterMultiplexerBase):
    """The Multiplexer's API over a Redis Cluster, on trio.

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
