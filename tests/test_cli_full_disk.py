"""``manyhands run --output`` on a disk that fills mid-run: what is recorded, counted and said.

The disk is simulated without root: the command's output file is a file whose
disk is full once it holds ``QUOTA`` bytes (a short write, then ENOSPC, as
write(2) does), and with ``both`` the journal's disk fills at the same moment
(RLIMIT_FSIZE drops to 0, SIGXFSZ ignored: every file's next byte fails).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from manyhands._keys import default_key

from .conftest import python_subprocess_env
from .test_cli import TARGET, manyhands

FILLING = r"""
import errno, io, os, resource, signal, sys

import manyhands._output

QUOTA = int(sys.argv[1])  # bytes the output's disk has room for
BOTH = sys.argv[2] == "both"  # the journal's disk fills at the same moment
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (a file past RLIMIT_FSIZE: EFBIG, no signal)


class Filling(io.RawIOBase):
    def __init__(self, fd):
        self._fd = fd

    def writable(self):
        return True

    def fileno(self):
        return self._fd

    def write(self, data):
        room = QUOTA - os.fstat(self._fd).st_size
        if room <= 0:
            if BOTH:
                _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
                resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(self._fd, bytes(data[:room]))

    def truncate(self, size=None):
        os.ftruncate(self._fd, size)
        return size

    def close(self):
        if not self.closed:
            os.close(self._fd)
        super().close()


def opened(file, mode="r", *args, **kwargs):
    if "r" in mode:
        return open(file, mode, *args, **kwargs)
    if not isinstance(file, int):
        file = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return io.BufferedWriter(Filling(file))


manyhands._output.open = opened  # (where the command opens its --output)
from manyhands.cli import main

sys.exit(main(sys.argv[3:]))
"""

ITEMS = 3000
QUOTA = 20_000  # (about 500 lines: the disk fills mid-run)
RUN = ("run", "target.py:work", "numbers.txt", "--journal", "j.db", "--output", "out.jsonl")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "numbers.txt").write_text("".join(f"{n}\n" for n in range(ITEMS)))
    return tmp_path


def filling(workdir: Path, both: bool) -> subprocess.CompletedProcess[str]:
    """``manyhands run ...`` (RUN) with its output on a disk that fills after QUOTA bytes."""
    return subprocess.run(
        [sys.executable, "-c", FILLING, str(QUOTA), "both" if both else "output", *RUN],
        cwd=workdir, capture_output=True, text=True, timeout=60, env=python_subprocess_env(),
    )  # fmt: skip


def lines_of(path: Path) -> list[str]:
    """The items of the whole lines of an --output file (a line cut short is not one)."""
    items = []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n"):
            items.append(json.loads(line)["item"])
    return items


def recorded(journal: Path) -> tuple[tuple[object, ...], dict[str, int], set[str]]:
    """The first run's row (status, succeeded, failed), its items by state, and their keys."""
    with contextlib.closing(sqlite3.connect(journal)) as db:
        row = db.execute("SELECT status, succeeded, failed FROM runs WHERE id = 1").fetchone()
        states = dict(db.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
        keys = {key for (key,) in db.execute("SELECT key FROM items")}
    return row, states, keys


@pytest.mark.skipif(sys.platform == "darwin", reason="RLIMIT_FSIZE as on Linux")
@pytest.mark.parametrize("both", [False, True], ids=["output", "output-and-journal"])
def test_a_disk_filling_mid_run_records_counts_and_says_only_what_was_written(
    workdir: Path, both: bool
) -> None:
    done = filling(workdir, both)
    assert done.returncode == 74, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(
        "manyhands: error: cannot write --output 'out.jsonl': No space left on device; "
    ), done.stderr
    (status, succeeded, failed), states, keys = recorded(workdir / "j.db")
    assert 0 < len(keys) < ITEMS  # (the disk filled mid-run)
    # Nothing is recorded whose line is not whole in the file: a resume runs it again.
    written = [default_key(item) for item in lines_of(workdir / "out.jsonl")]
    assert keys <= set(written)
    if not both:  # and the file was cut back to the lines of the recorded items, each once
        assert sorted(written) == sorted(keys)
        assert (workdir / "out.jsonl").read_bytes().endswith(b"\n")  # (no line cut short)
    if both:  # the journal could not record the run's end, and the line does not claim it did
        assert status == "running"
        assert "nor could the journal j.db be written" in error, error
    else:  # the run's row and the summary count what the journal recorded, no more
        assert status == "output error"
        assert (succeeded, failed) == (states.get("done", 0), states.get("failed", 0))
        assert f"{succeeded:,} succeeded, {failed:,} failed" in done.stdout, done.stdout
        assert "the journal j.db recorded only the items whose lines were written" in error
    resumed = manyhands(*RUN, cwd=workdir)  # room made: the same command
    assert resumed.returncode == 1, resumed.stderr  # (items 3, 13, ... fail)
    items = lines_of(workdir / "out.jsonl")
    assert set(items) == {str(n) for n in range(ITEMS)}
    if not both:  # every item once (with both, those written but not recorded have two)
        assert len(items) == ITEMS
