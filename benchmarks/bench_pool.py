"""Several loops on one set of workers: manyhands.Pool against the classic answers.

Responsive lane: a bulk run keeps the workers busy while another thread sends one small,
urgent call every 100 ms. The classic answers are one shared executor (the urgent call
queues behind the bulk, first in, first out) and a second executor for the small jobs
(more threads or processes than workers asked for, and start-up paid twice). Reported:
the urgent calls' queue wait (from the moment they are sent to the moment they start,
p50 and p99) and the bulk run's wall time, against the bulk run alone.

Warm pool: ten consecutive runs of CPU-bound items on a process pool that stays up,
against ten cold ``manyhands.run`` calls and the serial loop; timed with the pool's
start-up, and apart on a started pool (the clock starts once the workers are up).

The last column is the mean number of runnable tasks on the machine during the try
(Linux): about 1 for a serial try and 2 for a try on 2 workers; more means that other
programs took CPU from it. ``BENCH_POOL_LOOPS`` fixes the CPU work's loops per second
(else calibrated at the start) so that runs on different days do the same work.

    python benchmarks/bench_pool.py                      # every case
    python benchmarks/bench_pool.py --cases threads      # the thread cases only
    python benchmarks/bench_pool.py --cases warm --repeat 3   # each row 3 times: the best
    python benchmarks/bench_pool.py --cases warm --repeat 5 --when-idle   # a shared machine
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _harness import compile_packages, run_isolated

import manyhands

URGENT_EVERY = 0.1  # seconds between urgent calls
WARM_UP = 20  # items each warm-pool row runs in its own process before its clock starts

# -- the work --------------------------------------------------------------------


def io_bulk(x: int) -> int:
    time.sleep(0.05)
    return x


def spin(seconds: float) -> int:
    """Pure-Python CPU work for about ``seconds`` (calibrated once per process)."""
    n = int(seconds * _LOOPS_PER_SECOND)
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _calibrate() -> float:
    """Loops per second, the best of five tries (a busy machine only ever slows one down,
    and items made shorter by a slow try would make every ratio of the run worse)."""
    n = 100_000
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(n):
            total += i * i % 7
        best = min(best, time.perf_counter() - started)
    return n / best


_LOOPS_PER_SECOND = float(os.environ.get("BENCH_POOL_LOOPS", 0)) or _calibrate()
os.environ["BENCH_POOL_LOOPS"] = str(_LOOPS_PER_SECOND)  # the same work in every worker


def cpu_bulk(x: int) -> int:
    return spin(0.01)


def cpu_urgent(sent: float) -> float:
    waited = time.time() - sent
    spin(0.001)
    return waited


def io_urgent(sent: float) -> float:
    waited = time.time() - sent
    time.sleep(0.001)
    return waited


# -- the urgent lane ---------------------------------------------------------------


def urgent_lane(send: Callable[[float], float], stop: threading.Event) -> list[float]:
    """Send one urgent call every URGENT_EVERY seconds until ``stop``; their waits."""
    waits: list[float] = []
    while not stop.wait(URGENT_EVERY):
        waits.append(send(time.time()))
    return waits


def responsive(bulk: Callable[[], Any], send: Callable[[float], float]) -> dict[str, Any]:
    stop = threading.Event()
    waits: list[float] = []
    lane = threading.Thread(target=lambda: waits.extend(urgent_lane(send, stop)))
    started = time.perf_counter()
    lane.start()
    bulk()
    wall = time.perf_counter() - started
    stop.set()
    lane.join()
    waits.sort()
    return {
        "wall": wall,
        "urgent_calls": len(waits),
        "p50_ms": 1e3 * statistics.median(waits) if waits else None,
        "p99_ms": 1e3 * waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else None,
    }


# -- the cases ---------------------------------------------------------------------


def threads_case(kind: str) -> dict[str, Any]:
    items = range(2000)
    workers = 20
    if kind == "bulk alone (Pool)":
        with manyhands.Pool(workers) as pool:
            started = time.perf_counter()
            assert pool.run(io_bulk, items).succeeded == 2000
            return {"wall": time.perf_counter() - started}
    if kind == "bulk alone (ThreadPoolExecutor)":
        with ThreadPoolExecutor(workers) as ex:
            started = time.perf_counter()
            assert len(list(ex.map(io_bulk, items))) == 2000
            return {"wall": time.perf_counter() - started}
    if kind == "one shared ThreadPoolExecutor":
        with ThreadPoolExecutor(workers) as ex:
            return responsive(
                lambda: list(ex.map(io_bulk, items)),
                lambda sent: ex.submit(io_urgent, sent).result(),
            )
    if kind == "two ThreadPoolExecutors":
        with ThreadPoolExecutor(workers) as ex, ThreadPoolExecutor(2) as small:
            return responsive(
                lambda: list(ex.map(io_bulk, items)),
                lambda sent: small.submit(io_urgent, sent).result(),
            )
    if kind == "manyhands.Pool, pool.run(priority=5)":
        with manyhands.Pool(workers) as pool:
            return responsive(
                lambda: pool.run(io_bulk, items),
                lambda sent: pool.map(io_urgent, [sent], priority=5).__next__().value,
            )
    if kind == "manyhands.Pool, executor(priority=5).submit":
        with manyhands.Pool(workers) as pool:
            urgent = pool.executor(priority=5)
            return responsive(
                lambda: pool.run(io_bulk, items),
                lambda sent: urgent.submit(io_urgent, sent).result(),
            )
    if kind == "manyhands.Pool(spare=2), pool.run(priority=5)":
        with manyhands.Pool(workers, spare=2) as pool:
            return responsive(
                lambda: pool.run(io_bulk, items),
                lambda sent: pool.map(io_urgent, [sent], priority=5).__next__().value,
            )
    raise KeyError(kind)


def processes_case(kind: str) -> dict[str, Any]:
    items = range(400)
    workers = 2
    if kind == "serial":
        started = time.perf_counter()
        for x in items:
            cpu_bulk(x)
        return {"wall": time.perf_counter() - started}
    if kind == "one shared ProcessPoolExecutor":
        with ProcessPoolExecutor(workers) as ex:
            return responsive(
                lambda: list(ex.map(cpu_bulk, items)),
                lambda sent: ex.submit(cpu_urgent, sent).result(),
            )
    if kind == "two ProcessPoolExecutors":
        with ProcessPoolExecutor(workers) as ex, ProcessPoolExecutor(workers) as small:
            return responsive(
                lambda: list(ex.map(cpu_bulk, items)),
                lambda sent: small.submit(cpu_urgent, sent).result(),
            )
    if kind == "manyhands.Pool, pool.run(priority=5)":
        with manyhands.Pool(workers, backend="processes") as pool:
            return responsive(
                lambda: pool.run(cpu_bulk, items),
                lambda sent: pool.map(cpu_urgent, [sent], priority=5).__next__().value,
            )
    raise KeyError(kind)


def warm_case(kind: str) -> dict[str, Any]:
    runs, items = 10, range(40)
    # Modules are imported before the clock starts, for every row: ProcessPoolExecutor's
    # (concurrent.futures.process, multiprocessing) at the top of this file, and the
    # process backend's that manyhands imports on a Pool's first use (it, cloudpickle,
    # multiprocessing's forkserver client: 9-19 ms here), which are not the pool's start.
    _ = manyhands.Pool, manyhands.run
    importlib.import_module("manyhands._backends").prepare_processes(None)  # (imports only)
    # Every row first runs 20 items in its own process: the first ~0.2 s of the loop in a
    # fresh process runs up to 10% slower here, and a serial row timed cold would flatter
    # every row it is the reference of.
    for x in range(WARM_UP):
        cpu_bulk(x)
    started = time.perf_counter()
    if kind == "serial":
        for _ in range(runs):
            for x in items:
                cpu_bulk(x)
    elif kind == "cold manyhands.run x10":
        for _ in range(runs):
            assert manyhands.run(cpu_bulk, items, backend="processes").succeeded == 40
    elif kind == "warm manyhands.Pool x10 (start-up included)":
        with manyhands.Pool(backend="processes") as pool:
            for _ in range(runs):
                assert pool.run(cpu_bulk, items).succeeded == 40
    elif kind == "warm manyhands.Pool(start_method='fork') x10 (start-up included)":
        # (as ProcessPoolExecutor starts its workers on Linux; not the default: see README)
        with manyhands.Pool(backend="processes", start_method="fork") as pool:
            for _ in range(runs):
                assert pool.run(cpu_bulk, items).succeeded == 40
    elif kind == "ProcessPoolExecutor x10 (start-up included)":
        ex: Executor
        with ProcessPoolExecutor() as ex:
            for _ in range(runs):
                assert len(list(ex.map(cpu_bulk, items))) == 40
    elif kind == "warm manyhands.Pool x10 (start-up included, forkserver running)":
        # The forkserver is multiprocessing's, one per program, started by the first
        # pool or run on processes and shared by all that follow: here started before
        # the clock, as in a program that used processes before.
        importlib.import_module("manyhands._backends").prepare_processes(None, boot=True)
        probe = multiprocessing.get_context("forkserver").Process(target=os.getpid)
        probe.start()  # (returns once the forkserver is up and has forked it)
        probe.join()
        started = time.perf_counter()
        with manyhands.Pool(backend="processes") as pool:
            for _ in range(runs):
                assert pool.run(cpu_bulk, items).succeeded == 40
    elif kind == "warm manyhands.Pool x10 (started pool)":
        with manyhands.Pool(backend="processes") as pool:  # (returns with its workers up)
            started = time.perf_counter()
            for _ in range(runs):
                assert pool.run(cpu_bulk, items).succeeded == 40
            ended = time.perf_counter()
        return {"wall": ended - started}
    elif kind == "ProcessPoolExecutor x10 (started pool)":
        with ProcessPoolExecutor() as ex:
            # It starts its workers as work comes: one round of no-op calls first.
            workers = getattr(ex, "_max_workers", 2)
            list(ex.map(time.sleep, [0.05] * workers))
            started = time.perf_counter()
            for _ in range(runs):
                assert len(list(ex.map(cpu_bulk, items))) == 40
            ended = time.perf_counter()
        return {"wall": ended - started}
    else:
        raise KeyError(kind)
    return {"wall": time.perf_counter() - started}


CASES: dict[str, tuple[Callable[[str], dict[str, Any]], list[str]]] = {
    "threads": (
        threads_case,
        [
            "bulk alone (Pool)",
            "bulk alone (ThreadPoolExecutor)",
            "one shared ThreadPoolExecutor",
            "two ThreadPoolExecutors",
            "manyhands.Pool, pool.run(priority=5)",
            "manyhands.Pool, executor(priority=5).submit",
            "manyhands.Pool(spare=2), pool.run(priority=5)",
        ],
    ),
    "processes": (
        processes_case,
        [
            "serial",
            "one shared ProcessPoolExecutor",
            "two ProcessPoolExecutors",
            "manyhands.Pool, pool.run(priority=5)",
        ],
    ),
    "warm": (
        warm_case,
        [
            "serial",
            "cold manyhands.run x10",
            "warm manyhands.Pool x10 (start-up included)",
            "warm manyhands.Pool(start_method='fork') x10 (start-up included)",
            "ProcessPoolExecutor x10 (start-up included)",
            "warm manyhands.Pool x10 (start-up included, forkserver running)",
            "warm manyhands.Pool x10 (started pool)",
            "ProcessPoolExecutor x10 (started pool)",
        ],
    ),
}


class Runnable:
    """The machine's runnable tasks while a try runs (Linux: ``procs_running`` of
    /proc/stat, sampled every 10 ms; this sampler not counted), to tell a try that
    other programs slowed down: a serial try runs 1, a try on 2 workers about 2."""

    def __init__(self) -> None:
        self.mean: float | None = None
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Runnable:
        if os.path.exists("/proc/stat"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._samples:
            self.mean = round(sum(self._samples) / len(self._samples), 2)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            with open("/proc/stat") as stat:
                for line in stat:
                    if line.startswith("procs_running"):
                        self._samples.append(int(line.split()[1]) - 1)
                        break


def _wait_until_idle(limit: float = 60.0) -> None:
    """Until the machine runs fewer than 0.3 tasks on average over half a second."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with Runnable() as runnable:
            time.sleep(0.5)
        if runnable.mean is None or runnable.mean < 0.3:
            return
        time.sleep(0.5)


