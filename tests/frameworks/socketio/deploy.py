"""A small Socket.IO deployment for the tests: servers sharing Redis, a client on each.

Each server is a real ``socketio.AsyncServer`` served by uvicorn in a thread of its own
(``frameworks.asgi_server.serve``), with the client manager the test gives it; every
client connects over a WebSocket and joins the room :data:`ROOM`. A client asks its
server to ``emit`` to the room by calling the event ``broadcast`` (an acknowledged
call, so the test knows when the server's ``emit`` has returned); every client counts
the ``news`` events it gets.

    async with deployment(lambda: MultiplexerManager(url), servers=2) as nodes:
        await nodes.wait_subscribed(redis)          # every server listens on the channel
        await nodes[0].client.call("broadcast", 1)  # server 0 emits to the room
        await nodes[1].wait_news(1)                 # and the client of server 1 has it
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import socketio

from frameworks.asgi_server import serve

__all__ = ("CHANNEL", "ROOM", "Node", "Nodes", "deployment", "eventually", "wait_until")

CHANNEL = "socketio"
ROOM = "news-room"
POLL = 0.01


async def wait_until(
    condition: Callable[[], object], within: float, what: str = "the condition"
) -> float:
    """Poll ``condition`` until it is true; the seconds it took. TimeoutError after
    ``within`` (a bounded wait, never a fixed sleep)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within:
            raise TimeoutError(f"{what} did not happen within {within} s")
        await anyio.sleep(POLL)
    return time.monotonic() - start


async def eventually(condition: Callable[[], object], within: float) -> float | None:
    """Like :func:`wait_until`, but ``None`` instead of an error: for the stock back
    end, whose behaviour is recorded, not asserted."""
    try:
        return await wait_until(condition, within)
    except TimeoutError:
        return None


def make_app(manager: Any) -> Any:
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, logger=False)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.enter_room(sid, ROOM)

    @sio.event
    async def broadcast(sid: str, data: Any) -> str:
        await sio.emit("news", data, to=ROOM)
        return "sent"

    close = getattr(manager, "close", None)
    return socketio.ASGIApp(sio, on_shutdown=close)


@dataclass
class Node:
    """One server, its manager and its client."""

    manager: Any
    url: str
    client: Any = None
    news: list[Any] = field(default_factory=list)

    async def connect(self) -> None:
        client = socketio.AsyncClient(reconnection=False)

        @client.on("news")
        def news(data: Any) -> None:
            self.news.append(data)

        await client.connect(self.url, transports=["websocket"], wait_timeout=10)
        self.client = client

    async def broadcast(self, data: Any, within: float = 10.0) -> Any:
        """Have this node's server emit ``data`` to the room; its ack."""
        return await self.client.call("broadcast", data, timeout=within)

    async def wait_news(self, data: Any, within: float = 10.0) -> float:
        return await wait_until(lambda: data in self.news, within, f"news {data!r}")


class Nodes(Sequence[Node]):
    def __init__(self, nodes: list[Node]) -> None:
        self._nodes = nodes

    def __getitem__(self, index: int) -> Node:  # type: ignore[override]
        return self._nodes[index]

    def __len__(self) -> int:
        return len(self._nodes)

    async def wait_subscribed(self, numsub: Callable[[], int], within: float = 10.0) -> None:
        """Until Redis counts one subscriber of the channel per server."""
        await wait_until(lambda: numsub() >= len(self._nodes), within, "every subscription")

    async def delivered(self, data: Any, within: float = 10.0) -> None:
        """Node 0 emits ``data``; every other node's client gets it."""
        await self[0].broadcast(data)
        for node in self._nodes[1:]:
            await node.wait_news(data, within)


@contextlib.asynccontextmanager
async def deployment(
    make_manager: Callable[[], Any], servers: int = 2, connect: bool = True
) -> AsyncIterator[Nodes]:
    """``servers`` Socket.IO servers, each with a manager of its own and (if
    ``connect``) a client. The servers stop when the block ends."""
    with contextlib.ExitStack() as stack:
        nodes = []
        for _ in range(servers):
            manager = make_manager()
            url = stack.enter_context(serve(make_app(manager)))
            nodes.append(Node(manager, url))
        try:
            if connect:
                for node in nodes:
                    await node.connect()
            yield Nodes(nodes)
        finally:
            for node in nodes:
                if node.client is not None:
                    with anyio.move_on_after(5):
                        await node.client.disconnect()
