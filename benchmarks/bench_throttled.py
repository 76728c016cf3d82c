"""Limited APIs without a configured rate: does the adaptive slowdown hold on each kind?

    pip install -e ".[bench]"
    python benchmarks/bench_throttled.py                         # every model, every runner
    python benchmarks/bench_throttled.py --models bucket,overload --runners "manyhands threads"

Each model of ``manyhands._servers.MODELS`` (capacity 200 requests/s, or 20
in progress at 100 ms each) is served on 127.0.0.1 from a process of its own,
fresh for each runner. 2,000 items, no rate given:

- manyhands on threads (100 workers) and on asyncio (2,000 workers), with
  ``Retry(8, backoff=0.1)`` and ``throttle_on`` for refusals that carry no
  Retry-After;
- the usual hand-written answers beside them: a ``multiprocessing`` ThreadPool
  of 100 threads, and aiometer with ``max_at_once=2000``, each retrying up to
  8 times in the worker, sleeping out a Retry-After (or 0.1 s without one).

``--first-wave`` adds, per row, what the client saw of the run's opening (each
call timed inside the function): when the first refusal came back, how many
calls had started by then, and the refusals' latency in the first half second
against later ones.

"bound" is the capacity bound (for the changing limit it follows the
capacity over time). The controls (``CONTROLS``: no limit, a latency that
varies by itself as an API's does) have none: there manyhands must keep pace
with the hand-written rows, which never slow down; "refused" counts the
requests the server refused for its limit; "p95" is the 95th percentile of
the accepted requests' latency (unloaded: 10 ms, 100 ms for the concurrency
models, a median of 100 ms for the controls).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import statistics
import sys
import time
import urllib.error
from collections.abc import Awaitable, Callable
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import manyhands
from manyhands._demo_api import afetch, fetch, is_throttle, serve_elsewhere
from manyhands._servers import CONTROLS, MODELS, bound_of

ITEMS, THREADS, TASKS, RETRIES = 2000, 100, 2000, 8
POLICY = manyhands.Retry(RETRIES, backoff=0.1)


class Timed:
    """Wraps a fetch and keeps each accepted request's latency (and every call's times)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.calls: list[tuple[float, float, bool]] = []  # (start, end, accepted)

    def sync(self, url: str) -> str:
        began = time.perf_counter()
        try:
            body = fetch(url)
        except Exception:
            self.calls.append((began, time.perf_counter(), False))
            raise
        self.latencies.append(time.perf_counter() - began)
        self.calls.append((began, time.perf_counter(), True))
        return body

    async def aio(self, url: str) -> str:
        began = time.perf_counter()
        try:
            body = await afetch(url)
        except Exception:
            self.calls.append((began, time.perf_counter(), False))
            raise
        self.latencies.append(time.perf_counter() - began)
        self.calls.append((began, time.perf_counter(), True))
        return body

    def first_wave(self, started: float) -> str:
        """When the first refusal came back, the calls started by then, refusal latencies."""
        refused = [(begin - started, end - begin) for begin, end, ok in self.calls if not ok]
        if not refused:
            return "no refusal"
        back = min(begin + took for begin, took in refused)
        sent = sum(begin - started <= back for begin, _, _ in self.calls)
        early = [took for begin, took in refused if begin < 0.5]
        late = [took for begin, took in refused if begin >= 0.5]
        parts = [f"first refusal back at {back * 1000:.0f} ms, {sent} calls started by then"]
        if early:
            parts.append(f"refusals' latency {statistics.median(early) * 1000:.1f} ms")
        if late:
            parts.append(f"later {statistics.median(late) * 1000:.1f} ms")
        return "; ".join(parts)


def _delay(error: Exception) -> float | None:
    if isinstance(error, manyhands.RetryAfter):
        return error.retry_after
    if isinstance(error, (urllib.error.URLError, OSError)):
        return 0.1
    return None  # not worth retrying


def hand_written(call: Callable[[str], str], url: str) -> str | None:
    """Up to 1 + RETRIES tries, sleeping out each Retry-After; None if all failed."""
    for _ in range(RETRIES + 1):
        try:
            return call(url)
        except Exception as exc:
            delay = _delay(exc)
            if delay is None:
                return None
            time.sleep(delay)
    return None


