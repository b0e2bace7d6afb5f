"""The chat demo end to end, as a user runs it.

``scripts/demo`` is started with a ``--redis-url`` where no Redis runs, so it starts its
own; the page is fetched as a browser would; two WebSocket clients chat through it; then
Ctrl-C (SIGINT) must stop the app and the Redis it started, and remove its directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from examples.demo_process import HOST, launch, port_open
from redis_servers import encode_command, resolve_redis_server

RECV_TIMEOUT = 5.0
STOP_DEADLINE = 15.0


def redis_command(port: int, *args: str) -> Any:
    with socket.create_connection((HOST, port), timeout=2.0) as sock:
        sock.sendall(encode_command(*args))
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("redis-server closed the connection")
            reader.feed(data)
    return reply


def notice(frame: str) -> dict[str, Any] | None:
    """The JSON notice in a frame, or None for the plain-text frames."""
    return json.loads(frame) if frame.startswith("{") else None


def expect(ws: ClientConnection, match: Callable[[str], bool], what: str) -> list[str]:
    """Frames received up to and including the first that ``match``es."""
    seen: list[str] = []
    deadline = time.monotonic() + RECV_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        try:
            frame = ws.recv(timeout=max(remaining, 0.0))
        except TimeoutError:
            pytest.fail(f"no {what} within {RECV_TIMEOUT} s; received {seen}")
        assert isinstance(frame, str)
        seen.append(frame)
        if match(frame):
            return seen


def drain(ws: ClientConnection) -> None:
    """Receive until the connection closes (raises ConnectionClosed) or stays silent."""
    while True:
        ws.recv(timeout=STOP_DEADLINE)


def is_notice(frame: str, **fields: Any) -> bool:
    data = notice(frame)
    return data is not None and all(data.get(k) == v for k, v in fields.items())


def activated(channel: str) -> Callable[[str], bool]:
    return lambda frame: is_notice(frame, type="state", redis="connected", channel=channel)


def channels_are(*names: str) -> Callable[[str], bool]:
    return lambda frame: is_notice(frame, type="channels", channels=list(names))


def published(channel: str) -> Callable[[str], bool]:
    return lambda frame: is_notice(frame, type="published", channel=channel)


def chat_line(channel: str, message: str) -> Callable[[str], bool]:
    return lambda frame: frame == f"ch: [{channel}] msg: [{message}]"


def test_scripts_demo_chat_end_to_end(tmp_path: Path) -> None:
    binary = resolve_redis_server()  # skips, or fails in CI, when there is none
    demo, page = launch(tmp_path, binary)
    http_port, redis_port = demo.http_port, demo.redis_port
    try:
        assert 'id="state"' in page
        assert redis_command(redis_port, "PING") == b"PONG"
        assert f"Open http://{HOST}:{http_port}/ in a browser" in demo.output()

        url = f"ws://{HOST}:{http_port}/ws"
        with connect(url, open_timeout=RECV_TIMEOUT) as a, connect(url) as b:
            # Each socket is told the Redis state when it opens.
            for ws in (a, b):
                expect(ws, lambda f: is_notice(f, type="state", redis="connected"), "state")

            # A joins `room`; once Redis confirmed it, B publishes there and A gets it.
            a.send("+room")
            expect(a, channels_are("room"), "channels notice")
            expect(a, activated("room"), "activation of room")
            b.send("!room")
            b.send("hello")
            expect(b, published("room"), "publish ack")
            expect(a, chat_line("room", "hello"), "the message")

            # A leaves `room` and joins `sentinel`. B publishes to room, then to
            # sentinel: Redis delivers in order, so a room message reaching A would
            # arrive before the sentinel one.
            a.send("-room")
            expect(a, channels_are(), "channels notice after leaving")
            a.send("+sentinel")
            expect(a, activated("sentinel"), "activation of sentinel")
            b.send("!room")
            b.send("after leaving")
            expect(b, published("room"), "publish ack")
            b.send("!sentinel")
            b.send("ping")
            frames = expect(a, chat_line("sentinel", "ping"), "the sentinel message")
            assert not [f for f in frames if f.startswith("ch: [room]")], frames

            # Closing A's socket closes its subscription: Redis drops `sentinel`.
            a.close()
            deadline = time.monotonic() + RECV_TIMEOUT
            while redis_command(redis_port, "PUBSUB", "NUMSUB", "sentinel")[1] != 0:
                assert time.monotonic() < deadline, "sentinel still subscribed after close"
                time.sleep(0.02)

            # Ctrl-C, with B still connected: B is closed, the demo exits cleanly.
            os.kill(demo.proc.pid, signal.SIGINT)
            with pytest.raises(ConnectionClosed):
                drain(b)
        returncode = demo.proc.wait(STOP_DEADLINE)
        output = demo.output()
        assert returncode == 0, output
        assert not port_open(redis_port), f"the demo's Redis still runs:\n{output}"
        work_dir = re.search(r"data in (\S+);", output)
        assert work_dir is not None, output
        assert not Path(work_dir.group(1)).exists(), "the demo's Redis directory is left"
    finally:
        print(f"--- scripts/demo output:\n{demo.output()}")  # shown if the test failed
        demo.kill()
