"""benchmarks/framework_channels.py --quick runs, and every message reaches every client
on both back ends (its counts, not its speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from redis_servers import resolve_redis_server

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "framework_channels.py"


def test_quick_run_delivers_every_message() -> None:
    env = {**os.environ, "REDISMPX_REDIS_SERVER": resolve_redis_server()}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    results = json.loads(lines[-1])
    assert {(r["backend"], r["clients"]) for r in results} == {
        (backend, clients) for backend in ("stock", "ours") for clients in (1, 50)
    }
    for row in results:
        assert row["received"] == row["expected"] > 0, row
        assert row["app_peak_rss_mib"] > 0
    assert any(line.startswith("N = 50: ours/stock") for line in lines)
