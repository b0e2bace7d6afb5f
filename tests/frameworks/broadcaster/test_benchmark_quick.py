"""benchmarks/framework_broadcaster.py --quick runs, and every client gets every message.

Its counts are checked (the script exits 1 if a client missed a message), not its speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_quick_benchmark_counts() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "benchmarks/framework_broadcaster.py", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "ok: every client received every message, with both back ends"
    rows = [line for line in lines if line.startswith(("stock ", "redismpx "))]
    assert len(rows) == 4
    for row, count in zip(rows, (2000, 2000, 5000, 5000), strict=True):
        assert f"delivered {count:>8} " in row, row
    assert any(line.startswith("| 50 | 100 |") for line in lines)
