"""The manyhands command at the edges of its input and output: stdin, TARGETs, full disks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import python_subprocess_env
from .test_cli import TARGET, manyhands


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "numbers.txt").write_text("".join(f"{n}\n" for n in range(1000)))
    return tmp_path


def manyhands_reading(path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``manyhands ARGS < path``: stdin is the file itself, not a pipe."""
    with open(path, "rb") as stdin:
        return subprocess.run(
            [sys.executable, "-m", "manyhands", *args],
            cwd=cwd,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env=python_subprocess_env(),
        )


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
