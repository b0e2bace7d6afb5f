"""benchmarks/peers.py runs in CI in its quick form, so that no adapter can rot: every
library (this one on its three driver rows, redis-py, coredis, broadcaster, Valkey GLIDE
with both its consumers, the original redismpx 0.5.2 in its own venv, and the raw loop)
must deliver every message it is sent. A library that cannot be imported fails the run
(``--quick`` exits non-zero for an unavailable library), it is not skipped. Speed is not
asserted here: that is what the full run, and docs/benchmarks.md, are for."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("raw", "redismpx", "redispy", "coredis", "broadcaster", "glide", "original")


@pytest.mark.timeout(600)  # the first run also builds the original's venv (pip)
def test_peers_quick_delivers_every_message() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "benchmarks/peers.py", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("ok: every library delivered every message ("), output
    delivered = last.split("(", 1)[1].split(";", 1)[0].split(", ")
    assert tuple(delivered) == LIBRARIES, output
    for driver in ("anyio/asyncio", "anyio/trio", "trio driver"):
        assert f"redismpx {driver}" in done.stdout
    for consumer in ("sync callback", "polling get_pubsub_message()"):
        assert re.search(rf"^Valkey GLIDE +{re.escape(consumer)} ", done.stdout, re.M), output
    assert "FAILED" not in output
