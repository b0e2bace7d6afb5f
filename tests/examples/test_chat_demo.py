"""The chat demo end to end, as a user runs it.

``scripts/demo`` is started with a ``--redis-url`` where no Redis runs, so it starts its
own; the page is fetched as a browser would; two WebSocket clients chat through it; then
Ctrl-C (SIGINT) must stop the app and the Redis it started, and remove its directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from redis_servers import encode_command, free_port, resolve_redis_server

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo"
HOST = "127.0.0.1"

#: scripts/demo runs scripts/bootstrap first: quick once .venv is up to date, but a
#: changed pyproject.toml makes it reinstall the project.
START_DEADLINE = 90.0
RECV_TIMEOUT = 5.0
STOP_DEADLINE = 15.0
PORT_ATTEMPTS = 3


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


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


@dataclass
class Demo:
    """One run of ``scripts/demo``, with the ports it was given."""

    proc: subprocess.Popen[bytes]
    log: Path
    http_port: int
    redis_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def redis_pid(self) -> int | None:
        """The pid of the Redis this demo says it started, if it still runs as such."""
        found = re.search(r"started \S+ \(pid (\d+)\)", self.output())
        if found is None:
            return None
        pid = int(found.group(1))
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"redis-server" in cmdline and b":%d" % self.redis_port in cmdline else None

    def kill(self) -> None:
        """Whatever is left of this run: its process group, and the Redis it started."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        pid = self.redis_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def launch(tmp_path: Path, binary: str) -> tuple[Demo, str]:
    """Start ``scripts/demo`` on free ports and wait for its page; returns it and the page.

    Another process may take a "free" port before the demo binds it: the demo then
    refuses to serve, or finds that stranger's Redis. Such a run is retried on new ports.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDISMPX_DEMO_")}
    env.update(REDISMPX_REDIS_SERVER=binary, PYTHONUNBUFFERED="1")
    for attempt in range(1, PORT_ATTEMPTS + 1):
        http_port = free_port()
        redis_port = free_port()
        if redis_port == http_port or port_open(redis_port):
            continue
        log = tmp_path / f"demo-{attempt}.log"
        argv = [str(DEMO), "--port", str(http_port), "--redis-url", f"redis://{HOST}:{redis_port}"]
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
        demo = Demo(proc, log, http_port, redis_port)
        try:
            page = wait_for_page(demo)
        except BaseException:
            demo.kill()
            raise
        if page is not None and demo.redis_pid() is not None:
            return demo, page
        demo.kill()  # a port was taken under us
        if attempt == PORT_ATTEMPTS:
            pytest.fail(f"scripts/demo could not get its ports:\n{demo.output()}")
    pytest.fail("no free ports")


def wait_for_page(demo: Demo) -> str | None:
    """The page once served; None if the demo stopped because a port was taken."""
    url = f"http://{HOST}:{demo.http_port}/"
    deadline = time.monotonic() + START_DEADLINE
    while True:
        if demo.proc.poll() is not None:
            output = demo.output()
            if "Address already in use" in output:
                return None
            pytest.fail(f"scripts/demo exited with {demo.proc.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            pytest.fail(f"no page at {url} after {START_DEADLINE} s:\n{demo.output()}")
        time.sleep(0.1)


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
