"""The benchmarks run in CI in their quick form, so they cannot rot: each checks its own
counts and exits non-zero if a variant lost a message. Speed is not asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_core_throughput_runs() -> None:
    out = run("benchmarks/core_throughput.py", "--messages", "20000", "--rounds", "1")
    assert out.splitlines()[-1].startswith("core/hiredis ratio: ")
    float(out.splitlines()[-1].split(": ")[1])


def test_driver_throughput_runs_quick() -> None:
    out = run("benchmarks/driver_throughput.py", "--quick")
    assert "ok: every variant received exactly 20,000 messages" in out
    for backend in ("asyncio", "trio", "trio-native"):
        assert f"\n{backend} " in out


def test_churn_floor_runs() -> None:
    out = run("benchmarks/churn_floor.py", "--names", "2000", "--rounds", "1")
    ratios = dict(line.split(": ") for line in out.splitlines() if " / " in line)
    assert set(ratios) == {"floor / raw", "model / raw", "redismpx / raw", "redismpx / floor"}
    assert all(float(value) > 0 for value in ratios.values())


def test_core_churn_runs() -> None:
    out = run("benchmarks/core_churn.py", "--names", "2000", "--rounds", "1")
    assert out.splitlines()[-1].startswith("core / parse alone: ")
    assert float(out.splitlines()[-1].split(": ")[1]) > 0


@pytest.mark.server_feature("cluster-shards")  # and SSUBSCRIBE
def test_cluster_throughput_runs() -> None:
    out = run("benchmarks/cluster_throughput.py", "--quick")
    lines = out.splitlines()
    assert "ok: every consumer received exactly 9,000 messages, each name its share" in lines
    pairs = {(driver, mode) for driver in ("asyncio", "trio") for mode in ("backlog", "live")}
    # driver, mode, consumer, then deliveries/s, cpu deliveries/s, ratio, cpu ratio
    rows = [line.split() for line in lines if line.startswith(("asyncio ", "trio "))]
    assert {(row[0], row[1], " ".join(row[2:-4])) for row in rows} == {
        (driver, mode, consumer)
        for driver, mode in pairs
        for consumer in ("three multiplexers", "cluster", "cluster on replicas")
    }
    for row in rows:
        assert all(float(value.replace(",", "")) > 0 for value in row[-4:]), row
    replicas = dict(line.split(": ") for line in lines if line.startswith("replicas / three"))
    assert set(replicas) == {f"replicas / three multiplexers [{d}, {m}]" for d, m in pairs}
    assert all(float(value) > 0 for value in replicas.values())
    ratios = dict(line.split(": ", 1) for line in lines if line.startswith("cluster / three"))
    assert set(ratios) == {f"cluster / three multiplexers [{d}, {m}]" for d, m in pairs}
    for shown in ratios.values():
        value, verdict = shown.split(" ", 1)
        assert float(value) > 0
        assert verdict in ("(goal >= 0.8: PASS)", "(goal >= 0.8: MISS)")


def test_cluster_close_runs() -> None:
    out = run("benchmarks/cluster_close.py", "--sizes", "200,400", "--rounds", "1")
    last = out.splitlines()[-1]
    assert last.startswith("cluster / single core: ")
    assert all(float(part.split()[-1]) > 0 for part in last.split(": ", 1)[1].split(", "))


def test_compare_commits_parses_what_the_scripts_print() -> None:
    """The comparison reads the figures the suites print (the runs themselves take an
    hour: they are for a quiet machine, not CI)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare_commits
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    core = run("benchmarks/core_throughput.py", "--messages", "20000", "--rounds", "1")
    assert set(compare_commits.core_figures(core)) == {
        "core: core/hiredis ratio",
        "core: core/sliced hiredis ratio",
        "core: 1,000 subscriptions / 1",
    }
    driver = run("benchmarks/driver_throughput.py", "--messages", "5000", "--rounds", "1")
    assert len(compare_commits.driver_figures(driver)) == 9


def test_sentinel_failover_runs_quick() -> None:
    """One failover per tree (this one, and the base commit's in a git worktree) with
    the tests' Sentinel timers: about 15 s. Each round checks that the client reached
    the new master (a message published there arrives)."""
    out = run("benchmarks/sentinel_failover.py", "--quick")
    lines = out.splitlines()
    assert lines[0].startswith("SENTINEL FAILOVER -> on_activation on the new master; fast")
    medians = {}
    for line in lines[1:3]:
        label, rest = line.split(" median ")
        medians[label.strip()] = float(rest.split()[0])
    assert set(medians) == {"5576d80", "this tree"}
    assert all(value > 0 for value in medians.values())
    assert lines[3].startswith("this tree / 5576d80: ")
