"""The chat demo's trio twin: trio + trio-websocket over one shared redismpx Multiplexer.

Same page, same protocol, same behaviour as ``examples/chat`` (Starlette + uvicorn on
``redismpx_anyio``), but written on trio alone: the import graph holds ``trio``,
``trio_websocket`` (with ``wsproto`` and ``h11``) and ``redismpx_trio``, and no anyio,
asyncio, Starlette or uvicorn. The page is ``examples/chat/static/index.html``, read from
there and served unchanged; see that package's README for the protocol on ``/ws``.

One :class:`~redismpx_trio.Multiplexer` is opened at the top of :func:`serve`, around the
server's nursery, and shared by every client; each WebSocket gets a
:class:`~redismpx_trio.ChannelSubscription` of its own, closed when the socket closes.

**One port for the page and the WebSocket.** trio-websocket speaks WebSocket only, and the
page opens its socket on its own origin (``ws://<host>:<port>/ws``), so both must share a
port. Each accepted TCP connection's request head is read (up to the blank line, at most
16 KiB, within 10 s) and looked at:

* a WebSocket upgrade (``Upgrade: websocket``) for ``/ws`` is handed to trio-websocket with
  :func:`trio_websocket.wrap_server_stream`, over a stream that replays the bytes already
  read, so wsproto parses the handshake itself;
* anything else gets a minimal HTTP/1.1 answer and the connection is closed: ``GET`` or
  ``HEAD /`` is the page, other paths are 404 (an upgrade for another path too), other
  methods 405, a malformed head 400.

**Stopping.** SIGINT, SIGTERM and SIGHUP are taken by a trio signal receiver: the server
stops accepting, closes every WebSocket with code 1001 (going away, within 3 s; a second
signal cuts this short), cancels what is left, and leaves the Multiplexer, which closes the
Redis connections. Then :func:`main` returns and the process exits with status 0.

Run it with ``python -m examples.chat_trio`` (``--start-redis`` also starts a Redis when
none answers). Options, or the environment variables in brackets, as for examples/chat:
``--redis-url`` (``REDISMPX_DEMO_REDIS_URL``, default ``redis://127.0.0.1:6379/0``),
``--host`` (``REDISMPX_DEMO_HOST``, default ``127.0.0.1``), ``--port``
(``REDISMPX_DEMO_PORT``, default 8000).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from redismpx_trio import ChannelSubscription, Multiplexer, RedisMPXError

__all__ = ["PAGE", "Settings", "add_arguments", "main", "parse_args", "run", "serve"]

logger = logging.getLogger("redismpx.chat_trio")

#: The anyio demo's page, served as it is: this demo keeps no copy of its own.
PAGE = Path(__file__).resolve().parent.parent / "chat" / "static" / "index.html"

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
#: A request head: at most this many bytes, within this many seconds.
HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT = 10.0
#: How long trio-websocket may take to parse the handshake it is handed.
HANDSHAKE_TIMEOUT = 10.0
#: How long a WebSocket's closing handshake may take.
CLOSE_TIMEOUT = 2.0
#: How long closing every WebSocket may take on Ctrl-C.
SHUTDOWN_TIMEOUT = 3.0

#: Close code for the sockets still open when the server stops (RFC 6455: going away).
GOING_AWAY = 1001

HELP = (
    "# Use +channel to join a channel, -channel to leave.",
    "# Sending !channel will send the next message to said channel.",
    "# To see a message sent to a given channel, you must have joined it beforehand.",
)


# ------------------------------------------------------------------ one client


class ChatSession:
    """One WebSocket client: its subscription's callbacks and its command loop."""

    def __init__(self, ws: WebSocketConnection, mpx: Multiplexer) -> None:
        self.ws = ws
        self.mpx = mpx
        self.open = True
        self._send_lock = trio.Lock()  # callbacks and the command loop both send
        # The command loop's scope: cancelled when a frame cannot be delivered, so that a
        # gone or stuck client is dropped (and its subscription closed) at once.
        self._scope = trio.CancelScope()

    # ---- sending

    async def send_text(self, text: str) -> None:
        if not self.open:
            return
        async with self._send_lock:
            if not self.open:
                return
            try:
                with trio.fail_after(SEND_TIMEOUT):
                    await self.ws.send_message(text)
            except Exception:  # ConnectionClosed, TooSlowError, ...: stop sending
                self.drop()

    async def send_json(self, **notice: Any) -> None:
        await self.send_text(json.dumps(notice, separators=(",", ":")))

    def drop(self) -> None:
        """Send nothing more, and end the command loop (the socket is then closed)."""
        self.open = False
        self._scope.cancel()

    async def close(self, code: int, reason: str) -> None:
        """Close the socket (from another task); the command loop then ends."""
        self.open = False
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self.ws.aclose(code, reason)
        self._scope.cancel()  # in case the closing handshake did not complete

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
        with self._scope:
            for line in HELP:
                await self.send_text(line)
            await self.send_json(type="state", redis=redis_state)
            publish_to: str | None = None  # set by `!channel`: the next frame goes there
            while True:
                try:
                    frame = await self.ws.get_message()
                except ConnectionClosed:
                    return
                text = frame if isinstance(frame, str) else frame.decode(errors="replace")
                if publish_to is not None:
                    channel, publish_to = publish_to, None
                    await self.publish(channel, text)
                    continue
                command, name = text[:1], text[1:].strip()
                if command not in ("+", "-", "!"):
                    await self.send_json(
                        type="error",
                        message=(
                            "unknown command: use +channel, -channel, or !channel then a message"
                        ),
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
            with trio.fail_after(PUBLISH_TIMEOUT):
                receivers = await self.mpx.publish(channel, text.encode())
        except trio.TooSlowError:
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

    async def handle(self, ws: WebSocketConnection) -> None:
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

    async def close_sockets(self, code: int = GOING_AWAY, reason: str = "server stopping") -> None:
        """Close every open WebSocket, all at once; returns when they are closed."""
        async with trio.open_nursery() as nursery:
            for session in list(self.sessions):
                nursery.start_soon(session.close, code, reason)

    def close(self) -> None:
        self._status.close()


# ------------------------------------------------------------------ HTTP and the handshake


@dataclass(frozen=True)
class RequestHead:
    """The parts of an HTTP request head this server looks at."""

    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def has_token(self, header: str, token: str) -> bool:
        """Whether a comma-separated header (Upgrade, Connection) lists ``token``."""
        values = self.headers.get(header, "").split(",")
        return token in (value.strip().lower() for value in values)

    @property
    def is_websocket(self) -> bool:
        return self.has_token("upgrade", "websocket")


def parse_head(head: bytes) -> RequestHead | None:
    """The request line and headers, or None if they are malformed."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return None
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return RequestHead(parts[0], parts[1], parts[2], headers)


async def read_head(stream: trio.abc.Stream) -> tuple[bytes, bytes] | None:
    """The request head (without its blank line) and every byte read, or None when the
    client closed first or sent more than :data:`HEAD_LIMIT` bytes without a blank line."""
    received = bytearray()
    while (end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > HEAD_LIMIT:
            return None
        data = await stream.receive_some(4096)
        if not data:
            return None
        received += data
    if end > HEAD_LIMIT:
        return None
    return bytes(received[:end]), bytes(received)


class ReplayStream(trio.abc.Stream):
    """``stream``, whose first bytes received are ``replay`` (already read from it): how a
    connection whose head was read here is handed to trio-websocket."""

    def __init__(self, stream: trio.abc.Stream, replay: bytes) -> None:
        self._stream = stream
        self._replay = replay

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._replay:
            size = len(self._replay) if max_bytes is None else max_bytes
            data, self._replay = self._replay[:size], self._replay[size:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


async def respond(
    stream: trio.abc.Stream,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    head_only: bool = False,
    extra_headers: Sequence[str] = (),
) -> None:
    """One HTTP/1.1 response; the connection is closed afterwards (by the caller)."""
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-cache",
        "Connection: close",
        *extra_headers,
    ]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with trio.move_on_after(SEND_TIMEOUT):
        await stream.send_all(data if head_only else data + body)


def _peer(stream: trio.abc.Stream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()  # type: ignore[attr-defined]
    except Exception:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def handle_connection(hub: ChatHub, page: bytes, stream: trio.abc.Stream) -> None:
    """One accepted TCP connection: the page, a WebSocket, or an error answer.

    Nothing raised here may reach the server's nursery (it would stop the server): I/O
    errors end this connection quietly, anything else is logged."""
    peer = _peer(stream)
    try:
        read = None
        with trio.move_on_after(HEAD_TIMEOUT):
            read = await read_head(stream)
        if read is None:
            return
        head_bytes, received = read
        head = parse_head(head_bytes)
        if head is None:
            await respond(stream, 400, b"Bad Request\n")
            return
        status = await answer(hub, page, stream, head, received, peer)
        if status is not None:
            logger.info('%s - "%s %s %s" %d', peer, head.method, head.target, head.version, status)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client went away (also from inside trio-websocket's nursery)
    except* Exception:
        logger.exception("error on the connection from %s", peer)


async def answer(
    hub: ChatHub,
    page: bytes,
    stream: trio.abc.Stream,
    head: RequestHead,
    received: bytes,
    peer: str,
) -> int | None:
    """Serve one request; its status code (None for a WebSocket, which logs itself)."""
    if head.is_websocket and head.path == "/ws":
        if head.method != "GET" or "sec-websocket-key" not in head.headers:
            await respond(stream, 400, b"Bad WebSocket handshake\n")
            return 400
        await serve_websocket_stream(hub, ReplayStream(stream, received), head, peer)
        return None
    if head.method not in ("GET", "HEAD"):
        await respond(stream, 405, b"Method Not Allowed\n", extra_headers=["Allow: GET, HEAD"])
        return 405
    head_only = head.method == "HEAD"
    if head.path != "/" or head.is_websocket:
        await respond(stream, 404, b"Not Found\n", head_only=head_only)
        return 404
    await respond(stream, 200, page, content_type="text/html; charset=utf-8", head_only=head_only)
    return 200


async def serve_websocket_stream(
    hub: ChatHub, stream: trio.abc.Stream, head: RequestHead, peer: str
) -> None:
    """Complete the handshake with trio-websocket, then run the chat on the socket."""
    async with trio.open_nursery() as nursery:  # trio-websocket's reader task runs here
        request = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            request = await wrap_server_stream(nursery, stream)
        if request is None:  # wsproto refused the handshake (and answered 400)
            nursery.cancel_scope.cancel()
            return
        ws = await request.accept()
        logger.info('%s - "WebSocket %s" [accepted]', peer, head.target)
        try:
            await hub.handle(ws)
        finally:
            # Shielded: on shutdown this runs cancelled, and must still close the socket.
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose()
            nursery.cancel_scope.cancel()  # the reader task, should it linger
            logger.info('%s - "WebSocket %s" [closed]', peer, head.target)


# ------------------------------------------------------------------ the server


STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


async def serve(settings: Settings, *, announce: Callable[[str], None] | None = None) -> None:
    """Serve the chat until SIGINT, SIGTERM or SIGHUP, then shut down cleanly."""
    page = PAGE.read_bytes()
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with Multiplexer(settings.redis_url) as mpx:
            hub = ChatHub(mpx)
            try:
                listeners = await _listen(settings)
                handler = partial(handle_connection, hub, page)
                async with trio.open_nursery() as connections:
                    accept = partial(
                        trio.serve_listeners, handler, listeners, handler_nursery=connections
                    )
                    async with trio.open_nursery() as accepting:
                        accepting.start_soon(accept)
                        line = f"Open {settings.browser_url} in a browser (Ctrl-C to stop)"
                        (announce or (lambda text: print(text, flush=True)))(line)
                        async for signum in signals:
                            logger.info("%s: shutting down", signal.Signals(signum).name)
                            break
                        accepting.cancel_scope.cancel()  # no new connections
                    await _close_sockets(hub, signals)
                    connections.cancel_scope.cancel()
            finally:
                hub.close()


async def _listen(settings: Settings) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(settings.port, host=settings.host)
    except OSError as exc:  # the port was taken since main() checked it
        where = f"{settings.host}:{settings.port}"
        raise SystemExit(f"chat: cannot serve on {where}: {exc.strerror or exc}") from None


async def _close_sockets(hub: ChatHub, signals: Any) -> None:
    """Close the open WebSockets within :data:`SHUTDOWN_TIMEOUT`; another signal stops
    waiting at once."""

    async def closing(scope: trio.CancelScope) -> None:
        await hub.close_sockets()
        scope.cancel()

    async def second_signal(scope: trio.CancelScope) -> None:
        async for _ in signals:
            scope.cancel()

    with trio.move_on_after(SHUTDOWN_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(closing, nursery.cancel_scope)
            nursery.start_soon(second_signal, nursery.cancel_scope)


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """examples/chat's options, with the same environment variables and defaults."""
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


def settings_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a TCP port")
    return Settings(redis_url=args.redis_url, host=args.host, port=args.port)


def parse_args(argv: Sequence[str] | None = None, *, prog: str | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(parser)
    return settings_from(parser, parser.parse_args(argv))


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


def configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    log = logging.getLogger("redismpx")  # the library's reconnects, and the chat's own lines
    if not log.handlers:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def run(settings: Settings, *, announce: Callable[[str], None] | None = None) -> None:
    """Run the chat in the foreground until a stop signal (it then returns normally)."""
    configure_logging()
    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C before the receiver was set up
        trio.run(partial(serve, settings, announce=announce))


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    settings = parse_args(argv, prog=prog)
    problem = check_port_free(settings.host, settings.port)
    if problem is not None:
        sys.exit(f"chat: cannot serve on {settings.host}:{settings.port}: {problem}")
    run(settings)


if __name__ == "__main__":
    main()
