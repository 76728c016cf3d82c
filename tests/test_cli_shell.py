"""``manyhands run --sh``: items as commands, through real subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .conftest import finish, python_subprocess_env, wait_for_lines

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX commands and signals")

# A command that records its pid and a background child's, then waits for the child:
# `sh -c SCRIPT sh ITEM`. Killing only `sh` would leave the `sleep` behind.
FAMILY = (
    "sh -c 'sleep 60 & echo $! >> pids.txt; echo $$ >> pids.txt; "
    'echo "$1" >> started.txt; wait\' sh {}'
)


def manyhands(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "manyhands", "run", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=python_subprocess_env(),
    )


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "manyhands", "run", *args],
        cwd=cwd,
        env=python_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lines_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def alive(pids_file: Path) -> list[int]:
    """The recorded pids still running (a zombie is dead: only its parent's record is left)."""
    pids = [int(pid) for pid in pids_file.read_text().split()]
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def gone(pids_file: Path, timeout: float = 5.0) -> list[int]:
    """The recorded pids still running once ``timeout`` passed (a kill takes a moment)."""
    deadline = time.monotonic() + timeout
    while (running := alive(pids_file)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def test_each_item_runs_as_a_command_with_its_stdout_stderr_and_exit_code(workdir: Path) -> None:
    script = 'echo "out $1"; echo "err $1" >&2; case $1 in *3) exit 7;; esac'
    items = "".join(f"{n}\n" for n in range(1, 9))
    done = manyhands("--sh", f"sh -c '{script}' sh {{}}", "-", "--output", "out.jsonl",
                     cwd=workdir, stdin=items)  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = {line["item"]: line for line in lines_of(workdir / "out.jsonl")}
    assert sorted(lines) == [str(n) for n in range(1, 9)]
    assert lines["1"] == {"item": "1", "ok": True, "exit_code": 0,
                          "stdout": "out 1\n", "stderr": "err 1\n"}  # fmt: skip
    failed = lines["3"]
    assert failed["ok"] is False and failed["exit_code"] == 7
    assert failed["stdout"] == "out 3\n" and failed["stderr"] == "err 3\n"
    assert failed["error"] == {
        "type": "manyhands.cli.Exit7",
        "message": "exit code 7: err 3",
        "attempts": 1,
    }
    assert "7 succeeded, 1 failed" in done.stdout


def test_without_output_the_commands_stdout_is_passed_on_whole_and_keep_order_keeps_it(
    workdir: Path,
) -> None:
    # The first items take longest: as completed, they would come last.
    script = 'sleep "$1"; echo "first of $1"; echo "second of $1"'
    items = "0.6\n0.4\n0.2\n0\n"
    done = manyhands("--sh", f"sh -c '{script}' sh {{}}", "--keep-order", "-j", "4",
                     cwd=workdir, stdin=items)  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = [f"{word} of {item}" for item in items.split() for word in ("first", "second")]
    assert done.stdout.splitlines() == expected
    assert "4 succeeded" in done.stderr  # the summary is out of the way of the output


@pytest.mark.parametrize("shell", [False, True], ids=["no shell", "--shell"])
def test_an_item_holding_shell_code_is_never_run_as_code(workdir: Path, shell: bool) -> None:
    attacks = ["; touch PWNED1", "$(touch PWNED2)", "`touch PWNED3`", "a' ; touch PWNED4 ; '"]
    flags = ["--shell"] if shell else []
    command = "echo got {} | cat" if shell else "echo got {}"
    done = manyhands("--sh", command, *flags, "--output", "out.jsonl",
                     cwd=workdir, stdin="".join(f"{a}\n" for a in attacks))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not list(workdir.glob("PWNED*"))
    stdout = {line["item"]: line["stdout"] for line in lines_of(workdir / "out.jsonl")}
    assert stdout == {attack: f"got {attack}\n" for attack in attacks}


def test_fields_of_jsonl_and_csv_items_fill_the_template(workdir: Path) -> None:
    (workdir / "rows.jsonl").write_text('{"name": "a b", "n": 1}\n{"name": "c", "n": 2}\n')
    (workdir / "rows.csv").write_text("name,n\na b,1\nc,2\n")
    for form, path in (("--jsonl", "rows.jsonl"), ("--csv", "rows.csv")):
        done = manyhands("--sh", "printf %s: {name}={n}", form, path, "--keep-order",
                         cwd=workdir)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == "a b=1:c=2:"


def test_timeout_kills_the_whole_process_group_grandchildren_included(workdir: Path) -> None:
    done = manyhands("--sh", FAMILY, "--timeout", "1", "--output", "out.jsonl",
                     cwd=workdir, stdin="x\ny\n")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert {line["error"]["type"] for line in lines_of(workdir / "out.jsonl")} == {  # type: ignore[index]
        "manyhands.cli.CommandTimedOut"
    }
    assert len((workdir / "pids.txt").read_text().split()) == 4
    assert gone(workdir / "pids.txt") == []


def test_a_command_leaves_no_background_job_behind(workdir: Path) -> None:
    script = "sleep 60 & echo $! >> pids.txt; echo $$ >> pids.txt; echo done"
    done = manyhands("--sh", f"sh -c '{script}' sh {{}}", cwd=workdir, stdin="x\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert gone(workdir / "pids.txt") == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_second_stop_signal_kills_every_command_and_its_children(
    workdir: Path, signum: int, code: int
) -> None:
    (workdir / "items.txt").write_text("a\nb\nc\nd\n")
    proc = start("--sh", FAMILY, "-j", "3", "--grace", "60", "--journal", "run.db",
                 "items.txt", cwd=workdir)  # fmt: skip
    wait_for_lines(workdir / "started.txt", 3)
    proc.send_signal(signum)
    with pytest.raises(subprocess.TimeoutExpired):  # once: the commands may finish
        proc.wait(timeout=1)
    assert len(alive(workdir / "pids.txt")) == 6  # (the signal reached none of them)
    proc.send_signal(signum)
    _, err = finish(proc, 30)
    assert proc.returncode == code, err
    assert gone(workdir / "pids.txt") == []
    assert "run the same command again to resume" in err


def test_running_commands_are_killed_when_the_grace_period_ends(workdir: Path) -> None:
    (workdir / "items.txt").write_text("a\nb\n")
    proc = start("--sh", FAMILY, "-j", "2", "--grace", "0.5", "items.txt", cwd=workdir)
    wait_for_lines(workdir / "started.txt", 2)
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc, 30)
    assert proc.returncode == 130, err
    assert gone(workdir / "pids.txt") == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_commands_killed_as_the_grace_period_ends_leave_no_thread_to_them(
    workdir: Path, signum: int, code: int
) -> None:
    (workdir / "items.txt").write_text("a\nb\nc\n")
    proc = start("--sh", FAMILY, "-j", "2", "--grace", "0.5", "--journal", "run.db",
                 "items.txt", cwd=workdir)  # fmt: skip
    wait_for_lines(workdir / "started.txt", 2)
    proc.send_signal(signum)
    out, err = finish(proc, 30)
    assert proc.returncode == code, err
    assert gone(workdir / "pids.txt") == []
    summary = out + err
    assert "abandoned" not in summary  # (no thread is left to a command: they were killed)
    assert "0 failed" in summary and "KilledBySIGKILL" not in summary  # (stopped, not failed)


def test_what_comes_back_as_the_calls_are_ended_is_kept_unless_the_ending_stopped_it() -> None:
    """A command that succeeded in the grace period may come back only once it ended
    (its output still draining): it was dropped with those the ending killed."""
    from queue import SimpleQueue
    from types import SimpleNamespace

    from manyhands import _run_end
    from manyhands._batch import Batch, Task

    task = Task(abs, lambda batch: None)
    succeeded, killed = Batch(0, ["ok"], task), Batch(1, ["killed"], task)
    succeeded.values = ["done"]
    error = RuntimeError("killed by SIGKILL")
    error.stopped_by_run = True  # type: ignore[attr-defined]  # (as the command sets it)
    killed.errors = {0: error}
    completions: SimpleQueue[Batch | None] = SimpleQueue()

    def end_calls() -> None:  # (both come back as the calls are ended)
        completions.put(succeeded)
        completions.put(killed)

    run = SimpleNamespace(
        _completions=completions, _late=[], _backend=SimpleNamespace(shutdown=lambda _: 0)
    )
    assert _run_end._end_calls(run, end_calls) == 0  # type: ignore[arg-type]
    assert run._late == [succeeded]


def test_output_is_bounded_stdout_keeps_its_start_and_stderr_its_end(workdir: Path) -> None:
    script = "seq 1 20000; seq 1 20000 >&2; exit 1"
    done = manyhands("--sh", f"sh -c '{script}' sh {{}}", "--max-output", "1000",
                     "--output", "out.jsonl", "--journal", "run.db",
                     cwd=workdir, stdin="x\n")  # fmt: skip
    assert done.returncode == 1, done.stderr
    (line,) = lines_of(workdir / "out.jsonl")
    stdout, stderr = str(line["stdout"]), str(line["stderr"])
    assert stdout.startswith("1\n2\n3\n") and "bytes of stdout dropped at the end" in stdout
    assert stderr.endswith("19999\n20000\n") and "bytes of stderr dropped at the start" in stderr
    assert len(stdout) < 1100 and len(stderr) < 1100
    assert line["error"]["message"] == "exit code 1: 19998 / 19999 / 20000"  # type: ignore[index]
    if sys.version_info >= (3, 11):  # the output's end is in the journal's traceback text
        failures = subprocess.run(
            [sys.executable, "-m", "manyhands", "failures", "run.db", "--traceback"],
            cwd=workdir, capture_output=True, text=True, env=python_subprocess_env(),
            timeout=60,
        )  # fmt: skip
        assert "--- stderr ---" in failures.stdout and "19997" in failures.stdout


def test_ctrl_c_once_lets_running_commands_finish_and_the_rerun_completes_the_rest(
    workdir: Path,
) -> None:
    script = 'echo "$1" >> started.txt; sleep 1; echo "$1" >> finished.txt; echo "out $1"'
    command = ["--sh", f"sh -c '{script}' sh {{}}", "--journal", "run.db", "items.txt"]
    (workdir / "items.txt").write_text("".join(f"{n}\n" for n in range(20)))
    proc = start(*command, "-j", "2", "--grace", "30", cwd=workdir)
    wait_for_lines(workdir / "started.txt", 3)
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc, 60)
    assert proc.returncode == 130, err
    started = (workdir / "started.txt").read_text().split()
    assert sorted((workdir / "finished.txt").read_text().split()) == sorted(started)  # no kill
    assert len(started) < 20
    # The commands that finished in the grace period were written out and recorded too.
    assert sorted(out.split("\n")[: len(started)]) == sorted(f"out {n}" for n in started)
    assert f"{len(started)} succeeded" in out + err
    rerun = manyhands(*command, "-j", "4", cwd=workdir)
    assert rerun.returncode == 0, rerun.stderr
    finished = (workdir / "finished.txt").read_text().split()
    assert sorted(finished, key=int) == [str(n) for n in range(20)]  # none ran twice


