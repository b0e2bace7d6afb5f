"""benchmarks/framework_channels.py --quick runs, and every message reaches every recipient
on both back ends, through WebSockets and to the back end alone (its counts, not its
speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from redis_servers import resolve_redis_server

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "framework_channels.py"
PATHS = ("through WebSockets", "back end alone")


def test_quick_run_delivers_every_message() -> None:
    env = {**os.environ, "REDISMPX_REDIS_SERVER": resolve_redis_server()}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1].startswith("ok: every recipient got every message")
    results = json.loads(lines[-2])
    assert sorted((r["path"], r["backend"], r["clients"]) for r in results) == sorted(
        (path, backend, clients)
        for path in PATHS
        for backend in ("stock", "ours")
        for clients in (1, 50)
    )
    for row in results:
        assert row["received"] == row["expected"] > 0, row
        assert row["rate"] > 0, row
        if row["path"] == "through WebSockets":
            assert row["app_peak_rss_mib"] > 0
            assert row["app_cpu_seconds"] > 0
        elif row["backend"] == "ours":
            assert row["dropped"] == 0, row
    for path in PATHS:
        assert any(line.startswith(f"{path}, N = 50: ours/stock") for line in lines)
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 2 + len(results)  # the header, its rule, a line per row
