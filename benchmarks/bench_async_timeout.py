"""timeout= on asyncio: what a per-call deadline costs, against the hand-written answer.

    python benchmarks/bench_async_timeout.py

100,000 x asyncio.sleep(0.1) with 10,000 in flight, each call under a 5 s
deadline that never fires: ``manyhands.amap(timeout=5)`` (one ``call_later``
timer per call, so its item fails at the deadline even if the coroutine
ignores its cancellation) against Queue workers that put each call under
``asyncio.timeout(5)``; and both without a deadline, for what the deadline
itself costs. Each case runs in a fresh interpreter (see _harness.py).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Workload
from _harness import main as harness_main

DEADLINE = 5.0


async def sleep_100ms(x: int) -> int:
    await asyncio.sleep(0.1)
    return x


WORKLOADS = {
    "io_timed": Workload(
        "io_timed",
        "100,000 x asyncio.sleep(0.1), 10,000 in flight, 5 s deadline per call; "
        "efficiency = 1.0 s / wall",
        lambda: range(100_000),
        10_000,
        "efficiency",
        ideal=1.0,
        expect=lambda summary: None if summary[0] == 100_000 else f"got {summary[0]}",
    )
}


def _amap(timeout: float | None) -> Callable[[str, Iterable[Any], int], tuple[int, int]]:
    def runner(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
        import manyhands

        async def main() -> tuple[int, int]:
            count = total = 0
            outs = manyhands.amap(sleep_100ms, items, workers=workers, timeout=timeout)
            async for out in outs:
                count += 1
                total += out.value
            return count, total

        return asyncio.run(main())

    return runner


def _queue(timeout: float | None) -> Callable[[str, Iterable[Any], int], tuple[int, int]]:
    def runner(name: str, items: Iterable[Any], workers: int) -> tuple[int, int]:
        return asyncio.run(_queue_main(items, workers, timeout)())

    return runner


def _queue_main(
    items: Iterable[Any], workers: int, timeout: float | None
) -> Callable[[], Coroutine[Any, Any, tuple[int, int]]]:
    """N worker tasks on a bounded asyncio.Queue, each call under ``asyncio.timeout``."""

    async def main() -> tuple[int, int]:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * workers)
        done = [0, 0]

        async def work() -> None:
            while (item := await queue.get()) is not None:
                done[0] += 1
                if timeout is None:
                    done[1] += await sleep_100ms(item)
                    continue
                try:
                    async with asyncio.timeout(timeout):
                        done[1] += await sleep_100ms(item)
                except TimeoutError:
                    pass

        tasks = [asyncio.create_task(work()) for _ in range(workers)]
        for item in items:
            await queue.put(item)
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)
        return done[0], done[1]

    return main


def import_libraries(runner: str) -> None:
    """Import manyhands (and what its first ``amap`` imports) before the clock starts."""
    if runner.startswith("manyhands"):
        for name in ("manyhands", "manyhands._api", "manyhands._aio", "manyhands._backends._async"):
            importlib.import_module(name)


RUNNERS: dict[str, Callable[[str, Iterable[Any], int], tuple[int, int]]] = {
    "manyhands.amap timeout=5": _amap(DEADLINE),
    "Queue workers + asyncio.timeout(5)": _queue(DEADLINE),
    "manyhands.amap no timeout": _amap(None),
    "Queue workers no timeout": _queue(None),
}


if __name__ == "__main__":
    harness_main(
        __file__,
        __doc__ or "",
        WORKLOADS,
        RUNNERS,
        ("manyhands.amap timeout=5",),
        timeout=120,
        prepare=import_libraries,
    )
