"""backend="auto" against the best fixed backend and against threads, per workload.

Each case runs in a fresh interpreter (start-up included, as a user sees it).

    python benchmarks/bench_auto.py
    python benchmarks/bench_auto.py --workloads cpu,mixed --repeat 5

With ``--repeat N`` each workload runs N rounds, the three runners in turn in
each round, and the table holds each runner's median wall (a single fresh
interpreter of a 50 ms run varies by more than the 10% the target allows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _harness import compile_packages, run_isolated

import manyhands


def _calibrate() -> float:
    n = 200_000
    started = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i % 7
    return n / (time.perf_counter() - started)


_LOOPS = float(os.environ.get("BENCH_AUTO_LOOPS", 0)) or _calibrate()
os.environ["BENCH_AUTO_LOOPS"] = str(_LOOPS)  # the same work in every worker process


def compute(seconds: float) -> int:
    total = 0
    for i in range(int(seconds * _LOOPS)):
        total += i * i % 7
    return total


def io_sleep(x: int) -> int:
    time.sleep(0.02)
    return x


def cpu(x: int) -> int:
    return compute(0.01)


def tiny(x: int) -> int:
    return x * 2


def mixed(x: int) -> int:
    time.sleep(0.005)
    return compute(0.005)


def cache_then_cpu(x: int) -> int:
    return x if x < 50 else compute(0.01)


WORKLOADS: dict[str, tuple[str, Callable[[int], int], Callable[[], Iterable[int]], int]] = {
    "io_sleep": ("5,000 x sleep(0.02), 100 workers", io_sleep, lambda: range(5000), 100),
    "cpu": ("400 x ~10 ms of pure-Python work", cpu, lambda: range(400), 32),
    "tiny": ("200,000 x (x * 2)", tiny, lambda: range(200_000), 32),
    "mixed": ("400 x (sleep 5 ms, then ~5 ms of work)", mixed, lambda: range(400), 32),
    "cache_then_cpu": (
        "the first 50 items return at once, the other 350 compute ~10 ms",
        cache_then_cpu,
        lambda: range(400),
        32,
    ),
}

RUNNERS = ("auto", "threads", "processes")


def one(workload: str, runner: str) -> dict[str, Any]:
    _, fn, items, workers = WORKLOADS[workload]
    options: dict[str, Any] = {"backend": runner}
    if runner != "processes":
        options["workers"] = workers
    started = time.perf_counter()
    report = manyhands.run(fn, items(), **options)
    wall = time.perf_counter() - started
    assert report.failed == 0
    return {"wall": wall, "backend": report.backend}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--repeat", type=int, default=1, help="rounds per workload (medians)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    compile_packages()
    lines = [
        "| workload | auto s | threads s | processes s | auto vs best fixed | auto vs threads "
        "| auto chose |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in args.workloads.split(","):
        rounds = []
        for _ in range(args.repeat):
            rows = {r: run_isolated(__file__, name, r, args.timeout) for r in RUNNERS}
            print(f"{name:15} {rows}", file=sys.stderr, flush=True)
            rounds.append(rows)
        if any("wall" not in row for rows in rounds for row in rows.values()):
            lines.append(f"| {name} | {rounds} |")
            continue
        walls = {r: statistics.median(rows[r]["wall"] for rows in rounds) for r in RUNNERS}
        best = min(walls["threads"], walls["processes"])
        lines.append(
            f"| {name} | {walls['auto']:.3f} | {walls['threads']:.3f} | "
            f"{walls['processes']:.3f} | {walls['auto'] / best:.2f}x | "
            f"{walls['auto'] / walls['threads']:.2f}x | {rows['auto']['backend']} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
