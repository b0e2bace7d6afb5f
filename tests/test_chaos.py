"""The chaos command runs in CI with a few faults per driver, and its checker is checked:
it must report the violations it exists to find, or a clean run would prove nothing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import anyio
import pytest

from drivers.conftest import DRIVERS

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 12


def _load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "benchmarks" / "chaos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("driver", [d[0] for d in DRIVERS])
def test_chaos_run_has_no_violations(driver: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "benchmarks/chaos.py", "--rounds", str(ROUNDS), "--driver", driver],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    lines = out.splitlines()
    assert lines[-1] == f"chaos: {ROUNDS} faults, 0 violations", out
    assert f"recoveries: {ROUNDS}" in lines, out
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
