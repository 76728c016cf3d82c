"""The manyhands command at the edges of its input and output: stdin, TARGETs, full disks."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from manyhands._outcome import Outcome
from manyhands._output import OutputFile

from .conftest import finish, python_subprocess_env, wait_for_lines
from .test_cli import TARGET, manyhands


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "numbers.txt").write_text("".join(f"{n}\n" for n in range(1000)))
    return tmp_path


def manyhands_reading(path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``manyhands ARGS < path``: stdin is the file itself, not a pipe."""
    return manyhands(*args, cwd=cwd, stdin_file=path)


@pytest.mark.parametrize("command", [["target.py:work"], ["--sh", "echo {}"]])
def test_an_output_that_is_the_file_stdin_reads_is_refused(
    workdir: Path, command: list[str]
) -> None:
    before = (workdir / "numbers.txt").read_bytes()
    done = manyhands_reading(
        workdir / "numbers.txt", "run", *command, "-", "--output", "./numbers.txt", cwd=workdir
    )
    assert done.returncode == 2, done.stderr
    assert "--output './numbers.txt' is the file stdin (INPUT -) reads from" in done.stderr
    assert (workdir / "numbers.txt").read_bytes() == before  # nothing was overwritten


def test_stdin_from_another_file_writes_the_output(workdir: Path) -> None:
    done = manyhands_reading(
        workdir / "numbers.txt", "run", "target.py:work", "--output", "out.jsonl", cwd=workdir
    )
    assert done.returncode == 1, done.stderr  # (items 3, 13, ... fail)
    assert len((workdir / "out.jsonl").read_text().splitlines()) == 1000


@pytest.mark.parametrize(
    ("source", "target", "says"),
    [
        ('raise RuntimeError("at import")\n', "broken:f", "RuntimeError: at import"),
        ('raise RuntimeError("at import")\n', "broken.py:f", "RuntimeError: at import"),
        ("def f(x) return x\n", "broken:f", "SyntaxError: expected ':'"),
        ("def f(x) return x\n", "broken.py:f", "SyntaxError: expected ':'"),
        ("import no_such_dependency\n", "broken:f", "No module named 'no_such_dependency'"),
    ],
)
def test_a_target_that_fails_to_import_is_a_usage_error_naming_where(
    workdir: Path, source: str, target: str, says: str
) -> None:
    (workdir / "broken.py").write_text("import os\n" + source + "def f(x):\n    return x\n")
    done = manyhands("run", target, "numbers.txt", cwd=workdir)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    error = done.stderr.strip()
    assert error.startswith(f"manyhands: error: TARGET {target!r}: importing broken"), error
    assert says in error and error.endswith(f"{workdir / 'broken.py'}:2)"), error
    assert len(error.splitlines()) == 1, error


needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")


@needs_dev_full
@pytest.mark.parametrize("items", [4, 1000])  # (4 lines fail at the last flush, on close)
@pytest.mark.parametrize("journal", [[], ["--journal", "j.db"]])
def test_an_output_on_a_full_disk_is_a_one_line_error_with_exit_code_74(
    workdir: Path, items: int, journal: list[str]
) -> None:
    (workdir / "some.txt").write_text("".join(f"{n}\n" for n in range(items)))
    done = manyhands(
        "run", "target.py:work", "some.txt", "--output", "/dev/full", *journal, cwd=workdir
    )
    assert done.returncode == 74, done.stderr
    error = done.stderr.strip()
    assert error.startswith(
        "manyhands: error: cannot write --output '/dev/full': No space left on device; "
    ), error
    assert len(error.splitlines()) == 1, error
    if journal:
        assert "run the same command again to resume" in error
        assert "output error" in manyhands("status", "j.db", cwd=workdir).stdout


@needs_dev_full
def test_after_a_full_disk_the_journal_resumes_with_every_line_written(workdir: Path) -> None:
    args = ("run", "target.py:work", "numbers.txt", "--journal", "j.db")
    assert manyhands(*args, "--output", "/dev/full", cwd=workdir).returncode == 74
    done = manyhands(*args, "--output", "out.jsonl", cwd=workdir)
    assert done.returncode == 1, done.stderr  # (items 3, 13, ... fail)
    written = sorted(
        int(json.loads(line)["item"]) for line in (workdir / "out.jsonl").read_text().splitlines()
    )
    assert written == list(range(1000))  # no line lost to the full disk, none twice


