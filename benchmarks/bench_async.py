"""manyhands on asyncio against the usual async answers, same workloads, one run.

    pip install -e ".[bench]"
    python benchmarks/bench_async.py                    # every workload, every runner
    python benchmarks/bench_async.py --workloads tiny --runners manyhands.amap,Queue workers

Each (workload, runner) runs in a fresh interpreter (see _harness.py), with
the event loop's start-up inside the timed region and each runner's library
imports before it (``import_libraries``). ``manyhands.amap`` runs on
the benchmark's own loop; ``manyhands.run`` is called from sync code with the
coroutine function (a private loop in a thread: asyncio's, and uvloop's,
which it uses when uvloop is installed). The uvloop rows run the same code on
``uvloop.run`` (``pip install manyhands[fast]``). The peers get the bare
coroutine function too (no workload here raises).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Workload
from _harness import main as harness_main


async def sleep_50ms(x: int) -> int:
    await asyncio.sleep(0.05)
    return x


async def sleep_100ms(x: int) -> int:
    await asyncio.sleep(0.1)
    return x


async def double(x: int) -> int:
    return x * 2


def _generator(n: int) -> Iterator[int]:
    yield from range(n)


def _expect_sum(n: int) -> Callable[[Any], str | None]:
    def check(summary: Any) -> str | None:
        count, total = summary
        return None if (count, total) == (n, n * (n - 1)) else f"got {count} / {total}"

    return check


def _expect_count(n: int) -> Callable[[Any], str | None]:
    def check(summary: Any) -> str | None:
        return None if summary[0] == n else f"got {summary[0]} of {n}"

    return check


WORKLOADS = {
    w.name: w
    for w in [
        Workload(
            "io_many",
            "20,000 x asyncio.sleep(0.05), 1,000 in flight; efficiency = 1.0 s / wall",
            lambda: range(20_000),
            1000,
            "efficiency",
            ideal=1.0,
            expect=_expect_count(20_000),
        ),
        Workload(
            "io_huge",
            "100,000 x asyncio.sleep(0.1), 10,000 in flight; efficiency = 1.0 s / wall",
            lambda: range(100_000),
            10_000,
            "efficiency",
            ideal=1.0,
            expect=_expect_count(100_000),
        ),
        Workload(
            "tiny",
            "200,000 trivial coroutines (x * 2), 8 in flight, values summed; cost per item",
            lambda: range(200_000),
            8,
            "per_item_us",
            count=200_000,
            expect=_expect_sum(200_000),
        ),
        Workload(
            "huge_stream",
            "3,000,000-item generator of trivial coroutines, 8 in flight, values summed",
            lambda: _generator(3_000_000),
            8,
            "per_item_us",
            count=3_000_000,
            expect=_expect_sum(3_000_000),
        ),
    ]
}

FN = {"io_many": sleep_50ms, "io_huge": sleep_100ms, "tiny": double, "huge_stream": double}


# -- runners: (workload name, items, workers) -> (count, sum of values) --------


def _on_uvloop(main: Callable[[], Coroutine[Any, Any, tuple[int, int]]]) -> tuple[int, int]:
    import uvloop

    return uvloop.run(main())


def _without_uvloop() -> None:
    sys.modules["uvloop"] = None  # type: ignore[assignment]  # (`import uvloop` fails)


def _amap_main(
    name: str, items: Iterable[Any], workers: int
) -> Callable[[], Coroutine[Any, Any, tuple[int, int]]]:
    import manyhands

    async def main() -> tuple[int, int]:
        count = total = 0
        async for out in manyhands.amap(FN[name], items, workers=workers):
            count += 1
            total += out.value
        return count, total

    return main


def r_manyhands_amap(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    return asyncio.run(_amap_main(name, items, workers)())


def r_manyhands_amap_no_opening(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    """Diagnostic: ``amap`` with every call allowed from the start (no opening).

    What issue 17's opening (16 calls, doubling every 5 ms until the first
    answers) costs a run that no server limits; not an option users have.
    """
    from manyhands import _latency_limit

    _latency_limit.OPENING = workers
    return r_manyhands_amap(name, items, workers)


def r_manyhands_amap_uvloop(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    return _on_uvloop(_amap_main(name, items, workers))


def r_manyhands_run_asyncio(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    _without_uvloop()
    return r_manyhands_run(name, items, workers)


def r_manyhands_run(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    """A private loop in a thread: uvloop's when it is installed (manyhands[fast])."""
    import manyhands

    count = total = 0
    for out in manyhands.map(FN[name], items, workers=workers):
        count += 1
        total += out.value
    return count, total


