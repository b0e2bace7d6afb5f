"""benchmarks/soak.py in a short form, once per driver, so that it cannot rot.

A few seconds of churn and publishing cannot show a slow leak (that is what
``python benchmarks/soak.py --seconds 600`` is for), but they run every check the
long soak makes at its end: deliveries, ordering, statistics() against the script's
own counts, the server's PUBSUB counts back to the steady set, promises, and the RSS
bound; and they check that a failed check does fail the run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(
    r"^soak: RSS start (\d+\.\d+) MiB, end (\d+\.\d+) MiB, growth (-?\d+\.\d+)%: (PASS|FAIL)$"
)


def soak(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "benchmarks/soak.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match is not None, f"no {pattern!r} in:\n{text}"
    return int(match.group(1).replace(",", ""))


@pytest.mark.parametrize("driver", ["anyio-asyncio", "anyio-trio", "trio"])
def test_soak_passes_briefly(driver: str) -> None:
    done = soak("--seconds", "4", "--warmup", "1", "--driver", driver)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    match = SUMMARY.match(out.splitlines()[-1])
    assert match is not None, out
    assert match.group(4) == "PASS"
    assert float(match.group(1)) > 0
    assert float(match.group(2)) > 0
    assert f"driver {driver}," in out
    assert "FAILED" not in out
    # The run did exercise what it claims to.
    assert number(r"delivered ([\d,]+) messages", out) > 10_000
    assert number(r"churned ([\d,]+) subscriptions", out) > 100
    assert number(r"names added ([\d,]+)", out) > 0
    assert number(r"([\d,]+) fulfilled", out) > 0
    assert number(r"([\d,]+) expired", out) > 0
    assert number(r"([\d,]+) failed by close", out) > 0
    assert re.search(r"^t=\s*\d+\.\d+s rss=", out, re.MULTILINE), "no periodic sample"


def test_soak_fails_when_a_check_fails() -> None:
    """An impossible RSS limit (it would have to shrink by half): exit 1 and FAIL."""
    done = soak("--seconds", "2", "--warmup", "0.5", "--max-growth", "-50")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    match = SUMMARY.match(lines[-1])
    assert match is not None, done.stdout
    assert match.group(4) == "FAIL"
    assert any(line.startswith("FAILED: RSS grew") for line in lines)
