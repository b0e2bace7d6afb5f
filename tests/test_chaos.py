"""The chaos command runs in CI with a few faults per driver, on one server and on a
Redis Cluster, and its checker is checked: it must report the violations it exists to
find, or a clean run would prove nothing. It runs against the server binary of the test
run (``--server``, the ``redis_binary`` fixture): with ``$REDISMPX_REDIS_SERVER`` naming
a valkey-server, against Valkey."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import anyio
import pytest

from drivers.conftest import DRIVERS
from redis_servers import RedisServerFactory
from server_matrix import server_build

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 12
#: The cluster's fault kinds (and atomic-migrate where the server has it); each runs
#: twice (a kill-master round takes ~3 s, a node-added one ~2 s).
CLUSTER_FAULTS = [
    "failover",
    "migrate",
    "kill-master",
    "client-kill",
    "output-buffer-limit",
    "node-added",
    "node-removed",
]


def _load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "benchmarks" / "chaos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _chaos(server: str, *arguments: str) -> list[str]:
    """Run the chaos command against the server binary ``server``; its output lines,
    once it has exited 0 (the first names the server it ran)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "benchmarks/chaos.py", "--server", server, *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"server: {server_build(server).label} ({server})", lines[0]
    return lines


def _assert_clean(lines: list[str], rounds: int) -> None:
    out = "\n".join(lines)
    assert lines[-1] == f"chaos: {rounds} faults, 0 violations", out
    assert f"recoveries: {rounds}" in lines, out
    for figure in (
        "subscriptions lost: 0",
        "deliveries after a remove: 0",
        "tasks leaked after close: 0",
        "file descriptors leaked after close: 0",
    ):
        assert figure in lines, out
    checked = next(line for line in lines if line.startswith("messages published after"))
    assert checked.startswith("messages published after re-activation not delivered: 0 (of ")
    assert int(checked.split("(of ")[1].split()[0]) > 0, "no delivery was checked"


@pytest.fixture
def output_limit_drops(redis_server_factory: RedisServerFactory) -> bool:
    """Whether the server of the run can take the output-buffer-limit fault (Valkey 9.1
    cannot: see drops_at_output_buffer_limit in benchmarks/chaos.py)."""
    return bool(_load_chaos().drops_at_output_buffer_limit(redis_server_factory()))


@pytest.mark.server_feature("sharded")  # the chaos holds shard channels too
@pytest.mark.parametrize("driver", [d[0] for d in DRIVERS])
def test_chaos_run_has_no_violations(
    driver: str, redis_binary: str, output_limit_drops: bool
) -> None:
    lines = _chaos(redis_binary, "--rounds", str(ROUNDS), "--driver", driver)
    _assert_clean(lines, ROUNDS)
    left_out = [line for line in lines if line.startswith("faults: output-buffer-limit left out")]
    assert len(left_out) == (0 if output_limit_drops else 1), lines
    injected = next(line for line in lines if line.startswith("faults injected:"))
    assert ("output-buffer-limit" in injected) == output_limit_drops, injected


@pytest.mark.server_feature("cluster-shards")
@pytest.mark.parametrize("driver", ["anyio-asyncio", "trio"])
def test_cluster_chaos_run_has_no_violations(
    driver: str, redis_binary: str, output_limit_drops: bool
) -> None:
    faults = [f for f in CLUSTER_FAULTS if output_limit_drops or f != "output-buffer-limit"]
    if server_build(redis_binary).has("atomic-slot-migration"):
        faults.append("atomic-migrate")  # Valkey's CLUSTER MIGRATESLOTS
    rounds = 2 * len(faults)
    lines = _chaos(
        redis_binary,
        "--cluster",
        "--rounds",
        str(rounds),
        "--driver",
        driver,
        "--faults",
        ",".join(faults),
    )
    _assert_clean(lines, rounds)
    kinds = ", ".join(f"{kind} 2" for kind in faults)
    assert f"faults injected: {rounds} ({kinds})" in lines, lines