async def hand_written_async(call: Callable[[str], Awaitable[str]], url: str) -> str | None:
    for _ in range(RETRIES + 1):
        try:
            return await call(url)
        except Exception as exc:
            delay = _delay(exc)
            if delay is None:
                return None
            await asyncio.sleep(delay)
    return None


def r_manyhands_threads(urls: list[str], timed: Timed) -> tuple[int, str]:
    report = manyhands.run(
        timed.sync, urls, workers=THREADS, retry=POLICY, throttle_on=is_throttle, progress=False
    )
    return report.succeeded, _settled(report)


def r_manyhands_asyncio(urls: list[str], timed: Timed) -> tuple[int, str]:
    report = manyhands.run(
        timed.aio, urls, workers=TASKS, retry=POLICY, throttle_on=is_throttle, progress=False
    )
    return report.succeeded, _settled(report)


def r_thread_pool(urls: list[str], timed: Timed) -> tuple[int, str]:
    with ThreadPool(THREADS) as pool:
        bodies = pool.imap_unordered(functools.partial(hand_written, timed.sync), urls)
        return sum(body is not None for body in bodies), ""


def r_aiometer(urls: list[str], timed: Timed) -> tuple[int, str]:
    import aiometer

    async def main() -> int:
        jobs = [functools.partial(hand_written_async, timed.aio, url) for url in urls]
        bodies = await aiometer.run_all(jobs, max_at_once=TASKS)
        return sum(body is not None for body in bodies)

    return asyncio.run(main()), ""


def _settled(report: manyhands.Report) -> str:
    parts = []
    if report.settled_rate is not None:
        parts.append(f"rate={report.settled_rate:.0f}")
    if report.settled_workers is not None:
        parts.append(f"workers={report.settled_workers}")
    return ", ".join(parts)


RUNNERS: dict[str, Callable[[list[str], Timed], tuple[int, str]]] = {
    "manyhands threads": r_manyhands_threads,
    "manyhands asyncio": r_manyhands_asyncio,
    "mp.ThreadPool (100)": r_thread_pool,
    "aiometer (2,000)": r_aiometer,
}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)] if ordered else math.nan


def bench(model: str, runner: str) -> dict[str, Any]:
    timed = Timed()
    with serve_elsewhere(model) as (base, counters):
        urls = [f"{base}/items/{n}" for n in range(ITEMS)]
        started = time.perf_counter()
        succeeded, settled = RUNNERS[runner](urls, timed)
        wall = time.perf_counter() - started
    bound = bound_of(MODELS[model](), ITEMS) if model in MODELS else math.nan
    return {
        "wall": wall,
        "bound": bound,
        "requests": counters.requests,
        "refused": counters.throttled,
        "succeeded": succeeded,
        "p95": _p95(timed.latencies),
        "settled": settled,
        "first_wave": timed.first_wave(started),
    }


def _versus(row: dict[str, Any]) -> str:
    """The wall against the capacity bound; a control has none (see its hand-written rows)."""
    return "-" if math.isnan(row["bound"]) else f"{row['wall'] / row['bound']:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="comma-separated parts of model names (default: all)")
    parser.add_argument(
        "--runners",
        help="comma-separated parts of runner names, e.g. asyncio,aiometer (default: all)",
    )
    parser.add_argument(
        "--first-wave", action="store_true", help="say what the client saw of the opening"
    )
    args = parser.parse_args()
    models = [
        name
        for name in (*MODELS, *CONTROLS)
        if not args.models or any(part in name for part in args.models.split(","))
    ]
    runners = [
        name
        for name in RUNNERS
        if not args.runners or any(part in name for part in args.runners.split(","))
    ]
    for model in models:
        print(f"\n### {model}\n")
        print(
            "| runner | wall s | vs bound | requests | refused | refused share | succeeded "
            "| p95 ms | settled on |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |", flush=True)
        for runner in runners:
            row = bench(model, runner)
            share = row["refused"] / max(row["requests"], 1)
            print(
                f"| {runner} | {row['wall']:.2f} | {_versus(row)} "
                f"| {row['requests']} | {row['refused']} | {share:.1%} | {row['succeeded']} "
                f"| {row['p95'] * 1000:.0f} | {row['settled']} |",
                flush=True,
            )
            if args.first_wave:
                print(f"|  | {row['first_wave']} |", flush=True)


if __name__ == "__main__":
    main()
