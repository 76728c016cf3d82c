"""backend="processes": workers that fail to start, at the first start or as replacements.

A replacement worker can die in its initializer (``os._exit``, a segfault), hang
in it, or be killed from outside while it starts. Whatever happens, the run
ends: a worker that fails to start is replaced a bounded number of times, then
the run goes on with fewer workers, and once none is left the remaining items
fail (docs/guide/processes.md). Each scenario runs in a child process with a
timeout, so that a regression (an endless respawn loop, a hang) fails the test
instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands._backends._process_starts import START_RETRIES

from .conftest import finish, start_python

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups"),
    pytest.mark.timeout(120, method="thread"),
]

# The child's preamble: an initializer that works in the first ``ok`` workers and
# then does ``how`` (exit, segv, hang, or work again after ``flaky`` failures), a
# function that crashes its worker on the items in ``crash``, and a summary of a
# Report as one JSON line.
PREAMBLE = """
import json, os, sys, time, manyhands
from manyhands._backends import _process_spawn

COUNT = {count!r}

def setup(how, ok, flaky=0):
    with open(COUNT, "a") as file:
        file.write("x")
    with open(COUNT) as file:
        calls = len(file.read())
    if calls <= ok or (flaky and calls > ok + flaky):
        return
    if how == "exit":
        os._exit(13)
    if how == "segv":
        import ctypes
        ctypes.string_at(0)
    if how == "hang":
        time.sleep(3600)
    if how == "kill":  # (as a kill from outside would)
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "raise":
        raise RuntimeError("the license server is gone")

def crash(x, crashing=(3, 9)):
    if x in crashing:
        os._exit(1)
    return x

def summary(report):
    messages = sorted({{f.message for f in report.failures}})
    with open(COUNT) as file:
        starts = len(file.read())
    print(json.dumps({{"total": report.total, "ok": report.succeeded, "failed": report.failed,
                      "not_run": report.not_run, "messages": messages, "starts": starts,
                      "attempts": report.attempts, "retried": report.retried}}), flush=True)
