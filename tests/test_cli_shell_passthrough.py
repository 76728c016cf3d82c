"""``manyhands run --sh`` without ``--output``: the commands' stdout passed through, and limits.

The commands' stdout is their bytes, whole and unchanged; under a low open-file
limit (``ulimit -n``), no item is lost for want of file descriptors.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import python_subprocess_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX commands and limits")

BIG = 1_500_000  # past what a passed-through stdout keeps in memory: it goes to a file


def manyhands(*args: str, cwd: Path, stdin: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "manyhands", "run", *args],
        cwd=cwd,
        input=stdin.encode(),
        capture_output=True,
        timeout=120,
        env=python_subprocess_env(),
    )


def test_without_output_the_commands_stdout_is_their_bytes_whole_and_unchanged(
    tmp_path: Path,
) -> None:
    # Item "big": 1.5 MB of x; item "bin": bytes that are not UTF-8.
    script = (
        f'case $1 in big) head -c {BIG} /dev/zero | tr "\\0" x; echo END;; '
        'bin) printf "\\377\\376bin\\n";; esac'
    )
    done = manyhands("--sh", f"sh -c '{script}' sh {{}}", "--keep-order", "-j", "2",
                     cwd=tmp_path, stdin="big\nbin\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"x" * BIG + b"END\n" + b"\xff\xfebin\n"  # no notice, no escapes
    assert b"\xff\xfe" not in done.stderr and b"2 succeeded" in done.stderr


def test_without_output_the_commands_stderr_is_passed_on_as_written(tmp_path: Path) -> None:
    script = 'printf "caf\\351 $1\\n" >&2; test "$1" = ok'
    done = manyhands("--sh", f"sh -c '{script}' sh {{}}", "--keep-order", "-j", "1",
                     cwd=tmp_path, stdin="ok\nbad\n")  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(b"caf\xe9 ok\ncaf\xe9 bad\n")  # Latin-1, not "\\xe9" text


def test_a_failed_commands_stdout_is_passed_on_whole_too(tmp_path: Path) -> None:
    script = 'head -c 300000 /dev/zero | tr "\\0" y; printf "\\377\\n"; echo oops >&2; exit 3'
    done = manyhands("--sh", f"sh -c '{script}' sh {{}}", cwd=tmp_path, stdin="a\n")
    assert done.returncode == 1
    assert done.stdout == b"y" * 300_000 + b"\xff\n"
    assert b"oops" in done.stderr and b"manyhands.cli.Exit3" in done.stderr


def test_a_passed_through_stdout_past_max_output_fails_its_item_and_says_so_on_stderr(
    tmp_path: Path,
) -> None:
    script = 'case $1 in big) seq 1 100000;; *) echo "small $1";; esac'
    done = manyhands("--sh", f"sh -c '{script}' sh {{}}", "--max-output", "1000",
                     "--keep-order", cwd=tmp_path, stdin="a\nbig\nb\n")  # fmt: skip
    assert done.returncode == 1, done.stderr  # not a success with its data cut
    assert done.stdout == b"small a\nsmall b\n"  # none of it, and no notice in the data
    stderr = done.stderr.decode()
    assert "item 'big' failed: its stdout went past --max-output=1,000 bytes" in stderr
    assert "manyhands.cli.OutputTooLarge" in stderr and "2 succeeded, 1 failed" in stderr


def test_a_resume_passes_on_the_stdout_of_the_commands_it_runs_and_stores_the_rest(
    tmp_path: Path,
) -> None:
    flags = ("--sh", "echo ran", "--journal", "run.db", "--store-results")
    first = manyhands(*flags, cwd=tmp_path, stdin="a\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout == b"ran a\n" and b"warning" not in first.stderr  # (the value stored)
    again = manyhands(*flags, cwd=tmp_path, stdin="a\nb\n")
    assert again.returncode == 0, again.stderr
    assert again.stdout == b"ran b\n"  # "a" ran before: its stdout is not written again
    assert b"1 skipped" in again.stderr and b"warning" not in again.stderr


def test_a_spool_keeps_every_byte_in_memory_then_in_a_file_and_stops_at_its_limit() -> None:
    from manyhands._process_group import Spool

    spool = Spool(memory=10)
    chunks = [bytes(range(256))] * 5
    for chunk in chunks:
        spool.add(chunk)
    assert spool.head(4) == (b"\x00\x01\x02\x03", 5 * 256 - 4)
    copy = io.BytesIO()
    spool.write_to(copy)
    assert copy.getvalue() == b"".join(chunks) and not spool.over

    capped = Spool(limit=300, memory=10)
    for chunk in chunks:
        capped.add(chunk)
    assert capped.over and capped.size == 256  # the chunk that would pass the limit is not kept


# -- the open-file limit ---------------------------------------------------------


def run_limited(code: str, limit: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a Python whose open-file limit (``ulimit -n``) is ``limit``."""
    prelude = textwrap.dedent(
        f"""
        import resource, sys
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, hard))
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=python_subprocess_env(),
    )


def test_under_a_low_open_file_limit_every_command_runs_and_j_is_capped_once(
    tmp_path: Path,
) -> None:
    (tmp_path / "items.txt").write_text("".join(f"{n}\n" for n in range(200)))
    done = run_limited(
        """
        from manyhands.cli import main
        sys.exit(main(["run", "--sh", "sh -c 'sleep 0.02' sh {}", "items.txt", "-j", "100",
                       "--output", "out.jsonl"]))
        """,
        limit=64,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "200 succeeded, 0 failed" in done.stderr + done.stdout
    assert done.stderr.count("-j 100 needs ~") == 1
    assert "the limit is 64: running" in done.stderr and "ulimit -n" in done.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 200


def test_a_command_short_of_file_descriptors_waits_for_another_to_end_instead_of_failing(
    tmp_path: Path,
) -> None:
    # Without the cap on -j: 40 commands at once need more than 48 fds.
    done = run_limited(
        """
        from concurrent.futures import ThreadPoolExecutor
        from manyhands._shell import CommandRunner
        from manyhands._shell_template import Template

        runner = CommandRunner(Template("sh -c 'sleep 0.1; echo $1' sh {}"))
        with ThreadPoolExecutor(40) as threads:
            values = list(threads.map(runner, [str(n) for n in range(120)]))
        assert [value["stdout"] for value in values] == [f"{n}\\n" for n in range(120)]
        print("all ran")
        """,
        limit=48,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "all ran\n"


def test_with_no_command_running_to_free_a_file_descriptor_the_error_names_the_limit(
    tmp_path: Path,
) -> None:
    done = run_limited(
        """
        import os
        from manyhands import _shell
        from manyhands._shell import CommandRunner
        from manyhands._shell_template import Template

        _shell.FD_WAIT_SECONDS = 0.2
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        try:
            CommandRunner(Template("true"))("x")
        except OSError as exc:
            print(exc)
        """,
        limit=32,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "a command cannot start (the limit is 32" in done.stdout
    assert "raise it with ulimit -n" in done.stdout


# -- the report --------------------------------------------------------------------


def test_a_sh_run_never_advises_another_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A command's CPU is its start (fork, exec), and --sh runs on threads only: the
    # hint of a CPU-bound threads run ("backend='processes' or 'auto'") does not apply.
    from manyhands._auto import Measure
    from manyhands.cli import main

    monkeypatch.setattr(Measure, "ready", lambda self, now: True)
    monkeypatch.setattr(Measure, "hint", lambda self, now: "ADVICE: backend='processes'")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "items.txt").write_text("a\nb\n")
    (tmp_path / "work.py").write_text("def upper(item):\n    return item.upper()\n")
    assert main(["run", "--sh", "true", "items.txt", "--output", "out.jsonl"]) == 0
    assert main(["run", "work.py:upper", "items.txt"]) == 0  # a function's run: advised
    said = capsys.readouterr()
    assert said.out.count("ADVICE") + said.err.count("ADVICE") == 1  # the function's run only
