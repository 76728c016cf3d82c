"""A stopped run on processes starts no further call: Ctrl-C, an exception in the loop, a stop rule.

A worker holds the next batch in its pipe before it finishes the one it runs
(that keeps a warm pool fast). When the run stops, the workers are told not to
begin those: the calls running finish (``grace=``), the batches never begun come
back as never called (not counted as calls, not journaled, so a resume runs them).

Each call leaves a marker file named after its item. The first items return at
once, so the run learns to keep its workers' pipes full; every later call takes
``SLOW`` seconds, long after the stop. So each of the 2 workers can have begun
one slow call before the stop, and none after it: a worker that finishes its
slow call during the grace period must not begin the batch waiting in its pipe.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import manyhands

from .conftest import finish, interrupt_when_ready, python_subprocess_env

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.timeout(120, method="thread"),
]

ITEMS = 24
FAST = 4  # items 0-3 return at once
SLOW = 2.0  # seconds a later call takes: the stop comes long before
WORKERS = 2


def _slow_after_the_first(folder: str, x: int) -> int:
    """Leave a marker; the first ``FAST`` items return at once, the others after ``SLOW``."""
    Path(folder, str(x)).touch()
    if x >= FAST:
        time.sleep(SLOW)
    return x


def _fails_after_the_first(folder: str, x: int) -> int:
    """As ``_slow_after_the_first``, but item ``FAST`` fails at once."""
    Path(folder, str(x)).touch()
    if x == FAST:
        raise ValueError("the first slow one fails")
    if x > FAST:
        time.sleep(SLOW)
    return x


def _fails_behind_the_slow_ones(folder: str, x: int) -> int:
    """As ``_slow_after_the_first``, but item ``FAST + 2`` fails at once: it begins once
    a slow call returned, when the run has batches sent ahead behind it."""
    Path(folder, str(x)).touch()
    if x == FAST + 2:
        raise ValueError("a failure behind the slow ones")
    if x >= FAST:
        time.sleep(SLOW)
    return x


def _marks(folder: str, x: int) -> int:
    Path(folder, str(x)).touch()
    return x


def marking(fn: Callable[[str, int], int], folder: Path) -> Callable[[int], int]:
    """``fn`` leaving its markers in ``folder``."""
    return functools.partial(fn, str(folder))


def started(folder: Path) -> set[int]:
    return {int(marker.name) for marker in folder.iterdir()}


def journaled(journal: Path) -> dict[int, str]:
    with sqlite3.connect(journal) as db:
        rows = {
            int(key.strip('"')): state  # (the command's keys are JSON: '"7"')
            for key, state in db.execute("SELECT key, state FROM items")
        }
    db.close()
    return rows


def resume_runs(folder: Path, journal: Path) -> set[int]:
    """Resume the journal (on threads, quick): the items that ran this time."""
    again = folder.parent / "again"
    again.mkdir()
    with warnings.catch_warnings():  # (another function than the journal's: on purpose)
        warnings.simplefilter("ignore", manyhands.JournalWarning)
        manyhands.run(marking(_marks, again), range(ITEMS), journal=journal)
    return started(again)


def assert_no_call_began_after_the_stop(ran: set[int], slow_from: int = FAST) -> None:
    # A worker can have begun one slow call before the stop; one more means a
    # worker began the batch waiting in its pipe after the stop. (Before the fix:
    # each began the next one once its slow call returned, in the grace period;
    # after a stop rule, every item read ran.)
    slow = sorted(x for x in ran if x >= slow_from)
    assert len(slow) <= WORKERS, f"calls began after the stop: {slow}"


CTRL_C = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path

    import manyhands
    from tests.test_processes_stops import FAST, ITEMS, WORKERS, _slow_after_the_first, marking

    if __name__ == "__main__":
        folder, journal = Path(sys.argv[1]), sys.argv[2]
        with manyhands.map(marking(_slow_after_the_first, folder), range(ITEMS),
                           backend="processes", workers=WORKERS, batch_size=1,
                           journal=journal, grace=30) as outs:
            for outcome in outs:
                if outcome.item == FAST - 1:  # the slow calls run now
                    print("ready", flush=True)
                    time.sleep(60)  # the Ctrl-C lands here
    """
)


def test_ctrl_c_lets_the_running_calls_finish_and_begins_none_sent_ahead(tmp_path: Path) -> None:
    folder, journal = tmp_path / "calls", tmp_path / "run.db"
    folder.mkdir()
    root = str(Path(__file__).resolve().parents[1])
    env = python_subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join((root, env["PYTHONPATH"]))
    err = interrupt_when_ready([sys.executable, "-c", CTRL_C, str(folder), str(journal)], env)
    assert "KeyboardInterrupt" in err
    assert_no_call_began_after_the_stop(started(folder))
    states = journaled(journal)
    assert set(states.values()) <= {"done"}  # never begun: neither done nor failed
    assert resume_runs(folder, journal) == set(range(ITEMS)) - set(states)


@pytest.mark.parametrize("where", ["run", "pool"])
def test_an_exception_in_the_loop_begins_no_batch_sent_ahead(tmp_path: Path, where: str) -> None:
    folder, journal = tmp_path / "calls", tmp_path / "run.db"
    folder.mkdir()
    fn = marking(_slow_after_the_first, folder)
    options: dict[str, Any] = {"batch_size": 1, "journal": journal, "grace": 30}
    with pytest.raises(RuntimeError, match="the consumer stops"):
        if where == "pool":
            with (
                manyhands.Pool(backend="processes", workers=WORKERS) as pool,
                pool.map(fn, range(ITEMS), **options) as outs,
            ):
                for outcome in outs:
                    if outcome.item == FAST - 1:
                        raise RuntimeError("the consumer stops")
        else:
            with manyhands.map(
                fn, range(ITEMS), backend="processes", workers=WORKERS, **options
            ) as outs:
                for outcome in outs:
                    if outcome.item == FAST - 1:
                        raise RuntimeError("the consumer stops")
    assert_no_call_began_after_the_stop(started(folder))
    states = journaled(journal)
    assert set(states) <= set(range(FAST))  # what the consumer got
    assert set(states.values()) <= {"done"}
    assert resume_runs(folder, journal) == set(range(ITEMS)) - set(states)


