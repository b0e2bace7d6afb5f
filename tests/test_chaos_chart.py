"""benchmarks/chaos_chart.py reads what benchmarks/chaos.py prints (a real short run, so
that a change to chaos.py's report cannot silently break the chart), draws the chart, and
refuses runs that report violations."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    path = ROOT / "benchmarks" / "chaos_chart.py"
    spec = importlib.util.spec_from_file_location("chaos_chart", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_chart"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


chaos_chart = _load()


def test_a_real_run_becomes_a_section_and_a_chart(redis_binary: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "benchmarks/chaos_chart.py", "--rounds", "3", "--seed", "1",
         "--drivers", "trio", "--save", str(tmp_path / "runs"),
         "--out", str(tmp_path / "chaos.png"), "--doc", str(tmp_path / "chaos.md")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "chaos.png").read_bytes().startswith(b"\x89PNG")
    page = (tmp_path / "chaos.md").read_text()
    assert page.startswith("<!-- chaos:begin -->")
    assert page.rstrip().endswith("<!-- chaos:end -->")
    assert "--rounds 3 --seed 1 --drivers trio" in page
    assert "| violations of any kind | | 0 |" in page

    run = chaos_chart.parse((tmp_path / "runs" / "chaos-trio.txt").read_text())
    assert (run.driver, run.seed, run.faults, run.violations) == ("trio", "1", 3, 0)
    assert run.recoveries == 3
    assert sum(run.per_kind_count.values()) == 3
    assert set(run.per_kind) == set(run.per_kind_count)  # a line for every kind
    measured = [kind for kind, count in run.per_kind_count.items() if count]
    assert measured
    assert all(not math.isnan(run.per_kind[kind][0]) for kind in measured)
    assert run.checked > 0


def test_sections_are_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "chaos.md"
    doc.write_text("# Chaos\n\nintro\n\n<!-- chaos:begin -->\nold\n<!-- chaos:end -->\n\nend\n")
    chaos_chart.write_section(doc, "<!-- chaos:begin -->\nnew\n<!-- chaos:end -->\n", "")
    assert doc.read_text() == (
        "# Chaos\n\nintro\n\n<!-- chaos:begin -->\nnew\n<!-- chaos:end -->\n\nend\n"
    )
    cluster = "<!-- chaos-cluster:begin -->\nc\n<!-- chaos-cluster:end -->\n"
    chaos_chart.write_section(doc, cluster, "cluster")
    assert doc.read_text().endswith("end\n\n" + cluster)


def test_runs_with_violations_are_refused(tmp_path: Path) -> None:
    report = "\n".join([
        "driver: trio, seed 5, 3 s, publish rate 2000/s",
        "faults injected: 2 (cut 1, half-open 1)",
        "recoveries: 1",
        "fault to every name re-activated: median 50 ms, p99 60 ms",
        "  cut: median 50 ms, p99 50 ms",
        "  half-open: median nan ms, p99 nan ms",
        "subscriptions lost: 3",
        "chaos: 2 faults, 3 violations",
    ])  # fmt: skip
    saved = tmp_path / "chaos-trio.txt"
    saved.write_text(report + "\n")
    doc = tmp_path / "chaos.md"
    doc.write_text("unchanged\n")
    status = chaos_chart.main(
        ["--from", str(saved), "--out", str(tmp_path / "c.png"), "--doc", str(doc)]
    )
    assert status == 1
    assert doc.read_text() == "unchanged\n"
    assert not (tmp_path / "c.png").exists()
    with pytest.raises(ValueError, match="not the output"):
        chaos_chart.parse("something else")