@needs_dev_full
def test_stdout_on_a_full_disk_is_named_as_stdout(workdir: Path) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "manyhands", "run", "--sh", "echo {}", "numbers.txt"],
            cwd=workdir, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
            env=python_subprocess_env(),
        )  # fmt: skip
    assert done.returncode == 74, done.stderr
    *summary, error = done.stderr.strip().splitlines()  # (the summary of what ran, then it)
    assert error.startswith("manyhands: error: cannot write stdout: No space left on device")
    assert "succeeded" in summary[0], done.stderr


ROWS = "bucket,key\nb1,k1\nb2\nb3,k3,extra\n"  # a row without its last cell, one with a cell more


def test_a_csv_row_without_a_cell_fails_where_the_field_is_used_never_as_null(
    workdir: Path,
) -> None:
    (workdir / "objs.csv").write_text(ROWS)
    done = manyhands(
        "run", "--sh", "echo cp s3://{bucket}/{key}", "objs.csv", "--csv", "--output", "-",
        cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = {line["item"]["bucket"] if isinstance(line["item"], dict) else line["item"]: line
             for line in map(json.loads, done.stdout.splitlines())}  # fmt: skip
    assert lines["b1"]["stdout"] == "cp s3://b1/k1\n"
    assert lines["b2"]["item"] == {"bucket": "b2"}  # no "key": null
    assert lines["b2"]["error"]["type"] == "builtins.KeyError"
    assert "'key'" in lines["b2"]["error"]["message"]
    assert "line 3: the row ends before it" in lines["b2"]["error"]["message"]
    assert lines["b3,k3,extra"]["error"] == {
        "type": "manyhands.cli.MalformedLine",
        "message": "line 4 has 3 cells, the header 2: quote a cell that holds a comma",
        "attempts": 1,
    }
    assert "s3://b2/null" not in done.stdout  # (no command ran with a made-up key)


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_function_reading_the_missing_cell_fails_naming_the_field_and_line(
    workdir: Path, backend: str
) -> None:
    (workdir / "objs.csv").write_text(ROWS)
    (workdir / "rows.py").write_text("def key(row):\n    return row['key']\n")
    done = manyhands(
        "run", "rows.py:key", "objs.csv", "--csv", "--output", "-", "--backend", backend,
        "--ordered", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    short = json.loads(done.stdout.splitlines()[1])
    assert short["item"] == {"bucket": "b2"}
    assert short["error"]["type"] == "builtins.KeyError"
    assert "line 3 has no cell for field 'key'" in short["error"]["message"]


def test_a_short_row_keeps_what_it_is_through_pickle() -> None:
    import pickle

    from manyhands._inputs import ShortRow

    row = pickle.loads(pickle.dumps(ShortRow({"a": "1"}, line=7, missing=["b"])))
    assert row == {"a": "1"} and row.get("b") is None
    with pytest.raises(KeyError, match="line 7 has no cell for field 'b'"):
        row["b"]
    with pytest.raises(KeyError, match=r"^'c'$"):
        row["c"]  # (not a field of the header: a plain KeyError)


def test_lines_of_a_slow_input_reach_the_output_before_it_ends(workdir: Path) -> None:
    (workdir / "note.py").write_text(
        "import os\n"
        "def note(line):\n"
        "    with open(os.environ['CALLS_FILE'], 'a') as calls:\n"
        "        calls.write(line + '\\n')\n"
        "    return line\n"
    )
    env = python_subprocess_env() | {"CALLS_FILE": str(workdir / "calls.txt")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "manyhands", "run", "note.py:note", "--output", "out.jsonl",
         "--batch-size", "1"],
        cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    assert proc.stdin is not None
    written = 0
    try:
        # One line at a time, each once the last one ran, as a slow producer writes them;
        # the input stays open. An item is delivered once it finished and the next line
        # was read: its line must then reach the file, not wait for the end of the run.
        for written in range(1, 11):
            proc.stdin.write(f"{written}\n".encode())
            proc.stdin.flush()
            wait_for_lines(workdir / "calls.txt", written, timeout=10)
            with contextlib.suppress(AssertionError):
                wait_for_lines(workdir / "out.jsonl", 1, timeout=1)
                break
        else:
            raise AssertionError("no line reached --output while the input was open")
    finally:
        _, err = finish(proc, timeout=60)  # (closes the input: the run ends)
    assert proc.returncode == 0, err
    assert len((workdir / "out.jsonl").read_text().splitlines()) == written


@pytest.mark.parametrize("journal", [False, True])
def test_each_line_of_a_piped_input_reaches_the_output_before_the_next_comes(
    workdir: Path, journal: bool
) -> None:
    """tail -f | manyhands run ...: the input is read in a thread, so an outcome that
    finished never waits for the next line (before, it waited for it, or for the end)."""
    more = ["--journal", "run.db"] if journal else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "manyhands", "run", "--sh", "echo {}", "--output", "out.jsonl",
         *more],
        cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=python_subprocess_env(),
    )  # fmt: skip
    assert proc.stdin is not None
    try:
        for count in range(1, 6):
            proc.stdin.write(f"{count}\n".encode())
            proc.stdin.flush()
            wait_for_lines(workdir / "out.jsonl", count, timeout=20)
    finally:
        _, err = finish(proc, timeout=60)  # (closes the input: the run ends)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    assert [line["item"] for line in lines] == ["1", "2", "3", "4", "5"]


