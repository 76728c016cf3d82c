"""What the journal costs: a run with and without it, and a resume over a big journal.

    python benchmarks/bench_journal.py              # everything (about a minute)
    python benchmarks/bench_journal.py --resume 200000

Each case runs in a fresh interpreter. The overhead cases compare the same
run without and with ``journal=`` (default durability) on a new file. The
resume case first writes a journal of N done items, then times a fresh
process rerunning the same input, which skips them all; its peak RSS is the
whole process's (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import manyhands


def double(x: int) -> int:
    return x * 2


def nap(x: int) -> int:
    time.sleep(0.001)
    return x


CASES = {
    "tiny": (double, 200_000, 8, "200,000 x (x * 2), 8 workers"),
    "io": (nap, 20_000, 50, "20,000 x sleep(0.001), 50 workers"),
}


def one(case: str, journal: str | None) -> dict[str, float]:
    fn, count, workers, _ = CASES[case]
    options = {"workers": workers} | ({"journal": journal} if journal else {})
    started = time.perf_counter()
    report = manyhands.run(fn, range(count), **options)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    assert report.succeeded + report.skipped == count, report
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall": wall, "peak_rss_mib": peak, "skipped": report.skipped}


def fresh(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--resume", type=int, default=1_000_000, help="done items to skip")
    parser.add_argument("--repeat", type=int, default=3, help="runs per overhead case (best)")
    args = parser.parse_args()
    if args.one:
        if args.one[0] == "resume":
            CASES["resume"] = (double, int(args.one[2]), 8, "")
        print(json.dumps(one(args.one[0], args.one[1] if args.one[1] != "-" else None)))
        return

    print(f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}\n")
    print("| workload | without journal s | with journal s | ratio | cost per item |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for case, (_, count, _, describe) in CASES.items():
            plain = min(fresh(case, "-")["wall"] for _ in range(args.repeat))
            walls = []
            for attempt in range(args.repeat):
                walls.append(fresh(case, str(Path(tmp) / f"{case}{attempt}.db"))["wall"])
            journaled = min(walls)
            print(
                f"| {describe} | {plain:.3f} | {journaled:.3f} | {journaled / plain:.2f}x | "
                f"{(journaled - plain) / count * 1e6:+.2f} us |",
                flush=True,
            )
        journal = str(Path(tmp) / "resume.db")
        built = fresh("resume", journal, str(args.resume))
        size = Path(journal).stat().st_size / 2**20
        print(
            f"\nresume: wrote {args.resume:,} done items in {built['wall']:.2f} s "
            f"({size:.0f} MiB journal)"
        )
        again = fresh("resume", journal, str(args.resume))
        assert again["skipped"] == args.resume
        print(
            f"resume: a fresh process skipped all {args.resume:,} in {again['wall']:.2f} s, "
            f"peak RSS {again['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
