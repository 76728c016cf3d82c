"""The manyhands command, end to end through real subprocesses."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import finish, python_subprocess_env, wait_for_lines

TARGET = """
import os, time

def work(line):
    n = int(line)
    if n % 10 == 3:
        raise ValueError(f"no good: {n}")
    return n * 2

def slow(line):
    fd = os.open(os.environ["CALLS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, line.encode() + b"\\n")
    os.close(fd)
    time.sleep(0.01)
    return line

def hang_on_5(line):
    if line == "5":
        time.sleep(30)
    return line

async def shout(line):
    return line.upper()

def name_of(row):
    return row["name"].upper()

def double_slowly(line):
    fd = os.open(os.environ["CALLS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, line.encode() + b"\\n")
    os.close(fd)
    time.sleep(float(os.environ.get("SLEEP", "0.002")))
    return int(line) * 2

def always_fails(line):
    raise ValueError(f"no good: {line}")

NOT_CALLABLE = 42
"""


def manyhands(
    *args: str,
    cwd: Path,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    stdin_file: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``manyhands ARGS``; ``stdin``: text piped in, ``stdin_file``: a file as stdin itself."""
    with contextlib.ExitStack() as files:
        given = files.enter_context(open(stdin_file, "rb")) if stdin_file else None
        return subprocess.run(
            [sys.executable, "-m", "manyhands", *args],
            cwd=cwd,
            input=stdin,
            stdin=given,
            capture_output=True,
            text=True,
            timeout=120,
            env=env or python_subprocess_env(),
        )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "numbers.txt").write_text("".join(f"{n}\n" for n in range(1000)))
    return tmp_path


def test_run_a_file_with_failures_then_status_and_failures(workdir: Path) -> None:
    done = manyhands(
        "run", "target.py:work", "numbers.txt", "-j", "8", "--journal", "run.db",
        "--output", "out.jsonl", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # some items failed
    assert "1,000 items" in done.stdout and "900 succeeded, 100 failed" in done.stdout
    assert "manyhands failures run.db" in done.stdout
    lines = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 1000
    by_item = {line["item"]: line for line in lines}
    assert by_item["4"] == {"item": "4", "ok": True, "value": 8}
    assert by_item["13"]["ok"] is False
    assert by_item["13"]["error"] == {
        "type": "builtins.ValueError", "message": "no good: 13", "attempts": 1,
    }  # fmt: skip

    status = manyhands("status", "run.db", cwd=workdir)
    assert status.returncode == 0
    assert "1,000 items with a final record" in status.stdout
    assert "900  done" in status.stdout and "100  failed" in status.stdout
    assert "100  builtins.ValueError" in status.stdout

    failures = manyhands("failures", "run.db", cwd=workdir)
    assert failures.returncode == 0
    assert len(failures.stdout.splitlines()) == 100
    assert "'13': builtins.ValueError: no good: 13 (attempts: 1)" in failures.stdout
    as_json = manyhands("failures", "run.db", "--json", "--traceback", cwd=workdir)
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(records) == 100 and all("ValueError: no good" in r["traceback"] for r in records)

    again = manyhands("run", "target.py:work", "numbers.txt", "--journal", "run.db", cwd=workdir)
    assert again.returncode == 1  # the recorded failures are still failures
    assert "900 skipped (done in the journal), 100 skipped (failed in the journal" in again.stdout
    assert "0 run" in again.stdout


def test_a_retry_failed_rerun_whose_items_fail_again_claims_nothing_of_fn(workdir: Path) -> None:
    first = manyhands("run", "target.py:always_fails", "numbers.txt", "--journal", "j.db",
                      cwd=workdir)  # fmt: skip
    assert first.returncode == 1 and "this looks like a problem with fn" in first.stdout
    again = manyhands("run", "target.py:always_fails", "numbers.txt", "--journal", "j.db",
                      "--retry-failed", cwd=workdir)  # fmt: skip
    assert again.returncode == 1 and "1,000 failed" in again.stdout
    assert "every item failed" not in again.stdout  # (they were chosen for having failed)
    assert "1,000 items run again for having failed before (--retry-failed)" in again.stdout


def test_all_succeeded_exits_0_and_stdin_and_module_targets_work(workdir: Path) -> None:
    done = manyhands("run", "target:work", "-", "--ordered", "--output", "-", cwd=workdir,
                     stdin="1\n2\n4\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["value"] for line in done.stdout.splitlines()] == [2, 4, 8]
    assert "3 items" in done.stderr  # the summary moves to stderr: stdout holds results


def test_jsonl_with_a_malformed_line_records_it_and_goes_on(workdir: Path) -> None:
    (workdir / "rows.jsonl").write_text('{"name": "a"}\n{"name": \n{"name": "c"}\n')
    done = manyhands(
        "run", "target.py:name_of", "rows.jsonl", "--jsonl", "--ordered", "--output", "o.jsonl",
        "--journal", "j.db", "--key", "name", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 1
    out = [json.loads(line) for line in (workdir / "o.jsonl").read_text().splitlines()]
    assert [o["ok"] for o in out] == [True, False, True]
    assert out[1]["item"] == '{"name": '
    assert out[1]["error"]["type"] == "manyhands.cli.MalformedLine"
    assert out[1]["error"]["message"].startswith("line 2 is not valid JSON")


def test_a_changed_key_flag_warns_that_the_recorded_items_run_again(workdir: Path) -> None:
    (workdir / "rows.jsonl").write_text('{"name": "a", "id": 1}\n{"name": "c", "id": 2}\n')
    command = ["run", "target.py:name_of", "rows.jsonl", "--jsonl", "--journal", "j.db"]
    said = []
    for key in (["--key", "name"], ["--key", "name"], ["--key", "id"], []):
        done = manyhands(*command, *key, cwd=workdir)
        assert done.returncode == 0, done.stderr
        said.append(done.stderr)
    assert "warning" not in said[0] + said[1]
    assert "written with --key name and this run has --key id" in said[2]
    assert "written with --key id and this run has no --key (default keys)" in said[3]


def test_timeout_flag_fails_the_hung_item_only(workdir: Path) -> None:
    started = time.monotonic()
    done = manyhands("run", "target.py:hang_on_5", "-", "--timeout", "0.5", "--output", "-",
                     cwd=workdir, stdin="".join(f"{n}\n" for n in range(10)))  # fmt: skip
    assert time.monotonic() - started < 20  # not the 30 s of the hung call
    assert done.returncode == 1
    out = {json.loads(line)["item"]: json.loads(line) for line in done.stdout.splitlines()}
    assert out["5"]["error"]["type"] == "manyhands.Timeout"
    assert all(out[str(n)]["ok"] for n in range(10) if n != 5)


def test_a_coroutine_target_runs_on_asyncio(workdir: Path) -> None:
    done = manyhands("run", "target.py:shout", "-", "--ordered", "--output", "-",
                     cwd=workdir, stdin="a\nb\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["value"] for line in done.stdout.splitlines()] == ["A", "B"]


@pytest.mark.parametrize("target", ["target.py:work", "target:work"])
def test_file_and_module_targets_run_on_processes(workdir: Path, target: str) -> None:
    done = manyhands("run", target, "-", "--backend", "processes", "--workers", "2",
                     "--ordered", "--output", "-", cwd=workdir, stdin="1\n3\n4\n")  # fmt: skip
    assert done.returncode == 1, done.stderr  # 3 fails
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o.get("value") for o in out] == [2, None, 8]
    assert out[1]["error"]["type"] == "builtins.ValueError"


def test_csv_rows_are_dicts(workdir: Path) -> None:
    (workdir / "people.csv").write_text("id,name\n1,ann\n2,bob\n")
    done = manyhands("run", "target.py:name_of", "people.csv", "--csv", "--ordered",
                     "--output", "-", cwd=workdir)  # fmt: skip
    assert [json.loads(line)["value"] for line in done.stdout.splitlines()] == ["ANN", "BOB"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nosuchmodule:work", "numbers.txt"], "no module named 'nosuchmodule'"),
        (["run", "target.py:missing", "numbers.txt"], "has no attribute 'missing'"),
        (["run", "target.py:NOT_CALLABLE", "numbers.txt"], "is a int, not a function"),
        (["run", "nofile.py:work", "numbers.txt"], "no such file 'nofile.py'"),
        (["run", "work", "numbers.txt"], "must be module:function or file.py:function"),
        (["run", "target.py:work", "missing.txt"], "cannot read INPUT 'missing.txt'"),
        (["run", "target.py:work", "numbers.txt", "-j", "0"], "'-j' / '--workers'"),
        (["run", "target.py:work", "numbers.txt", "--rate", "fast"], "--rate fast is not a rate"),
        (["run", "target.py:work", "numbers.txt", "--key", "id"], "--key needs --journal"),
        (["run", "target.py:work", "numbers.txt", "--journal", ""], "--journal got an empty path"),
        (
            ["run", "target.py:work", "numbers.txt", "--journal", "", "--retry-failed"],
            "--journal got an empty path",
        ),
        (
            ["run", "target.py:work", "numbers.txt", "--backend", "gpu"],
            "Invalid value for '--backend'",
        ),
        (["status", "nothere.db"], "no journal at 'nothere.db'"),
        (["run"], "Missing argument 'TARGET'"),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_code_2(
    workdir: Path, args: list[str], message: str
) -> None:
    done = manyhands(*args, cwd=workdir)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("manyhands: error: ")
    assert done.stdout == ""


def test_a_malformed_line_fails_as_the_public_manyhands_cli_malformed_line(workdir: Path) -> None:
    from manyhands.cli import MalformedLine

    assert MalformedLine.__module__ == "manyhands.cli"
    done = manyhands("run", "target.py:work", "-", "--jsonl", "--backend", "processes", "-j", "1",
                     "--output", "-", cwd=workdir, stdin="4\n{bad\n")  # fmt: skip
    assert done.returncode == 1, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["ok"] for o in out] == [True, False]
    assert out[1]["error"]["type"] == "manyhands.cli.MalformedLine"  # also from a worker process


def test_version_flag(workdir: Path) -> None:
    import manyhands as package

    for flag in ("--version", "-V"):
        done = manyhands(flag, cwd=workdir)
        assert done.returncode == 0
        assert done.stdout.strip() == f"manyhands {package.__version__}"


@pytest.mark.parametrize(
    ("command", "says", "never"),
    [
        ("run", ["0 every item succeeded", "1 some items failed", "130 interrupted",
                 "143 terminated", "141 stdout was closed"], []),
        ("status", ["0 the journal was read", "2 no journal"], ["1 some items failed"]),
        ("failures", ["0 the journal was read", "2 no journal"], ["1 some items failed"]),
        ("demo", ["0 the demo ran", "130 interrupted"], ["1 some items failed"]),
        ("report", ["0 the report was written", "2 no journal"], ["1 some items failed"]),
    ],
)  # fmt: skip
def test_each_commands_help_states_its_own_exit_codes(
    workdir: Path, command: str, says: list[str], never: list[str]
) -> None:
    done = manyhands(command, "--help", cwd=workdir)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # (help text is wrapped to the terminal)
    assert all(phrase in text for phrase in says), text
    assert not any(phrase in text for phrase in never), text


def test_flags_for_the_library_options(workdir: Path) -> None:
    done = manyhands(
        "run", "target.py:work", "numbers.txt", "--grace", "0.5", "--total", "1000",
        "--batch-size", "7", "--output", "out.jsonl", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # (items 3, 13, ... fail)
    assert "1,000 items" in done.stdout
    stopped = manyhands("run", "target.py:always_fails", "numbers.txt", "-j", "2",
                        "--stop-after-failure-rate", "0.5,20", cwd=workdir)  # fmt: skip
    assert stopped.returncode == 1
    assert "stopped early" in stopped.stdout
    assert "1,000 items" not in stopped.stdout  # it did not go through the input


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--stop-after-failure-rate", "1.5"], "is not SHARE or SHARE,LAST_N"),
        (["--stop-after-failure-rate", "0.5,0"], "is not SHARE or SHARE,LAST_N"),
        (["--grace", "-1"], "'--grace'"),
        # Past what a thread can wait: a usage error, not a traceback after the run.
        (["--grace", "1e300"], "'--grace'"),
        (["--timeout", "1e10"], "'--timeout'"),
        (["--rate", "1e-300"], "--rate 1e-300 is too slow"),
        (["--store-results"], "--store-results needs --journal"),
        (["--changed-items", "rerun", "--retry-failed"], "--retry-failed and --changed-items need"),
        (["--journal", "j2.db", "--changed-items", "skip"], "--changed-items needs --key"),
        (["--output", "numbers.txt"], "--output 'numbers.txt' is the INPUT file"),
        (["--journal", "j.db", "--output", "j.db"], "is the --journal file"),
    ],
)
def test_bad_flags_are_usage_errors(workdir: Path, flags: list[str], message: str) -> None:
    (workdir / "j.db").write_bytes(b"")
    before = (workdir / "numbers.txt").read_bytes()
    done = manyhands("run", "target.py:work", "numbers.txt", *flags, cwd=workdir)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert (workdir / "numbers.txt").read_bytes() == before  # nothing was overwritten


@pytest.mark.parametrize("output", ["new.db", "./new.db", "new.db-wal", "new.db.lock", "link.db"])
def test_an_output_that_would_be_a_journal_not_created_yet_is_refused(
    workdir: Path, output: str
) -> None:
    """Not only an existing journal: one the run would create, under --output's path too."""
    (workdir / "link.db").symlink_to("new.db")  # (dangling until the journal exists)
    done = manyhands("run", "target.py:work", "numbers.txt", "--journal", "new.db",
                     "--output", output, cwd=workdir)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"--output {output!r} is the --journal file" in done.stderr
    assert not (workdir / "new.db").exists()  # refused before anything was created


def test_report_refuses_to_write_over_its_journal(workdir: Path) -> None:
    assert manyhands("run", "target.py:work", "numbers.txt", "--journal", "j.db",
                     cwd=workdir).returncode == 1  # fmt: skip
    before = (workdir / "j.db").read_bytes()
    for output in ("j.db", "j.db-wal"):  # (its -wal file not there while no run is open)
        done = manyhands("report", "j.db", "-o", output, cwd=workdir)
        assert done.returncode == 2
        assert "is the journal's file" in done.stderr
        assert not (workdir / "j.db-wal").exists()
    assert (workdir / "j.db").read_bytes() == before


def test_changed_items_flag_reruns_an_edited_item(workdir: Path) -> None:
    (workdir / "rows.jsonl").write_text('{"id": 1, "name": "a"}\n{"id": 2, "name": "b"}\n')
    args = ["run", "target.py:name_of", "rows.jsonl", "--jsonl", "--journal", "j.db",
            "--key", "id", "--output", "out.jsonl"]  # fmt: skip
    assert manyhands(*args, cwd=workdir).returncode == 0
    (workdir / "rows.jsonl").write_text('{"id": 1, "name": "a"}\n{"id": 2, "name": "z"}\n')
    refused = manyhands(*args, cwd=workdir)
    assert refused.returncode == 2 and "differs" in refused.stderr
    rerun = manyhands(*args, "--changed-items", "rerun", cwd=workdir)
    assert rerun.returncode == 0, rerun.stderr
    values = [
        json.loads(line)["value"] for line in (workdir / "out.jsonl").read_text().splitlines()
    ]
    assert sorted(values) == ["A", "B", "Z"]  # item 2's new line comes last


@pytest.mark.parametrize("journal", [[], ["--journal", "j.db"]])
def test_changed_items_refuse_given_explicitly_is_the_default(
    workdir: Path, journal: list[str]
) -> None:
    (workdir / "rows.txt").write_text("1\n2\n")
    done = manyhands("run", "target.py:work", "rows.txt", *journal, "--changed-items", "refuse",
                     cwd=workdir)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_console_script_is_installed(workdir: Path) -> None:
    script = Path(sys.executable).with_name("manyhands")
    if not script.exists():
        pytest.skip("not installed as a console script here")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "demo" in done.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_exits_130_and_the_rerun_completes_the_rest(workdir: Path) -> None:
    calls = workdir / "calls.txt"
    env = python_subprocess_env() | {"CALLS_FILE": str(calls)}
    args = [sys.executable, "-m", "manyhands", "run", "target.py:slow", "numbers.txt",
            "-j", "4", "--journal", "run.db"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_lines(calls, 50)
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc, 60)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    first = calls.read_text().split()
    assert 0 < len(first) < 1000

    done = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    second = calls.read_text().split()[len(first) :]
    assert sorted(set(first) | set(second), key=int) == [str(n) for n in range(1000)]
    # Only calls cut off by the interrupt (at most one per worker) ran twice.
    assert len(set(first) & set(second)) <= 4


def test_demo_with_a_journal_prints_next_steps_that_use_it(tmp_path: Path) -> None:
    done = manyhands("demo", "--items", "30", "--journal", "my demo.db", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "manyhands failures 'my demo.db'" in done.stdout
    assert "manyhands status 'my demo.db'" in done.stdout
    assert "manyhands demo --items 30 --journal 'my demo.db' " in done.stdout  # resumes it
    assert "manyhands demo --items 30 --journal 'my demo.db' --fresh" in done.stdout


def test_demo_fresh_deletes_only_a_journal_not_in_use(tmp_path: Path) -> None:
    (tmp_path / "precious.db").write_text("not a journal")
    done = manyhands("demo", "--journal", "precious.db", "--fresh", cwd=tmp_path)
    assert done.returncode == 2
    assert "--fresh deletes a manyhands journal only" in done.stderr
    assert (tmp_path / "precious.db").read_text() == "not a journal"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["precious.db"]

    assert manyhands("demo", "--items", "5", "--journal", "d.db", cwd=tmp_path).returncode == 0
    if sys.platform != "win32":  # a demo running on it holds its lock
        import fcntl

        with open(tmp_path / "d.db.lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = manyhands("demo", "--journal", "d.db", "--fresh", cwd=tmp_path)
        assert busy.returncode == 2 and "in use" in busy.stderr
        assert "5 items with a final record" in manyhands("status", "d.db", cwd=tmp_path).stdout


def cut_short_journal(path: Path, tables: str) -> None:
    """A file as a run killed while creating its journal left it: empty, or no tables."""
    path.write_bytes(b"")
    if tables != "(empty file)":
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(tables)


@pytest.mark.parametrize("tables", ["(empty file)", "CREATE TABLE t (x); DROP TABLE t;"])
def test_demo_fresh_deletes_a_journal_whose_creation_was_cut_short(
    tmp_path: Path, tables: str
) -> None:
    # It was refused as "not a manyhands journal": --fresh could not start over.
    cut_short_journal(tmp_path / "d.db", tables)
    done = manyhands("demo", "--items", "5", "--journal", "d.db", "--fresh", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "5 items" in done.stdout
    assert "5 items with a final record" in manyhands("status", "d.db", cwd=tmp_path).stdout


def test_demo_fresh_refuses_another_programs_database(tmp_path: Path) -> None:
    cut_short_journal(tmp_path / "app.db", "CREATE TABLE items (name TEXT);")
    done = manyhands("demo", "--journal", "app.db", "--fresh", cwd=tmp_path)
    assert done.returncode == 2
    assert "'app.db' is not a manyhands journal" in done.stderr  # (not "no such table: meta")
    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("items",)]


def test_demo_runs_and_resumes(tmp_path: Path) -> None:
    first = manyhands("demo", "--items", "300", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "300 items" in first.stdout and "manyhands failures manyhands-demo.db" in first.stdout
    assert (tmp_path / "manyhands-demo.db").exists()
    again = manyhands("demo", "--items", "300", cwd=tmp_path)
    assert again.returncode == 0
    assert "300 items recorded by an earlier run were skipped" in again.stdout
    fresh = manyhands("demo", "--items", "50", "--fresh", cwd=tmp_path)
    assert fresh.returncode == 0
    assert "50 items" in fresh.stdout  # started over: nothing skipped
    assert "not run" not in fresh.stdout and "earlier run" not in fresh.stdout


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_failures_traceback_starts_at_the_users_code(workdir: Path, backend: str) -> None:
    # The command wraps fn (an unreadable line fails as its item); its frame, like
    # the worker's loop, is not the user's code and is left out.
    run = manyhands("run", "target.py:always_fails", "-", "--journal", "j.db",
                    "--backend", backend, cwd=workdir, stdin="7\n")  # fmt: skip
    assert run.returncode == 1, run.stderr
    traced = manyhands("failures", "j.db", "--traceback", cwd=workdir).stdout
    first = traced.split("Traceback (most recent call last):\n", 1)[1].splitlines()[0]
    assert "in always_fails" in first, traced
    assert "cli.py" not in traced and "in call" not in traced
    assert "ValueError: no good: 7" in traced
