"""A slow sync input on asyncio: when the first call starts, and how long the loop stalls.

    python benchmarks/bench_async_input.py [--items 20] [--every 0.05] [--workers 1000]

The input is a sync generator that takes ``--every`` seconds per item (lines
from a slow producer); each call awaits 10 ms. For each runner, in this one
process and on a fresh ``asyncio.run``: the time from the start to the first
call, the longest stall of a task that ticks every 5 ms on the same loop (the
caller's other work), and the wall time. Ideal: the first call at one item's
time, stalls of a few ms, the wall time ~ items x every. (aiometer.amap
is left out: it takes the input's ``len()``, so a generator must be made a
list first, which waits for all of it.)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

Runner = Callable[[Callable[[int], Coroutine[Any, Any, int]], Iterator[int], int], Any]


async def r_manyhands(fn: Any, items: Iterator[int], workers: int) -> None:
    import manyhands

    async for _ in manyhands.amap(fn, items, workers=workers):
        pass


async def r_queue_workers(fn: Any, items: Iterator[int], workers: int) -> None:
    """The textbook answer: N worker tasks on a bounded asyncio.Queue, fed on the loop."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * workers)

    async def work() -> None:
        while (item := await queue.get()) is not None:
            await fn(item)

    tasks = [asyncio.create_task(work()) for _ in range(workers)]
    for item in items:
        await queue.put(item)
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)


RUNNERS: dict[str, Runner] = {
    "manyhands.amap": r_manyhands,
    "Queue workers": r_queue_workers,
}


def measure(runner: Runner, items: int, every: float, workers: int) -> tuple[float, float, float]:
    first: list[float] = []

    async def call(item: int) -> int:
        if not first:
            first.append(time.perf_counter())
        await asyncio.sleep(0.01)
        return item

    def lines() -> Iterator[int]:
        for n in range(items):
            time.sleep(every)
            yield n

    async def ticks(stall: list[float]) -> AsyncIterator[None]:  # (an async gen: cancellable)
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            stall[0] = max(stall[0], now - last)
            last = now
            yield None

    async def main() -> tuple[float, float, float]:
        stall = [0.0]

        async def tick() -> None:
            async for _ in ticks(stall):
                pass

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.01)  # (the ticker runs)
        began = time.perf_counter()
        await runner(call, lines(), workers)
        wall = time.perf_counter() - began
        ticker.cancel()
        return first[0] - began, stall[0], wall

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--every", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--runners", default=",".join(RUNNERS))
    args = parser.parse_args()
    print(f"{args.items} items, one every {args.every:g} s, {args.workers} in flight at most\n")
    print("| runner | first call s | longest loop stall s | wall s |")
    print("| --- | ---: | ---: | ---: |")
    for name in args.runners.split(","):
        first, stall, wall = measure(RUNNERS[name], args.items, args.every, args.workers)
        print(f"| {name} | {first:.3f} | {stall:.3f} | {wall:.3f} |")


if __name__ == "__main__":
    main()
