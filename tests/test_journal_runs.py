"""A journal's row of each run: how the run ended and why, and its options as they were given."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands._run import Run

from .conftest import Hands, python_subprocess_env

MISSING = "the worker initializer raised builtins.ModuleNotFoundError: No module named 'missingdep'"
NOT_LOADED = (
    "fn could not be loaded in a worker process: builtins.ModuleNotFoundError: No module named "
    "'missingdep'"
)


def runs(journal: Path) -> list[tuple[Any, ...]]:
    """(status, succeeded, failed, skipped, options) of each run, oldest first."""
    with contextlib.closing(sqlite3.connect(journal)) as db:
        query = "SELECT status, succeeded, failed, skipped, options FROM runs ORDER BY id"
        return [(*row[:4], json.loads(row[4])) for row in db.execute(query)]


def needs_missingdep() -> None:
    raise ModuleNotFoundError("No module named 'missingdep'")


def test_a_run_whose_worker_processes_cannot_start_is_recorded_as_failed_to_start(
    tmp_path: Path,
) -> None:
    # Its row read "interrupted, 0, 0": as if someone had pressed Ctrl-C.
    journal = tmp_path / "j.db"
    with pytest.raises(manyhands.WorkerInitError, match="missingdep"):
        manyhands.run(abs, range(5), backend="processes", initializer=needs_missingdep,
                      journal=journal)  # fmt: skip
    with (
        pytest.raises(manyhands.WorkerInitError),
        manyhands.map(
            abs, range(5), backend="processes", initializer=needs_missingdep, journal=journal
        ) as outcomes,
    ):
        list(outcomes)
    ended = f"failed to start: {MISSING}; no item was run"
    assert [row[:4] for row in runs(journal)] == [(ended, 0, 0, 0)] * 2
    assert manyhands.run(abs, range(5), backend="processes", journal=journal).succeeded == 5


def broken_input() -> Iterator[int]:
    raise OSError("the disk went away\nwhile reading")
    yield 0  # (a generator)


def test_an_input_that_breaks_before_its_first_item_is_recorded_with_its_error(
    hands: Hands, tmp_path: Path
) -> None:
    journal = tmp_path / "j.db"
    with pytest.raises(manyhands.InputError, match="no item was read"):
        hands.run(abs, broken_input(), journal=journal)
    ended = "input error: OSError: the disk went away"  # (its first line)
    assert [row[:4] for row in runs(journal)] == [(ended, 0, 0, 0)]


PARENT_ONLY = textwrap.dedent(
    """
    import multiprocessing
    if multiprocessing.parent_process() is not None:  # (in a worker process only)
        import missingdep  # noqa: F401

    def work(line):
        return line
    """
)


def test_the_command_shows_a_run_that_failed_to_start_and_why(tmp_path: Path) -> None:
    (tmp_path / "parent_only.py").write_text(PARENT_ONLY)
    (tmp_path / "items.txt").write_text("1\n2\n")
    env = python_subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])

    def manyhands_(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "manyhands", *args], cwd=tmp_path, capture_output=True,
            text=True, timeout=120, env=env,
        )  # fmt: skip

    done = manyhands_("run", "parent_only:work", "items.txt", "--backend", "processes",
                      "--journal", "j.db")  # fmt: skip
    assert done.returncode == 1 and "missingdep" in done.stderr.splitlines()[-1]
    shown = manyhands_("status", "j.db").stdout.splitlines()
    assert shown[-2].endswith("parent_only.work: failed to start, 0 succeeded, 0 failed, 0 skipped")
    # (not "the worker initializer raised": the command gave none; the row keeps the
    # message's first 200 characters)
    assert shown[-1].startswith(f"      {NOT_LOADED} (a worker process imports fn's module")
    assert shown[-1].endswith("...")


def test_the_command_records_its_key_flag_as_given(tmp_path: Path) -> None:
    # The run's options named the command's own key function:
    # "manyhands.cli._key.<locals>.key", with --key id and without --key alike.
    (tmp_path / "rows.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    command = [sys.executable, "-m", "manyhands", "run", "json:dumps", "rows.jsonl", "--jsonl"]
    for key in (["--key", "id"], ["--key", "json:dumps"], []):
        subprocess.run(
            [*command, "--journal", "j.db", *key], cwd=tmp_path, capture_output=True,
            timeout=120, env=python_subprocess_env(), check=True,
        )  # fmt: skip
    keys = [options.get("key", "(none)") for *_, options in runs(tmp_path / "j.db")]
    assert keys == ["--key id", "--key json:dumps", "(none)"]


def statuses(journal: Path) -> list[str]:
    return [row[0] for row in runs(journal)]


def ctrl_c_after(count: int) -> Iterator[int]:
    """An input whose reading gets a Ctrl-C: it lands in the run, as while it waits."""
    yield from range(count)
    raise KeyboardInterrupt


def leave_with_break(outcomes: Any) -> None:
    for _ in outcomes:
        break


def leave_with_close(outcomes: Any) -> None:
    next(outcomes)
    outcomes.close()


def leave_on_an_exception(outcomes: Any) -> None:
    with contextlib.suppress(RuntimeError):
        for _ in outcomes:
            raise RuntimeError("enough\nfor today")


def leave_a_with_block_on_an_exception(outcomes: Any) -> None:
    with contextlib.suppress(RuntimeError), outcomes:
        for _ in outcomes:
            raise RuntimeError("enough\nfor today")


def test_a_map_its_reader_left_is_recorded_as_left_early_not_interrupted(
    hands: Hands, tmp_path: Path
) -> None:
    # All of them read "interrupted", as after a Ctrl-C.
    journal = tmp_path / "j.db"
    leaves = (leave_with_break, leave_with_close, leave_on_an_exception)
    for leave in (*leaves, leave_a_with_block_on_an_exception):
        leave(hands.map(abs, range(1000), journal=journal))
    # (a bare `for` loop's exception never reaches the run: only a `with` block sees it)
    assert statuses(journal) == ["left early"] * 3 + ["left early: RuntimeError: enough"]


def test_ctrl_c_is_recorded_as_interrupted_in_the_run_or_in_a_with_block(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    with pytest.raises(KeyboardInterrupt):
        manyhands.run(abs, ctrl_c_after(50), journal=journal)
    with pytest.raises(KeyboardInterrupt), manyhands.map(abs, range(50), journal=journal) as outs:
        for _ in outs:
            raise KeyboardInterrupt
    assert statuses(journal) == ["interrupted"] * 2


def test_a_ctrl_c_between_two_batches_of_run_is_recorded_as_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run() takes each batch from the run and hands it on; a Ctrl-C that lands
    # there (between two waits) closed the run as a loop left early: "left early".
    journal = tmp_path / "j.db"
    handed = Run.delivered

    def delivered(self: Run, batch: Any) -> None:
        handed(self, batch)
        if self.statistics.succeeded >= 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "delivered", delivered)
    with pytest.raises(KeyboardInterrupt):
        manyhands.run(abs, range(1000), journal=journal, batch_size=1, workers=2)

    async def double(x: int) -> int:
        return 2 * x

    async def main() -> None:
        await manyhands.arun(double, range(1000), journal=other, batch_size=1, workers=2)

    other = tmp_path / "other.db"
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert statuses(journal) == statuses(other) == ["interrupted"]


def test_an_amap_its_reader_left_is_recorded_as_left_early(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"

    async def double(x: int) -> int:
        return 2 * x

    async def leave() -> None:
        async with manyhands.amap(double, range(1000), journal=journal) as outcomes:
            async for _ in outcomes:
                break
        outcomes = manyhands.amap(double, range(1000), journal=journal)
        await outcomes.__anext__()
        await outcomes.aclose()
        with contextlib.suppress(RuntimeError):
            async with manyhands.amap(double, range(1000), journal=journal) as outcomes:
                async for _ in outcomes:
                    raise RuntimeError("enough")

    asyncio.run(leave())
    assert statuses(journal) == ["left early"] * 2 + ["left early: RuntimeError: enough"]


def fails_3_and_5(x: int) -> int:
    if x in (3, 5):
        raise ValueError(x)
    return x


def test_a_stop_rule_is_recorded_with_its_reason_and_a_pools_break_as_left_early(
    tmp_path: Path,
) -> None:
    journal, kept = tmp_path / "j.db", tmp_path / "k.db"
    stopped = "stopped: stop_after_failures=2: 2 items had failed"
    manyhands.run(fails_3_and_5, range(10), journal=journal, stop_after_failures=2)
    with manyhands.Pool(2) as pool:
        pool.run(fails_3_and_5, range(10), journal=kept, stop_after_failures=2)
        leave_with_break(pool.map(fails_3_and_5, range(1000), journal=kept))
    assert statuses(journal) == [stopped]  # (it read "stopped": which rule, and why?)
    assert statuses(kept) == [stopped, "left early"]


def test_status_tells_each_ending_apart_and_reads_an_older_journals_interrupted(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "j.db"
    manyhands.run(fails_3_and_5, range(10), journal=journal, stop_after_failures=2)
    leave_with_break(manyhands.map(fails_3_and_5, range(1000), journal=journal))
    leave_a_with_block_on_an_exception(manyhands.map(fails_3_and_5, range(1000), journal=journal))
    with contextlib.closing(sqlite3.connect(journal)) as db, db:  # (as an older version wrote)
        db.execute("UPDATE runs SET status = 'interrupted' WHERE id = 2")
    done = subprocess.run(
        [sys.executable, "-m", "manyhands", "status", str(journal)], capture_output=True,
        text=True, timeout=120, env=python_subprocess_env(), check=True,
    )  # fmt: skip
    told = [
        line.split("fails_3_and_5: ")[1].split(",")[0] if " #" in line else line.strip()
        for line in done.stdout.splitlines()[-5:]
    ]
    assert told == ["stopped", "stop_after_failures=2: 2 items had failed", "interrupted",
                    "left early", "RuntimeError: enough"]  # fmt: skip
