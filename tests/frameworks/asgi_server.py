"""Serving an ASGI app for a test: uvicorn on a loopback port, in a thread of its own.

Shared by the framework adapters' tests (tests/frameworks/*): each app gets its own event
loop in its own thread, so two apps (two python-socketio servers, say) run side by side
in one test, as two processes of a real deployment would, and a test's own client code
stays plain and synchronous or runs in its own loop.

    with serve(app) as base:             # base = "http://127.0.0.1:PORT"
        ...                              # ws://127.0.0.1:PORT/... reaches the app

Leaving the block asks uvicorn to shut down (lifespan shutdown included) and waits for
the thread; a server that does not start or stop in time fails the test with uvicorn's
own error, not a hang. Imported as ``frameworks.asgi_server`` (``tests`` is on pytest's
``pythonpath``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from redis_servers import free_port

HOST = "127.0.0.1"
START_DEADLINE = 20.0
STOP_DEADLINE = 20.0
POLL_SECONDS = 0.01


@contextlib.contextmanager
def serve(app: Any, *, port: int | None = None, lifespan: str = "auto") -> Iterator[str]:
    """Serve ``app`` until the block ends; yields the server's base URL (http://...)."""
    config = uvicorn.Config(
        app,
        host=HOST,
        port=port if port is not None else free_port(),
        lifespan=lifespan,
        log_level="warning",
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # reported by the test's thread, not lost here
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn:{config.port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_DEADLINE
    while not server.started:
        if failure or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on port {config.port}") from (
                failure[0] if failure else None
            )
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"uvicorn did not start within {START_DEADLINE} s")
        time.sleep(POLL_SECONDS)
    try:
        yield f"http://{HOST}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(STOP_DEADLINE)
        if thread.is_alive():
            server.force_exit = True
            thread.join(STOP_DEADLINE)
        assert not thread.is_alive(), f"uvicorn on port {config.port} did not stop"
        if failure:
            raise failure[0]
