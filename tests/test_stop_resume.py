"""A stop rule, then a resume with the same journal: every item that did not finish runs.

Items 0-4 fail with a ConnectionError that is retried after 30 s; item 5 fails
for good, and the stop rule ends the run there, with items 0-4 still waiting
for their retries (nothing waits the 30 s out: the run ends at the stop). The
resume must run them, as it runs them after Ctrl-C, and must not run an item
that succeeded, nor item 5, which failed for good.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import manyhands

from .test_cli import manyhands as command

ITEMS = 40
WAITING = set(range(5))  # failed once, waiting for a retry when the run stopped
FOR_GOOD = 5
SLOW_RETRY = manyhands.Retry(retries=5, on=ConnectionError, backoff=30, random=lambda: 1.0)
STOP = {"workers": 1, "batch_size": 1, "retry": SLOW_RETRY, "stop_after_failures": 1}


class Calls:
    """The items called (each once per attempt), from any thread. Before the cause of
    the failures is ``fixed``, items 0-4 fail for a retry and item 5 for good; after,
    every call but item 5's succeeds. (One function for both runs: the journal warns
    when its function changed.)"""

    def __init__(self, fixed: bool = False) -> None:
        self.items: list[int] = []
        self.fixed = fixed
        self._lock = threading.Lock()

    def call(self, item: int) -> int:
        with self._lock:
            self.items.append(item)
        if item == FOR_GOOD:
            raise ValueError("fails for good: not retried")
        if item in WAITING and not self.fixed:
            raise ConnectionError(f"down {item}")
        return item

    async def acall(self, item: int) -> int:
        await asyncio.sleep(0)
        return self.call(item)


def succeeded_in(first: Calls) -> set[int]:
    """The items that succeeded in the first run (those called but 0-5)."""
    return set(first.items) - WAITING - {FOR_GOOD}


def check_stopped(report: manyhands.Report, first: Calls) -> None:
    """The first run stopped with 0-4 not run (their Failure says why) and 5 failed."""
    assert report.stopped is not None
    assert report.failed == 1 and report.errors_by_type == {"builtins.ValueError": 1}
    assert report.not_run == 5 and report.not_run_causes == {"retry stopped": 5}
    assert "5 not run (the run stopped before retrying them; with journal=" in str(report)
    stopped = {f.item: f for f in report.failures if f.item != FOR_GOOD}
    assert set(stopped) == WAITING
    for failure in stopped.values():
        assert failure.attempts == 1 and failure.exception is not None
        assert failure.exception.ran is False
        assert "ConnectionError: 'down" in failure.message
    assert sorted(first.items[:6]) == list(range(6))  # (each called once so far)
    assert report.succeeded == len(succeeded_in(first)) and report.retried == 0


def check_resumed(report: manyhands.Report, again: Calls, succeeded: set[int]) -> None:
    """The resume ran exactly the items that did not finish: none lost, none twice."""
    assert sorted(again.items) == sorted(set(range(ITEMS)) - succeeded - {FOR_GOOD})
    assert set(again.items) >= WAITING
    assert report.skipped == len(succeeded) + 1 and report.skipped_failed == 1
    assert report.succeeded == len(again.items) and report.failed == report.not_run == 0


def test_run_stopped_with_retries_waiting_resumes_them(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    first, again = Calls(), Calls(fixed=True)
    report = manyhands.run(first.call, range(ITEMS), journal=journal, **STOP)
    resumed = manyhands.run(again.call, range(ITEMS), journal=journal)
    check_resumed(resumed, again, succeeded_in(first))
    check_stopped(report, first)


def test_map_stopped_with_retries_waiting_yields_them_not_run_and_resumes_them(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "j.db"
    first, again = Calls(), Calls(fixed=True)
    with manyhands.map(first.call, range(ITEMS), journal=journal, **STOP) as outcomes:
        got = {outcome.item: outcome for outcome in outcomes}
    with manyhands.map(again.call, range(ITEMS), journal=journal) as resumed:
        for _ in resumed:
            pass
    check_resumed(resumed.report, again, succeeded_in(first))
    check_stopped(outcomes.report, first)
    assert {item for item, outcome in got.items() if outcome.ok} == succeeded_in(first)
    assert all(got[item].attempts == 1 and not got[item].ok for item in WAITING)


def test_amap_stopped_with_retries_waiting_resumes_them(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    first, again = Calls(), Calls(fixed=True)

    async def both() -> tuple[manyhands.Report, manyhands.Report]:
        stream = manyhands.amap(first.acall, range(ITEMS), journal=journal, **STOP)
        async for _ in stream:
            pass
        resumed = manyhands.amap(again.acall, range(ITEMS), journal=journal)
        async for _ in resumed:
            pass
        return stream.report, resumed.report

    report, resumed = asyncio.run(both())
    check_resumed(resumed, again, succeeded_in(first))
    check_stopped(report, first)


def test_a_pools_run_stopped_with_retries_waiting_resumes_them(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    first, again = Calls(), Calls(fixed=True)
    with manyhands.Pool(1) as pool:
        options: dict[str, Any] = {k: v for k, v in STOP.items() if k != "workers"}
        report = pool.run(first.call, range(ITEMS), journal=journal, **options)
        resumed = pool.run(again.call, range(ITEMS), journal=journal)
    check_resumed(resumed, again, succeeded_in(first))
    check_stopped(report, first)


TARGET = """
import os

