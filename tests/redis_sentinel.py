"""A real Redis Sentinel set-up for the tests: one master, one replica, three sentinels.

:class:`RedisSentinel` starts the data nodes as :class:`~redis_servers.RedisServer`
processes (the replica with ``--replicaof``) and the sentinels as
:class:`SentinelServer` processes (``redis-server <conf> --sentinel``, the config
written to a private directory), all on free loopback ports, and returns once
every sentinel knows the master, the replica and the other sentinels, so that
both a forced failover (:meth:`RedisSentinel.failover`) and an automatic one after
the master dies (:meth:`RedisSentinel.kill_master`) can proceed. ``other_masters``
names more masters for the same sentinels to monitor, each with a master and a
replica of its own (a failover of one of them is announced to everyone listening).

The sentinels run with their periods shortened through ``SENTINEL DEBUG`` (Redis
7): they discover each other, notice a dead master and reconfigure a demoted one
in a fraction of a second instead of several, which keeps a failover test to a
second or two. The failure detection itself is as configured:
``down-after-milliseconds 1000``. With ``timers="default"`` (the failover
benchmark), the sentinels keep every timer and period at its default instead.

The same set-up runs on Redis 7 and on Valkey (``valkey-server <conf> --sentinel``),
which accepts the same configuration and ``SENTINEL DEBUG`` periods.

The pytest fixture ``redis_sentinel_factory`` (function scope) is registered in
``tests/conftest.py``; a test module that does not fault the set-up can share one
by building a :class:`RedisSentinel` in a module-scoped fixture of its own.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import hiredis
import pytest

from redis_servers import HOST, RedisServer, RedisServerError

__all__ = [
    "MASTER_NAME",
    "Timers",
    "RedisSentinel",
    "RedisSentinelFactory",
    "SentinelServer",
    "redis_sentinel_factory",
]

MASTER_NAME = "mymaster"

#: "fast": the test timers (below); "default": Sentinel's own, as a deployment has them.
Timers = Literal["fast", "default"]

_READY_TIMEOUT = 15.0
#: With default timers a sentinel polls INFO every 10 s: it may take that long to see
#: a replica in sync.
_READY_TIMEOUT_DEFAULT_TIMERS = 60.0
_FAILOVER_TIMEOUT = 20.0
_POLL = 0.02

#: ``SENTINEL DEBUG`` periods (ms), shortened where it is safe. Defaults: publish
#: (hello messages) 2000, info 10000, ask (the other sentinels, about a master
#: thought down) 1000, ping 1000. Two hard-coded 1 s periods set the limits: during
#: a failover, and while the master is down, a sentinel polls replicas' INFO once a
#: second.
#:
#: * publish: a sentinel lets an instance claim a role its config denies for 4
#:   periods before "correcting" it. That must outlast a promotion as the other
#:   sentinels see it: the leader notices the promoted replica's new role (<= 1 s),
#:   then announces the new config with its next hello. 750 ms gives 3 s for
#:   ~1.75 s. It is also about how long an old master keeps serving its clients
#:   after a failover before the sentinels demote it (and it drops them).
#: * info: a replica is a candidate only if its INFO is at most 3 info periods old
#:   (master up: a forced failover); 250 ms gives 750 ms for at most ~450.
#: * ping stays at 1 s: with the master down, a replica's INFO may be at most 5 ping
#:   periods old, and it is refreshed only once a second then.
_SENTINEL_DEBUG = (
    "publish-period", "750",
    "info-period", "250",
    "ask-period", "100",
)  # fmt: skip


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` (errors count as false) until true, or raise RedisServerError."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            if condition():
                return
        except (OSError, hiredis.HiredisError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            cause = f" (last error: {last!r})" if last is not None else ""
            raise RedisServerError(f"timed out after {timeout} s waiting until {what}{cause}")
        time.sleep(_POLL)


def _pairs(flat: list[bytes]) -> dict[str, str]:
    """A flat ``[key, value, ...]`` reply (SENTINEL MASTER, REPLICAS...) as a dict."""
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


class SentinelServer(RedisServer):
    """One ``redis-server <conf> --sentinel`` process monitoring ``MASTER_NAME`` (at
    ``master_port``) and the ``other_masters`` (name -> port).

    ``password`` is the sentinel's own ``requirepass`` (and the admin connection's
    credential, as for :class:`RedisServer`); ``master_password`` is what it uses to
    reach the data nodes (``sentinel auth-pass``); ``extra_conf`` lines are appended to
    the config (TLS settings, say). ``timers="default"`` leaves every Sentinel timer
    (``down-after-milliseconds``, ``failover-timeout``, ``parallel-syncs``, the
    ``SENTINEL DEBUG`` periods) at its default. The config file is written on the
    first start; a restart on the same port keeps the one the sentinel has rewritten
    with what it learnt (the current master, replicas, other sentinels).
    """

    def __init__(
        self,
        binary: str,
        *,
        master_port: int,
        work_dir: Path,
        password: str | None = None,
        master_password: str | None = None,
        extra_conf: Sequence[str] = (),
        other_masters: Mapping[str, int] | None = None,
        timers: Timers = "fast",
    ) -> None:
        super().__init__(binary, work_dir=work_dir, password=password)
        self.master_port = master_port
        self.master_password = master_password
        self.extra_conf = tuple(extra_conf)
        self.masters = {MASTER_NAME: master_port, **(other_masters or {})}
        self.timers = timers
        self.conf_path = self.work_dir / "sentinel.conf"
        self._conf_port: int | None = None

    def __repr__(self) -> str:
        return "<Sentinel" + super().__repr__().removeprefix("<RedisServer")

    def _argv(self, port: int) -> list[str]:
        if port != self._conf_port:
            lines = [
                f"port {port}",
                f"bind {HOST}",
                f"dir {self.work_dir}",
                "daemonize no",
                'logfile ""',
                "sentinel resolve-hostnames no",
            ]
            for name, master_port in self.masters.items():
                lines.append(f"sentinel monitor {name} {HOST} {master_port} 2")
                if self.timers == "fast":
                    lines += [
                        f"sentinel down-after-milliseconds {name} 1000",
                        f"sentinel failover-timeout {name} 3000",
                        f"sentinel parallel-syncs {name} 1",
                    ]
                if self.master_password is not None:
                    lines.append(f"sentinel auth-pass {name} {self.master_password}")
            if self.password is not None:
                # Clients and the other sentinels alike must authenticate.
                lines += [f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}"]
            lines += self.extra_conf
            self.conf_path.write_text("\n".join(lines) + "\n")
            self._conf_port = port
        return [self.binary, str(self.conf_path), "--sentinel"]

    def start(self, timeout: float = 10.0) -> SentinelServer:
        super().start(timeout)
        if self.timers == "fast":
            # Not kept in the config: applied again after every (re)start.
            self.command("SENTINEL", "DEBUG", *_SENTINEL_DEBUG)
        return self

    def master_address(self, name: str = MASTER_NAME) -> tuple[str, int] | None:
        """What this sentinel answers to GET-MASTER-ADDR-BY-NAME."""
        reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
        return None if reply is None else (reply[0].decode(), int(reply[1]))

    def knows_setup(self, replica_port: int, sentinels: int, name: str = MASTER_NAME) -> bool:
        """True once it sees the master up, the replica up, and ``sentinels - 1`` others."""
        master = _pairs(self.command("SENTINEL", "MASTER", name))
        if master.get("flags") != "master":
            return False
        replicas = [_pairs(r) for r in self.command("SENTINEL", "REPLICAS", name)]
        if not any(
            r.get("port") == str(replica_port)
            and r.get("flags") == "slave"
            and r.get("master-link-status") == "ok"
            for r in replicas
        ):
            return False
        return len(self.command("SENTINEL", "SENTINELS", name)) == sentinels - 1


class RedisSentinel:
    """One master, one replica and ``sentinels`` sentinels, on loopback (and a master
    and a replica more for each of ``other_masters``).

    ``password`` protects the data nodes (``requirepass``, and ``masterauth`` for
    replication); ``sentinel_password`` protects the sentinels. ``timers`` are the
    sentinels' (see :class:`SentinelServer`). :meth:`start` returns once the set-up
    is complete (see :meth:`wait_ready`).
    """

    def __init__(
        self,
        binary: str,
        work_dir: Path | None = None,
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        sentinels: int = 3,
        other_masters: Sequence[str] = (),
        timers: Timers = "fast",
    ) -> None:
        self.binary = binary
        self._owns_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="redismpx-sentinel-"))
        self.password = password
        self.sentinel_password = sentinel_password
        self.sentinel_count = sentinels
        self.other_masters = tuple(other_masters)
        self.timers: Timers = timers
        self.nodes: list[RedisServer] = []
        #: The data nodes of each master name, the master at the start first.
        self.groups: dict[str, list[RedisServer]] = {}
        self.sentinels: list[SentinelServer] = []

    # -- set-up ------------------------------------------------------------

    def _data_node(self, name: str, *extra_args: str) -> RedisServer:
        args = ["--repl-diskless-sync-delay", "0"]  # the first sync at once, not in 5 s
        if self.password is not None:
            args += ["--masterauth", self.password]
        node = RedisServer(
            self.binary,
            extra_args=[*args, *extra_args],
            password=self.password,
            work_dir=self.work_dir / name,
        )
        self.nodes.append(node)
        return node.start()

    def start(self) -> RedisSentinel:
        try:
            for index, name in enumerate((MASTER_NAME, *self.other_masters)):
                tag = "" if index == 0 else f"-{index}"
                master = self._data_node(f"node-a{tag}")
                replica = self._data_node(f"node-b{tag}", "--replicaof", HOST, str(master.port))
                self.groups[name] = [master, replica]
            for i in range(self.sentinel_count):
                sentinel = SentinelServer(
                    self.binary,
                    master_port=self.groups[MASTER_NAME][0].port,
                    other_masters={n: self.groups[n][0].port for n in self.other_masters},
                    work_dir=self.work_dir / f"sentinel-{i}",
                    password=self.sentinel_password,
                    master_password=self.password,
                    timers=self.timers,
                )
                self.sentinels.append(sentinel)
                sentinel.start()
            for name, (_, replica) in self.groups.items():
                self.wait_ready(replica, name=name)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def _ready_timeout(self) -> float:
        return _READY_TIMEOUT if self.timers == "fast" else _READY_TIMEOUT_DEFAULT_TIMERS

    def wait_ready(
        self, replica: RedisServer, timeout: float | None = None, *, name: str = MASTER_NAME
    ) -> None:
        """Until the replica is in sync and every running sentinel knows the whole
        set-up: a failover needs a replica the sentinels consider good, and an automatic
        one needs sentinels that know each other (quorum, leader election)."""
        timeout = self._ready_timeout if timeout is None else timeout
        _wait(
            lambda: replica.info("replication").get("master_link_status") == "up",
            timeout,
            f"the replica of {name} is in sync",
        )
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            _wait(
                lambda s=sentinel: s.knows_setup(replica.port, self.sentinel_count, name),
                timeout,
                f"{sentinel!r} knows {name}'s master, its replica and the other sentinels",
            )

    def settle(self, name: str = MASTER_NAME, timeout: float | None = None) -> None:
        """After a failover: until the old master is demoted, replicates the new one,
        and every running sentinel knows it so, ready for the next failover."""
        timeout = self._ready_timeout if timeout is None else timeout

        def agreed() -> bool:
            with contextlib.suppress(RedisServerError):
                self.master(name)
                return True
            return False

        _wait(agreed, timeout, f"the sentinels agree on the master of {name}")
        master = self.master(name)
        for node in self.groups[name]:
            if node is master or not node.running:
                continue
            _wait(
                lambda n=node: (
                    n.command("ROLE")[0] == b"slave"
                    and int(n.info("replication").get("master_port", 0)) == master.port
                ),
                timeout,
                f"{node!r} replicates the master of {name}",
            )
            self.wait_ready(node, timeout, name=name)

    # -- addresses ---------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:P1,.../mymaster`` (no credentials)."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    def node_at(self, address: tuple[str, int]) -> RedisServer:
        for node in self.nodes:
            if (node.host, node.port) == address:
                return node
        raise RedisServerError(f"no data node at {address}")

    def master(self, name: str = MASTER_NAME) -> RedisServer:
        """The data node the running sentinels agree is the master, if it says so too."""
        answers = {s.master_address(name) for s in self.sentinels if s.running}
        if len(answers) != 1 or None in answers:
            raise RedisServerError(f"the sentinels disagree on the master: {answers}")
        (address,) = answers
        assert address is not None
        node = self.node_at(address)
        if node.command("ROLE")[0] != b"master":
            raise RedisServerError(f"{node!r} is named master but is not one (yet)")
        return node

    def replica(self, name: str = MASTER_NAME) -> RedisServer:
        """A running data node that is not the master."""
        master = self.master(name)
        return next(n for n in self.groups[name] if n is not master and n.running)

    # -- faults ------------------------------------------------------------

    def wait_new_master(
        self, old: RedisServer, timeout: float = _FAILOVER_TIMEOUT, name: str = MASTER_NAME
    ) -> RedisServer:
        """Until every running sentinel names a master other than ``old`` that says it
        is one; returns it."""
        def promoted() -> bool:
            with contextlib.suppress(RedisServerError):
                return self.master(name) is not old
            return False

        _wait(promoted, timeout, f"every sentinel names a new master of {name} that says it is one")
        return self.master(name)

    def start_failover(
        self,
        name: str = MASTER_NAME,
        via: SentinelServer | None = None,
        timeout: float = _FAILOVER_TIMEOUT,
    ) -> float:
        """``SENTINEL FAILOVER`` to ``via`` (by default the first running sentinel),
        without waiting for it; returns the ``time.monotonic()`` at which the accepted
        command was sent. Refused with NOGOODSLAVE while the sentinel has not yet seen
        the replica in a good state (fresh set-ups wait for that, but INFO is sampled):
        it is sent again until accepted."""
        sentinel = via or next(s for s in self.sentinels if s.running)
        sent = [0.0]

        def accepted() -> bool:
            sent[0] = time.monotonic()
            return sentinel.command("SENTINEL", "FAILOVER", name, check=False) == b"OK"

        _wait(accepted, timeout, f"SENTINEL FAILOVER {name} is accepted")
        return sent[0]

    def failover(self, name: str = MASTER_NAME, timeout: float = _FAILOVER_TIMEOUT) -> RedisServer:
        """``SENTINEL FAILOVER``: returns the new master once every sentinel names it and
        it reports role master. The old master is demoted by the sentinels soon after
        (which closes its clients' connections); this does not wait for that."""
        old = self.master(name)
        self.start_failover(name, timeout=timeout)
        return self.wait_new_master(old, timeout, name)

    def kill_master(self, timeout: float = _FAILOVER_TIMEOUT) -> RedisServer:
        """SIGKILL the master; returns the replica the sentinels promote in its place."""
        old = self.master()
        old.kill()
        return self.wait_new_master(old, timeout)

    def wait_demoted(self, node: RedisServer, timeout: float = _FAILOVER_TIMEOUT) -> None:
        """Until ``node`` (an old master) reports role slave: the sentinels reconfigure it."""
        _wait(lambda: node.command("ROLE")[0] == b"slave", timeout, f"{node!r} is demoted")

    def close(self) -> None:
        """SIGKILL every process (no persistence: nothing to flush) and clean up."""
        for server in [*self.sentinels, *self.nodes]:
            with contextlib.suppress(Exception):
                server.kill()
                server.close()
        if self._owns_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> RedisSentinel:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisSentinelFactory(Protocol):
    """Type of the ``redis_sentinel_factory`` fixture: a started, ready set-up; the
    fixture closes every set-up it made at teardown."""

    def __call__(
        self,
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        other_masters: Sequence[str] = (),
    ) -> RedisSentinel: ...


@pytest.fixture
def redis_sentinel_factory(
    redis_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisSentinelFactory]:
    setups: list[RedisSentinel] = []

    def factory(
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        other_masters: Sequence[str] = (),
    ) -> RedisSentinel:
        setup = RedisSentinel(
            redis_binary,
            tmp_path_factory.mktemp("sentinel"),
            password=password,
            sentinel_password=sentinel_password,
            other_masters=other_masters,
        )
        setups.append(setup)
        return setup.start()

    yield factory
    for setup in setups:
        setup.close()
