"""The warm process pool's parent: CPU and sleeps per batch, by thread (Linux).

The workload of ``bench_pool.py --cases warm`` (ten ``pool.run(cpu_bulk, range(40))`` on
2 worker processes; items of ~9 ms travel one per batch: 400 batches), on a started
pool. Each try runs in a fresh interpreter; per try and thread: CPU time per batch (the
scheduler's own account, ``/proc/self/task/*/schedstat``, in ns, not the 10 ms ticks of
``stat``) and voluntary context switches per batch (each one a sleep and a wake-up).
The parent's CPU is taken from the workers (two CPU-bound workers on two cores), so it
is the parent's share of the warm pool's speedup. Noisy on a shared machine: compare
codes in turns (ABBA), by the median and the least of several tries.

    BENCH_POOL_LOOPS=18300000 python benchmarks/bench_parent_cpu.py --tries 12
    PYTHONPATH=/other/src python benchmarks/bench_parent_cpu.py --tries 12   # the other code
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

RUNS, ITEMS = 10, 40


def _threads() -> dict[int, tuple[int, int]]:
    """Each thread of this process: (CPU ns, voluntary context switches)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/self/task/{tid}/status") as f:
                status = f.read()
        except FileNotFoundError:  # (ended meanwhile)
            continue
        switches = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        out[int(tid)] = (ns, switches)
    return out


def one_try() -> dict[str, Any]:
    from bench_pool import cpu_bulk

    import manyhands

    with manyhands.Pool(backend="processes") as pool:
        pool.run(cpu_bulk, range(4))  # (the workers have the function, the code is warm)
        names = {t.native_id: t.name for t in threading.enumerate()}
        before, started = _threads(), time.perf_counter()
        for _ in range(RUNS):
            assert pool.run(cpu_bulk, range(ITEMS)).succeeded == ITEMS
        wall, after = time.perf_counter() - started, _threads()
    batches = RUNS * ITEMS
    threads = {}
    for tid, (ns, switches) in after.items():
        ns0, switches0 = before.get(tid, (0, 0))
        name = names.get(tid, str(tid))
        threads[name] = {
            "cpu_us": (ns - ns0) / batches / 1e3,
            "sleeps": (switches - switches0) / batches,
        }
    return {"wall": wall, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--tries", type=int, default=8, help="fresh interpreters, one each")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_try()))
        return
    tries = []
    for _ in range(args.tries):
        proc = subprocess.run(
            [sys.executable, __file__, "--one"], capture_output=True, text=True, check=True
        )
        tries.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    names = sorted({name for row in tries for name in row["threads"]})
    print("| thread | CPU per batch, median (least) | voluntary switches per batch, median |")
    print("| --- | ---: | ---: |")
    for name in [*names, "all"]:
        if name == "all":
            cpu = [sum(t["cpu_us"] for t in row["threads"].values()) for row in tries]
            sleeps = [sum(t["sleeps"] for t in row["threads"].values()) for row in tries]
        else:
            rows = [row["threads"][name] for row in tries if name in row["threads"]]
            cpu, sleeps = [t["cpu_us"] for t in rows], [t["sleeps"] for t in rows]
        if max(cpu) < 1:
            continue  # (threads that did nothing during the runs)
        print(
            f"| {name} | {statistics.median(cpu):.0f} us ({min(cpu):.0f} us) "
            f"| {statistics.median(sleeps):.2f} |"
        )
    walls = [row["wall"] for row in tries]
    median, least = statistics.median(walls), min(walls)
    print(f"\nwall of the ten runs: median {median:.3f} s, least {least:.3f} s")


if __name__ == "__main__":
    main()