@pytest.mark.parametrize("where", ["run", "pool"])
def test_a_stop_rule_begins_no_further_call_and_the_report_counts_only_calls_made(
    tmp_path: Path, where: str
) -> None:
    folder, journal = tmp_path / "calls", tmp_path / "run.db"
    folder.mkdir()
    fn = marking(_fails_after_the_first, folder)
    options: dict[str, Any] = {"batch_size": 1, "journal": journal, "stop_after_failures": 1}
    if where == "pool":
        with manyhands.Pool(backend="processes", workers=WORKERS) as pool:
            report = pool.run(fn, range(ITEMS), **options)
    else:
        report = manyhands.run(fn, range(ITEMS), backend="processes", workers=WORKERS, **options)
    assert report.stopped is not None
    ran = started(folder)
    assert_no_call_began_after_the_stop(ran, slow_from=FAST + 1)
    assert FAST in ran
    # Only the calls made count as calls; the items read and never begun fail as
    # never called (not retried), and the journal leaves them for a resume.
    assert report.attempts == len(ran)
    assert report.succeeded == len(ran) - 1
    never = [f for f in report.failures if f.message.startswith("not called")]
    assert all(f.attempts == 0 and f.error_type == "manyhands.WorkerCrashed" for f in never)
    assert report.failed == 1 and report.not_run == len(never)
    assert report.total == len(ran) + len(never)
    states = journaled(journal)
    assert states == {x: "failed" if x == FAST else "done" for x in ran}
    assert resume_runs(folder, journal) == set(range(ITEMS)) - ran


def test_items_a_stop_rule_left_not_begun_are_not_run_not_failed(tmp_path: Path) -> None:
    """The Report, its text, ``raise_for_failures`` and the journal's row count the items
    never called as not run: the function failed once, not once per item left."""
    folder, journal = tmp_path / "calls", tmp_path / "run.db"
    folder.mkdir()
    report = manyhands.run(
        marking(_fails_behind_the_slow_ones, folder), range(ITEMS), backend="processes",
        workers=WORKERS, batch_size=1, journal=journal, stop_after_failures=1,
    )  # fmt: skip
    ran = started(folder)
    never = [f for f in report.failures if f.error_type == "manyhands.WorkerCrashed"]
    assert never, "no batch was sent ahead when the failure came back"
    assert all(f.message.startswith("not called") and f.attempts == 0 for f in never)
    assert {f.item for f in never}.isdisjoint(ran)
    assert report.failed == 1 and report.errors_by_type == {"builtins.ValueError": 1}
    assert report.not_run == len(never) and report.not_run_causes == {"run stopped": len(never)}
    assert report.succeeded == len(ran) - 1 and report.ran == len(ran) == report.attempts
    assert report.total == len(ran) + len(never) and not report.ok
    them = "it" if len(never) == 1 else "them"
    stopped = f"the run stopped before calling {them}; with journal=, a resume runs {them}"
    assert f": {len(never)} not run ({stopped}), {len(ran)} run (" in str(report)
    assert str(report).endswith("errors by type:\n         1  builtins.ValueError  (e.g. item 6)")
    with pytest.raises(manyhands.ItemsFailed) as raised:
        report.raise_for_failures()
    assert str(raised.value) == (
        f"1 of {report.total} items failed: builtins.ValueError x1; {len(never)} not run "
        f"(the run stopped before calling {them})"
    )
    with sqlite3.connect(journal) as db:
        row = db.execute("SELECT succeeded, failed FROM runs").fetchone()
    db.close()
    assert row == (len(ran) - 1, 1)


def _a_line(line: str) -> str:
    """The command's call: as ``_slow_after_the_first``, its markers where the test says."""
    x = int(line)
    Path(os.environ["MANYHANDS_TEST_MARKERS"], str(x)).touch()
    if x >= FAST:
        time.sleep(SLOW)
    return line


def test_the_commands_ctrl_c_begins_no_batch_sent_ahead(tmp_path: Path) -> None:
    folder, journal, lines = tmp_path / "calls", tmp_path / "run.db", tmp_path / "items.txt"
    folder.mkdir()
    lines.write_text("".join(f"{x}\n" for x in range(ITEMS)))
    env = python_subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join(
        (str(Path(__file__).resolve().parents[1]), env["PYTHONPATH"])
    )
    env["MANYHANDS_TEST_MARKERS"] = str(folder)
    command = [
        sys.executable, "-m", "manyhands", "run", "tests.test_processes_stops:_a_line",
        str(lines), "--backend", "processes", "-j", str(WORKERS), "--batch-size", "1",
        "--journal", str(journal), "--grace", "30",
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not any(x >= FAST for x in started(folder)):  # a slow call runs
            assert time.monotonic() < deadline and proc.poll() is None, "no slow call began"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        finish(proc, 60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    ran = started(folder)
    assert_no_call_began_after_the_stop(ran)
    states = journaled(journal)
    assert set(states.values()) <= {"done"}  # never begun: neither done nor failed
    assert set(states) <= ran
