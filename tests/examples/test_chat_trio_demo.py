"""The trio chat demo (examples/chat_trio) end to end, as a user runs it.

``python -m examples.chat_trio`` is started against a Redis of the test's own; the page is
fetched as a browser would; two WebSocket clients chat through it; then Ctrl-C (SIGINT)
must close the open sockets and stop the app cleanly. A second test runs it with
``--start-redis``, and a third checks that its import graph holds no anyio, asyncio,
Starlette or uvicorn.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from examples.demo_process import port_open
from redis_servers import RedisServerFactory, free_port, resolve_redis_server

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "examples" / "chat" / "static" / "index.html"
HOST = "127.0.0.1"

START_DEADLINE = 10.0
RECV_TIMEOUT = 5.0
STOP_DEADLINE = 10.0
PORT_ATTEMPTS = 3


@dataclass
class Demo:
    """One run of ``python -m examples.chat_trio``."""

    proc: subprocess.Popen[bytes]
    log: Path
    http_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """Whatever is left of this run: its process group (a Redis it started has a
        session of its own, and gets SIGTERM when the demo dies)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def launch(
    tmp_path: Path, redis_url: Callable[[], str], *extra: str, **env_vars: str
) -> tuple[Demo, str]:
    """Start the demo on a free port and wait for its page; returns it and the page.

    Another process may take the "free" port before the demo binds it: the demo then
    refuses to serve, and the run is retried on a new port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDISMPX_DEMO_")}
    env.update(PYTHONUNBUFFERED="1", **env_vars)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        http_port = free_port()
        log = tmp_path / f"demo-{attempt}.log"
        argv = [sys.executable, "-m", "examples.chat_trio", "--host", HOST]
        argv += ["--port", str(http_port), "--redis-url", redis_url(), *extra]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,  # its own process group, killed whole by Demo.kill
            )
        demo = Demo(proc, log, http_port)
        try:
            page = wait_for_page(demo)
        except BaseException:
            demo.kill()
            raise
        if page is not None:
            return demo, page
        demo.kill()
    pytest.fail(f"the demo could not get a port:\n{demo.output()}")


def wait_for_page(demo: Demo) -> str | None:
    """The page once served; None if the demo stopped because its port was taken."""
    url = f"http://{HOST}:{demo.http_port}/"
    deadline = time.monotonic() + START_DEADLINE
    while True:
        if demo.proc.poll() is not None:
            output = demo.output()
            if "Address already in use" in output or "address already in use" in output:
                return None
            pytest.fail(f"the demo exited with {demo.proc.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            pytest.fail(f"no page at {url} after {START_DEADLINE} s:\n{demo.output()}")
        time.sleep(0.05)


def stop(demo: Demo) -> str:
    """SIGINT, as Ctrl-C in a terminal; the demo must exit 0. Returns its output."""
    os.kill(demo.proc.pid, signal.SIGINT)
    returncode = demo.proc.wait(STOP_DEADLINE)
    output = demo.output()
    assert returncode == 0, output
    assert "Traceback" not in output, output
    return output


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


def test_trio_chat_end_to_end(tmp_path: Path, redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory()
    demo, page = launch(tmp_path, lambda: server.url)
    try:
        # The anyio demo's page, byte for byte.
        assert page == PAGE.read_text()
        assert 'id="state"' in page
        assert f"Open http://{HOST}:{demo.http_port}/ in a browser" in demo.output()

        url = f"ws://{HOST}:{demo.http_port}/ws"
        with connect(url, open_timeout=RECV_TIMEOUT) as a, connect(url) as b:
            # Each socket gets the help lines, then the Redis state; "reconnecting" until
            # the app's own status channel is first active, then a "connected" notice.
            for ws in (a, b):
                greeting = expect(ws, lambda f: is_notice(f, type="state"), "state")
                assert len(greeting) == 4, greeting
                assert all(line.startswith("# ") for line in greeting[:3]), greeting
                if not is_notice(greeting[-1], redis="connected"):
                    expect(ws, lambda f: is_notice(f, type="state", redis="connected"), "Redis")

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

            # A command that is not one gets an error notice, and the socket stays usable.
            b.send("?")
            expect(b, lambda f: is_notice(f, type="error"), "error notice")

            # Closing A's socket closes its subscription: Redis drops `sentinel`.
            a.close()
            deadline = time.monotonic() + RECV_TIMEOUT
            while server.pubsub_numsub("sentinel")[b"sentinel"] != 0:
                assert time.monotonic() < deadline, "sentinel still subscribed after close"
                time.sleep(0.02)

            # Ctrl-C, with B still connected: B is closed (going away), the demo exits 0.
            os.kill(demo.proc.pid, signal.SIGINT)
            with pytest.raises(ConnectionClosed) as closed:
                drain(b)
            assert closed.value.rcvd is not None, "closed without a close frame"
            assert closed.value.rcvd.code == 1001
        output = stop(demo)
        assert "SIGINT: shutting down" in output
        # Its Redis connections are gone with it (only the test's own remains).
        assert int(server.info("clients")["connected_clients"]) == 1
    finally:
        print(f"--- demo output:\n{demo.output()}")  # shown if the test failed
        demo.kill()


def test_trio_chat_starts_and_stops_its_own_redis(tmp_path: Path) -> None:
    binary = resolve_redis_server()  # skips, or fails in CI, when there is none
    redis_port = 0

    def fresh_url() -> str:
        nonlocal redis_port
        redis_port = free_port()
        return f"redis://{HOST}:{redis_port}"

    demo, _ = launch(tmp_path, fresh_url, "--start-redis", REDISMPX_REDIS_SERVER=binary)
    started: re.Match[str] | None = None
    try:
        output = demo.output()
        started = re.search(r"started \S+ \(pid (\d+)\) on \S+, data in (\S+);", output)
        assert started is not None, output
        assert port_open(redis_port)
        output = stop(demo)
        assert not port_open(redis_port), f"the demo's Redis still runs:\n{output}"
        assert not Path(started.group(2)).exists(), "the demo's Redis directory is left"
        assert output.rstrip().endswith("demo: bye"), output
    finally:
        print(f"--- demo output:\n{demo.output()}")
        demo.kill()
        if started is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(started.group(1)), signal.SIGKILL)


def test_trio_chat_imports_no_anyio_asyncio_or_starlette() -> None:
    code = (
        "import sys, examples.chat_trio.app, examples.demo_redis\n"
        "banned = {'anyio', 'asyncio', 'starlette', 'uvicorn', 'websockets'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in banned))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
