"""What the journal costs: a run with and without it, a resume, and what a kill re-runs.

    python benchmarks/bench_journal.py              # everything (about two minutes)
    python benchmarks/bench_journal.py --resume 200000 --kills 5
    python benchmarks/bench_journal.py --only overhead --case io --repeat 5
    python benchmarks/bench_journal.py --only overhead --case tiny-key --repeat 5

Each case runs in a fresh interpreter. The overhead cases compare the same
run without and with ``journal=`` on a new file, with the default durability
and with ``durability="full"``, the three in turn, best of ``--repeat`` each
(the journal's modules are imported before the clock starts: that happens
once per process, and is printed apart);
"CPU per item" is the extra CPU time of the whole process (all its
threads), which a busy machine disturbs less than the wall time. The
resume case first writes a journal of N done items, then times a fresh
process rerunning the same input, which skips them all; its peak RSS is
the whole process's (``ru_maxrss``).

The kill case runs 16 workers on ~2 ms calls that each append their item to
a side file, SIGKILLs the run at a random moment once it is under way,
resumes, and so on; then it resumes to the end. The items called more than
once, divided by the kills, are what a kill re-runs. GNU parallel (if
installed) does the same with ``--joblog --resume``, its whole process
group killed (its running jobs die with it, as in a crash).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import manyhands


def double(x: int) -> int:
    return x * 2


def nap(x: int) -> int:
    time.sleep(0.001)
    return x


def double_id(row: dict[str, int]) -> int:
    return row["id"] * 2


def by_id(row: dict[str, int]) -> int:
    return row["id"]


CASES = {
    "tiny": (double, 200_000, 8, "200,000 x (x * 2), 8 workers"),
    "io": (nap, 20_000, 50, "20,000 x sleep(0.001), 50 workers"),
    # Only when asked (--case tiny-key): each item's key and fingerprint, with key=.
    "tiny-key": (double_id, 200_000, 8, "200,000 x ({'id': x}['id'] * 2), key=, 8 workers"),
}
ASKED_ONLY = ("tiny-key",)


def one(case: str, journal: str | None, durability: str = "normal") -> dict[str, float]:
    fn, count, workers, _ = CASES[case]
    options = {"workers": workers}
    items: Any = range(count)
    if case == "tiny-key":
        items = [{"id": x} for x in items]  # (made before the clock starts)
        if journal:
            options["key"] = by_id  # type: ignore[assignment]
    imported = 0.0
    if journal:
        options |= {"journal": journal, "durability": durability}  # type: ignore[dict-item]
        # The journal's modules load on a process's first journaled run, once (~25 ms):
        # timed apart, not in the run's figures.
        imported = time.perf_counter()
        importlib.import_module("manyhands._journal")

        imported = time.perf_counter() - imported
    cpu = time.process_time()
    started = time.perf_counter()
    report = manyhands.run(fn, items, **options)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    assert report.succeeded + report.skipped == count, report
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "wall": wall,
        "cpu": cpu,
        "peak_rss_mib": peak,
        "skipped": report.skipped,
        "import": imported,
    }


def fresh(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- what a kill re-runs -------------------------------------------------

KILLED = """
import os, sys, time, manyhands
journal, side = sys.argv[1], sys.argv[2]
def fn(x):
    fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\\n" % x)
    os.close(fd)
    time.sleep(0.002)
    return x
manyhands.run(fn, range(int(sys.argv[3])), journal=journal, workers=16)
"""


def manyhands_run(tmp: Path, side: Path, count: int) -> subprocess.Popen[bytes]:
    script = tmp / "killed.py"
    script.write_text(KILLED)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    argv = [sys.executable, str(script), str(tmp / "run.db"), str(side), str(count)]
    return subprocess.Popen(argv, env=env, start_new_session=True)


def parallel_run(tmp: Path, side: Path, count: int) -> subprocess.Popen[bytes]:
    command = f"seq {count} | parallel -j16 --joblog {tmp / 'joblog'} --resume "
    command += f"'echo {{}} >> {side}; sleep 0.002'"
    return subprocess.Popen(["sh", "-c", command], start_new_session=True)


def lines(side: Path) -> int:
    return side.read_bytes().count(b"\n") if side.exists() else 0


def reruns_per_kill(start: Callable[[Path, Path, int], subprocess.Popen[bytes]], kills: int,
                    rng: random.Random) -> tuple[float, int]:  # fmt: skip
    """Items called again per kill (the mean), and the most one resumed run called again."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        side = tmp / "calls.txt"
        again = [0]  # items called again so far, after each run
        for _ in range(kills):
            before = lines(side)
            proc = start(tmp, side, 1_000_000)
            deadline = time.monotonic() + 60
            while lines(side) < before + 100 and time.monotonic() < deadline:
                time.sleep(0.01)  # under way, then a random moment
            time.sleep(rng.uniform(0.0, 0.2))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            calls = Counter(side.read_text().split())
            again.append(sum(calls.values()) - len(calls))
        last = max(map(int, calls))  # every item a kill left unrecorded runs again
        start(tmp, side, last + 1).wait()
        calls = Counter(side.read_text().split())
        again.append(sum(calls.values()) - len(calls))
        most = max(after - before for before, after in pairwise(again))
        return again[-1] / kills, most