def interrupted_while_slow_runs(workdir: Path, script: str, journal: bool) -> tuple[list[str], str]:
    """Items fast, slow, never, one at a time, with ``--output`` (and a journal): Ctrl-C
    once "slow" began, with a grace period it ends in. The command, and its stdout."""
    command = ["--sh", f"sh -c '{script}' sh {{}}", "--output", "out.jsonl", "items.txt"]
    command += ["--journal", "run.db"] if journal else []
    (workdir / "items.txt").write_text("fast\nslow\nnever\n")
    proc = start(*command, "-j", "1", "--grace", "30", cwd=workdir)
    wait_for_lines(workdir / "started.txt", 2)
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc, 60)
    assert proc.returncode == 130, err
    return command, str(out)


@pytest.mark.parametrize("journal", [True, False])
def test_a_call_that_ends_in_the_grace_period_gets_its_output_line(
    workdir: Path, journal: bool
) -> None:
    script = 'echo "$1" >> started.txt; [ "$1" = slow ] && sleep 1; echo "did $1"'
    command, out = interrupted_while_slow_runs(workdir, script, journal)
    assert "2 succeeded" in out  # (the Report counts it)
    lines = lines_of(workdir / "out.jsonl")
    assert [(line["item"], line["stdout"]) for line in lines] == [
        ("fast", "did fast\n"), ("slow", "did slow\n"),
    ]  # fmt: skip
    if journal:  # the rerun runs only what never ran, and adds only its line
        rerun = manyhands(*command, cwd=workdir)
        assert rerun.returncode == 0, rerun.stderr
        assert (workdir / "started.txt").read_text().split() == ["fast", "slow", "never"]
        items = [line["item"] for line in lines_of(workdir / "out.jsonl")]
        assert items == ["fast", "slow", "never"]


