"""This tree's speed against an earlier commit's, measured in the same run.

For each suite, the base commit's own script runs on the base commit's own code (a
git worktree of it), and this tree's script on this tree's code, turn and turn about,
``--repeats`` times each, so that both sides share the machine's drift. Every figure
each script prints as a ratio (to the raw read loop, to a bare hiredis parser, per
idle subscription) is collected, and one table is printed: the base's runs, their
spread (max - min over the median: the base's own run-to-run noise), this tree's
runs, the change of the medians, and REGRESSION where a figure got worse by more
than that spread.

Suites: ``core`` (``core_throughput.py``), ``driver`` (``driver_throughput.py
--rounds 5``), ``peers`` (``peers.py --only redismpx --measures
backlog,fanout,churn,memory``, about 6 minutes a run on 2 cores).

    python benchmarks/compare_commits.py [--base ab4f9d7] [--repeats 3] [--suites core,driver]

It needs git, and the environment's redis-server (``REDISMPX_REDIS_SERVER`` or PATH);
run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: figure -> value, as one run of a suite printed it.
Figures = dict[str, float]


def core_figures(output: str) -> Figures:
    figures = {}
    for line in output.splitlines():
        match = re.match(r"(core/(?:sliced )?hiredis ratio): ([\d.]+)$", line)
        if match:
            figures[f"core: {match[1]}"] = float(match[2])
        match = re.match(r"core, 1,000 subscriptions: .*\(([\d.]+) of 1 subscription\)", line)
        if match:
            figures["core: 1,000 subscriptions / 1"] = float(match[1])
    return figures


def driver_figures(output: str) -> Figures:
    figures = {}
    for line in output.splitlines():
        match = re.match(r"((?:trio(?:-native)? )?[a-z ]+ / [a-z -]*raw): ([\d.]+)$", line)
        if match:
            figures[f"driver: {match[1]}"] = float(match[2])
    return figures


def peers_figures(output: str) -> Figures:
    """The table's ratio columns (and bytes per subscription) for every redismpx row."""
    lines = output.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("library "))
    header, rule = lines[header_at], lines[header_at + 1]
    # Column spans from the rule under the header: runs of dashes.
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    names = [header[start:end].strip() for start, end in spans]
    figures = {}
    for line in lines[header_at + 2 :]:
        if not line.startswith("redismpx"):
            if not line.strip():
                break
            continue
        cells = [line[start:end].strip() for start, end in spans]
        row = f"{cells[0].removeprefix('redismpx ')} {cells[1]}"
        measure = ""
        for name, cell in zip(names, cells, strict=True):
            if name not in ("/ raw", "B/subscription"):
                measure = name.split(" ")[0]
                continue
            if cell:
                label = "bytes/subscription" if name == "B/subscription" else f"{measure} / raw"
                figures[f"peers {label}: {row}"] = float(cell.replace(",", ""))
    return figures


SUITES: dict[str, tuple[list[str], Callable[[str], Figures]]] = {
    "core": (["benchmarks/core_throughput.py"], core_figures),
    "driver": (["benchmarks/driver_throughput.py", "--rounds", "5"], driver_figures),
    "peers": (
        [
            "benchmarks/peers.py",
            "--only",
            "redismpx",
            "--measures",
            "backlog,fanout,churn,memory",
            "--no-write",
        ],
        peers_figures,
    ),
}


def run_suite(tree: Path, suite: str) -> Figures:
    command, parse = SUITES[suite]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run(
        [sys.executable, *command], cwd=tree, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{suite} in {tree} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    figures = parse(done.stdout)
    if not figures:
        raise SystemExit(f"{suite} in {tree} printed no figure:\n{done.stdout[-2000:]}")
    return figures


def lower_is_better(figure: str) -> bool:
    return "bytes/" in figure


def compare(base: dict[str, list[float]], new: dict[str, list[float]]) -> list[str]:
    lines = [
        "| figure | base runs | base spread | this tree's runs | change | verdict |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    for figure in sorted(base.keys() & new.keys()):
        before, after = base[figure], new[figure]
        median = statistics.median(before)
        spread = (max(before) - min(before)) / median if median else 0.0
        change = statistics.median(after) / median - 1 if median else 0.0
        worse = change > spread if lower_is_better(figure) else change < -spread
        lines.append(
            f"| {figure} | {' '.join(f'{v:g}' for v in before)} | {spread:.0%} | "
            f"{' '.join(f'{v:g}' for v in after)} | {change:+.0%} | "
            f"{'REGRESSION' if worse else 'ok'} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="ab4f9d7", help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side per suite")
    parser.add_argument("--suites", default="core,driver,peers")
    args = parser.parse_args()
    suites = args.suites.split(",")
    with tempfile.TemporaryDirectory(prefix="redismpx-base-") as scratch:
        base_tree = Path(scratch) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(base_tree), args.base],
            cwd=ROOT,
            check=True,
        )
        try:
            base: dict[str, list[float]] = {}
            new: dict[str, list[float]] = {}
            for suite in suites:
                for repeat in range(args.repeats):
                    # Turn and turn about, starting with each side in turn.
                    order = [(base_tree, base), (ROOT, new)]
                    for tree, into in order if repeat % 2 == 0 else order[::-1]:
                        for figure, value in run_suite(tree, suite).items():
                            into.setdefault(figure, []).append(value)
                    print(f"{suite}: run {repeat + 1} of {args.repeats} done", file=sys.stderr)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False
            )
    table = compare(base, new)
    print(f"base {args.base} against this tree, {args.repeats} runs each, same machine, same run")
    print("\n".join(table))
    if any("REGRESSION" in line for line in table):
        print("compare_commits: some figures got worse by more than the base's own spread")


if __name__ == "__main__":
    main()
