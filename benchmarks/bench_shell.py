"""Commands per item: ``manyhands run --sh`` against ``xargs -P`` and GNU parallel.

    apt-get install parallel        # GNU parallel; xargs is in findutils
    python benchmarks/bench_shell.py            # 2,000 x /bin/sleep 0.01, 50 at once, 3 rounds
    python benchmarks/bench_shell.py --jobs 500 --rounds 1
    python benchmarks/bench_shell.py --stdout-mb 50 --jobs 20 --workers 4   # big stdouts

With ``--stdout-mb N`` each job writes N MB to stdout instead of sleeping
(``head -c``), so the runners pass 20 x 50 MB through: manyhands and GNU
parallel keep each job's stdout whole (in memory, then a temporary file),
``xargs`` lets the jobs write to the pipe directly, mixed.

Every runner gets the same input file (one ``0.01000001``, ``0.01000002``...
per line: distinct items, as a journal keys them) and the same command,
``/bin/sleep`` with the line as its argument, 50 at once; each is a
fresh process, timed from start to exit (manyhands' interpreter start-up
included), rounds interleaved so that a noisy neighbour hits every runner.

- wall: the median over the rounds;
- per-job overhead: (wall - ideal) / jobs, where ideal = jobs x 0.01 s / 50:
  what each job adds to the run beyond its own sleep (the start-up included);
- CPU: user + system time of the runner and its commands, per job;
- vs manyhands: the runner's wall over manyhands' (above 1.00x, manyhands is faster).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
SLEEP = 0.01


def runners(items: str, workers: int, journal: str, mb: int = 0) -> dict[str, list[str]]:
    if mb:
        script = f"head -c {mb * 1_000_000} /dev/zero; : {{}}"
        return {
            "manyhands run --sh": [sys.executable, "-m", "manyhands", "run", "--shell",
                                   "--sh", script, "-j", str(workers), "--no-progress", items],
            "xargs -P": ["xargs", "-P", str(workers), "-I{}", "-a", items, "sh", "-c", script],
            "GNU parallel": ["parallel", "--will-cite", "-j", str(workers), "-a", items, script],
        }  # fmt: skip
    manyhands = [sys.executable, "-m", "manyhands", "run", "--sh", "/bin/sleep",
                 "-j", str(workers), "--no-progress", items]  # fmt: skip
    return {
        "manyhands run --sh": manyhands,
        "manyhands run --sh --journal": [*manyhands, "--journal", journal],
        "xargs -P": ["xargs", "-P", str(workers), "-n", "1", "-a", items, "/bin/sleep"],
        "GNU parallel": ["parallel", "--will-cite", "-j", str(workers), "-a", items, "/bin/sleep"],
    }


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=600)  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({done.returncode}): {done.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stdout-mb", type=int, default=0, help="MB each job writes")
    args = parser.parse_args()
    import compileall  # as an install would: no compiling inside the timed region

    compileall.compile_dir(str(SRC / "manyhands"), quiet=1)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    ideal = 0.0 if args.stdout_mb else args.jobs * SLEEP / args.workers
    with tempfile.TemporaryDirectory() as tmp:
        items = os.path.join(tmp, "items.txt")
        Path(items).write_text("".join(f"{SLEEP:.2f}{n:06d}\n" for n in range(args.jobs)))
        journal = os.path.join(tmp, "run.db")
        commands = runners(items, args.workers, journal, args.stdout_mb)
        missing = [name for name, cmd in commands.items() if shutil.which(cmd[0]) is None]
        for name in missing:
            print(f"(skipped {name}: {commands.pop(name)[0]} is not installed)")
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                for suffix in ("", "-wal", "-shm", ".lock"):  # every journal run starts fresh
                    Path(journal + suffix).unlink(missing_ok=True)
                wall, cpu = timed(command, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
    ours = statistics.median(walls["manyhands run --sh"])
    job = f"{args.stdout_mb} MB to stdout" if args.stdout_mb else f"/bin/sleep {SLEEP}"
    print(f"{args.jobs:,} x {job}, {args.workers} at once; ideal {ideal:.2f} s; "
          f"median of {args.rounds}; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    print()
    print("| runner | wall s (min-max) | per-job overhead ms | CPU ms per job | vs manyhands |")
    print("| --- | --- | --- | --- | --- |")
    for name in commands:
        wall = statistics.median(walls[name])
        overhead = (wall - ideal) / args.jobs * 1e3
        cpu = statistics.median(cpus[name]) / args.jobs * 1e3
        spread = f"{min(walls[name]):.2f}-{max(walls[name]):.2f}"
        print(f"| {name} | {wall:.2f} ({spread}) | {overhead:.3f} | {cpu:.2f} | "
              f"{wall / ours:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
