"""A connection runner stopped from outside (a cluster router dropping a node's
connection) closes nothing of the core's behind its back: the core is closed at the
stop, and a read that had already completed must not be fed to it.

The window is between a read completing and its task running again, which no real
server can be made to hit on purpose; a stream that stops the runner (as the router
would, from another task) just as it hands back its bytes opens it every time.
"""

from __future__ import annotations

import importlib
from typing import Any

import anyio
import anyio.to_thread

from drivers.conftest import Driver, wait_until
from redis_servers import RedisServer
from redismpx_core import ConnectionState, MultiplexerCore, Settings, SubscriptionKind
from redismpx_frontend import Stream
from redismpx_frontend._connect import open_stream
from redismpx_frontend._runner import ConnectionRunner


class StopOnRead:
    """A stream that stops the runner (as the router would, from another task) just as a
    read completes, and closes the core."""

    def __init__(self, stream: Stream, stop: Any, core: MultiplexerCore[Any, Any]) -> None:
        self._stream = stream
        self._stop = stop
        self._core = core

    async def receive(self) -> bytes | bytearray:
        data = await self._stream.receive()
        if self._core.state is ConnectionState.READY:
            self._stop()  # what the router does, then it closes the core
            self._core.close()
        return data

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)

    async def aclose(self) -> None:
        await self._stream.aclose()


def test_a_read_completed_as_the_runner_stops_is_not_fed(
    driver: Driver, redis_server: RedisServer
) -> None:
    backend = importlib.import_module(driver.module.__name__ + "._backend").BACKEND
    settings = Settings.from_url(redis_server.url)
    core: MultiplexerCore[Any, Any] = MultiplexerCore(
        random=lambda: 0.5, **settings.core_options()
    )
    errors: list[BaseException] = []
    runner: Any = None

    async def connect() -> Stream:
        return StopOnRead(await open_stream(backend, settings), runner.stop, core)

    async def body() -> None:
        nonlocal runner
        runner = ConnectionRunner(
            backend, core, connect, lambda events: None, lambda: None, role="test", target="t"
        )
        sub = core.open_subscription(SubscriptionKind.CHANNEL, None)
        core.add(sub, [b"runner-stop"])
        async with anyio.create_task_group() as group:

            async def run() -> None:
                try:
                    await runner.run()
                except BaseException as exc:  # what would kill a multiplexer's task group
                    errors.append(exc)
                    raise

            group.start_soon(run)
            await wait_until(lambda: core.is_active(sub, b"runner-stop"))
            await anyio.to_thread.run_sync(redis_server.command, "PUBLISH", "runner-stop", "x")
            await wait_until(lambda: core.state is ConnectionState.CLOSED)
            # The runner ends on its own: nothing left to cancel.
            with anyio.fail_after(5):
                while runner._scope is None or not runner._scope.cancel_called:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        assert errors == []

    driver.run(body)

