"""``manyhands run --output``: what the file holds across kills, interrupts, resumes and reruns."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import finish, python_subprocess_env, wait_for_lines
from .test_cli import TARGET, manyhands

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ITEMS = 2000


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "numbers.txt").write_text("".join(f"{n}\n" for n in range(ITEMS)))
    return tmp_path


def lines_of(path: Path) -> list[dict[str, object]]:
    """Every line of an output file, parsed: a line cut short fails the test here."""
    return [json.loads(line) for line in path.read_bytes().decode().split("\n") if line]


def start(workdir: Path, *extra: str, sleep: str = "0.002") -> subprocess.Popen[str]:
    env = python_subprocess_env() | {"CALLS_FILE": str(workdir / "calls.txt"), "SLEEP": sleep}
    args = [sys.executable, "-m", "manyhands", "run", "target.py:double_slowly", "numbers.txt",
            "-j", "8", "--journal", "run.db", "--output", "out.jsonl", *extra]  # fmt: skip
    return subprocess.Popen(
        args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def rerun(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = python_subprocess_env() | {"CALLS_FILE": str(workdir / "calls.txt"), "SLEEP": "0"}
    return manyhands("run", "target.py:double_slowly", "numbers.txt", "-j", "8",
                     "--journal", "run.db", "--output", "out.jsonl", *extra,
                     cwd=workdir, env=env)  # fmt: skip


def values_by_item(lines: list[dict[str, object]]) -> dict[object, list[object]]:
    found: dict[object, list[object]] = {}
    for line in lines:
        found.setdefault(line["item"], []).append(line.get("value"))
    return found


@posix_only
def test_killed_mid_run_then_rerun_the_output_holds_every_item_with_its_value(
    workdir: Path,
) -> None:
    proc = start(workdir)
    wait_for_lines(workdir / "calls.txt", 600)
    proc.send_signal(signal.SIGKILL)
    finish(proc, 60)
    first = lines_of(workdir / "out.jsonl")  # whole lines only, or this fails
    assert 0 < len(first) < ITEMS

    done = rerun(workdir)
    assert done.returncode == 0, done.stderr
    found = values_by_item(lines_of(workdir / "out.jsonl"))
    assert sorted(found, key=int) == [str(n) for n in range(ITEMS)]  # every item, at least once
    assert all(values == [int(str(item)) * 2] * len(values) for item, values in found.items())
    # Only items that were running or not yet committed at the kill have two lines.
    assert sum(len(values) > 1 for values in found.values()) < len(first)


@posix_only
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_stopped_by_ctrl_c_or_sigterm_then_rerun_the_output_holds_every_item_once(
    workdir: Path, stop: signal.Signals
) -> None:
    proc = start(workdir)
    wait_for_lines(workdir / "calls.txt", 300)
    proc.send_signal(stop)
    _, err = finish(proc, 60)
    assert proc.returncode == 128 + stop, err
    assert "run the same command again to resume" in err
    assert "Traceback" not in err
    first = lines_of(workdir / "out.jsonl")
    assert 0 < len(first) < ITEMS

    done = rerun(workdir)
    assert done.returncode == 0, done.stderr
    found = values_by_item(lines_of(workdir / "out.jsonl"))
    assert found == {str(n): [n * 2] for n in range(ITEMS)}  # each exactly once, with its value


@posix_only
def test_a_second_command_on_the_same_journal_fails_and_leaves_the_output_whole(
    workdir: Path,
) -> None:
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(600)))
    proc = start(workdir, "-j", "2", sleep="0.01")
    wait_for_lines(workdir / "out.jsonl", 1)  # lines of the first command are in the file
    second = rerun(workdir)
    assert second.returncode == 2
    assert "in use by" in second.stderr
    _, err = finish(proc, 120)
    assert proc.returncode == 0, err
    data = (workdir / "out.jsonl").read_bytes()
    assert b"\0" not in data
    assert values_by_item(lines_of(workdir / "out.jsonl")) == {str(n): [n * 2] for n in range(600)}


def test_rerunning_a_finished_run_keeps_the_output_as_it_was(workdir: Path) -> None:
    assert rerun(workdir).returncode == 0
    before = (workdir / "out.jsonl").read_bytes()
    again = rerun(workdir)
    assert again.returncode == 0
    assert f"{ITEMS:,} skipped (done in the journal)" in again.stdout
    assert (workdir / "out.jsonl").read_bytes() == before  # not emptied, nothing repeated


def test_a_resume_appends_only_the_items_it_runs(workdir: Path) -> None:
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(100)))
    assert rerun(workdir).returncode == 0
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(150)))
    assert rerun(workdir).returncode == 0
    lines = lines_of(workdir / "out.jsonl")
    assert values_by_item(lines) == {str(n): [n * 2] for n in range(150)}
    assert not any("skipped" in line for line in lines)


def test_a_resume_into_a_new_output_writes_the_stored_values_of_skipped_items(
    workdir: Path,
) -> None:
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(100)))
    assert rerun(workdir).returncode == 0
    (workdir / "out.jsonl").unlink()
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(150)))
    assert rerun(workdir).returncode == 0
    lines = lines_of(workdir / "out.jsonl")
    assert values_by_item(lines) == {str(n): [n * 2] for n in range(150)}  # never "value": null
    skipped = [line for line in lines if line.get("skipped")]
    assert len(skipped) == 100
    assert all(line["skipped"] == "done in the journal" for line in skipped)


@posix_only
def test_a_resume_into_a_new_output_stopped_midway_then_rerun_holds_every_item_once(
    workdir: Path,
) -> None:
    # The even items are done before; the resume into a new file writes each item in
    # input order, the even ones from the journal, and is stopped midway.
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(0, ITEMS, 2)))
    assert rerun(workdir, "--output", "first.jsonl").returncode == 0
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(ITEMS)))
    proc = start(workdir, "-j", "2", sleep="0.01")
    wait_for_lines(workdir / "calls.txt", ITEMS // 2 + 100)
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc, 60)
    assert proc.returncode == 130, err
    assert len(lines_of(workdir / "out.jsonl")) < ITEMS * 3 // 4  # (stopped midway)

    done = rerun(workdir)  # the same command again: the rest, skipped items included
    assert done.returncode == 0, done.stderr
    found = values_by_item(lines_of(workdir / "out.jsonl"))
    assert found == {str(n): [n * 2] for n in range(ITEMS)}  # each exactly once, with its value


def test_a_file_another_runs_lines_went_elsewhere_gets_them_on_its_next_resume(
    workdir: Path,
) -> None:
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(100)))
    assert rerun(workdir).returncode == 0
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(150)))
    assert rerun(workdir, "--output", "other.jsonl").returncode == 0  # 100-149 went there
    done = rerun(workdir)  # back to out.jsonl, which lacks them
    assert done.returncode == 0, done.stderr
    assert "150 skipped" in done.stdout
    lines = lines_of(workdir / "out.jsonl")
    assert values_by_item(lines) == {str(n): [n * 2] for n in range(150)}
    assert [line["item"] for line in lines if line.get("skipped")] == [
        str(n) for n in range(100, 150)
    ]
    again = rerun(workdir)  # and then it holds them all: nothing more is written
    assert again.returncode == 0, again.stderr
    assert lines_of(workdir / "out.jsonl") == lines


@posix_only
def test_status_says_a_killed_run_ended_without_closing_rather_than_running(
    workdir: Path,
) -> None:
    proc = start(workdir)
    wait_for_lines(workdir / "calls.txt", 100)
    proc.send_signal(signal.SIGKILL)
    finish(proc, 60)
    shown = manyhands("status", "run.db", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    assert "#1" in shown.stdout and "ended without closing" in shown.stdout
    assert ": running," not in shown.stdout


@posix_only
def test_status_counts_what_a_killed_run_recorded_rather_than_nothing(workdir: Path) -> None:
    # Its row never got its counts: "0 succeeded, 0 failed" read as a run that did nothing.
    proc = start(workdir)
    wait_for_lines(workdir / "calls.txt", 300)
    proc.send_signal(signal.SIGKILL)
    finish(proc, 60)
    with contextlib.closing(sqlite3.connect(workdir / "run.db")) as db:
        (recorded,) = db.execute("SELECT count(*) FROM items WHERE run = 1").fetchone()
    assert recorded > 0
    shown = manyhands("status", "run.db", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    (line,) = [line for line in shown.stdout.splitlines() if line.strip().startswith("#1 ")]
    assert line.endswith(f"ended without closing (killed, or the journal could not be written); "
                         f"recorded {recorded:,} succeeded, 0 failed"), line  # fmt: skip
    assert "(?)" not in line  # (how long: until its last record)


@posix_only
def test_status_counts_what_a_running_run_recorded_so_far(workdir: Path) -> None:
    proc = start(workdir, sleep="0.01")
    try:
        wait_for_lines(workdir / "calls.txt", 200)
        shown = manyhands("status", "run.db", cwd=workdir)
    finally:
        proc.send_signal(signal.SIGKILL)
        finish(proc, 60)
    assert shown.returncode == 0, shown.stderr
    (line,) = [line for line in shown.stdout.splitlines() if line.strip().startswith("#1 ")]
    found = re.search(r": running; recorded ([\d,]+) succeeded, 0 failed so far$", line)
    assert found is not None, line
    assert int(found[1].replace(",", "")) > 0  # (not "0 succeeded" for a run at work)


@posix_only
def test_a_journal_removed_under_the_run_exits_74_after_saying_what_ran(workdir: Path) -> None:
    proc = start(workdir, "-j", "2", sleep="0.01")
    wait_for_lines(workdir / "out.jsonl", 20)
    (workdir / "run.db").unlink()
    out, err = finish(proc, 60)
    assert proc.returncode == 74, err  # an I/O error, not a usage error (2)
    assert "succeeded" in out  # the summary of what ran came first
    assert "manyhands: error:" in err and "run.db" in err
    assert not (workdir / "run.db").exists()  # (no empty file made in its place)


def test_without_stored_results_a_skipped_line_has_no_value_rather_than_null(
    workdir: Path,
) -> None:
    (workdir / "numbers.txt").write_text("1\n2\n")
    assert rerun(workdir, "--no-store-results").returncode == 0
    done = rerun(workdir, "--output", "-")  # (the last --output wins: stdout)
    lines = sorted((json.loads(line) for line in done.stdout.splitlines()), key=str)
    assert lines == [
        {"item": "1", "ok": True, "skipped": "done in the journal"},
        {"item": "2", "ok": True, "skipped": "done in the journal"},
    ]


def test_a_new_journal_starts_the_output_afresh(workdir: Path) -> None:
    (workdir / "out.jsonl").write_text('{"item": "old", "ok": true, "value": 0}\n')
    (workdir / "numbers.txt").write_text("1\n2\n")
    assert rerun(workdir).returncode == 0
    assert values_by_item(lines_of(workdir / "out.jsonl")) == {"1": [2], "2": [4]}


def test_a_line_cut_short_by_a_kill_is_dropped_and_its_item_runs_again(workdir: Path) -> None:
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(10)))
    assert rerun(workdir).returncode == 0
    # As a kill leaves it: the next item's line cut off after a buffer's worth.
    with open(workdir / "out.jsonl", "ab") as out:
        out.write(b'{"item": "10", "ok": tr')
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(12)))
    assert rerun(workdir).returncode == 0
    assert values_by_item(lines_of(workdir / "out.jsonl")) == {str(n): [n * 2] for n in range(12)}


def test_values_json_cannot_hold_are_written_as_text(workdir: Path) -> None:
    (workdir / "odd.py").write_text(
        "def odd(line):\n"
        "    return {'tuple key': {(1, 2): 'x'}, 'surrogate': '\\udcff', 'c1': '\\x9b2J',\n"
        "            'separator': 'a\\u2028b'}[line]\n"
    )
    stdin = "tuple key\nsurrogate\nc1\nseparator\n"
    done = manyhands("run", "odd.py:odd", "-", "--ordered", "--output", "out.jsonl",
                     cwd=workdir, stdin=stdin)  # fmt: skip
    assert done.returncode == 0, done.stderr
    raw = (workdir / "out.jsonl").read_bytes()
    assert b"\xc2\x9b" not in raw  # no raw C1 control (CSI) for a terminal to act on
    assert raw.count(b"\n") == 4  # U+2028 is escaped: a line per item, even for splitlines()
    values = [line["value"] for line in lines_of(workdir / "out.jsonl")]
    assert values == ["{(1, 2): 'x'}", "\udcff", "\x9b2J", "a\u2028b"]


def test_status_says_it_lists_only_the_last_five_runs(workdir: Path) -> None:
    (workdir / "numbers.txt").write_text("1\n")
    for _ in range(6):
        assert rerun(workdir).returncode == 0
    shown = manyhands("status", "run.db", cwd=workdir).stdout
    assert "runs: 6 (the last 5)" in shown, shown
    assert "#1 " not in shown and "#6 " in shown
