"""The chaos figures of docs/chaos.md, and their chart, from runs of ``benchmarks/chaos.py``.

    PYTHONPATH=src python benchmarks/chaos_chart.py [--rounds N] [--seed S] [--rate R]
        [--drivers anyio-asyncio,anyio-trio,trio] [--cluster] [--save DIR]
    PYTHONPATH=src python benchmarks/chaos_chart.py --from DIR_OR_FILE ...

It runs ``benchmarks/chaos.py --rounds N --driver D --seed S`` once per driver (each run
starts its own ``redis-server`` and fault proxy), reads the figures the run prints, and
writes them to docs/chaos.md (between ``<!-- chaos:begin -->`` and ``<!-- chaos:end -->``)
with ``docs/chaos.png`` (``--cluster``: its own section, and ``docs/chaos-cluster.png``):
per fault kind and driver, the time from the fault to every name
re-activated, median and p99, as the runs measured them. Nothing is estimated here; a
run that reports a violation (or exits non-zero) fails this script, and the docs are
left as they were.

``--save DIR`` keeps each run's output as ``DIR/chaos-<driver>.txt``; ``--from`` reads
such files (or directories of them) instead of running anything, so a chart can be
redrawn from a long run made earlier (``chaos.py ... > chaos-trio.txt``).
``--out`` and ``--doc`` write elsewhere (``--doc -`` prints the section instead).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAOS = ROOT / "benchmarks" / "chaos.py"
DOCS = ROOT / "docs"
#: docs/chaos.md holds one generated section per mode, between these markers.
MARKERS = {
    "": ("<!-- chaos:begin -->", "<!-- chaos:end -->"),
    "cluster": ("<!-- chaos-cluster:begin -->", "<!-- chaos-cluster:end -->"),
}
DRIVERS = ("anyio-asyncio", "anyio-trio", "trio")
LABELS = {
    "anyio-asyncio": "anyio on asyncio",
    "anyio-trio": "anyio on trio",
    "trio": "trio driver",
}
COLOURS = {"anyio-asyncio": "#1f77b4", "anyio-trio": "#2ca02c", "trio": "#d62728"}
#: What each fault is, for the table (chaos.py's own names are the row keys).
FAULT_NOTES = {
    "cut": "connection reset mid-frame",
    "half-open": "link silenced, found by the health check",
    "sigkill": "SIGKILL of the server, restarted",
    "sigstop": "server frozen (SIGSTOP) past the health check",
    "client-kill": "CLIENT KILL TYPE pubsub",
    "output-buffer-limit": "client-output-buffer-limit exceeded",
    "migrate": "a slot migrated to another master",
    "failover": "CLUSTER FAILOVER of a master",
    "kill-master": "SIGKILL of a master",
    "atomic-migrate": "a slot moved by CLUSTER MIGRATESLOTS (Valkey 9)",
}


@dataclass
class Run:
    """The figures one ``chaos.py`` run printed."""

    driver: str
    mode: str = ""
    seed: str = ""
    seconds: str = ""
    rate: str = ""
    faults: int = 0
    per_kind_count: dict[str, int] = field(default_factory=dict)
    recoveries: int = 0
    overall: tuple[float, float] = (math.nan, math.nan)
    per_kind: dict[str, tuple[float, float]] = field(default_factory=dict)
    checked: int = 0
    promises: int = 0
    violations: int = -1


def _ms(text: str) -> float:
    return float(text) / 1000.0  # "nan" parses too


def parse(text: str) -> Run:
    """Read the report ``chaos.py`` prints (stdout); raise ValueError if it is not one."""
    head = re.search(
        r"^driver: (?P<driver>[\w-]+)(?P<mode>, cluster)?, seed (?P<seed>\d+), "
        r"(?P<seconds>\d+) s, publish rate (?P<rate>\d+)/s$",
        text,
        re.M,
    )
    tail = re.search(r"^chaos: (\d+) faults, (\d+) violations$", text, re.M)
    if head is None or tail is None:
        raise ValueError("not the output of benchmarks/chaos.py (no driver: or chaos: line)")
    run = Run(
        driver=head["driver"],
        mode="cluster" if head["mode"] else "",
        seed=head["seed"],
        seconds=head["seconds"],
        rate=head["rate"],
        faults=int(tail[1]),
        violations=int(tail[2]),
    )
    if m := re.search(r"^faults injected: \d+ \((.*)\)$", text, re.M):
        for part in m[1].split(", "):
            kind, _, count = part.rpartition(" ")
            run.per_kind_count[kind] = int(count)
    if m := re.search(r"^recoveries: (\d+)$", text, re.M):
        run.recoveries = int(m[1])
    if m := re.search(
        r"^fault to every name re-activated: median (\S+) ms, p99 (\S+) ms$", text, re.M
    ):
        run.overall = (_ms(m[1]), _ms(m[2]))
    for m in re.finditer(r"^  ([\w-]+): median (\S+) ms, p99 (\S+) ms$", text, re.M):
        run.per_kind[m[1]] = (_ms(m[2]), _ms(m[3]))
    if m := re.search(r"not delivered: \d+ \(of (\d+) checked\)", text):
        run.checked = int(m[1])
    if m := re.search(r"^promises not settled exactly once: \d+ \(of (\d+)", text, re.M):
        run.promises = int(m[1])
    return run


def run_chaos(driver: str, args: argparse.Namespace) -> str:
    command = [
        sys.executable,
        str(CHAOS),
        "--rounds",
        str(args.rounds),
        "--driver",
        driver,
        "--seed",
        str(args.seed),
        "--rate",
        str(args.rate),
    ]
    if args.cluster:
        command.append("--cluster")
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    print(f"chaos_chart: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"chaos_chart: chaos.py --driver {driver} exited {done.returncode}")
    return done.stdout


def read_saved(paths: list[str]) -> list[str]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        files += sorted(path.glob("chaos-*.txt")) if path.is_dir() else [path]
    if not files:
        raise SystemExit("chaos_chart: --from found no chaos-*.txt file")
    return [file.read_text() for file in files]


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value * 1000:,.0f}"


def kinds_of(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(kind for run in runs for kind in run.per_kind))


def chart(runs: list[Run], path: Path) -> None:
    """Grouped horizontal bars: per fault kind, each driver's median, with its p99 as a
    whisker; a last group for every fault together."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    kinds = kinds_of(runs)
    groups = [*kinds, "all faults"]
    count = len(runs)
    width = 0.8 / count
    figure, axis = plt.subplots(figsize=(9, 1.0 + 0.55 * len(groups) * max(1, count / 2)))
    for index, run in enumerate(runs):
        medians: list[float] = []
        p99s: list[float] = []
        ys: list[float] = []
        for y, kind in enumerate(groups):
            median, p99 = (
                run.overall
                if kind == "all faults"
                else run.per_kind.get(kind, (math.nan, math.nan))
            )
            if math.isnan(median):
                continue
            ys.append(len(groups) - 1 - y + 0.4 - width * (index + 0.5))
            medians.append(median * 1000)
            p99s.append(p99 * 1000)
        colour = COLOURS.get(run.driver, "#444444")
        axis.barh(ys, medians, height=width * 0.9, color=colour, label=LABELS.get(run.driver))
        axis.errorbar(
            p99s,
            ys,
            xerr=[[p - m for p, m in zip(p99s, medians, strict=True)], [0.0] * len(ys)],
            fmt="|",
            color="#333333",
            markersize=7,
            elinewidth=0.8,
            capsize=0,
        )
        for at, low, high in zip(ys, medians, p99s, strict=True):
            axis.text(high, at, f"  {low:,.0f} / {high:,.0f}", va="center", fontsize=7)

    def label(kind: str) -> str:
        n = sum(r.faults if kind == "all faults" else r.per_kind_count.get(kind, 0) for r in runs)
        return f"{kind}\n({n} fault{'' if n == 1 else 's'})"

    labels = [label(kind) for kind in groups]
    axis.set_yticks(range(len(groups) - 1, -1, -1), labels, fontsize=8)
    axis.set_xlabel("fault to every name re-activated, ms: bar median, whisker to p99")
    # Log scale: resets are repaired in tens of ms, silent faults wait for the health check.
    axis.set_xscale("log")
    ticks = [5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]
    axis.set_xticks(ticks, [f"{t:,}" for t in ticks])
    axis.xaxis.set_minor_locator(NullLocator())
    shown = [v * 1000 for run in runs for pair in run.per_kind.values() for v in pair]
    shown = [v for v in shown if not math.isnan(v)] or [10.0, 1000.0]
    axis.set_xlim(max(1.0, min(shown) / 2), max(shown) * 3)
    axis.tick_params(axis="x", labelsize=8)
    axis.grid(axis="x", color="#dddddd", linewidth=0.6)
    axis.set_axisbelow(True)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=count)
    mode = ", cluster" if any(run.mode for run in runs) else ""
    faults = sum(run.faults for run in runs)
    figure.suptitle(
        f"benchmarks/chaos.py{mode}: recovery after {faults} injected faults (lower is better)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)


def mode_of(runs: list[Run]) -> str:
    modes = {run.mode for run in runs}
    if len(modes) != 1:
        raise SystemExit("chaos_chart: cluster and single-server runs cannot share a chart")
    return modes.pop()


def redis_version() -> str:
    """The version of the redis-server chaos.py starts (the tests' choice of binary)."""
    binary = os.environ.get("REDISMPX_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        return "Redis ?"
    try:
        text = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "Redis ?"
    found = re.search(r"v=(\S+)", text)
    return f"Redis {found[1]}" if found else "Redis ?"


def section(runs: list[Run], image: str, command: str) -> str:
    begin, end = MARKERS[mode_of(runs)]
    kinds = kinds_of(runs)
    header = "| fault | what | " + " | ".join(LABELS.get(r.driver, r.driver) for r in runs) + " |"
    lines = [
        begin,
        "<!-- written by benchmarks/chaos_chart.py: edit the script, not this section -->",
        "",
        f"Measured {datetime.date.today().isoformat()} (Python {platform.python_version()}, "
        f"{redis_version()}, {os.cpu_count()} cores) with",
        "",
        "```sh",
        command,
        "```",
        "",
        "Times are milliseconds from the fault to every name of every subscription active",
        "again: median / p99, and in brackets how many faults of that kind the run injected.",
        "",
        header,
        "|" + " --- |" * (2 + len(runs)),
    ]
    for kind in kinds:
        cells = []
        for run in runs:
            median, p99 = run.per_kind.get(kind, (math.nan, math.nan))
            n = run.per_kind_count.get(kind, 0)
            cells.append(f"{_cell(median)} / {_cell(p99)} ({n})" if n else "")
        lines.append(f"| {kind} | {FAULT_NOTES.get(kind, '')} | " + " | ".join(cells) + " |")
    rows: list[tuple[str, Callable[[Run], str]]] = [
        ("every fault", lambda r: f"{_cell(r.overall[0])} / {_cell(r.overall[1])} ({r.faults})"),
        ("faults injected / recovered", lambda r: f"{r.faults} / {r.recoveries}"),
        ("deliveries checked, none missing", lambda r: f"{r.checked:,}"),
        ("promises settled, each exactly once", lambda r: f"{r.promises:,}"),
        ("violations of any kind", lambda r: f"{r.violations}"),
        ("seed, run time", lambda r: f"{r.seed}, {r.seconds} s"),
    ]
    for name, cell in rows:
        lines.append(f"| {name} | | " + " | ".join(cell(r) for r in runs) + " |")
    lines += ["", f"![{image}]({image})", "", end]
    return "\n".join(lines) + "\n"


def write_section(doc: Path, text: str, mode: str) -> None:
    begin, end = MARKERS[mode]
    old = doc.read_text() if doc.exists() else ""
    if begin in old and end in old:
        before, rest = old.split(begin, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        new = before + text + ("\n" + after if after else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text
    doc.write_text(new)


def equivalent_command(runs: list[Run]) -> str:
    """For saved runs: the command that makes the same runs, when they agree on it."""
    same = {(run.faults, run.seed, run.rate, run.mode) for run in runs}
    if len(same) != 1:
        return "PYTHONPATH=src python benchmarks/chaos_chart.py --from ..."
    faults, seed, rate, mode = same.pop()
    shown = f"--rounds {faults} --seed {seed}"
    if rate != "2000":
        shown += f" --rate {rate}"
    if mode:
        shown += " --cluster"
    drivers = ",".join(run.driver for run in runs)
    if drivers != ",".join(DRIVERS):
        shown += f" --drivers {drivers}"
    return f"PYTHONPATH=src python benchmarks/chaos_chart.py {shown}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=textwrap.dedent(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=120, help="faults per driver")
    parser.add_argument("--seed", type=int, default=502)
    parser.add_argument("--rate", type=int, default=2000, help="messages published per second")
    parser.add_argument("--drivers", default=",".join(DRIVERS), help="comma-separated")
    parser.add_argument("--cluster", action="store_true", help="chaos.py --cluster")
    parser.add_argument("--save", metavar="DIR", help="keep each run's output in DIR")
    parser.add_argument(
        "--from",
        dest="sources",
        nargs="+",
        metavar="PATH",
        help="read saved outputs (files, or directories of chaos-*.txt)",
    )
    parser.add_argument(
        "--out", help="the chart (PNG; default docs/chaos.png, or docs/chaos-cluster.png)"
    )
    parser.add_argument("--doc", default=str(DOCS / "chaos.md"), help="the page; - for stdout")
    args = parser.parse_args(argv)
    if args.sources:
        texts = read_saved(args.sources)
        command = ""
    else:
        drivers = [d for d in args.drivers.split(",") if d]
        unknown = set(drivers) - set(DRIVERS)
        if unknown or not drivers:
            parser.error(f"--drivers: choose among {', '.join(DRIVERS)}")
        texts = [run_chaos(driver, args) for driver in drivers]
        shown = f"--rounds {args.rounds} --seed {args.seed}"
        if args.rate != 2000:
            shown += f" --rate {args.rate}"
        if args.cluster:
            shown += " --cluster"
        if args.drivers != ",".join(DRIVERS):
            shown += f" --drivers {args.drivers}"
        command = f"PYTHONPATH=src python benchmarks/chaos_chart.py {shown}"
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            for driver, text in zip(drivers, texts, strict=True):
                (Path(args.save) / f"chaos-{driver}.txt").write_text(text)
    runs = [parse(text) for text in texts]
    bad = [run for run in runs if run.violations != 0]
    if bad:
        names = ", ".join(f"{run.driver} ({run.violations})" for run in bad)
        print(f"chaos_chart: violations reported: {names}; docs left as they were", file=sys.stderr)
        return 1
    mode = mode_of(runs)
    if not command:
        command = equivalent_command(runs)
    out = Path(args.out) if args.out else DOCS / f"chaos{'-' + mode if mode else ''}.png"
    chart(runs, out)
    text = section(runs, out.name, command)
    if args.doc == "-":
        sys.stdout.write(text)
    else:
        write_section(Path(args.doc), text, mode)
    for run in runs:
        figures = ", ".join(
            f"{kind} {_cell(m)}/{_cell(p)} ms"
            for kind, (m, p) in run.per_kind.items()
            if not math.isnan(m)
        )
        print(f"{run.driver}: {run.faults} faults, {run.violations} violations; {figures}")
    print(f"chaos_chart: wrote {out}" + ("" if args.doc == "-" else f" and {args.doc}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
