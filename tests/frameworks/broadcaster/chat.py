"""The Starlette chat app of the broadcaster tests, and WebSocket clients for it.

``chat_app(broadcast)`` serves ``/ws/{room}``: each WebSocket subscribes to its
room, says ``joined`` once the subscription is entered (so a client knows that
what is published from then on reaches it), publishes every text it sends, and
forwards every event of the room. ``/stall?seconds=S`` blocks the app's event loop
on purpose, as a CPU-bound handler would: the loop's Redis reader stops reading.
The app keeps the subscriber objects it handed out in ``app.state.subscribers``
so that a test can look at their buffers.

Imported as ``frameworks.broadcaster.chat`` (``tests`` is on pytest's pythonpath).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import broadcaster
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import ClientConnection, connect

JOINED = "joined"


def chat_app(broadcast: broadcaster.Broadcast) -> Starlette:
    subscribers: list[Any] = []
    stalled = threading.Event()

    async def chat(websocket: WebSocket) -> None:
        room = websocket.path_params["room"]
        await websocket.accept()
        async with broadcast.subscribe(room) as subscriber:
            subscribers.append(subscriber)
            await websocket.send_text(JOINED)
            async with anyio.create_task_group() as tasks:

                async def relay_from_client() -> None:
                    async for text in websocket.iter_text():
                        await broadcast.publish(room, text)
                    tasks.cancel_scope.cancel()

                tasks.start_soon(relay_from_client)
                async for event in subscriber:
                    await websocket.send_text(event.message)

    async def stall(request: Request) -> PlainTextResponse:
        stalled.set()
        time.sleep(float(request.query_params["seconds"]))  # noqa: ASYNC251 - on purpose
        stalled.clear()
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broadcast:
            yield

    app = Starlette(
        routes=[WebSocketRoute("/ws/{room}", chat), Route("/stall", stall)],
        lifespan=lifespan,
    )
    app.state.subscribers = subscribers
    app.state.stalled = stalled
    app.state.broadcast = broadcast
    return app


@contextlib.contextmanager
def join(base_url: str, room: str, *, slow: bool = False) -> Iterator[ClientConnection]:
    """A WebSocket client in ``room``, returned once the app has subscribed it.

    A ``slow`` client is one that stops reading: its socket's receive buffer is
    small and fixed (no autotuning, which on loopback lets one unread socket take
    tens of MiB) and it holds one frame, so the app's sends to it soon block. No
    client asks for compression: the tests' repetitive payloads would shrink a
    hundredfold, and a backlog would need gigabytes to show.
    """
    url = base_url.replace("http://", "ws://", 1) + f"/ws/{room}"
    sock = None
    if slow:
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(10)
        sock.connect((host, int(port)))
    max_queue = 1 if slow else 16
    options: dict[str, Any] = {"open_timeout": 10, "close_timeout": 2, "compression": None}
    with connect(url, sock=sock, max_queue=max_queue, **options) as ws:
        assert ws.recv(timeout=10) == JOINED
        yield ws


def receive_until(
    ws: ClientConnection, wanted: Callable[[str], bool], *, within: float
) -> str | None:
    """The first text that ``wanted`` accepts within ``within`` seconds, or None."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            text = ws.recv(timeout=left)
        except TimeoutError:
            return None
        assert isinstance(text, str)
        if wanted(text):
            return text
    return None


def wait_until(condition: Callable[[], bool], *, within: float, step: float = 0.01) -> bool:
    """Poll ``condition`` until it holds (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True
