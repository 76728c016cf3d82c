"""The journal survives SIGKILL at any moment and Ctrl-C, and never loses or repeats a record."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import manyhands

from .conftest import finish, python_subprocess_env, wait_for_lines

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ITEMS = 5000

# Every call appends its item to a side file opened with O_APPEND (atomic
# appends, so lines never interleave) before doing its work.
WORKER = """
import os, sys, time, manyhands
journal, side = sys.argv[1], sys.argv[2]
def fn(x):
    fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\\n" % x)
    os.close(fd)
    time.sleep(float(sys.argv[4]))
    if x % 13 == 0:
        raise ValueError(x)
    return x
report = manyhands.run(fn, range(int(sys.argv[3])), journal=journal, workers=8)
print(report.succeeded, report.failed, report.skipped, flush=True)
"""


def final_records(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        # (a kill while the journal was being created leaves no table yet)
        found = dict(db.execute("SELECT key, state FROM items").fetchall()) if tables else {}
    db.close()
    return found


def calls_in(side: Path, start: int) -> tuple[list[str], int]:
    data = side.read_bytes() if side.exists() else b""
    return data[start:].decode().split(), len(data)


def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    journal, side = tmp_path / "run.db", tmp_path / "calls.txt"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    rng = random.Random(20261125)
    env = python_subprocess_env()
    args = [sys.executable, str(script), str(journal), str(side), str(ITEMS)]
    kills = 0
    offset = 0
    # 5,000 x 10 ms on 8 workers is ~6 s of work: 24 kills at 0.2-0.45 s (start-up
    # included) leave most of it, so every kill lands mid-run; then run to the end.
    for attempt in range(25):
        before = final_records(journal) if journal.exists() else {}
        proc = subprocess.Popen([*args, "0.01"], env=env, stdout=subprocess.DEVNULL)
        if attempt < 24:
            time.sleep(rng.uniform(0.2, 0.45))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        proc.wait(60)
        calls, offset = calls_in(side, offset)
        # No item that had a final record before this run was called again.
        again = [key for key in calls if key in before]
        assert not again, f"{len(again)} recorded items ran again, e.g. {again[:5]}"
    assert proc.returncode == 0
    assert kills >= 20, "the run finished too soon for enough kill points"
    records = final_records(journal)
    assert len(records) == ITEMS  # exactly one final record per key
    assert set(records) == {str(n) for n in range(ITEMS)}
    assert {k for k, state in records.items() if state == "failed"} == {
        str(n) for n in range(0, ITEMS, 13)
    }
    every_call = Counter(side.read_text().split())
    assert set(every_call) == set(records)  # at least once each


# A user's run: 16 workers, ~2 ms calls, no failures; the input is the items below argv[3].
FAST_WORKER = """
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
WORKERS = 16


