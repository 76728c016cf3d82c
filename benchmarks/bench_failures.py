"""The cost of a failing tiny item: manyhands on threads against a plain loop and the stdlib.

    python benchmarks/bench_failures.py              # every case, 3 rounds each
    python benchmarks/bench_failures.py --items 100000 --rounds 5

Figures: wall time per item (the best round) and its ratio to the plain
loop's, and the process's CPU time per item (less moved by a busy machine).

Every item raises at once, so the figure is the engine's work per failure:
catching it, its Failure, the Report's counts (and the traceback text of the
kept failures, ``keep_failures`` of them). The peers get a try/except wrapper
(``ThreadPoolExecutor.map`` stops at the first exception otherwise).

``manyhands.map(ordered)`` delivers in input order: the failures that wait for
their turn behind a batch still running let go of their frames' variables.

Cases: ``fresh`` raises a new ValueError per item; ``shared`` re-raises one
module-level exception object (a constant, or ``Future.result()`` of a failed
setup call) from every worker at once.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import manyhands

SHARED = LookupError("not found")


def fresh(x: int) -> int:
    raise ValueError(x)


def shared(x: int) -> int:
    raise SHARED


def guarded(fn: Callable[[int], int]) -> Callable[[int], Any]:
    def call(x: int) -> Any:
        try:
            return fn(x)
        except Exception as exc:
            return exc

    return call


def plain_loop(fn: Callable[[int], int], n: int, workers: int) -> int:
    call = guarded(fn)
    return sum(isinstance(call(x), Exception) for x in range(n))


def executor_map(fn: Callable[[int], int], n: int, workers: int) -> int:
    call = guarded(fn)
    with ThreadPoolExecutor(workers) as pool:
        return sum(isinstance(r, Exception) for r in pool.map(call, range(n)))


def manyhands_run(fn: Callable[[int], int], n: int, workers: int) -> int:
    report = manyhands.run(fn, range(n), workers=workers, progress=False)
    return report.failed


def manyhands_map_ordered(fn: Callable[[int], int], n: int, workers: int) -> int:
    return sum(not o.ok for o in manyhands.map(fn, range(n), workers=workers, ordered=True))


RUNNERS = {
    "plain loop": plain_loop,
    "ThreadPoolExecutor.map": executor_map,
    "manyhands.run": manyhands_run,
    "manyhands.map(ordered)": manyhands_map_ordered,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.items
    for case, fn in (("fresh", fresh), ("shared", shared)):
        base = None
        for name, runner in RUNNERS.items():
            best = cpu = float("inf")
            for _ in range(args.rounds):
                gc.collect()
                started, began = time.perf_counter(), time.process_time()
                failed = runner(fn, n, args.workers)
                best = min(best, time.perf_counter() - started)
                cpu = min(cpu, time.process_time() - began)
                assert failed == n, (name, failed)
            per_item = best / n * 1e6
            base = base or per_item
            print(
                f"{case:7} {name:24} {per_item:6.2f} us/item  x{per_item / base:5.2f}"
                f"  (CPU {cpu / n * 1e6:5.2f} us/item)"
            )


if __name__ == "__main__":
    main()