def test_a_call_that_fails_in_the_grace_period_gets_its_line_and_its_record(
    workdir: Path,
) -> None:
    script = 'echo "$1" >> started.txt; [ "$1" = slow ] && sleep 1 && exit 3; echo "did $1"'
    command, out = interrupted_while_slow_runs(workdir, script, journal=True)
    assert "1 succeeded" in out and "1 failed" in out  # (the Report counts it)
    lines = lines_of(workdir / "out.jsonl")
    assert [(line["item"], line["ok"]) for line in lines] == [("fast", True), ("slow", False)]
    # The rerun runs only what never ran, and adds only its line: nothing twice.
    rerun = manyhands(*command, cwd=workdir)
    assert rerun.returncode == 1, rerun.stderr  # (the failure recorded in the journal)
    assert (workdir / "started.txt").read_text().split() == ["fast", "slow", "never"]
    items = [line["item"] for line in lines_of(workdir / "out.jsonl")]
    assert items == ["fast", "slow", "never"]


def test_resume_is_keyed_by_item_so_an_edited_input_reruns_only_new_items(workdir: Path) -> None:
    command = ["--sh", "sh -c 'echo \"$1\" >> calls.txt' sh {}", "--journal", "run.db"]
    items = workdir / "items.txt"
    items.write_text("a\nb\nc\nd\n")
    assert manyhands(*command, "items.txt", cwd=workdir).returncode == 0
    # Lines inserted before and between, one deleted: line numbers all moved.
    items.write_text("new1\na\nnew2\nc\nd\nnew3\n")
    done = manyhands(*command, "items.txt", cwd=workdir)
    assert done.returncode == 0, done.stderr
    calls = (workdir / "calls.txt").read_text().split()
    assert sorted(calls[:4]) == ["a", "b", "c", "d"]
    assert sorted(calls[4:]) == ["new1", "new2", "new3"]
    status = subprocess.run(
        [sys.executable, "-m", "manyhands", "status", "run.db"],
        cwd=workdir, capture_output=True, text=True, env=python_subprocess_env(), timeout=60,
    )  # fmt: skip
    assert "7 items with a final record" in status.stdout