def call(line):
    fd = os.open(os.environ["CALLS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, line.encode() + b"\\n")
    os.close(fd)
    if line == "5":
        raise TypeError("fails for good: a programming error is not retried")
    if int(line) < 5 and not os.environ.get("FIXED"):
        raise ConnectionError(f"down {line}")
    return line
"""


def test_the_command_stopped_with_retries_waiting_resumes_them(tmp_path: Path) -> None:
    """Items 0-4 fail and wait for a retry; item 5's TypeError stops the run. However
    soon their retries come (a random delay), each has retries left at the stop."""
    from .conftest import python_subprocess_env

    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "numbers.txt").write_text("".join(f"{n}\n" for n in range(ITEMS)))
    env = python_subprocess_env()

    def calls(name: str) -> list[int]:
        return [int(line) for line in (tmp_path / name).read_text().split()]

    flags = ["--journal", "j.db", "--output", "out.jsonl", "-j", "1", "--batch-size", "1"]
    env["CALLS_FILE"] = str(tmp_path / "first.txt")
    done = command(
        "run", "target.py:call", "numbers.txt", *flags, "--retries", "20",
        "--stop-after-failures", "1", cwd=tmp_path, env=env,
    )  # fmt: skip
    succeeded = set(calls("first.txt")) - WAITING - {FOR_GOOD}
    env["CALLS_FILE"], env["FIXED"] = str(tmp_path / "again.txt"), "1"
    again = command("run", "target.py:call", "numbers.txt", *flags, cwd=tmp_path, env=env)
    assert sorted(calls("again.txt")) == sorted(set(range(ITEMS)) - succeeded - {FOR_GOOD})
    assert done.returncode == 1, done.stderr
    assert "5 not run (the run stopped before retrying them" in done.stdout
    assert again.returncode == 1, again.stderr  # (item 5 failed for good)
    # One line per item, its final outcome: an item not run got no line in the first
    # run (the journal has no record of it either), and its line came with the resume.
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(int(record["item"]) for record in records) == list(range(ITEMS))
    assert [int(record["item"]) for record in records if not record["ok"]] == [FOR_GOOD]
    status = command("status", "j.db", cwd=tmp_path, env=env)
    assert "5 read and not run (a resume runs them)" in status.stdout, status.stdout


REFUSING = """
class Refused(Exception):
    ran = False  # (a user's attribute: the call was made, and failed)


class Odd(Exception):
    @property
    def ran(self):
        raise RuntimeError("not for you")


def work(line):
    if line == "3":
        raise Refused("no")
    if line == "4":
        raise Odd("odd")
    return line
"""


def test_a_users_error_with_an_attribute_ran_gets_its_line_with_a_journal(tmp_path: Path) -> None:
    """Only manyhands' own errors tell an item not run: a user's exception whose ``ran``
    is False (or raises) failed as any other, is recorded, and has its line."""
    from .conftest import python_subprocess_env

    (tmp_path / "target.py").write_text(REFUSING)
    (tmp_path / "in.txt").write_text("".join(f"{n}\n" for n in range(6)))
    flags = ["--journal", "j.db", "--output", "out.jsonl"]
    env = python_subprocess_env()
    done = command("run", "target.py:work", "in.txt", *flags, cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(record["item"] for record in records) == [str(n) for n in range(6)]
    assert sorted(r["item"] for r in records if not r["ok"]) == ["3", "4"]
