"""The conformance suite's driver matrix: every test runs against every driver and backend.

A test takes the ``driver`` fixture and runs its async body with ``driver.run(body)``;
the body reaches the driver under test only through ``driver.module`` (its public
names), so that "same API" is checked, not hoped for. Bodies may use anyio's helpers
(``anyio.fail_after``, ``anyio.sleep``) for waiting: anyio runs on both backends.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import anyio
import pytest

#: (id, driver package, event loop the test runs on)
DRIVERS = [
    ("anyio-asyncio", "redismpx_anyio", "asyncio"),
    ("anyio-trio", "redismpx_anyio", "trio"),
    ("trio", "redismpx_trio", "trio"),
]


@dataclass(frozen=True)
class Driver:
    name: str
    module: ModuleType
    backend: str

    @property
    def Multiplexer(self) -> Any:  # mirrors the driver's class name
        return self.module.Multiplexer

    def run(self, body: Callable[[], Awaitable[Any]]) -> Any:
        return anyio.run(body, backend=self.backend)


@pytest.fixture(params=DRIVERS, ids=[d[0] for d in DRIVERS])
def driver(request: pytest.FixtureRequest) -> Driver:
    name, package, backend = request.param
    try:
        module = importlib.import_module(package)
    except ImportError as exc:  # a driver that is not built is a failure, not a skip
        pytest.fail(f"driver {package} cannot be imported: {exc}")
    return Driver(name, module, backend)


async def wait_until(
    condition: Callable[[], object],
    timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's deadline, named as pytest's
    interval: float = 0.005,
) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds.

    For state that no event announces (the server's PUBSUB counts, CLIENT LIST);
    where the library offers an event or a callback, tests wait on that instead.
    """
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - polls state outside this process
            await anyio.sleep(interval)