def kill_case(kills: int) -> None:
    rng = random.Random(16)
    tools = {"manyhands (16 workers)": manyhands_run}
    if shutil.which("parallel"):
        tools["GNU parallel -j16 --joblog --resume"] = parallel_run
    print("\n| re-run per kill, ~2 ms calls | mean items | most in one resumed run |")
    print("| --- | ---: | ---: |")
    for name, start in tools.items():
        mean, worst = reruns_per_kill(start, kills, rng)
        print(f"| {name} | {mean:.1f} | {worst} |", flush=True)


def overhead(tmp: str, repeat: int, cases: list[str] | None = None) -> None:
    print("| workload | durability | without journal s | with journal s | ratio | cost per item "
          "| CPU per item |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    imports = []
    for case, (_, count, _, describe) in CASES.items():
        if (case not in cases) if cases else case in ASKED_ONLY:
            continue
        # In turn (without, normal, full, without, ...): a machine whose load changes
        # during the minute weighs on all three alike.
        plain: list[dict[str, float]] = []
        journaled: dict[str, list[dict[str, float]]] = {"normal": [], "full": []}
        for attempt in range(repeat):
            plain.append(fresh(case, "-"))
            for durability, runs in journaled.items():
                runs.append(
                    fresh(case, str(Path(tmp) / f"{case}{durability}{attempt}.db"), durability)
                )
        for durability, runs in journaled.items():
            wall = min(run["wall"] for run in runs) / min(run["wall"] for run in plain)
            cost = min(run["wall"] for run in runs) - min(run["wall"] for run in plain)
            cpu = min(run["cpu"] for run in runs) - min(run["cpu"] for run in plain)
            print(
                f"| {describe} | {durability} | {min(run['wall'] for run in plain):.3f} | "
                f"{min(run['wall'] for run in runs):.3f} | {wall:.2f}x | "
                f"{cost / count * 1e6:+.2f} us | {cpu / count * 1e6:+.2f} us |",
                flush=True,
            )
            imports.append(min(run["import"] for run in runs))
    if imports:
        print(f"\nimporting the journal's modules, once per process: {min(imports) * 1e3:.0f} ms")


def resume(tmp: str, count: int) -> None:
    journal = str(Path(tmp) / "resume.db")
    built = fresh("resume", journal, str(count))
    size = Path(journal).stat().st_size / 2**20
    print(f"\nresume: wrote {count:,} done items in {built['wall']:.2f} s ({size:.0f} MiB journal)")
    again = fresh("resume", journal, str(count))
    assert again["skipped"] == count
    print(
        f"resume: a fresh process skipped all {count:,} in {again['wall']:.2f} s, "
        f"peak RSS {again['peak_rss_mib']:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--resume", type=int, default=1_000_000, help="done items to skip")
    parser.add_argument("--repeat", type=int, default=3, help="runs per overhead case (best)")
    parser.add_argument("--kills", type=int, default=10, help="kills per tool (0: none)")
    parser.add_argument("--only", choices=["overhead", "resume", "kills"], help="one part")
    parser.add_argument(
        "--case", action="append", choices=list(CASES), help="overhead: this workload only"
    )
    args = parser.parse_args()
    if args.one:
        if args.one[0] == "resume":
            CASES["resume"] = (double, int(args.one[2]), 8, "")
        journal = args.one[1] if args.one[1] != "-" else None
        durability = args.one[2] if journal and args.one[0] != "resume" else "normal"
        print(json.dumps(one(args.one[0], journal, durability)))
        return

    print(f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}\n")
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "overhead"):
            overhead(tmp, args.repeat, args.case)
        if args.only in (None, "resume"):
            resume(tmp, args.resume)
    if args.kills and args.only in (None, "kills"):
        kill_case(args.kills)


if __name__ == "__main__":
    main()
