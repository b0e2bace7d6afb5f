"""The benchmarks run in CI in their quick form, so they cannot rot: each checks its own
counts and exits non-zero if a variant lost a message. Speed is not asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
