"""benchmarks/framework_socketio.py runs in its quick form, so that it cannot rot: its
counts are checked (every client got every event, on both back ends), not its speed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


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
    assert "ok: every client got every event, on both back ends" in out
    rows = re.findall(r"^(stock|redismpx) +N=(\d+) +([\d,]+) / ([\d,]+) ", out, re.MULTILINE)
    assert {(backend, int(n)) for backend, n, _, _ in rows} == {
        (backend, n) for backend in ("stock", "redismpx") for n in (1, 50)
    }
    for _, _, delivered, expected in rows:
        assert delivered == expected
    table = [line.split() for line in out.splitlines() if re.match(r"^ +(1|50) ", line)]
    assert [int(row[0]) for row in table] == [1, 50]
