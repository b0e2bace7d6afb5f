"""A multi-room WebSocket chat on Starlette + uvicorn over one shared redismpx Multiplexer.

This is the README's WebSocket example, on ``redismpx_anyio``. One
:class:`~redismpx_anyio.Multiplexer` is entered in the Starlette lifespan and shared by
every client; each WebSocket gets a :class:`~redismpx_anyio.ChannelSubscription` of its
own, closed when the socket closes.

The WebSocket protocol, on ``/ws``. A client sends text frames:

* ``+channel`` joins ``channel``, ``-channel`` leaves it;
* ``!channel`` publishes the *next* frame the client sends to ``channel``.

The server sends text frames of two kinds:

* plain text, as in the README: ``ch: [<channel>] msg: [<message>]`` for every message of a
  joined channel, and ``# ...`` help lines when the socket opens;
* JSON objects (the only frames that start with ``{``), for the page:

  - ``{"type": "state", "redis": "connected" | "reconnecting", ...}``: the Redis connection
    state, from the subscriptions' ``on_activation`` (with ``"channel"``, now active) and
    ``on_disconnect`` (with ``"error"``); also sent when the socket opens;
  - ``{"type": "channels", "channels": [...]}``: the channels this socket holds, after each
    ``+`` or ``-``;
  - ``{"type": "published", "channel": ..., "receivers": n}``: Redis took a ``!`` message
    (``receivers`` counts Redis connections, and all of this server's sockets share one);
  - ``{"type": "error", "message": ...}``: a command that could not be carried out (with
    ``"channel"`` when it is a ``!`` message that was not published).

Run it with ``python -m examples.chat`` or ``python examples/chat/app.py`` (it needs a
Redis; ``scripts/demo`` starts one when none answers). Options, or the environment
variables in brackets: ``--redis-url`` (``REDISMPX_DEMO_REDIS_URL``, default
``redis://127.0.0.1:6379/0``), ``--host`` (``REDISMPX_DEMO_HOST``, default ``127.0.0.1``),
``--port`` (``REDISMPX_DEMO_PORT``, default 8000).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from redismpx_anyio import ChannelSubscription, Multiplexer, RedisMPXError

__all__ = ["Settings", "create_app", "main", "parse_args", "serve"]

logger = logging.getLogger("redismpx.chat")

STATIC_DIR = Path(__file__).resolve().parent / "static"

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

#: A hidden channel held by the app itself, so that the connection state reaches every
#: socket, also those that have joined no channel yet (a subscription without names gets
#: no on_disconnect or on_activation). Nothing is ever published on it.
STATUS_CHANNEL = "redismpx-chat:status"

#: How long a ``!`` publish may wait for Redis before the client is told it failed.
PUBLISH_TIMEOUT = 5.0
#: How long one frame may take to reach a client before it is given up on.
SEND_TIMEOUT = 5.0

HELP = (
    "# Use +channel to join a channel, -channel to leave.",
    "# Sending !channel will send the next message to said channel.",
    "# To see a message sent to a given channel, you must have joined it beforehand.",
)


# ------------------------------------------------------------------ one client


class ChatSession:
    """One WebSocket client: its subscription's callbacks and its command loop."""

    def __init__(self, ws: WebSocket, mpx: Multiplexer) -> None:
        self.ws = ws
        self.mpx = mpx
        self.open = True
        self._send_lock = anyio.Lock()  # callbacks and the command loop both send

    # ---- sending

    async def send_text(self, text: str) -> None:
        if not self.open:
            return
        async with self._send_lock:
            try:
                with anyio.fail_after(SEND_TIMEOUT):
                    await self.ws.send_text(text)
            except Exception:  # gone or stuck: whatever the server raised, stop sending
                self.open = False

    async def send_json(self, **notice: Any) -> None:
        await self.send_text(json.dumps(notice, separators=(",", ":")))

    # ---- the subscription's callbacks

    async def on_message(self, channel: bytes, message: bytes) -> None:
        await self.send_text(
            f"ch: [{channel.decode(errors='replace')}] msg: [{message.decode(errors='replace')}]"
        )

    async def on_disconnect(self, error: Exception) -> None:
        await self.send_json(type="state", redis="reconnecting", error=str(error))

    async def on_activation(self, name: bytes) -> None:
        await self.send_json(type="state", redis="connected", channel=name.decode(errors="replace"))

    # ---- the client's commands

    async def run(self, sub: ChannelSubscription, redis_state: str) -> None:
        """Greet the client, then carry out its commands until the socket closes."""
        for line in HELP:
            await self.send_text(line)
        await self.send_json(type="state", redis=redis_state)
        publish_to: str | None = None  # set by `!channel`: the next frame goes there
        while True:
            frame = await self.ws.receive()
            if frame["type"] == "websocket.disconnect":
                return
            text = frame.get("text")
            if text is None:
                text = (frame.get("bytes") or b"").decode(errors="replace")
            if publish_to is not None:
                channel, publish_to = publish_to, None
                await self.publish(channel, text)
                continue
            command, name = text[:1], text[1:].strip()
            if command not in ("+", "-", "!"):
                await self.send_json(
                    type="error",
                    message="unknown command: use +channel, -channel, or !channel then a message",
                )
            elif not name:
                await self.send_json(type="error", message=f"{command} needs a channel name")
            elif command == "+":
                sub.add(name)
                await self.send_channels(sub)
            elif command == "-":
                sub.remove(name)
                await self.send_channels(sub)
            else:
                publish_to = name

    async def send_channels(self, sub: ChannelSubscription) -> None:
        names = sorted(name.decode(errors="replace") for name in sub.names)
        await self.send_json(type="channels", channels=names)

    async def publish(self, channel: str, text: str) -> None:
        try:
            with anyio.fail_after(PUBLISH_TIMEOUT):
                receivers = await self.mpx.publish(channel, text.encode())
        except TimeoutError:
            problem = "Redis is unreachable"
        except RedisMPXError as exc:
            problem = str(exc)
        else:
            await self.send_json(type="published", channel=channel, receivers=receivers)
            return
        await self.send_json(
            type="error", channel=channel, message=f"not sent to {channel}: {problem}"
        )


