"""Peak RSS of a run on a new journal whose ``key=`` returns long strings (a whole row).

    python benchmarks/mem_long_keys.py                      # 4 KB keys, 60,000 and 120,000 items
    python benchmarks/mem_long_keys.py --size 4096 --items 60000 120000

Each case runs in a fresh interpreter and prints its peak RSS (``ru_maxrss``):
the same input with ``key=json.dumps`` (each key is the whole row), with the
default key (the row's canonical JSON, hashed past 200 characters), and with
no journal. A run keeps up to ``FRESH_KEYS`` recorded keys in memory, so what
it keeps per key is what grows with the input.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import manyhands


def rows(n: int, size: int) -> Iterator[dict[str, object]]:
    for i in range(n):
        yield {"id": i, "payload": "x" * size}


def case(mode: str, n: int, size: int, folder: str) -> None:
    journal = os.path.join(folder, f"{mode}-{n}.db") if mode != "none" else None
    key = json.dumps if mode == "key=" else None
    report = manyhands.run(
        lambda row: row["id"], rows(n, size), journal=journal, key=key, progress=False
    )
    assert report.succeeded == n
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # (KiB on Linux)
    print(f"{mode:8} {n:>9,} items of {size:,} B: peak RSS {peak:>5} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--items", type=int, nargs="+", default=[60_000, 120_000])
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)  # (one case, in a child)
    args = parser.parse_args()
    if args.case:
        mode, n, folder = args.case
        case(mode, int(n), args.size, folder)
        return
    with tempfile.TemporaryDirectory() as folder:
        for n in args.items:
            for mode in ("key=", "default", "none"):
                command = [sys.executable, __file__, "--size", str(args.size)]
                subprocess.run([*command, "--case", mode, str(n), folder], check=True)


if __name__ == "__main__":
    main()
