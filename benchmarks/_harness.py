"""Shared plumbing for the benchmarks: one fresh process per (workload, runner), a table of ratios.

Each case runs in its own interpreter so that peak RSS, imported modules and
leftover threads of one peer cannot colour another's figures.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# At the top on purpose, though only measure() and table() use it: a pure-Python loop's
# speed shifts by a few percent with what its process imported (memory layout), and
# moving this import into those functions made bench_pool's serial row 4% slower
# (paired fresh processes), which would flatter every speedup over it. Keep the
# scripts' imports as they are when comparing figures across changes.
import psutil


@dataclass
class Workload:
    name: str
    describe: str
    items: Callable[[], Iterable[Any]]
    workers: int
    metric: str  # "efficiency" (ideal / wall) or "per_item_us"
    ideal: float = 0.0  # seconds, for efficiency
    count: int = 0  # items, for per-item cost
    expect: Callable[[list[Any] | int], str | None] | None = None


def measure(run_case: Callable[[], Any]) -> dict[str, Any]:
    """Time one case in this process; report wall time and peak RSS growth."""
    base = psutil.Process().memory_info().rss
    started = time.perf_counter()
    result = run_case()
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"wall": wall, "rss_growth_mib": max(peak - base, 0) / 2**20, "result": result}


def run_isolated(script: str, workload: str, runner: str, timeout: float) -> dict[str, Any]:
    """Run one case in a fresh interpreter; its last stdout line is JSON."""
    try:
        proc = subprocess.run(
            [sys.executable, script, "--one", workload, runner],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f}s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": last[:80]}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def figure(workload: Workload, wall: float) -> float:
    if workload.metric == "efficiency":
        return workload.ideal / wall
    return wall / workload.count * 1e6


def table(
    workloads: list[Workload],
    results: dict[str, dict[str, dict[str, Any]]],
    ours: tuple[str, ...] = ("manyhands.map", "manyhands.run"),
) -> str:
    """Markdown: each runner's figure, its ratio to manyhands (the first of ``ours``), RSS."""
    lines = [
        f"Python {platform.python_version()}, {psutil.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
    ]
    for workload in workloads:
        rows = results.get(workload.name, {})
        unit = "efficiency" if workload.metric == "efficiency" else "us per item"
        lines += [f"### {workload.name}: {workload.describe}", ""]
        lines += [f"| runner | wall s | {unit} | vs manyhands | peak RSS growth MiB | check |"]
        lines += ["| --- | ---: | ---: | ---: | ---: | --- |"]
        mine = next((rows[name] for name in ours if name in rows), {})
        ours_fig = figure(workload, mine["wall"]) if "wall" in mine else None
        for runner, row in rows.items():
            if "error" in row:
                lines.append(f"| {runner} | - | - | - | - | {row['error']} |")
                continue
            fig = figure(workload, row["wall"])
            ratio = ""
            if ours_fig:
                # >1 means manyhands is better
                better = fig / ours_fig if workload.metric == "per_item_us" else ours_fig / fig
                ratio = f"{better:.2f}x"
            fmt = f"{fig:.3f}" if workload.metric == "efficiency" else f"{fig:.2f}"
            lines.append(
                f"| {runner} | {row['wall']:.3f} | {fmt} | {ratio} | "
                f"{row['rss_growth_mib']:.1f} | {row.get('check') or 'ok'} |"
            )
        lines.append("")
    return "\n".join(lines)


Runner = Callable[[str, Iterable[Any], int], Any]  # (workload name, items, workers) -> result


def one(
    workload: Workload,
    runner: Runner,
    summarize: Callable[[Any], Any] = lambda result: result,
    prepare: Callable[[], None] = lambda: None,
) -> None:
    """Run one case in this process and print its row as JSON (``--one``).

    ``prepare`` runs before the clock starts (e.g. the runner's imports: a
    library is imported once per program, not once per loop it runs).
    """
    prepare()
    items = workload.items()
    row = measure(lambda: summarize(runner(workload.name, items, workload.workers)))
    summary = row.pop("result")
    row["check"] = workload.expect(summary) if workload.expect else None
    print(json.dumps(row))


def compile_packages() -> None:
    """Byte-compile manyhands (and the peers) as an install would.

    An editable install, or PYTHONDONTWRITEBYTECODE=1, leaves no .pyc files, and
    every fresh interpreter would then compile the sources again inside the timed
    region (about 15 ms for manyhands).
    """
    import compileall
    import importlib.util
    from pathlib import Path

    for name in ("manyhands", "aiometer", "anyio", "joblib", "mpire", "pebble", "tqdm"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)


def main(
    script: str,
    doc: str,
    workloads: dict[str, Workload],
    runners: dict[str, Runner],
    ours: tuple[str, ...] = ("manyhands.map", "manyhands.run"),
    skip: Callable[[str, str], bool] = lambda workload, runner: False,
    timeout: float = 150.0,
    summarize: Callable[[Any], Any] = lambda result: result,
    prepare: Callable[[str], None] = lambda runner: None,
) -> None:
    """The command line of a benchmark script: every (workload, runner), then the table.

    ``prepare(runner)`` runs in the case's process before its clock starts.
    """
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n", maxsplit=1)[0])
    parser.add_argument("--workloads", default=",".join(workloads))
    parser.add_argument("--runners", default=",".join(runners))
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds per case")
    parser.add_argument("--one", nargs=2, metavar=("WORKLOAD", "RUNNER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(workloads[args.one[0]], runners[args.one[1]], summarize, lambda: prepare(args.one[1]))
        return
    chosen = [workloads[name] for name in args.workloads.split(",")]
    compile_packages()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for workload in chosen:
        for runner in args.runners.split(","):
            if skip(workload.name, runner):
                continue
            row = run_isolated(script, workload.name, runner, args.timeout)
            results.setdefault(workload.name, {})[runner] = row
            print(f"{workload.name:12} {runner:30} {row}", file=sys.stderr, flush=True)
    print(table(chosen, results, ours))