def test_a_line_is_flushed_soon_and_lines_written_together_share_a_flush(
    tmp_path: Path, no_thread_left: None
) -> None:
    soon = OutputFile(str(tmp_path / "soon.jsonl"), resume=False, flush_within=0.05)
    soon.write(Outcome("a", 1, None, 1))
    wait_for_lines(tmp_path / "soon.jsonl", 1, timeout=10)  # no close, journal or next line
    soon.close()
    late = OutputFile(str(tmp_path / "late.jsonl"), resume=False, flush_within=3600)
    for n in range(100):
        late.write(Outcome(n, n, None, 1))
    assert (tmp_path / "late.jsonl").read_bytes() == b""  # not a flush per line
    late.close()
    assert len((tmp_path / "late.jsonl").read_text().splitlines()) == 100


def test_report_to_stdout_writes_the_page_there_not_to_a_file_named_dash(
    workdir: Path,
) -> None:
    manyhands("run", "target.py:work", "numbers.txt", "--journal", "j.db", cwd=workdir)
    done = manyhands("report", "j.db", "-o", "-", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<!DOCTYPE html>") and "</html>" in done.stdout
    assert not (workdir / "-").exists()


def test_a_run_refused_on_a_busy_journal_creates_no_output_file(workdir: Path) -> None:
    env = python_subprocess_env() | {"CALLS_FILE": str(workdir / "calls.txt")}
    first = subprocess.Popen(
        [sys.executable, "-m", "manyhands", "run", "target.py:slow", "numbers.txt", "-j", "1",
         "--journal", "j.db"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_lines(workdir / "calls.txt", 1)  # it holds the journal
        second = manyhands(
            "run", "target.py:work", "numbers.txt", "--journal", "j.db", "--output", "new.jsonl",
            cwd=workdir,
        )  # fmt: skip
    finally:
        first.terminate()
        finish(first, timeout=60)
    assert second.returncode == 2 and "in use by" in second.stderr, second.stderr
    assert not (workdir / "new.jsonl").exists()


@pytest.mark.parametrize(
    ("output", "says"),
    [("nodir/out.jsonl", "No such file or directory"), ("numbers.txt/out", "Not a directory")],
)
def test_an_output_that_cannot_be_created_is_refused_before_the_run(
    workdir: Path, output: str, says: str
) -> None:
    done = manyhands("run", "target.py:work", "numbers.txt", "--output", output, cwd=workdir)
    assert done.returncode == 2
    assert done.stderr == f"manyhands: error: cannot write --output {output!r}: {says}\n"


class _LateClear(threading.Event):
    """The flushing thread's wake-up event, cleared just after close() set it: the race."""

    def __init__(self, closing: threading.Event) -> None:
        super().__init__()
        self.closing = closing
        self.clearing = threading.Event()  # the thread is about to clear
        self.closed = threading.Event()  # close() has set the event

    def set(self) -> None:
        super().set()
        if self.closing.is_set():
            self.closed.set()

    def clear(self) -> None:
        self.clearing.set()
        self.closed.wait(10)
        super().clear()


def test_close_right_before_the_flushing_thread_clears_its_wake_up_does_not_hang(
    tmp_path: Path,
) -> None:
    out = OutputFile(str(tmp_path / "out.jsonl"), resume=False, flush_within=0)
    wake = out._wake = _LateClear(out._closing)
    out.write(Outcome("a", 1, None, 1))  # (starts the flushing thread)
    assert wake.clearing.wait(10)
    closer = threading.Thread(target=out.close, daemon=True)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "close() waits for a flushing thread that never ends"
    assert (tmp_path / "out.jsonl").read_text() == '{"item": "a", "ok": true, "value": 1}\n'


def test_a_journal_left_by_a_run_that_recorded_nothing_writes_the_output_afresh(
    workdir: Path,
) -> None:
    """A first run that recorded nothing (its INPUT empty, no --output) left its journal: the
    next run is no resume, and an old --output file is replaced, not appended to."""
    (workdir / "none.jsonl").write_text("")
    (workdir / "rows.jsonl").write_text('{"id": 1, "name": "a"}\n{"id": 2, "name": "b"}\n')
    (workdir / "out.jsonl").write_text('{"old": "a line of another run"}\n')
    first = manyhands("run", "target.py:name_of", "none.jsonl", "--jsonl", "--journal", "run.db",
                      "--key", "id", cwd=workdir)  # fmt: skip
    assert first.returncode == 0 and (workdir / "run.db").exists(), first.stderr
    common = ["run", "target.py:name_of", "rows.jsonl", "--jsonl", "--journal", "run.db",
              "--output", "out.jsonl"]  # fmt: skip
    second = manyhands(*common, "--key", "id", cwd=workdir)
    assert second.returncode == 0, second.stderr
    lines = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    assert [line["value"] for line in lines] == ["A", "B"]


def test_messages_name_the_flags_of_the_command_line_not_the_librarys_options(
    workdir: Path,
) -> None:
    missing = manyhands("run", "target.py:work", "numbers.txt", "--journal", "nodir/j.db",
                        cwd=workdir)  # fmt: skip
    assert missing.returncode == 2
    assert "--journal nodir/j.db" in missing.stderr and "journal=" not in missing.stderr
    manyhands("run", "target.py:work", "numbers.txt", "--journal", "run.db", cwd=workdir)
    again = manyhands("run", "target.py:work", "numbers.txt", "--journal", "run.db", cwd=workdir)
    assert "--retry-failed runs them again" in again.stdout and "retry_failed" not in again.stdout


@pytest.mark.parametrize(
    ("journal", "message"),
    [
        ("nodir/j.db", "the directory nodir does not exist; create it first (mkdir -p nodir)"),
        ("no dir/sub/j.db", "create it first (mkdir -p 'no dir/sub')"),
        ("numbers.txt/j.db", "--journal numbers.txt/j.db: numbers.txt is not a directory"),
    ],
)
def test_a_journal_in_no_directory_says_how_to_make_it_in_shell_words(
    workdir: Path, journal: str, message: str
) -> None:
    done = manyhands("run", "target.py:work", "numbers.txt", "--journal", journal, cwd=workdir)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert "os.makedirs" not in done.stderr


def test_a_rate_given_as_a_number_is_starts_per_second(workdir: Path) -> None:
    (workdir / "few.txt").write_text("1\n2\n")
    done = manyhands("run", "target.py:work", "few.txt", "--rate", "50", cwd=workdir)
    assert done.returncode == 0, done.stderr


def test_a_run_that_stops_while_its_pipe_is_still_open_exits_cleanly(workdir: Path) -> None:
    """The thread reading the pipe is blocked in a read when the run stops: the command
    must still exit with its own code (it aborted: 'could not acquire lock for stdin')."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "manyhands", "run", "target.py:work", "--stop-after-failures",
         "1"],
        cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=python_subprocess_env(),
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(b"3\n")  # (fails: the stop rule ends the run; the pipe stays open)
    proc.stdin.flush()
    try:
        proc.wait(timeout=30)  # (the pipe stays open: communicate() would close it)
    finally:
        if proc.returncode is None:
            proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 1, err
    assert b"Fatal Python error" not in err


def test_a_repeated_line_whose_first_copy_failed_says_so_in_the_output(workdir: Path) -> None:
    (workdir / "lines.txt").write_text("3\n1\n3\n13\n1\n3\n")
    done = manyhands(
        "run", "target.py:work", "lines.txt", "--output", "out.jsonl", "--journal", "j.db",
        cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    copies = [line for line in lines if line.get("skipped") == "duplicate key"]
    assert sorted(line["item"] for line in copies) == ["1", "3", "3"]
    for line in copies:  # before, every copy said "ok": true
        assert line["ok"] is (line["item"] == "1")
        if line["item"] == "3":
            assert line["error"] == {
                "type": "builtins.ValueError", "message": "no good: 3", "attempts": 1
            }  # fmt: skip
    assert "3 skipped (duplicate keys), 3 run" in done.stdout  # (the summary)
