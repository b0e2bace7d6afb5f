"""The task that keeps a manager's multiplexer open.

A multiplexer lives inside an ``async with`` block that owns its connections' task
group. python-socketio gives a manager no such block: it calls ``_publish`` from request
handlers and runs ``_listen`` in a background task of its own, from the first client
on (or never, for a write-only manager). So the block is held open by a task of its own,
started by the first call that needs the multiplexer, in that call's event loop, and
left when the manager is closed (or when that loop ends and cancels it).

A manager used again after its event loop ended (``asyncio.run`` twice, say) opens a
new multiplexer in the new loop: the old one was closed with its loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import final

from redismpx_anyio import ClusterMultiplexer, Multiplexer
from redismpx_core import Settings

__all__ = ("AnyMultiplexer", "MultiplexerOwner")

AnyMultiplexer = Multiplexer | ClusterMultiplexer


@final
class MultiplexerOwner:
    """Opens the multiplexer on first use, in a task that holds it until :meth:`close`."""

    __slots__ = (
        "_closed",
        "_factory",
        "_loop",
        "_mpx",
        "_next",
        "_ready",
        "_stop",
        "_task",
        "settings",
    )

    def __init__(self, factory: Callable[[], AnyMultiplexer]) -> None:
        self._factory = factory
        # Built at once so that a bad URL or option fails where the manager is made.
        self._next: AnyMultiplexer | None = factory()
        #: The validated options (every multiplexer the factory makes has the same).
        self.settings: Settings = self._next.settings
        self._mpx: AnyMultiplexer | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def current(self) -> AnyMultiplexer | None:
        """The open multiplexer, if any."""
        return self._mpx

    async def multiplexer(self) -> AnyMultiplexer:
        """The open multiplexer, opened first if need be."""
        if self._closed:
            raise RuntimeError("the manager is closed")
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done():
            task = self._start(loop)
        elif loop is not self._loop:
            raise RuntimeError(
                "the manager's multiplexer runs in another event loop: a manager "
                "serves one event loop at a time"
            )
        ready = self._ready
        assert ready is not None
        if not ready.is_set():
            await ready.wait()
        mpx = self._mpx
        if mpx is None:  # the task ended before it opened it (its loop is ending)
            raise RuntimeError("the manager's multiplexer could not be opened")
        return mpx

    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
        mpx = self._next if self._next is not None else self._factory()
        self._next = None
        self._mpx = None
        self._loop = loop
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task = loop.create_task(self._hold(mpx, self._ready, self._stop))
        return self._task

    async def _hold(self, mpx: AnyMultiplexer, ready: asyncio.Event, stop: asyncio.Event) -> None:
        try:
            async with mpx:
                self._mpx = mpx
                ready.set()
                await stop.wait()
        finally:
            self._mpx = None
            ready.set()  # whoever waits for it learns that it is gone

    async def close(self) -> None:
        """Close the multiplexer (its connections, subscriptions and waiters)."""
        self._closed = True
        task = self._task
        if task is None or task.done():
            return
        stop, loop = self._stop, self._loop
        assert stop is not None
        assert loop is not None
        if asyncio.get_running_loop() is not loop:
            # Closed from another thread's loop: ask, without waiting for it there.
            loop.call_soon_threadsafe(stop.set)
            return
        stop.set()
        await asyncio.shield(task)