@pytest.mark.server_feature("sharded")
def test_output_buffer_limit_is_a_fault_only_where_the_server_drops(
    redis_binary: str, output_limit_drops: bool
) -> None:
    """--faults output-buffer-limit runs where the server drops the subscriber, and is
    refused (an error, not a run whose faults do nothing) where it would not."""
    done = subprocess.run(
        [
            *(sys.executable, "benchmarks/chaos.py", "--server", redis_binary),
            *("--rounds", "1", "--driver", "trio", "--faults", "output-buffer-limit"),
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if output_limit_drops:
        assert done.returncode == 0, done.stdout + done.stderr
        _assert_clean(done.stdout.splitlines(), 1)
    else:
        assert done.returncode == 2, done.stdout + done.stderr
        assert "--faults output-buffer-limit: " in done.stderr
        assert "does not drop a subscriber that reads" in done.stderr


def _checker(chaos: ModuleType) -> tuple[object, object]:
    args = SimpleNamespace(seed=1, rate=1000)
    server = SimpleNamespace(host="127.0.0.1", port=1)
    checker = chaos.Chaos(SimpleNamespace(), server, None, args)
    tracked = chaos.Tracked(1, "channel", {b"c:0"}, stable=True)
    checker.tracked[1] = tracked
    return checker, tracked


def test_checker_reports_a_message_not_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    chaos = _load_chaos()
    monkeypatch.setattr(chaos, "DELIVERY_DEADLINE", 0.05)
    checker, _ = _checker(chaos)
    checker.since[(1, b"c:0")] = 10
    checker.publisher.next_seq = checker.publisher.settled = 20
    checker.publisher.confirmed[b"c:0"] = [5, 11, 12, 13]  # 5: before the activation
    for seq in (b"11", b"13"):
        checker._record(1, b"c:0", seq)
    anyio.run(checker._check_deliveries, 1)
    assert checker.violations["messages published after re-activation not delivered"] == 1
    assert checker.checked_messages == 3
    assert checker.since[(1, b"c:0")] == 20  # the next check starts where this one ended


def test_checker_reports_deliveries_after_a_remove_and_out_of_order() -> None:
    chaos = _load_chaos()
    checker, tracked = _checker(chaos)
    checker._record(1, b"c:0", b"7")
    checker._record(1, b"c:0", b"7")  # a duplicate
    checker._record(1, b"c:0", b"6")  # out of order
    tracked.names.discard(b"c:0")
    checker._record(1, b"c:0", b"8")  # after the remove
    assert checker.violations["out of order or duplicated"] == 2
    assert checker.violations["deliveries after a remove"] == 1


def _cluster_checker(chaos: ModuleType) -> tuple[Any, Any, Any]:
    """A cluster checker with no cluster behind it: one channel and one sharded
    subscription, both activated when 10 messages had been published."""
    node = SimpleNamespace(host="127.0.0.1", port=1)  # nothing listens: no route is found
    cluster = SimpleNamespace(nodes=[node], key_slot=lambda name: 0)
    checker = chaos.ClusterChaos(SimpleNamespace(), cluster, SimpleNamespace(seed=1, rate=1000))
    channel = chaos.Tracked(1, "channel", {b"c:0"}, stable=True)
    shard = chaos.Tracked(2, "shard", {b"s:0"}, stable=True)
    checker.tracked.update({1: channel, 2: shard})
    checker.publisher.next_seq = 10
    checker._activated(channel, b"c:0")
    checker._activated(shard, b"s:0")
    return checker, channel, shard


def test_cluster_checker_allows_only_channel_replays_from_before_an_activation() -> None:
    chaos = _load_chaos()
    checker, _, _ = _cluster_checker(chaos)
    for ident, name in ((1, b"c:0"), (2, b"s:0")):
        for seq in (b"9", b"9", b"12", b"12"):  # each twice: before the activation, after
            checker._record(ident, name, seq)
    assert checker.replayed == 1  # the channel's 9: it may come from two nodes
    assert checker.violations["out of order or duplicated"] == 3


def test_cluster_checker_owes_one_on_disconnect_per_lost_node() -> None:
    chaos = _load_chaos()
    checker, channel, shard = _cluster_checker(chaos)
    lost, home = object(), object()
    checker.home = home
    checker._expect({b"s:0"}, lost)  # the node of s:0 loses its connections
    assert shard.active == set()
    assert checker.since[(2, b"s:0")] is None
    assert channel.active == {b"c:0"}  # the home is elsewhere
    shard.disconnects = 1
    checker._check_disconnects(0, 1)
    assert not checker.violations
    checker._expect({b"s:0"}, None)  # its slot moves: the connection stays up
    checker._check_disconnects(0, 2)  # ... but the subscription was told of a loss
    assert checker.violations["on_disconnect not exactly one per subscription per loss"] == 1
    checker._expect(set(), home)  # the home loses its connections
    assert channel.active == set()
    channel.disconnects, shard.disconnects = 1, 0
    checker._check_disconnects(0, 3)
    assert checker.violations["on_disconnect not exactly one per subscription per loss"] == 1


def test_cluster_checker_owes_each_key_event_once_and_a_loss_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The node-wide keyspace subscription: a key written after the recovery (seq 20 on)
    must be heard of once; one written before may be lost only if the loss was told."""
    chaos = _load_chaos()
    monkeypatch.setattr(chaos, "DELIVERY_DEADLINE", 0.05)
    checker, _, _ = _cluster_checker(chaos)
    checker.publisher.next_seq = checker.publisher.settled = 30
    checker.publisher.confirmed[chaos.KEY_PREFIX] = [3, 5, 21, 22, 23]
    checker.key_seen.update({5: 1, 21: 1, 22: 2})  # 3 lost in the fault, 23 lost after it
    anyio.run(checker._check_keyspace, 20, 1)
    assert checker.violations["keyspace events after recovery not received exactly once"] == 2
    assert checker.violations["keyspace events lost untold"] == 1
    assert (checker.key_checked, checker.key_during, checker.key_lost) == (3, 2, 1)
    assert checker.key_from == 30
    assert not checker.key_seen  # forgotten up to the end of the check
    checker.publisher.next_seq = checker.publisher.settled = 40
    checker.publisher.confirmed[chaos.KEY_PREFIX] += [31, 32]
    checker.key_seen.update({32: 1})  # 31 lost in the fault, told this time
    checker.key_told = 1
    anyio.run(checker._check_keyspace, 35, 2)
    assert checker.violations["keyspace events lost untold"] == 1
    assert checker.publisher.confirmed[chaos.KEY_PREFIX] == []


def test_chaos_refuses_a_server_it_cannot_run() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/chaos.py", "--server", str(ROOT / "no-such-server")],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr  # argparse's usage error
    assert "no-such-server' is not an executable file" in done.stderr
    assert done.stdout == ""
