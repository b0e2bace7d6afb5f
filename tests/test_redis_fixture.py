"""Fast checks of the Redis server fixtures themselves (tests/redis_servers.py)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import hiredis
import pytest

import redis_servers
from redis_servers import (
    RedisServer,
    RedisServerError,
    RedisServerFactory,
    acl_user,
    binary_version,
    encode_command,
    require_redis7,
)


def test_shared_server_answers_ping(redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_server.host == "127.0.0.1"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}"
    assert redis_server.command("PING") == b"PONG"
    assert redis_server.command("ECHO", b"\x00bin\xff") == b"\x00bin\xff"


def test_persistence_is_off(redis_server: RedisServer) -> None:
    assert redis_server.command("CONFIG", "GET", "save") == [b"save", b""]
    assert redis_server.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]


def test_version_matches_binary(redis_server: RedisServer) -> None:
    assert redis_server.version == binary_version(redis_server.binary)
    assert redis_server.version >= (6,)


def test_error_reply_raises_or_is_returned(redis_server: RedisServer) -> None:
    with pytest.raises(hiredis.ReplyError, match="unknown command"):
        redis_server.command("NO-SUCH-COMMAND")
    reply = redis_server.command("NO-SUCH-COMMAND", check=False)
    assert isinstance(reply, hiredis.ReplyError)


def test_factory_servers_get_distinct_ports(redis_server_factory: RedisServerFactory) -> None:
    a = redis_server_factory()
    b = redis_server_factory()
    assert a.port != b.port
    a.command("SET", "k", "a")
    assert b.command("GET", "k") is None
    assert a.command("GET", "k") == b"a"


def test_start_is_fast(redis_server_factory: RedisServerFactory) -> None:
    started = time.monotonic()
    redis_server_factory()
    assert time.monotonic() - started < 1.0


def test_port_collision_is_retried(
    redis_server_factory: RedisServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = squatter.getsockname()[1]
        ports = iter([taken, taken])
        real_free_port = redis_servers.free_port
        monkeypatch.setattr(redis_servers, "free_port", lambda: next(ports, 0) or real_free_port())
        server = redis_server_factory()
        assert server.port != taken
        assert server.command("PING") == b"PONG"
        assert server.starts == 3
        with pytest.raises(RedisServerError, match="Address already in use"):
            RedisServer(server.binary, port=taken, work_dir=tmp_path).start()


def test_restart_keeps_port_and_loses_data(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory()
    port, pid = server.port, server.pid
    server.command("SET", "k", "v")
    server.restart()
    assert server.port == port
    assert server.pid != pid
    assert server.command("PING") == b"PONG"
    assert server.command("GET", "k") is None


def test_stop_and_kill_close_the_port(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory()
    server.stop()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        server.command("PING", timeout=1)
    server.restart()
    server.kill()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        server.command("PING", timeout=1)
    server.stop()  # idempotent


def test_pause_is_seen_as_a_timeout(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory()
    server.pause()
    assert server.paused
    with pytest.raises(TimeoutError):
        server.command("PING", timeout=0.2)
    server.resume()
    assert not server.paused
    assert server.command("PING") == b"PONG"


def test_paused_server_can_still_be_stopped(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory()
    server.pause()
    server.stop()
    assert not server.running


def test_password_requires_auth(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory(password="s3cret")
    assert server.command("PING") == b"PONG"  # the admin connection authenticates
    with pytest.raises(hiredis.ReplyError, match="NOAUTH"):
        server.command("PING", authenticate=False)
    # Raw socket, as a client under test would see it.
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        reader = hiredis.Reader()
        sock.sendall(encode_command("AUTH", "wrong"))
        reader.feed(sock.recv(1024))
        assert isinstance(reader.gets(), hiredis.ReplyError)
        sock.sendall(encode_command("AUTH", "s3cret"))
        reader.feed(sock.recv(1024))
        assert reader.gets() == b"OK"


def test_acl_user_lines(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory(
        *acl_user("alice", "on", ">alicepw", "~*", "&*", "+@all"), *acl_user("bob", "off")
    )
    assert server.command("PING") == b"PONG"  # default user, full rights
    assert server.command("AUTH", "alice", "alicepw") == b"OK"
    with pytest.raises(hiredis.ReplyError):
        server.command("AUTH", "bob", "anything")


def test_admin_connection_with_username(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory(
        *acl_user("default", "off"),
        *acl_user("admin", "on", ">adminpw", "~*", "&*", "+@all"),
        username="admin",
        password="adminpw",
    )
    assert server.command("ACL", "WHOAMI") == b"admin"
    with pytest.raises(hiredis.ReplyError):
        server.command("PING", authenticate=False)


def test_unix_socket(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory(unix_socket=True)
    assert server.unix_path is not None
    assert server.command("PING", unix=True) == b"PONG"
    server.restart()
    assert server.command("PING", unix=True) == b"PONG"


def test_pubsub_helpers(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory()
    with server.connect() as sock:
        sock.sendall(encode_command("SUBSCRIBE", "news"))
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            reader.feed(sock.recv(1024))
        assert reply == [b"subscribe", b"news", 1]
        assert server.pubsub_numsub("news") == {b"news": 1}
        assert server.command("PUBLISH", "news", "hi") == 1
        assert server.kill_clients("pubsub") == 1


def test_require_redis7_skips_old_versions() -> None:
    require_redis7((7, 0, 0))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REDISMPX_REQUIRE_REDIS7", raising=False)
        with pytest.raises(pytest.skip.Exception):
            require_redis7((6, 2, 14))
        mp.setenv("REDISMPX_REQUIRE_REDIS7", "1")
        with pytest.raises(pytest.fail.Exception):
            require_redis7((6, 2, 14))


@pytest.mark.server_feature("sharded")
def test_server_feature_marker(redis_server: RedisServer) -> None:
    # Deselected on a server without sharded Pub/Sub, so here the server has it.
    assert redis_server.command("SPUBLISH", "marker-check", "x") == 0
