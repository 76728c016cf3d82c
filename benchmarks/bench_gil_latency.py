"""Calls that wait, then hold the GIL: does the latency limit cost them throughput?

    python benchmarks/bench_gil_latency.py                  # 400 items, 5 rounds
    python benchmarks/bench_gil_latency.py --items 200 --rounds 3 --cpu-ms 2

Each item sleeps 10 ms (a call to a server that never limits anyone), then
computes ``--cpu-ms`` in pure Python (parsing the answer), on 32 threads (the
default). The calls take turns on the GIL, so the more are out, the later
each finishes: the latency limit, left to itself, reads that as a server's
queue and cuts the calls in flight. Rows, each in a fresh process, rounds
interleaved, the median wall reported:

- ``manyhands``: as shipped (the run sees its calls hold the GIL, and the limit
  that latency set goes);
- ``manyhands, limit kept``: the same with that release turned off (the engine
  as it was before), its settled ``workers=`` shown;
- ``manyhands, latency never cuts``: the latency limit never cuts at all;
- ``ThreadPoolExecutor``: ``concurrent.futures`` with 32 threads, ``map``.

Ratios are to the ThreadPoolExecutor's wall.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

ROWS = [
    "manyhands",
    "manyhands, limit kept",
    "manyhands, latency never cuts",
    "ThreadPoolExecutor",
]


def _spin(n: int) -> int:
    return sum(i * i for i in range(n)) % 1_000_003


def _calibrate(cpu_ms: float) -> int:
    n = 10_000
    while True:
        began = time.process_time()
        _spin(n)
        took = time.process_time() - began
        if took > 0.02:
            return max(1, int(n * cpu_ms / 1e3 / took))
        n *= 2


def case(row: str, items: int, cpu_ms: float) -> dict[str, object]:
    """One row in this process: its wall, and what the Report advised."""
    n = _calibrate(cpu_ms)

    def call(item: int) -> int:
        time.sleep(0.01)
        return _spin(n + item % 7)

    if row == "ThreadPoolExecutor":
        from concurrent.futures import ThreadPoolExecutor

        began = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(call, range(items)))
        return {"wall": time.perf_counter() - began, "settled": None}

    import manyhands
    from manyhands import _autopilot, _latency_limit

    if row == "manyhands, limit kept":
        _autopilot.Autopilot._watch_cpu = lambda self, measure, now: None  # type: ignore[method-assign]
    elif row == "manyhands, latency never cuts":
        _latency_limit.SUSTAINED = 10**9
    began = time.perf_counter()
    report = manyhands.run(call, range(items), progress=False)
    wall = time.perf_counter() - began
    assert report.succeeded == items, report
    return {"wall": wall, "settled": report.settled_workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu-ms", type=float, default=2.0)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case, args.items, args.cpu_ms)))
        return
    walls: dict[str, list[float]] = {row: [] for row in ROWS}
    settled: dict[str, list[object]] = {row: [] for row in ROWS}
    for _ in range(args.rounds):
        for row in ROWS:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    row,
                    "--items",
                    str(args.items),
                    "--cpu-ms",
                    str(args.cpu_ms),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            walls[row].append(result["wall"])
            settled[row].append(result["settled"])
    base = statistics.median(walls["ThreadPoolExecutor"])
    print(f"{args.items} items x (10 ms sleep + {args.cpu_ms:g} ms CPU), 32 threads, "
          f"median of {args.rounds}")  # fmt: skip
    print("| runner | wall s (median) | vs ThreadPoolExecutor | settled workers= (each round) |")
    print("| --- | --- | --- | --- |")
    for row in ROWS:
        wall = statistics.median(walls[row])
        shown = ", ".join(str(value) for value in settled[row])
        print(f"| {row} | {wall:.3f} | {wall / base:.2f}x | {shown} |")


if __name__ == "__main__":
    main()
