"""manyhands on processes against the stdlib pools and the peers, same workloads, one run.

    pip install -e ".[bench]"
    python benchmarks/bench_processes.py
    python benchmarks/bench_processes.py --workloads crash_storm

Each (workload, runner) runs in a fresh interpreter (see _harness.py), with
the pool's start-up inside the timed region. Peers get a wrapper that turns
an exception into a value, so that they can finish at all; a crash is not an
exception, and what each peer does with one is what crash_storm shows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Workload
from _harness import main as harness_main

WORKERS = 2


def double(x: int) -> int:
    return x * 2


def burn(x: int) -> int:
    """About 10 ms of pure-Python work."""
    total = 0
    for n in range(120_000):
        total += n * n % 7
    return x + total % 2


def crash_every_100th(x: int) -> int:
    if x % 100 == 99:
        os._exit(1)
    return x


def crash_never(x: int) -> int:
    """crash_every_100th without the crashes: the baseline crash_storm is judged by."""
    if x < 0:
        os._exit(1)
    return x


def _safe(x: Any, fn: Callable[[Any], Any]) -> Any:
    try:
        return fn(x)
    except Exception as exc:
        return exc


FN = {
    "tiny_procs": double,
    "cpu_procs": burn,
    "crash_free": crash_never,
    "crash_storm": crash_every_100th,
}


def _expect(n: int, failed: int = 0) -> Callable[[Any], str | None]:
    def check(summary: Any) -> str | None:
        ok, bad = summary
        return None if (ok, bad) == (n - failed, failed) else f"{ok} values, {bad} failures"

    return check


WORKLOADS = {
    w.name: w
    for w in [
        Workload(
            "tiny_procs",
            "200,000 x (x * 2), 2 processes; cost per item (start-up included)",
            lambda: range(200_000),
            WORKERS,
            "per_item_us",
            count=200_000,
            expect=_expect(200_000),
        ),
        Workload(
            "cpu_procs",
            "400 x ~10 ms of pure Python, 2 processes; cost per item",
            lambda: range(400),
            WORKERS,
            "per_item_us",
            count=400,
            expect=_expect(400),
        ),
        Workload(
            "crash_free",
            "crash_storm's 2,000 items with no crash, 2 processes; cost per item",
            lambda: range(2000),
            WORKERS,
            "per_item_us",
            count=2000,
            expect=_expect(2000),
        ),
        Workload(
            "crash_storm",
            "2,000 items, every 100th calls os._exit(1), 2 processes; cost per item",
            lambda: range(2000),
            WORKERS,
            "per_item_us",
            count=2000,
            expect=_expect(2000, failed=20),
        ),
    ]
}


def _count(values: Iterable[Any]) -> tuple[int, int]:
    ok = bad = 0
    for value in values:
        if isinstance(value, BaseException) or getattr(value, "error", None) is not None:
            bad += 1
        else:
            ok += 1
    return ok, bad


def r_manyhands(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    import manyhands

    return _count(manyhands.map(FN[name], items, backend="processes", workers=workers))


def r_manyhands_fork(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    """Not the default (fork is unsafe once threads run): shows what start-up costs."""
    import manyhands

    outcomes = manyhands.map(
        FN[name], items, backend="processes", workers=workers, start_method="fork"
    )
    return _count(outcomes)


def r_ppe(chunksize: int) -> Callable[[str, Iterable[Any], int], tuple[int, int]]:
    def run(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
        import functools
        from concurrent.futures import ProcessPoolExecutor

        fn = functools.partial(_safe, fn=FN[name])
        with ProcessPoolExecutor(workers) as pool:
            return _count(pool.map(fn, items, chunksize=chunksize))

    return run


def r_pool(chunksize: int) -> Callable[[str, Iterable[Any], int], tuple[int, int]]:
    def run(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
        import functools
        import multiprocessing

        fn = functools.partial(_safe, fn=FN[name])
        with multiprocessing.Pool(workers) as pool:
            return _count(pool.imap_unordered(fn, items, chunksize=chunksize))

    return run


def r_joblib(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    import functools

    from joblib import Parallel, delayed

    fn = functools.partial(_safe, fn=FN[name])
    return _count(Parallel(n_jobs=workers)(delayed(fn)(x) for x in items))


def r_mpire(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    import functools

    from mpire import WorkerPool

    fn = functools.partial(_safe, fn=FN[name])
    with WorkerPool(n_jobs=workers) as pool:
        return _count(pool.imap_unordered(fn, list(items)))


def r_pebble(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    import functools

    from pebble import ProcessPool

    fn = functools.partial(_safe, fn=FN[name])
    with ProcessPool(workers) as pool:
        future = pool.map(fn, items)
        values = []
        results = future.result()
        while True:
            try:
                values.append(next(results))
            except StopIteration:
                break
            except Exception as exc:  # pebble reports a crashed worker per item
                values.append(exc)
        return _count(values)


def r_serial(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    return _count(FN[name](x) for x in items)


RUNNERS: dict[str, Callable[[str, Iterable[Any], int], tuple[int, int]]] = {
    "manyhands.map": r_manyhands,
    "manyhands.map start_method=fork": r_manyhands_fork,
    "for loop (serial)": r_serial,
    "ProcessPoolExecutor.map": r_ppe(1),
    "ProcessPoolExecutor.map chunksize=2000": r_ppe(2000),
    "Pool.imap_unordered": r_pool(1),
    "Pool.imap_unordered chunksize=2000": r_pool(2000),
    "joblib (loky)": r_joblib,
    "mpire": r_mpire,
    "pebble": r_pebble,
}


def _skip(workload: str, runner: str) -> bool:
    return runner == "for loop (serial)" and workload == "crash_storm"


if __name__ == "__main__":
    harness_main(__file__, __doc__ or "", WORKLOADS, RUNNERS, skip=_skip, timeout=120)
