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
import pytest

from drivers.conftest import Driver, wait_until
from redis_servers import RedisServer
from redismpx_core import ConnectionState, MultiplexerCore, Settings, SubscriptionKind


def test_a_read_completed_as_the_runner_stops_is_not_fed(
    driver: Driver, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner_module = importlib.import_module(driver.module.__name__ + "._runner")
    settings = Settings.from_url(redis_server.url)
    core = MultiplexerCore(random=lambda: 0.5, **settings.core_options())
    errors: list[BaseException] = []
    runner: Any = None
    opened = runner_module.open_stream

    async def open_stream(settings: Settings) -> Any:
        stream = await opened(settings)
        receive = "receive" if hasattr(stream, "receive") else "receive_some"
        original = getattr(stream, receive)

        async def receive_then_stop(*args: Any) -> bytes:
            data: bytes = await original(*args)
            if core.state is ConnectionState.READY:
                runner.stop()  # what the router does, then it closes the core
                core.close()
            return data

        setattr(stream, receive, receive_then_stop)
        return stream

    monkeypatch.setattr(runner_module, "open_stream", open_stream)

    async def body() -> None:
        nonlocal runner
        runner = runner_module.ConnectionRunner(
            core, settings, lambda events: None, lambda: None, "test"
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

