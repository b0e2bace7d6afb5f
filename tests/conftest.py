"""Shared pytest configuration: real Redis servers and the ``redis7`` marker.

Fixtures (see tests/redis_servers.py for the RedisServer API):

* ``redis_binary`` (session): path of the redis-server binary; skips the test when
  there is none, fails instead when a server is required (CI,
  ``REDISMPX_REQUIRE_REDIS7=1``).
* ``redis_server_factory`` (function): ``factory(*extra_args, password=None,
  username=None, unix_socket=False, port=None) -> RedisServer``, started and ready;
  every server it made is stopped at teardown. Use it for servers a test stops,
  kills, restarts, pauses or configures.
* ``redis_server`` (session): one shared server with the default configuration.
  Never stop, restart, pause or reconfigure it: take one from the factory instead.

The server matrix (tests/server_matrix.py): ``@pytest.mark.server_feature(name)`` and
``@pytest.mark.server_lacks(name)`` deselect the tests that do not apply to the server
under test, and the terminal summary counts them. ``REDISMPX_REQUIRE_REDIS7=1`` (CI's
main row) refuses to run against an older Redis at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

import server_matrix
from redis_servers import (
    ENV_REQUIRE_REDIS7,
    RedisServer,
    RedisServerError,
    RedisServerFactory,
    binary_version,
    find_redis_server,
    resolve_redis_server,
)

# Hypothesis: no per-example deadline on the (2-core, possibly busy) CI machines.
settings.register_profile("ci", deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_report_header(config: pytest.Config) -> str:
    try:
        binary = find_redis_server()
        if binary is None:
            return "redis-server: none found"
        version = ".".join(map(str, binary_version(binary)))
    except Exception as exc:
        return f"redis-server: {exc}"
    return f"redis-server: {binary} ({version})"


def _server_build() -> server_matrix.ServerBuild | None:
    try:
        binary = find_redis_server()
    except RedisServerError:
        return None  # the fixtures report it, test by test
    return server_matrix.server_build(binary) if binary is not None else None


def pytest_configure(config: pytest.Config) -> None:
    server_matrix.configure(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    build = _server_build()
    if build is not None and os.environ.get(ENV_REQUIRE_REDIS7) == "1" and not build.has("sharded"):
        raise pytest.UsageError(f"{ENV_REQUIRE_REDIS7}=1 but the server is {build.label}")
    server_matrix.deselect_not_applicable(config, items, build)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in server_matrix.summary_lines(terminalreporter.config, _server_build()):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return resolve_redis_server()


@pytest.fixture
def redis_server_factory(
    redis_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServerFactory]:
    servers: list[RedisServer] = []

    def factory(
        *extra_args: str,
        password: str | None = None,
        username: str | None = None,
        unix_socket: bool = False,
        port: int | None = None,
    ) -> RedisServer:
        server = RedisServer(
            redis_binary,
            extra_args=extra_args,
            password=password,
            username=username,
            unix_socket=unix_socket,
            port=port,
            work_dir=tmp_path_factory.mktemp("redis"),
        )
        servers.append(server)
        return server.start()

    yield factory
    errors: list[Exception] = []
    for server in servers:
        try:
            server.kill()  # no persistence, nothing to flush: SIGTERM would cost ~100 ms each
            server.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def redis_server(
    redis_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary, work_dir=tmp_path_factory.mktemp("redis-shared"))
    with server.start():
        yield server


from redis_cluster import redis_cluster, redis_cluster_factory  # noqa: E402, F401
from redis_sentinel import redis_sentinel_factory  # noqa: E402, F401
