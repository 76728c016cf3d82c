"""One run at a time on one journal file, whatever its name; a lock that fails leaves nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import manyhands

from .conftest import python_subprocess_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX links and locks")


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """A journal with a run on it in another thread, held until the test ends."""
    journal = tmp_path / "run.db"
    started, release = threading.Event(), threading.Event()

    def slow(x: int) -> int:
        started.set()
        release.wait(10)
        return x

    first = threading.Thread(target=manyhands.run, args=(slow, [1]), kwargs={"journal": journal})
    first.start()
    assert started.wait(10)
    yield journal
    release.set()
    first.join()


def test_a_run_through_a_symlink_is_locked_out_by_a_run_on_the_file(
    tmp_path: Path, held: Path
) -> None:
    link = tmp_path / "link.db"
    link.symlink_to(held)
    calls: list[int] = []
    with pytest.raises(manyhands.JournalError, match="in use by pid"):
        manyhands.run(calls.append, range(5), journal=link)
    assert not calls


def test_a_journal_used_through_a_symlink_keeps_its_files_next_to_the_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "state").mkdir()
    journal = tmp_path / "state" / "run.db"
    link = tmp_path / "link.db"
    link.symlink_to(journal)  # (dangling: the first run creates the file it leads to)
    assert manyhands.run(abs, range(5), journal=link).succeeded == 5
    assert manyhands.run(abs, range(5), journal=journal).skipped == 5
    assert manyhands.run(abs, range(5), journal=link).skipped == 5
    assert sorted(os.listdir(tmp_path)) == ["link.db", "state"]
    assert sorted(os.listdir(tmp_path / "state")) == ["run.db", "run.db.lock"]


def test_a_journal_with_hard_links_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(abs, range(5), journal=journal)
    os.remove(f"{journal}.lock")
    os.link(journal, tmp_path / "other.db")
    before = journal.read_bytes()
    calls: list[int] = []
    for name in (journal, tmp_path / "other.db"):
        with pytest.raises(manyhands.JournalError, match=r"2 names \(hard links\).*one name"):
            manyhands.run(calls.append, range(10), journal=name)
    assert not calls
    assert journal.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["other.db", "run.db"]


def test_a_file_refused_as_no_journal_leaves_no_lock_file(tmp_path: Path) -> None:
    text = tmp_path / "in.txt"
    text.write_text("1\n2\n3\n" * 100)
    with pytest.raises(manyhands.JournalError, match="not a readable journal"):
        manyhands.run(abs, range(3), journal=text)
    assert sorted(os.listdir(tmp_path)) == ["in.txt"]
    # A lock file this run did not create is left as it was.
    lock = tmp_path / "in.txt.lock"
    lock.write_text("")
    with pytest.raises(manyhands.JournalError, match="not a readable journal"):
        manyhands.run(abs, range(3), journal=text)
    assert lock.exists()


FULL_DISK = """
import os, resource, sys
import manyhands

journal = sys.argv[1]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))  # no byte can be written: a full disk
try:
    manyhands.run(abs, range(10), journal=journal)
except manyhands.JournalError as exc:
    print("refused:", exc)
print("lock file left:", os.path.exists(journal + ".lock"))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print("then:", manyhands.run(abs, range(10), journal=journal).succeeded)
"""


@pytest.mark.skipif(sys.platform == "darwin", reason="RLIMIT_FSIZE as on Linux")
def test_a_lock_that_cannot_be_written_says_why_and_a_retry_in_the_same_process_runs(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(journal)],
        capture_output=True, text=True, env=python_subprocess_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    refused, left, then = done.stdout.splitlines()
    assert refused.startswith(f"refused: cannot write the journal's lock file {journal}.lock: ")
    assert "File too large" in refused and "nothing was run" in refused
    assert left == "lock file left: False"
    assert then == "then: 10"  # not "in use by another process": the lock was released


def test_a_map_left_with_break_and_not_closed_is_named_as_this_process_with_the_fix(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"
    outcomes = manyhands.map(abs, range(100_000), journal=journal, batch_size=10)
    for _ in outcomes:
        break
    (tmp_path / "sub").mkdir()
    with pytest.raises(manyhands.JournalError) as info:  # (however the path is spelt)
        manyhands.run(abs, range(5), journal=tmp_path / "sub" / ".." / "run.db")
    message = str(info.value)
    assert f"in use by pid {os.getpid()} on " in message
    assert "this very process" in message and "outcomes.close()" in message
    outcomes.close()
    assert manyhands.run(abs, range(5), journal=journal).total == 5


def test_an_amap_left_with_break_is_named_as_this_process_and_aclose_ends_it(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"

    async def twice(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def main() -> int:
        outcomes = manyhands.amap(twice, range(100_000), journal=journal)
        async for _ in outcomes:
            break
        with pytest.raises(manyhands.JournalError, match=r"this very process.*aclose\(\)"):
            async for _ in manyhands.amap(twice, range(5), journal=journal):
                pass
        await outcomes.aclose()
        return sum([o.ok async for o in manyhands.amap(twice, range(5), journal=journal)])

    assert asyncio.run(main()) == 5


def test_a_run_in_another_process_is_not_called_this_process(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    code = (
        "import sys, time, manyhands\n"
        "def slow(x):\n"
        "    print('started', flush=True)\n"
        "    time.sleep(30)\n"
        f"manyhands.run(slow, [1], journal={str(journal)!r})\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
        env=python_subprocess_env(),
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "started\n"
        with pytest.raises(manyhands.JournalError, match=f"in use by pid {holder.pid} on") as info:
            manyhands.run(abs, [1], journal=journal)
        assert "this very process" not in str(info.value)
    finally:
        holder.kill()
        holder.communicate()  # (and closes its pipe)
