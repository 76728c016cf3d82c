"""Where the io case's time goes on Dask: every call's start and end against the driver's.

    python benchmarks/dask_timeline.py --runs 3            # 20,000 x sleep(0.01), a range
    python benchmarks/dask_timeline.py --runs 3 --generator

The same LocalCluster as bench_dask.py (2 worker processes x 50 threads). Each
call returns its worker's pid and thread and its start and end (time.time(),
one clock on one host); the driver's side is timed by wrapping the Dask
backend's private methods (sending a batch, a finished task's callback, filing
its answer), so this reads the backend's internals: a tool, not an API.

What it prints, per run, in thread-seconds lost against the ideal (100
threads x 2 s): the ramp (each thread's first call after the run's start), the
tail (each thread's last call before the run's end), the calls' time beyond
10 ms, and the gaps between a thread's calls (between its batches).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from queue import SimpleQueue
from typing import Any

import distributed

import manyhands
from manyhands._backends import _dask

sys.path.insert(0, os.path.dirname(__file__))

from bench_dask import local_cluster

COUNT = 20_000

sent: dict[str, tuple[float, list[int]]] = {}  # task key: (when, its items)
called_back: dict[str, float] = {}  # task key: when Dask said it finished
filed: dict[str, float] = {}  # task key: when the collector began filing its answer


def stamp(x: int) -> tuple[int, int, int, float, float]:
    started = time.time()
    time.sleep(0.01)
    return x, os.getpid(), threading.get_ident(), started, time.time()


def watch() -> None:
    """Time the backend's side: sends, callbacks, filing (wrapping its private methods)."""
    backend = _dask.DaskBackend
    send, finished, start = backend._send, backend._finished, backend.start

    def timed_send(self: Any, part: Any) -> None:
        send(self, part)
        sent[part.key] = (time.time(), [part.batch.items[i] for i in part.indices])

    def timed_finished(self: Any, future: Any, answer: Any) -> None:
        filed[future.key] = time.time()
        finished(self, future, answer)

    class Stamped(SimpleQueue):  # type: ignore[type-arg]
        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            if item is not None:
                called_back[item.key] = time.time()
            super().put(item, block, timeout)

    def stamped_start(self: Any) -> None:
        self._done = Stamped()
        start(self)

    backend._send, backend._finished, backend.start = timed_send, timed_finished, stamped_start  # type: ignore[method-assign]


def quantiles(values: list[float]) -> str:
    values = sorted(values)
    at = [values[int(q * (len(values) - 1))] * 1000 for q in (0.1, 0.5, 0.9, 1.0)]
    return "p10 {:.1f} p50 {:.1f} p90 {:.1f} max {:.1f} ms".format(*at)


def numbers(count: int) -> Iterator[int]:
    yield from range(count)


def one_run(client: Any, generator: bool) -> None:
    sent.clear()
    called_back.clear()
    filed.clear()
    items = numbers(COUNT) if generator else range(COUNT)
    began = time.time()
    calls = [out.value for out in manyhands.map(stamp, items, backend=client)]
    wall = time.time() - began
    threads: dict[tuple[int, int], list[tuple[int, int, int, float, float]]] = {}
    for call in calls:
        threads.setdefault((call[1], call[2]), []).append(call)
    for mine in threads.values():
        mine.sort(key=lambda call: call[3])
    firsts = [mine[0][3] - began for mine in threads.values()]
    lasts = [mine[-1][4] - began for mine in threads.values()]
    gaps = [b[3] - a[4] for mine in threads.values() for a, b in pairwise(mine)]
    overrun = sum(call[4] - call[3] - 0.01 for call in calls)
    by_item = {call[0]: call for call in calls}
    to_start, to_callback, to_filed = [], [], []
    for key, (when, items_of) in sent.items():
        mine = [by_item[item] for item in items_of]
        ended = max(call[4] for call in mine)
        to_start.append(min(call[3] for call in mine) - when)
        if key in called_back and key in filed:
            to_callback.append(called_back[key] - ended)
            to_filed.append(filed[key] - called_back[key])
    per_process: dict[int, int] = {}
    for call in calls:
        per_process[call[1]] = per_process.get(call[1], 0) + 1
    ideal = COUNT * 0.01 / len(threads)
    sizes = sorted({len(items_of) for _, items_of in sent.values()})
    print(
        f"wall {wall:.3f} s, efficiency {ideal / wall:.3f}, load {os.getloadavg()[0]:.1f}; "
        f"{len(sent)} tasks of {sizes[0]}-{sizes[-1]} items on {len(threads)} threads; "
        f"items per worker process {sorted(per_process.values())}"
    )
    print(
        f"  call: mean {statistics.mean(c[4] - c[3] for c in calls) * 1000:.2f} ms; "
        f"a thread's first call at {quantiles(firsts)}; its last end at {quantiles(lasts)}"
    )
    for pid in sorted(per_process):
        mine = [calls for (process, _), calls in threads.items() if process == pid]
        print(
            f"  worker process {pid}: a thread's first call at "
            f"{statistics.median(c[0][3] - began for c in mine) * 1000:.1f} ms, its last end "
            f"at {statistics.median(c[-1][4] - began for c in mine) * 1000:.1f} ms (medians)"
        )
    print(f"  a task, sent -> its first call starts: {quantiles(to_start)}")
    print(f"  its last call ends -> Dask's callback in the driver: {quantiles(to_callback)}")
    print(f"  Dask's callback -> the answer fetched, filing begins: {quantiles(to_filed)}")
    print(
        f"  thread-seconds lost (of {len(threads) * wall:.0f}, ideal {COUNT * 0.01:.0f}): "
        f"ramp {sum(firsts):.1f}, tail {sum(wall - last for last in lasts):.1f}, "
        f"calls beyond 10 ms {overrun:.1f}, gaps between calls {sum(gaps):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--generator", action="store_true", help="items of unknown length")
    args = parser.parse_args()
    watch()
    cluster = local_cluster()  # (the same as bench_dask.py's)
    client = distributed.Client(cluster)
    try:
        manyhands.run(abs, range(1000), backend=client)  # warm-up: imports on the workers
        for _ in range(args.runs):
            one_run(client, args.generator)
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
