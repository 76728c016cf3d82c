"""A throttling API without a configured rate: does the adaptive slowdown find the capacity?

    python benchmarks/bench_throttled.py

The API (manyhands._demo_api, on 127.0.0.1) allows 200 requests/s (bursts of 10),
answers 429 with Retry-After: 1 above that, takes 10 ms per request and fails
5% with 503. 2,000 items, 100 workers, no rate set. The bound is 2,000 / 200 =
10 s (the 5% of requests that fail with 503 use capacity too, so even a
perfect client needs about 10.5 s). Compared with:

- a plain thread pool whose function sleeps out the Retry-After and retries
  inside the worker, the usual hand-written answer;
- aiometer (``max_at_once=100``), once with no rate and once told the
  server's capacity (``max_per_second=200``), which manyhands is not told. The
  blocking fetch runs through ``asyncio.to_thread`` with 100 threads, and
  retries sleep out the Retry-After in the task.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import manyhands
from manyhands._demo_api import fetch, flaky_api

ITEMS, WORKERS, CAPACITY = 2000, 100, 200.0


def hand_written(url: str) -> str | None:
    """Six tries, sleeping out each 429's Retry-After; None if all failed."""
    for _ in range(6):
        try:
            return fetch(url)
        except manyhands.RetryAfter as exc:
            time.sleep(exc.retry_after)
        except urllib.error.HTTPError:
            time.sleep(0.1)
    return None


async def hand_written_async(url: str) -> str | None:
    for _ in range(6):
        try:
            return await asyncio.to_thread(fetch, url)
        except manyhands.RetryAfter as exc:
            await asyncio.sleep(exc.retry_after)
        except urllib.error.HTTPError:
            await asyncio.sleep(0.1)
    return None


def run_aiometer(base: str, per_second: float | None) -> int:
    import aiometer

    async def main() -> int:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(WORKERS))
        urls = [f"{base}/items/{n}" for n in range(ITEMS)]
        results = await aiometer.run_all(
            [functools.partial(hand_written_async, url) for url in urls],
            max_at_once=WORKERS,
            max_per_second=per_second,
        )
        return sum(1 for body in results if body is not None)

    return asyncio.run(main())


def run_manyhands(base: str) -> int:
    urls = (f"{base}/items/{n}" for n in range(ITEMS))
    # The same 0.1 s first backoff as the hand-written peers sleep after a 503.
    report = manyhands.run(fetch, urls, workers=WORKERS, retry=manyhands.Retry(5, backoff=0.1))
    print(report, file=sys.stderr)
    return report.succeeded


def run_thread_pool(base: str) -> int:
    urls = [f"{base}/items/{n}" for n in range(ITEMS)]
    with ThreadPool(WORKERS) as pool:
        return sum(1 for body in pool.imap_unordered(hand_written, urls) if body is not None)


def main() -> None:
    bound = ITEMS / CAPACITY
    print(f"bound {bound:.1f} s\n")
    print("| runner | wall s | vs bound | requests | 429s | 429 share | succeeded |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, runner in [
        ("manyhands (no rate)", run_manyhands),
        ("mp.ThreadPool + sleep-and-retry", run_thread_pool),
        ("aiometer, no rate", functools.partial(run_aiometer, per_second=None)),
        ("aiometer, max_per_second=200 (told)", functools.partial(run_aiometer, per_second=200)),
    ]:
        with flaky_api(capacity=CAPACITY) as (base, counters):
            started = time.perf_counter()
            ok = runner(base)
            wall = time.perf_counter() - started
        share = counters.throttled / max(counters.requests, 1)
        print(
            f"| {name} | {wall:.2f} | {wall / bound:.2f}x | {counters.requests} | "
            f"{counters.throttled} | {share:.1%} | {ok} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