def _table(name: str, rows: dict[str, dict[str, Any]]) -> str:
    reference = next(iter(rows.values())).get("wall")
    lines = [
        f"### {name}",
        "",
        "| runner | wall s | vs first row | urgent wait p50 / p99 ms | runnable |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for runner, row in rows.items():
        if "error" in row:
            lines.append(f"| {runner} | - | - | {row['error']} | |")
            continue
        ratio = f"{row['wall'] / reference:.3f}x" if reference else ""
        waits = (
            f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f} ({row['urgent_calls']} calls)"
            if row.get("p50_ms") is not None
            else ""
        )
        runnable = f"{row['runnable']:.2f}" if "runnable" in row else ""
        lines.append(f"| {runner} | {row['wall']:.3f} | {ratio} | {waits} | {runnable} |")
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each row this many times, in turns, and report the best wall "
        "(on a shared machine, other programs only ever add time)",
    )
    parser.add_argument(
        "--runners", help="comma-separated beginnings of the rows to run (default: all)"
    )
    parser.add_argument(
        "--when-idle",
        action="store_true",
        help="start each round of tries once the machine is idle (Linux: fewer than 0.3 "
        "runnable tasks over half a second; waits at most a minute)",
    )
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        case, runner = args.one
        print(json.dumps(CASES[case][0](runner)))
        return
    compile_packages()
    for case in args.cases.split(","):
        runners = [
            runner
            for runner in CASES[case][1]
            if not args.runners or runner.startswith(tuple(args.runners.split(",")))
        ]
        tries: dict[str, list[dict[str, Any]]] = {runner: [] for runner in runners}
        for _ in range(args.repeat):
            if args.when_idle:
                _wait_until_idle()
            for runner in runners:
                with Runnable() as runnable:
                    row = run_isolated(__file__, case, runner, args.timeout)
                if runnable.mean is not None:
                    row["runnable"] = runnable.mean
                tries[runner].append(row)
                print(f"{case:10} {runner:45} {row}", file=sys.stderr, flush=True)
        print(_table(case, {runner: _best(rows) for runner, rows in tries.items()}))


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The try of least wall time (an error if any try failed)."""
    for row in rows:
        if "error" in row:
            return row
    return min(rows, key=lambda row: row["wall"])


if __name__ == "__main__":
    main()
