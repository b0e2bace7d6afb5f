"""Running ``scripts/demo`` (README's first command) from a test: shared by the chat demo's
WebSocket test (test_chat_demo.py) and its browser test (test_chat_browser.py).

Imported as ``examples.demo_process``: ``tests`` is on pytest's ``pythonpath``, and this
``examples`` (like the repository's own) has no ``__init__.py``, so the two merge into one
namespace package.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from redis_servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo"
HOST = "127.0.0.1"

#: scripts/demo runs scripts/bootstrap first: quick once .venv is up to date, but a
#: changed pyproject.toml makes it reinstall the project.
START_DEADLINE = 90.0
PORT_ATTEMPTS = 3


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


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


def launch(tmp_path: Path, binary: str, redis_port: int | None = None) -> tuple[Demo, str]:
    """Start ``scripts/demo`` on free ports and wait for its page; returns it and the page.

    Without ``redis_port`` the demo is pointed at a free port, where it must start a Redis
    of its own. With it, at the Redis the test runs there, which it must use as it is.

    Another process may take a "free" port before the demo binds it: the demo then
    refuses to serve, or finds that stranger's Redis. Such a run is retried on new ports.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDISMPX_DEMO_")}
    env.update(REDISMPX_REDIS_SERVER=binary, PYTHONUNBUFFERED="1")
    starts_own_redis = redis_port is None
    for attempt in range(1, PORT_ATTEMPTS + 1):
        http_port = free_port()
        demo_redis_port = free_port() if redis_port is None else redis_port
        if starts_own_redis and (demo_redis_port == http_port or port_open(demo_redis_port)):
            continue
        log = tmp_path / f"demo-{attempt}.log"
        redis_url = f"redis://{HOST}:{demo_redis_port}"
        argv = [str(DEMO), "--port", str(http_port), "--redis-url", redis_url]
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
        demo = Demo(proc, log, http_port, demo_redis_port)
        try:
            page = wait_for_page(demo)
        except BaseException:
            demo.kill()
            raise
        if page is not None and (demo.redis_pid() is not None) == starts_own_redis:
            return demo, page
        demo.kill()
        if page is not None and not starts_own_redis:
            output = demo.output()
            pytest.fail(f"scripts/demo started a Redis instead of using {redis_url}:\n{output}")
        # else a port was taken under us
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
