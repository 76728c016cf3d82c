"""manyhands on threads against the stdlib and the peers, same workloads, one run.

    pip install -e ".[bench]"
    python benchmarks/bench_threads.py                 # every workload, every runner
    python benchmarks/bench_threads.py --workloads tiny,flaky --runners manyhands.map,mp.ThreadPool

Each (workload, runner) runs in a fresh interpreter (see _harness.py); pool
start-up is inside the timed region for everyone. Peers get a try/except
wrapper around the function so that they can finish the flaky workload at
all (ThreadPoolExecutor.map and most others stop at the first exception);
manyhands gets the bare function.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Workload
from _harness import main as harness_main


def io_20ms(x: int) -> int:
    time.sleep(0.02)
    return x


def io_50ms(x: int) -> int:
    time.sleep(0.05)
    return x


def double(x: int) -> int:
    return x * 2


def flaky(x: int) -> int:
    time.sleep(0.001)
    if x % 10 == 0:
        raise ValueError(f"item {x}")
    return x


async def aio_20ms(x: int) -> int:
    await asyncio.sleep(0.02)
    return x


async def aio_50ms(x: int) -> int:
    await asyncio.sleep(0.05)
    return x


async def aio_double(x: int) -> int:
    return x * 2


async def aio_flaky(x: int) -> int:
    await asyncio.sleep(0.001)
    if x % 10 == 0:
        raise ValueError(f"item {x}")
    return x


def _generator(n: int) -> Iterator[int]:
    return (i for i in range(n))


def _expect_sum(n: int) -> Callable[[Any], str | None]:
    def check(summary: Any) -> str | None:
        ok, failed, total = summary
        if total is not None and total != n * (n - 1):
            return f"wrong sum {total}"
        return None if (ok, failed) == (n, 0) else f"{ok} values, {failed} failures"

    return check


def _expect_flaky(summary: Any) -> str | None:
    ok, failed, _ = summary
    return None if (ok, failed) == (9000, 1000) else f"{ok} values, {failed} failures"


def _expect_count(n: int) -> Callable[[Any], str | None]:
    def check(summary: Any) -> str | None:
        ok, failed, _ = summary
        return None if (ok, failed) == (n, 0) else f"{ok} values, {failed} failures"

    return check


WORKLOADS = {
    w.name: w
    for w in [
        Workload(
            "io_sleep",
            "5,000 x sleep(0.02), 100 workers; efficiency = 1.0 s / wall",
            lambda: range(5000),
            100,
            "efficiency",
            ideal=1.0,
            expect=_expect_count(5000),
        ),
        Workload(
            "io_many",
            "20,000 x sleep(0.05), 1,000 workers; efficiency = 1.0 s / wall",
            lambda: range(20_000),
            1000,
            "efficiency",
            ideal=1.0,
            expect=_expect_count(20_000),
        ),
        Workload(
            "tiny",
            "200,000 x (x * 2), 8 workers, values summed; cost per item",
            lambda: range(200_000),
            8,
            "per_item_us",
            count=200_000,
            expect=_expect_sum(200_000),
        ),
        Workload(
            "huge_stream",
            "3,000,000-item generator of x * 2, 8 workers, values summed",
            lambda: _generator(3_000_000),
            8,
            "per_item_us",
            count=3_000_000,
            expect=_expect_sum(3_000_000),
        ),
        Workload(
            "flaky",
            "10,000 x sleep(0.001), every 10th raises, 50 workers; efficiency vs 0.2 s",
            lambda: range(10_000),
            50,
            "efficiency",
            ideal=0.2,
            expect=_expect_flaky,
        ),
    ]
}

SYNC_FN = {
    "io_sleep": io_20ms,
    "io_many": io_50ms,
    "tiny": double,
    "huge_stream": double,
    "flaky": flaky,
}
ASYNC_FN = {
    "io_sleep": aio_20ms,
    "io_many": aio_50ms,
    "tiny": aio_double,
    "huge_stream": aio_double,
    "flaky": aio_flaky,
}


def _safe(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def call(x: Any) -> Any:
        try:
            return fn(x)
        except Exception as exc:
            return exc

    return call


# -- runners: (workload name, items, workers) -> iterable of values or exception objects --


def r_manyhands_map(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    import manyhands

    for out in manyhands.map(SYNC_FN[name], items, workers=workers):
        yield out.value if out.error is None else out.error


def r_manyhands_run(name: str, items: Iterable[Any], workers: int) -> Any:
    import manyhands

    report = manyhands.run(SYNC_FN[name], items, workers=workers)
    return (report.succeeded, report.failed, None)


def r_for_loop(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    return map(_safe(SYNC_FN[name]), items)


def r_tpe_map(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(_safe(SYNC_FN[name]), items)


def r_tpe_as_completed(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_safe(SYNC_FN[name]), x) for x in items]
        for future in as_completed(futures):
            yield future.result()


def r_mp_threadpool(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    from multiprocessing.pool import ThreadPool

    with ThreadPool(workers) as pool:
        yield from pool.imap_unordered(_safe(SYNC_FN[name]), items)


def r_joblib(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    from joblib import Parallel, delayed

    fn = _safe(SYNC_FN[name])
    parallel = Parallel(n_jobs=workers, backend="threading", return_as="generator_unordered")
    yield from parallel(delayed(fn)(x) for x in items)


def r_tqdm(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    from tqdm.contrib.concurrent import thread_map

    return thread_map(_safe(SYNC_FN[name]), items, max_workers=workers, disable=True)


def r_mpire(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=workers, start_method="threading") as pool:
        yield from pool.imap_unordered(_safe(SYNC_FN[name]), items)


def r_pebble(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    from pebble import ThreadPool

    with ThreadPool(max_workers=workers) as pool:
        yield from pool.map(_safe(SYNC_FN[name]), items).result()


def r_asyncio_gather(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    fn = ASYNC_FN[name]

    async def main() -> list[Any]:
        limit = asyncio.Semaphore(workers)

        async def one(x: Any) -> Any:
            async with limit:
                try:
                    return await fn(x)
                except Exception as exc:
                    return exc

        return await asyncio.gather(*(one(x) for x in items))

    return asyncio.run(main())


def r_hand_split(name: str, items: Iterable[Any], workers: int) -> Iterable[Any]:
    """The floor: items pre-split round-robin, one bare thread each, no queue at all."""
    import threading

    fn = _safe(SYNC_FN[name])
    shares: list[list[Any]] = [[] for _ in range(workers)]
    for index, item in enumerate(items):
        shares[index % workers].append(item)
    results: list[list[Any]] = [[] for _ in range(workers)]

    def work(share: list[Any], out: list[Any]) -> None:
        out.extend(map(fn, share))

    threads = [
        threading.Thread(target=work, args=pair) for pair in zip(shares, results, strict=False)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [value for out in results for value in out]


RUNNERS: dict[str, Callable[[str, Iterable[Any], int], Any]] = {
    "manyhands.map": r_manyhands_map,
    "manyhands.run": r_manyhands_run,
    "for loop (serial)": r_for_loop,
    "hand-split threads (floor)": r_hand_split,
    "ThreadPoolExecutor.map": r_tpe_map,
    "submit-all + as_completed": r_tpe_as_completed,
    "mp.ThreadPool.imap_unordered": r_mp_threadpool,
    "joblib threading": r_joblib,
    "tqdm thread_map": r_tqdm,
    "mpire threading": r_mpire,
    "pebble ThreadPool": r_pebble,
    "asyncio gather+Semaphore": r_asyncio_gather,
}

SERIAL_ONLY_FOR = {"tiny", "huge_stream"}  # a serial loop over io_many would take 1,000 s
FLOOR_ONLY_FOR = {"io_sleep", "io_many", "flaky"}  # a reference for IO: no framework at all


def _summarize(result: Any) -> tuple[int, int, int | None]:
    if isinstance(result, tuple):
        return result
    ok = failed = total = 0
    for value in result:
        if isinstance(value, BaseException) or hasattr(value, "error_type"):
            failed += 1
        else:
            ok += 1
            total += value
    return ok, failed, total


def _skip(workload: str, runner: str) -> bool:
    if runner == "for loop (serial)" and workload not in SERIAL_ONLY_FOR:
        return True
    return runner.startswith("hand-split") and workload not in FLOOR_ONLY_FOR


if __name__ == "__main__":
    harness_main(__file__, __doc__ or "", WORKLOADS, RUNNERS, skip=_skip, summarize=_summarize)
