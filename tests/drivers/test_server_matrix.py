"""What a user gets on a server that lacks a feature (tests/server_matrix.py).

Each test here runs only where the server lacks the feature it names (on the others it
is not applicable, and counted as such), and stands in for the tests that need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hiredis
import pytest

from drivers.conftest import Driver, wait_until
from drivers.helpers import Inbox, b, uniq
from redis_servers import RedisServer, RedisServerFactory


@pytest.mark.server_lacks("sharded")
def test_sharded_subscription_without_sharded_pubsub(
    driver: Driver, redis_server: RedisServer
) -> None:
    """A sharded name is refused alone with the server's own error, typed; channel
    subscriptions on the same connection carry on; the iterator form raises it."""
    shard, plain = uniq("shard"), uniq("plain")

    async def body() -> None:
        errors: list[BaseException] = []
        inbox, active = Inbox(), []
        async with driver.Multiplexer(redis_server.url) as mpx:
            ssub = mpx.new_sharded_subscription(Inbox(), on_disconnect=errors.append)
            ssub.add(shard)
            sub = mpx.new_channel_subscription(inbox, on_activation=active.append)
            sub.add(plain)
            await wait_until(lambda: errors and active)
            (error,) = errors
            assert isinstance(error, driver.module.ServerError)
            assert "ssubscribe" in str(error).lower()
            assert ssub.names == frozenset()  # the refused name is dropped
            assert active == [b(plain)]
            assert await mpx.publish(plain, b"still here") == 1
            await wait_until(lambda: inbox.messages)
            with pytest.raises(driver.module.ServerError) as refused:
                async with mpx.ssubscribe(uniq("shard-it")):
                    pass
            assert "ssubscribe" in str(refused.value).lower()
            # SPUBLISH is a command the server does not know either: the same error.
            with pytest.raises(driver.module.ServerError):
                await mpx.spublish(shard, b"x")

    driver.run(body)


def _cluster_node(factory: RedisServerFactory, tmp_path: Path) -> RedisServer:
    """A server in cluster mode (its CLUSTER commands answer), alone. Redis 6.2 has no
    --cluster-port: its bus is the data port + 10000, which the fixture's ports (below
    the ephemeral range, free_port) leave room for."""
    return factory(
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(tmp_path / "nodes.conf"),
    )  # fmt: skip


def _refused(server: RedisServer, *command: str) -> str:
    reply: Any = server.command(*command, check=False)
    assert isinstance(reply, hiredis.ReplyError), reply
    return str(reply).lower()


@pytest.mark.server_lacks("cluster-shards")
def test_cluster_shards_is_an_unknown_command(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    """The feature table is right about this server: CLUSTER SHARDS does not exist (the
    cluster client falls back to CLUSTER SLOTS; the cluster fixture needs ADDSLOTSRANGE)."""
    node = _cluster_node(redis_server_factory, tmp_path)
    assert "unknown subcommand" in _refused(node, "CLUSTER", "SHARDS")
    assert "unknown subcommand" in _refused(node, "CLUSTER", "ADDSLOTSRANGE", "0", "1")
    assert isinstance(node.command("CLUSTER", "SLOTS"), list)  # what the client uses instead


@pytest.mark.server_lacks("atomic-slot-migration")
def test_migrateslots_is_refused_without_atomic_slot_migration(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    """The feature table is right about this server: it has no CLUSTER MIGRATESLOTS (a
    server that gains it must be moved into the table, and its migration test run)."""
    node = _cluster_node(redis_server_factory, tmp_path)
    assert "unknown subcommand" in _refused(node, "CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", "0", "1")
