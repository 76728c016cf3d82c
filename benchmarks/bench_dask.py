"""manyhands on Dask against Dask's own front doors, on one LocalCluster, one run.

    pip install -e ".[bench,dask]"
    python benchmarks/bench_dask.py              # every case, once
    python benchmarks/bench_dask.py --case io --runs 3

The cluster: 2 worker processes x 50 threads, loopback, started once and
shared by every case (its start-up is outside the timed regions), with
``allowed-failures`` 0 as manyhands asks of a cluster.

- tiny: 100,000 x (x * 2). manyhands.run against client.map + as_completed
  (one task per item: run on 10,000 items, as 100,000 would take a minute;
  compared by throughput) and against dask.bag (map + compute).
- io: 20,000 x sleep(0.01), efficiency = ideal / wall with ideal = 20,000 x
  10 ms / 100 threads = 2 s. client.map beside it, on 5,000 items (ideal 0.5 s),
  the same items from a generator (no length known), items sorted by cost
  (the first quarter 20 ms, the rest 6.7 ms: the same 2 s ideal) and, for how
  busy the machine is, the same run on 100 threads of the driver.
- stream: a 1,000,000-item generator through manyhands.map: the driver's RSS
  growth (sampled every 10 ms) and the most tasks the scheduler held at once.
  client.map refuses an iterator: the size of the list it needs first is
  shown beside it (sys.getsizeof of the list and its ints).

Every timed run starts once the driver and the cluster are idle (settle()).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.bag
import distributed
import psutil

import manyhands

THREADS = 50


def double(x: int) -> int:
    return x * 2


def nap(x: int) -> int:
    time.sleep(0.01)
    return x


def sorted_nap(x: int) -> int:
    """The first quarter of 20,000 items 3x slower than the rest: 200 s of sleep in all."""
    time.sleep(0.02 if x < 5000 else 0.02 / 3)
    return x


class Peak:
    """The most a sampled value reached while the block ran (a thread samples it)."""

    def __init__(self, sample: Callable[[], float], every: float = 0.01) -> None:
        self._sample = sample
        self._every = every
        self.base = sample()
        self.most = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self._every):
            self.most = max(self.most, self._sample())

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.most = max(self.most, self._sample())


def settle(most: float = 5.0) -> float:
    """Wait (at most ``most`` s) until this process and the cluster's are idle; seconds waited.

    A run leaves the cluster busy for seconds after its last answer (Dask forgets its
    tasks: 10,000 of client.map's cost the next io run 0.1-0.15 of its efficiency,
    the same run 5 s later nothing), so every timed run starts on an idle cluster.
    """
    started = time.perf_counter()
    mine = psutil.Process()
    processes = [mine, *mine.children(recursive=True)]
    for process in processes:
        process.cpu_percent()
    while time.perf_counter() - started < most:
        time.sleep(0.25)
        busy = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                busy += process.cpu_percent()
        if busy < 10:  # (% of one core, all of them together)
            break
    return time.perf_counter() - started


def timed(fn: Callable[[], Any]) -> float:
    settle()
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def client_map(client: Any, fn: Callable[[int], int], count: int) -> None:
    futures = client.map(fn, range(count), pure=False)
    for _future, _value in distributed.as_completed(futures, with_results=True):
        pass


def bag(fn: Callable[[int], int], count: int) -> None:
    dask.bag.from_sequence(range(count)).map(fn).compute()


def numbers(count: int) -> Iterator[int]:
    yield from range(count)


def tiny(client: Any) -> list[str]:
    count, mapped = 100_000, 10_000
    ours = count / timed(lambda: manyhands.run(double, range(count), backend=client))
    theirs = mapped / timed(lambda: client_map(client, double, mapped))
    bagged = count / timed(lambda: bag(double, count))
    return [
        "| tiny: 100,000 x (x * 2) | items/s | ratio (manyhands / it) |",
        "| --- | ---: | ---: |",
        f"| manyhands.run(backend=client) | {ours:,.0f} | 1 |",
        f"| client.map + as_completed (10,000 items) | {theirs:,.0f} | {ours / theirs:.1f} |",
        f"| dask.bag map + compute | {bagged:,.0f} | {ours / bagged:.2f} |",
    ]


def io(client: Any) -> list[str]:
    threads = sum(client.nthreads().values())
    count, mapped = 20_000, 5_000
    ours = timed(lambda: manyhands.run(nap, range(count), backend=client))
    theirs = timed(lambda: client_map(client, nap, mapped))
    streamed = timed(lambda: manyhands.run(nap, numbers(count), backend=client))
    uneven = timed(lambda: manyhands.run(sorted_nap, range(count), backend=client))
    local = timed(lambda: manyhands.run(nap, range(count), workers=threads))
    ideal, ideal_mapped = count * 0.01 / threads, mapped * 0.01 / threads
    return [
        f"| io: sleep(0.01) on {threads} threads, load {os.getloadavg()[0]:.1f} | wall | "
        "efficiency (ideal / wall) |",
        "| --- | ---: | ---: |",
        f"| manyhands.run(backend=client), 20,000 items | {ours:.2f} s | {ideal / ours:.2f} |",
        f"| client.map + as_completed, 5,000 items | {theirs:.2f} s | "
        f"{ideal_mapped / theirs:.2f} |",
        f"| manyhands.run(backend=client), a generator of 20,000 | {streamed:.2f} s | "
        f"{ideal / streamed:.2f} |",
        f"| manyhands.run(backend=client), 20,000 sorted by cost (the first quarter 3x "
        f"slower) | {uneven:.2f} s | {ideal / uneven:.2f} |",
        f"| (reference: manyhands on {threads} threads of the driver, no Dask) | {local:.2f} s | "
        f"{ideal / local:.2f} |",
    ]


def stream(client: Any) -> list[str]:
    count = 1_000_000
    process = psutil.Process()

    def scheduler_tasks() -> float:
        return float(client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))

    settle()
    with Peak(lambda: process.memory_info().rss) as rss, Peak(scheduler_tasks, 0.1) as tasks:
        started = time.perf_counter()
        total = sum(out.value for out in manyhands.map(double, numbers(count), backend=client))
        wall = time.perf_counter() - started
    assert total == count * (count - 1)
    items = list(numbers(count))  # (its size, counted: RSS would reuse what the run freed)
    listed = sys.getsizeof(items) + sum(sys.getsizeof(item) for item in items if item > 256)
    del items
    return [
        "| stream: 1,000,000-item generator | driver RSS growth | scheduler's tasks at most |",
        "| --- | ---: | ---: |",
        f"| manyhands.map(backend=client), {wall:.1f} s | "
        f"{(rss.most - rss.base) / 2**20:.1f} MiB | {tasks.most:.0f} |",
        f"| client.map: list(items) alone, before any task | "
        f"{listed / 2**20:.1f} MiB | (1,000,000 tasks) |",
    ]


CASES = {"tiny": tiny, "io": io, "stream": stream}


def local_cluster() -> distributed.LocalCluster:
    """The benchmarks' cluster: 2 worker processes x THREADS threads, on loopback."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        return distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=THREADS,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            scheduler_kwargs={"dashboard": False},
            silence_logs=logging.ERROR,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=CASES, action="append", help="(default: all)")
    parser.add_argument("--runs", type=int, default=1, help="each case this many times")
    args = parser.parse_args()
    cluster = local_cluster()
    client = distributed.Client(cluster)  # (the default client: dask.bag runs on it)
    try:
        manyhands.run(double, range(1000), backend=client)  # warm-up: imports on the workers
        client_map(client, double, 100)
        print(f"Python, {psutil.cpu_count()} CPUs, dask {dask.__version__}, LocalCluster 2 x "
              f"{THREADS} threads, {time.strftime('%Y-%m-%d')}\n")  # fmt: skip
        for _ in range(args.runs):
            for name in args.case or CASES:
                print("\n".join(CASES[name](client)), end="\n\n", flush=True)
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