def test_chosen_exit_codes_are_retried_and_others_are_not(workdir: Path) -> None:
    # Exit 75 the first time for each item, then succeed; item "bad" always exits 3.
    script = (
        '[ "$1" = bad ] && exit 3; [ -e "seen.$1" ] && echo ok && exit 0; touch "seen.$1"; exit 75'
    )
    done = manyhands("--sh", f"sh -c '{script}' sh {{}}", "--retry-on-exit", "75",
                     "--output", "out.jsonl", "--journal", "run.db",
                     cwd=workdir, stdin="a\nb\nbad\n")  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = {line["item"]: line for line in lines_of(workdir / "out.jsonl")}
    assert lines["a"]["ok"] and lines["b"]["ok"]
    assert lines["bad"]["error"]["attempts"] == 1  # type: ignore[index]
    failures = subprocess.run(
        [sys.executable, "-m", "manyhands", "failures", "run.db"],
        cwd=workdir, capture_output=True, text=True, env=python_subprocess_env(), timeout=60,
    )  # fmt: skip
    assert "'bad': manyhands.cli.Exit3: exit code 3" in failures.stdout


def test_the_throttled_exit_code_slows_the_run_down_and_is_retried(workdir: Path) -> None:
    script = '[ -e "seen.$1" ] && exit 0; touch "seen.$1"; exit 99'
    done = manyhands("--sh", f"sh -c '{script}' sh {{}}", "--throttle-exit", "99",
                     cwd=workdir, stdin="a\nb\nc\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "asked to slow down 3 times" in done.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shell", "target:fn"], "--shell needs --sh COMMAND"),
        (["--sh", "echo {name}", "-"], "add --jsonl or --csv"),
        (["--sh", "echo", "--backend", "processes", "-"], "leave out --backend"),
        (["--sh", "echo 'unclosed", "-"], "cannot be split"),
        (["--sh", "echo", "--retry-on-exit", "0,x", "-"], "exit codes from 1 to 255"),
        ([], "Missing argument 'TARGET'"),
        (["--sh", "sh -c 'echo {}'", "-"], "would run the item as shell code"),
        # (the quotes --shell adds would sit inside these: an item's quote ends them)
        (["--shell", "--sh", 'echo "got {}"', "-"], '{} is inside quotes ("...")'),
        (["--shell", "--sh", "echo '{}'", "-"], "{} is inside quotes ('...')"),
        # (arithmetic expands $(...) in a value, the added quotes notwithstanding)
        (["--shell", "--sh", "echo $(( {} + 1 ))", "-"], "{} is inside $(( ... ))"),
        (["--sh", "no-such-program-here {}", "-"], "no program 'no-such-program-here'"),
    ],
)
def test_mistakes_are_usage_errors(workdir: Path, flags: list[str], message: str) -> None:
    done = manyhands(*flags, cwd=workdir, stdin="")
    assert done.returncode == 2
    assert message in done.stderr


