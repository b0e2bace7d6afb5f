"""benchmarks/framework_broadcaster.py --quick runs, and every recipient gets every message.

Both kinds of rows (through WebSockets, back end alone), both back ends. Their counts
are checked (the script exits 1 if a recipient missed a message), not their speed.
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
    assert lines[-1] == "ok: every recipient received every message, in every row"
    rows = [line for line in lines if line.startswith(("stock ", "redismpx "))]
    expected = [  # N = 1 with M = 2,000, then N = 50 with M = 100
        (kind, path, count)
        for count in (2000, 5000)
        for path in ("through WebSockets", "back end alone")
        for kind in ("stock", "redismpx")
    ]
    assert len(rows) == len(expected)
    for row, (kind, path, count) in zip(rows, expected, strict=True):
        assert row.startswith(f"{kind:9} {path:18} "), row
        assert f"delivered {count:>8} " in row, row
    for path in ("through WebSockets", "back end alone"):
        assert any(line.startswith(f"| {path} | 50 | 100 |") for line in lines), path
