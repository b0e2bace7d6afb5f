"""benchmarks/framework_socketio.py runs in its quick form, so that it cannot rot: its
counts are checked (every recipient got every event, on both back ends, through
WebSockets and for the back end alone), not its speed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PATHS = ("through WebSockets", "back end alone")


def test_quick_benchmark_counts() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "benchmarks/framework_socketio.py", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "ok: every recipient got every event, on both back ends, on both paths" in out
    assert "DROPPED" not in out
    rows = re.findall(
        r"^(stock|redismpx) +(through WebSockets|back end alone) +N=(\d+) +([\d,]+) / ([\d,]+) ",
        out,
        re.MULTILINE,
    )
    assert sorted((backend, path, int(n)) for backend, path, n, _, _ in rows) == sorted(
        (backend, path, n) for backend in ("stock", "redismpx") for path in PATHS for n in (1, 50)
    )
    for _, _, _, delivered, expected in rows:
        assert delivered == expected
    table = re.findall(r"^(through WebSockets|back end alone) +(\d+) +(\d+) ", out, re.MULTILINE)
    assert [(path, int(n), int(m)) for path, n, m in table] == [
        (PATHS[0], 1, 300),
        (PATHS[1], 1, 300),
        (PATHS[0], 50, 20),
        (PATHS[1], 50, 20),
    ]