def test_a_throttled_command_can_say_how_long_to_wait_on_its_last_stderr_line() -> None:
    from manyhands._retry import retry_after_of
    from manyhands._shell import CommandFailed, CommandRunner
    from manyhands._shell_template import Template

    script = 'echo "HTTP 429" >&2; echo "Retry-After: 2.5" >&2; exit "$1"'
    runner = CommandRunner(Template(f"sh -c '{script}' sh {{}}"), throttle_exit=75)
    with pytest.raises(CommandFailed) as throttled:
        runner("75")
    assert retry_after_of(throttled.value) == 2.5  # what the retries and the slowdown read
    with pytest.raises(CommandFailed) as other:
        runner("3")  # another exit code: its stderr is not read for a delay
    runner.close()
    assert retry_after_of(other.value) is None


def test_a_command_killed_by_a_signal_fails_with_a_type_naming_the_signal() -> None:
    from manyhands._outcome import Failure
    from manyhands._shell import CommandFailed, CommandRunner
    from manyhands._shell_template import Template

    runner = CommandRunner(Template("sh -c 'echo dying >&2; kill -SEGV $$' sh {}"))
    with pytest.raises(CommandFailed) as killed:
        runner("x")
    runner.close()
    failure = Failure.from_exception("x", killed.value)
    assert failure.error_type == "manyhands.cli.KilledBySIGSEGV"
    assert failure.message == "killed by SIGSEGV: dying"
    assert killed.value.signal == signal.SIGSEGV and killed.value.exit_code is None


def _watchdogs() -> list[psutil.Process]:
    from manyhands._orphans import WATCHDOG_CODE

    found = []
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and WATCHDOG_CODE in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_the_watchdog_of_a_runs_commands_ends_with_the_run() -> None:
    """The commands' watchdog (see _orphans) leaves no process behind at a normal end."""
    from manyhands._shell import CommandRunner
    from manyhands._shell_template import Template

    runner = CommandRunner(Template("echo {}"))
    try:
        assert runner("a")["stdout"] == "a\n"
        # (just started, it may not have exec'd its code yet: a busy machine)
        deadline = time.monotonic() + 10
        while not _watchdogs() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_watchdogs()) == 1
    finally:
        runner.close()
    assert _watchdogs() == []