"""


def run_child(tmp_path: Path, body: str, timeout: float = 60) -> list[Any]:
    """Run ``body`` after the preamble in a child process; its JSON lines, parsed.

    The child is killed after ``timeout`` seconds: a run that hangs fails here.
    """
    code = PREAMBLE.format(count=str(tmp_path / "starts")) + textwrap.dedent(body)
    proc = start_python(code)
    try:
        out, err = finish(proc, timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the run did not end in {timeout}s") from None
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def check_ended_without_workers(result: dict[str, Any], how_it_died: str) -> None:
    assert result["total"] == 40
    assert result["ok"] + result["failed"] + result["not_run"] == 40
    assert result["not_run"] > 0  # (never called: the backend had stopped)
    crashed = "the worker process running this item died (exit code 1)"
    stopped = [m for m in result["messages"] if m != crashed]
    assert stopped, result
    for message in stopped:
        assert "no worker process is left" in message
        assert how_it_died in message


@pytest.mark.parametrize(
    ("how", "how_it_died"),
    [("exit", "died while starting (exit code 13)"), ("segv", "killed by signal SIGSEGV")],
)
@pytest.mark.parametrize("front", ["run", "pool"])
def test_replacements_that_die_starting_end_the_run_after_a_bounded_number_of_starts(
    tmp_path: Path, how: str, how_it_died: str, front: str
) -> None:
    """Two items crash their workers; every replacement dies in its initializer.
    The run ends, and only a bounded number of replacements was started (before
    the fix: thousands, and the run never ended)."""
    body = f"""
    if __name__ == "__main__":
        kwargs = dict(initializer=setup, initargs=({how!r}, 2))
        if {front!r} == "run":
            summary(manyhands.run(crash, range(40), backend="processes", workers=2, **kwargs))
        else:
            with manyhands.Pool(workers=2, backend="processes", **kwargs) as pool:
                summary(pool.run(crash, range(40)))
                summary(pool.run(crash, range(40, 80)))  # the pool is broken: fails fast
    """
    results = run_child(tmp_path, body)
    check_ended_without_workers(results[0], how_it_died)
    # Two workers, and per crash a replacement and START_RETRIES more tries of it.
    assert results[0]["starts"] == 2 + 2 * (1 + START_RETRIES)
    if front == "pool":
        later = results[1]
        assert later["not_run"] == 40 and later["failed"] == 0
        assert later["starts"] == results[0]["starts"]
        assert all("no worker process is left" in m for m in later["messages"])


def test_a_replacement_killed_while_starting_is_tried_once_more(tmp_path: Path) -> None:
    """A one-off death at start (the OOM killer, a kill from outside) costs one more
    start, not the worker: with one worker, the run still finishes every item."""
    body = """
    if __name__ == "__main__":
        report = manyhands.run(crash, range(40), backend="processes", workers=1,
                               initializer=setup, initargs=("exit", 1, 1))
        summary(report)
    """
    (result,) = run_child(tmp_path, body)
    assert result["ok"] == 38 and result["failed"] == 2  # only the crashing items
    # The first worker; after item 3, a replacement that died and one more that
    # started; after item 9, a replacement.
    assert result["starts"] == 4


def test_a_replacement_that_hangs_starting_is_killed_and_the_run_ends(tmp_path: Path) -> None:
    """Every replacement's initializer hangs: each is killed after the start limit
    (START_SECONDS, 1 s here), and with no worker left the run ends."""
    body = """
    _process_spawn.START_SECONDS = 1.0
    if __name__ == "__main__":
        start = time.monotonic()
        summary(manyhands.run(crash, range(40), backend="processes", workers=2, timeout=5,
                              initializer=setup, initargs=("hang", 2)))
        try:  # every worker hangs from the start: the run does not start
            manyhands.run(crash, range(5), backend="processes", workers=2,
                          initializer=setup, initargs=("hang", 0))
        except manyhands.WorkerInitError as exc:
            print(json.dumps({"error": str(exc)}), flush=True)
    """
    ended, refused = run_child(tmp_path, body)
    check_ended_without_workers(ended, "did not start in 1s")
    assert ended["starts"] == 2 + 2 * (1 + START_RETRIES)
    assert refused["error"].startswith("a worker process did not start in 1s")


def test_items_failed_by_a_stopped_backend_are_not_retried_nor_counted_as_calls(
    tmp_path: Path,
) -> None:
    """Once no worker is left, the items still queued fail at once: retrying them
    would only fail again, so they are not retried, and no call is counted for
    them (before the fix: "112 attempts in all, 36 items retried")."""
    started, calls = tmp_path / "started", tmp_path / "calls"

    def setup() -> None:
        if started.exists():
            raise RuntimeError("the license server is gone")
        started.write_text("")

    def crash(x: int) -> int:
        with open(calls, "a") as log:
            log.write(f"{x}\n")
        if x in (3, 9):
            os._exit(1)
        return x

    with manyhands.Pool(workers=1, backend="processes", initializer=setup) as pool:
        outs = list(pool.map(crash, range(20), retry=2, batch_size=1))
        report = pool.run(crash, range(20, 30), retry=2)  # the pool is broken
    made = Counter(int(line) for line in calls.read_text().split())
    assert sorted(o.item for o in outs) == list(range(20))
    assert {o.item: o.attempts for o in outs} == {n: made[n] for n in range(20)}
    # Item 3 crashed the only worker, whose replacement could not start: every item
    # not done by then ended at once, never called; item 3's retry, never made, ends
    # with its crash (its call was made).
    assert sorted(o.item for o in outs if o.ok) == [0, 1, 2]
    failed = {o.item: o.error for o in outs if o.error is not None}
    assert "the worker process running this item died" in failed.pop(3).message
    assert all("the process backend stopped" in e.message for e in failed.values())
    assert all(e.exception is not None and not e.exception.ran for e in failed.values())
    assert (report.failed, report.not_run, report.attempts, report.retried) == (0, 10, 0, 0)


def test_a_first_worker_killed_while_starting_is_tried_once_more(tmp_path: Path) -> None:
    """A kill from outside during the very first start costs one more start, as it
    does for a replacement (before the fix: the run failed); a worker that exits
    on its own while starting is not tried again, and every start killed ends the
    start after a bounded number of tries."""
    body = """
    if __name__ == "__main__":
        for front in ("run", "pool"):
            os.remove(COUNT) if os.path.exists(COUNT) else None
            kwargs = dict(backend="processes", workers=2, initializer=setup,
                          initargs=("kill", 0, 1))
            if front == "run":
                summary(manyhands.run(abs, range(40), **kwargs))
            else:
                kwargs.pop("backend")
                with manyhands.Pool(backend="processes", **kwargs) as pool:
                    summary(pool.run(abs, range(40)))
        for how in ("exit", "kill"):
            os.remove(COUNT)
            try:
                manyhands.run(crash, range(5), backend="processes", workers=2,
                              initializer=setup, initargs=(how, 0))
            except manyhands.WorkerInitError as exc:
                with open(COUNT) as file:
                    starts = len(file.read())
                print(json.dumps({"error": str(exc), "starts": starts}), flush=True)
    """
    by_run, by_pool, exited, killed = run_child(tmp_path, body)
    for result in (by_run, by_pool):
        assert result["ok"] == 40
        # Two, and one more in place of the one killed (unless the run, served by the
        # other worker, ended before that start: a busy machine).
        assert result["starts"] in (2, 3)
    assert "died while starting (exit code 13)" in exited["error"]
    assert "killed by signal SIGKILL" in killed["error"]
    assert killed["starts"] <= 2 * (1 + START_RETRIES)


def test_start_timeout_is_an_option_checked_where_it_is_given(tmp_path: Path) -> None:
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"start_timeout must be a number of seconds > 0"):
            manyhands.Pool(workers=1, backend="processes", start_timeout=bad)
        with pytest.raises(ValueError, match=r"start_timeout must be a number of seconds > 0"):
            manyhands.run(abs, [1], backend="processes", start_timeout=bad)
    for wrong in ("60", True):
        with pytest.raises(
            TypeError, match=r"start_timeout must be a number of seconds > 0 \(how long"
        ):
            manyhands.Pool(workers=1, backend="processes", start_timeout=wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_timeout apply to backend='processes'"):
        manyhands.Pool(workers=1, start_timeout=5)
    with pytest.raises(ValueError, match="start_timeout= applies to worker processes only"):
        manyhands.run(abs, [1], backend="threads", start_timeout=5)


def test_a_worker_not_ready_within_start_timeout_is_killed(tmp_path: Path) -> None:
    """The start limit is the caller's: 1 s here, for the Pool and for a run."""
    body = """
    if __name__ == "__main__":
        for front in ("pool", "run"):
            try:
                if front == "pool":
                    manyhands.Pool(workers=1, backend="processes", initializer=setup,
                                   initargs=("hang", 0), start_timeout=1)
                else:
                    manyhands.run(crash, range(5), backend="processes", workers=1,
                                  initializer=setup, initargs=("hang", 0), start_timeout=1)
            except manyhands.WorkerInitError as exc:
                print(json.dumps({"error": str(exc)}), flush=True)
        os.remove(COUNT)
        with manyhands.Pool(workers=1, backend="processes", initializer=setup,
                            initargs=("hang", 1), start_timeout=1.5) as pool:
            summary(pool.run(crash, range(10), timeout=5))  # (replacements hang too)
    """
    by_pool, by_run, replaced = run_child(tmp_path, body, timeout=40)
    for refused in (by_pool, by_run):
        assert refused["error"].startswith("a worker process did not start in 1s")
        assert "start_timeout=" in refused["error"]
    # 3 crashed its only worker; the items left were never called
    assert (replaced["ok"], replaced["failed"], replaced["not_run"]) == (3, 1, 6)
    assert any("did not start in 1.5s" in m for m in replaced["messages"])