def wait_for_growth(side: Path, offset: int, lines: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until this run called ``lines`` items (its start-up took what it took)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        data = side.read_bytes() if side.exists() else b""
        if data.count(b"\n", offset) >= lines:
            return
        time.sleep(0.01)


def test_a_kill_reruns_only_what_was_running_and_one_commit(tmp_path: Path) -> None:
    """The documented bound: running items plus those finished within one commit.

    With 16 workers and ~2 ms calls, that is at most 2 x workers per kill on average.
    """
    journal, side = tmp_path / "run.db", tmp_path / "calls.txt"
    script = tmp_path / "worker.py"
    script.write_text(FAST_WORKER)
    rng = random.Random(20261204)
    env = python_subprocess_env()
    kills, offset = 8, 0
    for _ in range(kills):
        before = final_records(journal) if journal.exists() else {}
        proc = subprocess.Popen([sys.executable, str(script), str(journal), str(side), "100000"],
                                env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        wait_for_growth(side, offset, 200, proc)  # under way, then a random moment
        time.sleep(rng.uniform(0.0, 0.2))
        assert proc.poll() is None, "the run ended before its kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        calls, offset = calls_in(side, offset)
        assert not [key for key in calls if key in before], "a recorded item ran again"
    # Resume to the last item called, so every item a kill left unrecorded runs again.
    called = Counter(side.read_text().split())
    last = max(map(int, called)) + 1
    resumed = subprocess.run([sys.executable, str(script), str(journal), str(side), str(last)],
                             env=env, timeout=60)  # fmt: skip
    assert resumed.returncode == 0
    assert len(final_records(journal)) == last
    every_call = Counter(side.read_text().split())
    reruns = sum(every_call.values()) - len(every_call)
    per_kill = reruns / kills
    print(f"re-run per kill: {per_kill:.1f} items ({WORKERS} workers, ~2 ms calls)")
    assert per_kill <= 2 * WORKERS, (per_kill, reruns)


def test_ctrl_c_flushes_the_journal_and_the_rerun_completes(tmp_path: Path) -> None:
    journal, side = tmp_path / "run.db", tmp_path / "calls.txt"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [sys.executable, str(script), str(journal), str(side), str(ITEMS), "0.002"]
    proc = subprocess.Popen(
        args, env=python_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_lines(side, 300)  # well under way, whatever the machine's load
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc, 30)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    recorded = final_records(journal)
    calls, offset = calls_in(side, 0)
    assert 0 < len(recorded) < ITEMS, (len(recorded), err[-2000:])
    # Flushed: what finished is recorded, calls that finished during the grace
    # period included. Not recorded: at most the batch the engine held when the
    # interrupt landed (a few items), and nothing that kept running.
    missing = set(calls) - set(recorded)
    assert len(missing) <= 16, (len(missing), sorted(missing, key=int)[:20])
    with sqlite3.connect(journal) as db:
        status, succeeded = db.execute("SELECT status, succeeded FROM runs").fetchone()
        done_rows = db.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()[0]
    db.close()
    assert status == "interrupted"
    # The run's counts (its Report, the journal's run row) include the calls that
    # finished during the grace period: they are recorded (before, 7 of them were not
    # counted here). The interrupt may land between counting a batch and recording it:
    # that batch (an item or two on these calls) is counted and runs again.
    assert done_rows <= succeeded <= done_rows + 2

    done = subprocess.run(args, env=python_subprocess_env(), capture_output=True, timeout=60)
    assert done.returncode == 0
    succeeded, failed, skipped = map(int, done.stdout.split())
    assert skipped == len(recorded) and succeeded + failed + skipped == ITEMS
    rerun, _ = calls_in(side, offset)
    assert not set(rerun) & set(recorded)
    assert len(final_records(journal)) == ITEMS


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    items=st.lists(st.integers(0, 40), max_size=60),
    failing=st.sets(st.integers(0, 40)),
    stops=st.lists(st.integers(0, 30), max_size=4),
    workers=st.integers(1, 6),
    ordered=st.booleans(),
)
def test_interrupted_runs_never_lose_or_duplicate_a_final_record(
    tmp_path_factory: pytest.TempPathFactory,
    items: list[int],
    failing: set[int],
    stops: list[int],
    workers: int,
    ordered: bool,
) -> None:
    journal = tmp_path_factory.mktemp("prop") / "run.db"
    calls: Counter[int] = Counter()

    def fn(x: int) -> int:
        calls[x] += 1
        if x in failing:
            raise ValueError(x)
        return x

    options = {"journal": journal, "workers": workers, "ordered": ordered}
    for stop in stops:  # interrupted runs: leave after `stop` outcomes
        with manyhands.map(fn, items, **options) as outcomes:  # type: ignore[arg-type]
            for seen, _ in enumerate(outcomes):
                if seen == stop:
                    break
    outs = list(manyhands.map(fn, items, **options))  # type: ignore[arg-type]
    delivered = [o.item for o in outs]
    assert delivered == items if ordered else sorted(delivered) == sorted(items)
    records = final_records(journal)
    assert set(records) == {str(x) for x in items}
    assert all((state == "failed") == (int(key) in failing) for key, state in records.items())
    # The last run ran exactly the keys with no record yet, once each.
    ran = [o.item for o in outs if o.skipped is None]
    assert len(ran) == len(set(ran))
    assert all(calls[x] >= 1 for x in set(items))


@pytest.mark.parametrize("cut", ["empty file", "wal header only", "tables, no rows"])
def test_a_journal_whose_creation_was_cut_short_is_taken_as_new(tmp_path: Path, cut: str) -> None:
    journal = tmp_path / "run.db"
    if cut == "empty file":
        journal.touch()
    else:
        db = sqlite3.connect(journal)
        db.execute("PRAGMA journal_mode = WAL")
        if cut == "tables, no rows":  # an older manyhands made its tables one by one
            from manyhands._journal_file import _SCHEMA

            for statement in _SCHEMA.split(";")[:2]:  # killed before the third
                db.execute(statement)
        db.close()
    assert manyhands.run(abs, range(10), journal=journal).succeeded == 10
    assert manyhands.run(abs, range(10), journal=journal).skipped == 10
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.close()
    with pytest.raises(manyhands.JournalError, match="not a manyhands journal"):
        manyhands.run(abs, range(10), journal=other)  # someone else's data: refused


@pytest.mark.parametrize("retry", [0, 2])
def test_calls_that_fail_in_the_grace_period_after_ctrl_c_are_recorded_as_failed(
    tmp_path: Path, retry: int
) -> None:
    # Four calls run when Ctrl-C lands; they end in the grace period, the odd
    # ones raising. A final failure is recorded as a success is (it does not run
    # again); one that would have been retried is not final: it runs again.
    journal = tmp_path / "run.db"
    started, release = threading.Semaphore(0), threading.Event()
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        started.release()
        release.wait(30)
        if x % 2:
            raise ValueError(f"odd {x}")
        return x

    def interrupt() -> None:
        for _ in range(4):
            started.acquire(timeout=30)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)  # (the run is stopped: these calls end in its grace period)
        release.set()

    stopper = threading.Thread(target=interrupt, daemon=True)
    stopper.start()
    with pytest.raises(KeyboardInterrupt):
        manyhands.run(fn, range(4), workers=4, journal=journal, retry=retry, grace=30)
    stopper.join()
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT key, state FROM items ORDER BY key").fetchall()
        run_row = db.execute("SELECT status, succeeded, failed FROM runs").fetchone()
    db.close()
    if retry:
        assert rows == [("0", "done"), ("2", "done")]
        assert run_row == ("interrupted", 2, 0)
    else:
        assert rows == [("0", "done"), ("1", "failed"), ("2", "done"), ("3", "failed")]
        assert run_row == ("interrupted", 2, 2)
    report = manyhands.run(fn, range(4), journal=journal, retry=retry)
    assert sorted(set(calls[4:])) == ([1, 3] if retry else [])  # (retried again, and failed)
    assert report.skipped == (2 if retry else 4)
