"""A throttling API without a configured rate: does the adaptive slowdown find the capacity?

    python benchmarks/bench_throttled.py

The API (tests/http_api.py, on 127.0.0.1) allows 200 requests/s (bursts of 10),
answers 429 with Retry-After: 1 above that, takes 10 ms per request and fails
5% with 503. 2,000 items, 100 workers, no rate set. The bound is 2,000 / 200 =
10 s. Compared with a plain thread pool whose function sleeps out the
Retry-After and retries inside the worker, the usual hand-written answer.
"""

from __future__ import annotations

import sys
import time
import urllib.error
from multiprocessing.pool import ThreadPool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import manyhands
from tests.http_api import fetch, flaky_api

ITEMS, WORKERS, CAPACITY = 2000, 100, 200.0


def hand_written(url: str) -> str:
    for _ in range(6):
        try:
            return fetch(url)
        except manyhands.RetryAfter as exc:
            time.sleep(exc.retry_after)
        except urllib.error.HTTPError:
            time.sleep(0.1)
    return fetch(url)


def run_manyhands(base: str) -> int:
    urls = (f"{base}/items/{n}" for n in range(ITEMS))
    report = manyhands.run(fetch, urls, workers=WORKERS, retry=5)
    print(report, file=sys.stderr)
    return report.succeeded


def run_thread_pool(base: str) -> int:
    urls = [f"{base}/items/{n}" for n in range(ITEMS)]
    with ThreadPool(WORKERS) as pool:
        return sum(1 for _ in pool.imap_unordered(hand_written, urls))


def main() -> None:
    bound = ITEMS / CAPACITY
    print(f"bound {bound:.1f} s\n")
    print("| runner | wall s | vs bound | requests | 429s | 429 share | succeeded |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, runner in [
        ("manyhands (no rate)", run_manyhands),
        ("mp.ThreadPool + sleep-and-retry", run_thread_pool),
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