def r_queue_workers(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    return asyncio.run(_queue_main(name, items, workers)())


def r_queue_workers_uvloop(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    return _on_uvloop(_queue_main(name, items, workers))


def _queue_main(
    name: str, items: Iterable[Any], workers: int
) -> Callable[[], Coroutine[Any, Any, tuple[int, int]]]:
    """The textbook answer: N worker tasks on a bounded asyncio.Queue."""
    fn = FN[name]

    async def main() -> tuple[int, int]:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * workers)
        done = [0, 0]

        async def work() -> None:
            while (item := await queue.get()) is not None:
                done[0] += 1
                done[1] += await fn(item)

        tasks = [asyncio.create_task(work()) for _ in range(workers)]
        for item in items:
            await queue.put(item)
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)
        return done[0], done[1]

    return main


def r_gather(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    fn = FN[name]

    async def main() -> tuple[int, int]:
        limit = asyncio.Semaphore(workers)

        async def one(item: Any) -> Any:
            async with limit:
                return await fn(item)

        values = await asyncio.gather(*(one(item) for item in items))
        return len(values), sum(values)

    return asyncio.run(main())


def r_aiometer(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    import aiometer

    fn = FN[name]

    async def main() -> tuple[int, int]:
        count = total = 0
        async with aiometer.amap(fn, items, max_at_once=workers) as results:
            async for value in results:
                count += 1
                total += value
        return count, total

    return asyncio.run(main())


def r_anyio(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
    import anyio

    fn = FN[name]

    async def main() -> tuple[int, int]:
        limiter = anyio.CapacityLimiter(workers)
        done = [0, 0]

        async def one(item: Any) -> None:
            async with limiter:
                value = await fn(item)
            done[0] += 1
            done[1] += value

        async with anyio.create_task_group() as group:
            for item in items:
                await limiter.acquire()  # bounded: no task per item up front
                limiter.release()
                group.start_soon(one, item)
        return done[0], done[1]

    return asyncio.run(main())


def import_libraries(runner: str) -> None:
    """Import what ``runner`` uses before the clock starts, as a program would at its top.

    Queue workers and gather need only asyncio, imported above; manyhands (its
    package and the modules its first ``amap`` or ``map`` imports: 20-35 ms
    here), aiometer, anyio and uvloop would otherwise pay their imports inside
    a one-second timed region.
    """
    if runner.startswith("manyhands"):
        for name in ("manyhands", "manyhands._api", "manyhands._aio", "manyhands._backends._async"):
            importlib.import_module(name)
    for name in ("aiometer", "anyio", "uvloop"):
        if name in runner:
            importlib.import_module(name)


RUNNERS: dict[str, Callable[[str, Iterable[Any], int], tuple[int, int]]] = {
    "manyhands.amap": r_manyhands_amap,
    "manyhands.amap (no opening)": r_manyhands_amap_no_opening,
    "manyhands.map (private loop)": r_manyhands_run_asyncio,
    "Queue workers": r_queue_workers,
    "manyhands.amap on uvloop": r_manyhands_amap_uvloop,
    "manyhands.map (private loop on uvloop)": r_manyhands_run,
    "Queue workers on uvloop": r_queue_workers_uvloop,
    "gather+Semaphore": r_gather,
    "aiometer.amap": r_aiometer,
    "anyio task group": r_anyio,
}


if __name__ == "__main__":
    harness_main(
        __file__,
        __doc__ or "",
        WORKLOADS,
        RUNNERS,
        ("manyhands.amap",),
        timeout=120,
        prepare=import_libraries,
    )