# ------------------------------------------------------------------ every client


class ChatHub:
    """What the clients share: the Multiplexer, the Redis state, the open sessions."""

    def __init__(self, mpx: Multiplexer) -> None:
        self.mpx = mpx
        self.redis_state = "reconnecting"  # until the status channel is first active
        self.sessions: set[ChatSession] = set()
        self._status = mpx.new_channel_subscription(
            self._ignore, self._on_disconnect, self._on_activation
        )
        self._status.add(STATUS_CHANNEL)

    @staticmethod
    def _ignore(channel: bytes, message: bytes) -> None:
        pass

    async def _on_disconnect(self, error: Exception) -> None:
        logger.warning("Redis connection lost (%s); reconnecting", error)
        await self._broadcast("reconnecting", error=str(error))

    async def _on_activation(self, name: bytes) -> None:
        logger.info("Redis connection ready")
        await self._broadcast("connected")

    async def _broadcast(self, state: str, **extra: Any) -> None:
        self.redis_state = state
        for session in list(self.sessions):
            await session.send_json(type="state", redis=state, **extra)

    async def handle(self, ws: WebSocket) -> None:
        await ws.accept()
        session = ChatSession(ws, self.mpx)
        sub = self.mpx.new_channel_subscription(
            session.on_message, session.on_disconnect, session.on_activation
        )
        self.sessions.add(session)
        try:
            await session.run(sub, self.redis_state)
        finally:
            self.sessions.discard(session)
            session.open = False
            sub.close()

    def close(self) -> None:
        self._status.close()


# ------------------------------------------------------------------ the app


def create_app(redis_url: str = DEFAULT_REDIS_URL) -> Starlette:
    """The chat app: ``/`` serves the page, ``/ws`` the chat. Redis is reached in the
    background, so the app starts (and shows "reconnecting") while Redis is down."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Multiplexer(redis_url) as mpx:
            hub = ChatHub(mpx)
            app.state.hub = hub
            try:
                yield
            finally:
                hub.close()

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    async def chat(ws: WebSocket) -> None:
        await ws.app.state.hub.handle(ws)

    return Starlette(
        routes=[Route("/", index), WebSocketRoute("/ws", chat)],
        lifespan=lifespan,
    )


# ------------------------------------------------------------------ running it


@dataclass(frozen=True)
class Settings:
    redis_url: str
    host: str
    port: int

    @property
    def browser_url(self) -> str:
        """Where to point a browser: a wildcard bind address becomes loopback."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"${name}={value!r} is not a port number") from None


def parse_args(
    argv: Sequence[str] | None = None, *, prog: str | None = None, description: str | None = None
) -> Settings:
    parser = argparse.ArgumentParser(prog=prog, description=description or __doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDISMPX_DEMO_REDIS_URL") or DEFAULT_REDIS_URL,
        help="the Redis to use (env REDISMPX_DEMO_REDIS_URL; default %(default)s)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("REDISMPX_DEMO_HOST") or DEFAULT_HOST,
        help="address to serve the page on (env REDISMPX_DEMO_HOST; default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_env_port("REDISMPX_DEMO_PORT", DEFAULT_PORT),
        help="port to serve the page on (env REDISMPX_DEMO_PORT; default %(default)s)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a TCP port")
    return Settings(redis_url=args.redis_url, host=args.host, port=args.port)


def check_port_free(host: str, port: int) -> str | None:
    """None if ``host:port`` can be bound now, else why not (checked before starting)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


class _Server(uvicorn.Server):
    """uvicorn's server, saying where to point a browser once it listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._on_started()


def _configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    log = logging.getLogger("redismpx")  # the library's reconnects, and the chat's own lines
    if not log.handlers:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def serve(settings: Settings, *, announce: Callable[[str], None] | None = None) -> None:
    """Run the app in the foreground until SIGINT or SIGTERM (uvicorn handles both)."""
    _configure_logging()

    def started() -> None:
        line = f"Open {settings.browser_url} in a browser (Ctrl-C to stop)"
        (announce or (lambda text: print(text, flush=True)))(line)

    config = uvicorn.Config(
        create_app(settings.redis_url),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        timeout_graceful_shutdown=3,
        log_level="info",
    )
    _Server(config, started).run()


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    settings = parse_args(argv, prog=prog)
    problem = check_port_free(settings.host, settings.port)
    if problem is not None:
        sys.exit(f"chat: cannot serve on {settings.host}:{settings.port}: {problem}")
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn raises Ctrl-C again once it is down
        serve(settings)


if __name__ == "__main__":
    main()
