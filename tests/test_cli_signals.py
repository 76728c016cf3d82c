"""The command under the signals and closed pipes of real machines: SIGTERM, SIGHUP, ``| head``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .conftest import finish, python_subprocess_env, wait_for_lines
from .test_cli import TARGET, manyhands

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and pipes")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "numbers.txt").write_text("".join(f"{n}\n" for n in range(100_000)))
    return tmp_path


def start(workdir: Path, *args: str) -> subprocess.Popen[str]:
    env = python_subprocess_env() | {"CALLS_FILE": str(workdir / "calls.txt"), "SLEEP": "0.01"}
    return subprocess.Popen(
        [sys.executable, "-m", "manyhands", "run", "target.py:double_slowly", "numbers.txt",
         "-j", "4", *args],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_drains_writes_the_output_and_exits_128_plus_signal(
    workdir: Path, stop: signal.Signals
) -> None:
    proc = start(workdir, "--output", "out.jsonl")
    wait_for_lines(workdir / "calls.txt", 40)
    proc.send_signal(stop)
    out, err = finish(proc, 60)
    assert proc.returncode == 128 + stop, err
    assert f"terminated ({stop.name})" in err and "Traceback" not in err
    assert "succeeded" in out  # the summary of what ran
    lines = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    called = (workdir / "calls.txt").read_text().split()
    assert 0 < len(lines) <= len(called) < 100_000
    assert all(line["value"] == int(line["item"]) * 2 for line in lines)  # flushed whole


def test_sigterm_closes_the_journals_run_as_terminated_and_the_rerun_resumes(
    workdir: Path,
) -> None:
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(300)))
    proc = start(workdir, "--journal", "run.db")
    wait_for_lines(workdir / "calls.txt", 40)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc, 60)
    assert proc.returncode == 143, err
    assert "run the same command again to resume" in err
    status = manyhands("status", "run.db", cwd=workdir)
    assert ": terminated," in status.stdout and ": running," not in status.stdout

    env = python_subprocess_env() | {"CALLS_FILE": str(workdir / "calls.txt"), "SLEEP": "0"}
    done = manyhands("run", "target.py:double_slowly", "numbers.txt", "--journal", "run.db",
                     cwd=workdir, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    status = manyhands("status", "run.db", cwd=workdir)
    assert "300 items with a final record" in status.stdout


def test_a_signal_ignored_at_start_stays_ignored(workdir: Path) -> None:
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(200)))
    env = python_subprocess_env() | {"CALLS_FILE": str(workdir / "calls.txt"), "SLEEP": "0.01"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "manyhands", "run", "target.py:double_slowly", "numbers.txt",
         "-j", "4", "--output", "out.jsonl"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # as nohup does
    )  # fmt: skip
    wait_for_lines(workdir / "calls.txt", 20)
    proc.send_signal(signal.SIGHUP)
    _, err = finish(proc, 120)
    assert proc.returncode == 0, err  # it went on to the end
    assert len((workdir / "out.jsonl").read_text().splitlines()) == 200


def read_one_line_then_close(args: list[str], cwd: Path) -> tuple[str, str, int]:
    """What ``COMMAND | head -1`` does to COMMAND: its stdout closes after one line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "manyhands", *args], cwd=cwd, env=python_subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline().decode()
    proc.stdout.close()
    try:
        err = proc.stderr.read().decode()
        proc.wait(60)
    finally:
        proc.kill()
        proc.stderr.close()
    return first, err, proc.returncode


def test_run_into_a_closed_pipe_stops_quietly_like_cat(workdir: Path) -> None:
    first, err, code = read_one_line_then_close(
        ["run", "target.py:work", "numbers.txt", "--ordered", "--output", "-"], workdir
    )
    assert json.loads(first) == {"item": "0", "ok": True, "value": 0}
    assert code == 141  # 128 + SIGPIPE, as the shell reports `cat` after `| head -1`
    assert err == ""  # no traceback, no "Exception ignored" at exit


def test_failures_into_a_closed_pipe_stops_quietly(workdir: Path) -> None:
    (workdir / "numbers.txt").write_text("".join(f"{n}\n" for n in range(5000)))
    manyhands("run", "target.py:always_fails", "numbers.txt", "--journal", "j.db", cwd=workdir)
    first, err, code = read_one_line_then_close(["failures", "j.db"], workdir)
    assert "builtins.ValueError: no good" in first
    assert code == 141
    assert err == ""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_commands_end_when_manyhands_itself_is_killed(tmp_path: Path) -> None:
    """A SIGKILL (the OOM killer, a CI timeout) leaves no command running on, orphaned."""
    (tmp_path / "items.txt").write_text("a\nb\nc\n")
    (tmp_path / "pids").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "manyhands", "run", "--shell", "--sh",
         "sleep 60 & echo $! > pids/{}.child; echo $$ > pids/{}; wait", "items.txt", "-j", "3"],
        cwd=tmp_path, env=python_subprocess_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(list((tmp_path / "pids").iterdir())) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # (the last pid written whole)
        pids = [int(path.read_text()) for path in (tmp_path / "pids").iterdir()]
        assert len(pids) == 6 and all(map(_alive, pids))  # commands and their children
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:  # (the old code: clean up after it)
        os.killpg(pid, signal.SIGKILL)
    assert not left  # before, they ran on for their whole minute


def test_a_second_signal_as_the_stopped_command_exits_leaves_its_exit_status(
    workdir: Path,
) -> None:
    # Once the run stopped, the command writes its summary, closes its output and
    # journal and exits: a signal then (a second Ctrl-C, a supervisor's SIGTERM)
    # must not end it by the signal, with the journal's and the shell's 130 lost.
    for second in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        proc = start(workdir, "--journal", "run.db", "--output", "out.jsonl")
        wait_for_lines(workdir / "calls.txt", 40)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        while "interrupted." not in proc.stderr.readline():  # (it is exiting now)
            pass
        proc.send_signal(second)
        finish(proc, 60)
        assert proc.returncode == 130
        for left in [*workdir.glob("run.db*"), workdir / "out.jsonl", workdir / "calls.txt"]:
            left.unlink()
