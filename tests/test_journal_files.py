"""The journal's files: private from the start, and never lost silently under a run."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands._inspect import read_status

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes and inodes")

SUFFIXES = ("", "-wal", "-shm", ".lock")


def at_item(n: int, action: Callable[[], Any]) -> Callable[[int], int]:
    """A function that does ``action`` when it reaches item ``n`` (in a worker)."""

    def fn(x: int) -> int:
        if x == n:
            action()
        return x

    return fn


def once_open(journal: Path, action: Callable[[], Any]) -> Callable[[], Any]:
    """``action``, once the run has opened its new journal (the writer opens it beside
    the run's start: fast items may run before it is)."""

    def then() -> Any:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(f"{journal}-shm"):
                db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
                try:
                    if db.execute("SELECT count(*) FROM runs").fetchone()[0]:
                        break
                except sqlite3.Error:
                    pass  # (not created yet)
                finally:
                    db.close()
            time.sleep(0.001)
        return action()

    return then


def modes(journal: Path) -> dict[str, int]:
    return {
        suffix: stat.S_IMODE(os.stat(f"{journal}{suffix}").st_mode)
        for suffix in SUFFIXES
        if os.path.exists(f"{journal}{suffix}")
    }


@pytest.fixture
def open_umask() -> Any:
    old = os.umask(0o022)  # the usual one: files readable by everyone
    yield
    os.umask(old)


def test_the_journal_its_wal_shm_and_lock_files_are_created_private(
    tmp_path: Path, open_umask: None
) -> None:
    journal = tmp_path / "run.db"
    seen: dict[str, int] = {}
    snapshot = once_open(journal, lambda: seen.update(modes(journal)))
    manyhands.run(at_item(500, snapshot), range(1000),
                  journal=journal, workers=2, batch_size=10)  # fmt: skip
    assert seen == dict.fromkeys(SUFFIXES, 0o600)  # while it runs, all four exist
    assert modes(journal) == {"": 0o600, ".lock": 0o600}


def test_an_existing_journal_keeps_its_mode(tmp_path: Path, open_umask: None) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(at_item(-1, print), range(10), journal=journal)
    journal.chmod(0o640)
    Path(f"{journal}.lock").chmod(0o644)
    seen: dict[str, int] = {}
    manyhands.run(at_item(50, lambda: seen.update(modes(journal))), range(100),
                  journal=journal, workers=1, batch_size=10)  # fmt: skip
    assert seen == {"": 0o640, "-wal": 0o640, "-shm": 0o640, ".lock": 0o644}


def test_a_journal_removed_with_its_directory_mid_run_stops_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    journal = folder / "run.db"
    fn = at_item(300, once_open(journal, lambda: shutil.rmtree(folder)))
    with pytest.raises(manyhands.JournalError, match="was removed during the run") as info:
        manyhands.run(fn, range(2000), journal=journal, workers=2, batch_size=10)
    assert "the run stopped" in str(info.value)
    assert info.value.report is not None and info.value.report.succeeded >= 300
    assert not folder.exists(), "nothing was written where the journal was"


def test_a_journal_replaced_mid_run_stops_the_run_and_the_new_file_is_untouched(
    tmp_path: Path,
) -> None:
    other = tmp_path / "other.db"
    manyhands.run(str, ["a", "b"], journal=other)
    os.remove(f"{other}.lock")
    before = other.read_bytes()
    journal = tmp_path / "run.db"
    fn = at_item(300, once_open(journal, lambda: os.replace(other, journal)))
    with pytest.raises(manyhands.JournalError, match="was replaced by another file"):
        manyhands.run(fn, range(2000), journal=journal, workers=2, batch_size=10)
    assert journal.read_bytes() == before
    assert read_status(journal).states == {"done": 2}
    with sqlite3.connect(journal) as db:  # and its SQLite sees the same
        assert db.execute("SELECT count(*) FROM items").fetchone() == (2,)
    db.close()


def test_a_lock_file_removed_mid_run_stops_the_run(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    called: list[int] = []
    remove_lock = at_item(300, once_open(journal, lambda: os.remove(f"{journal}.lock")))

    def fn(x: int) -> int:
        called.append(x)
        return remove_lock(x)

    with pytest.raises(
        manyhands.JournalError, match=r"lock file .* was removed .* another run"
    ) as info:
        manyhands.run(fn, range(2000), journal=journal, workers=2, batch_size=10)
    assert "Every finished item was recorded" in str(info.value)
    ran = set(called)
    assert 300 in ran
    with sqlite3.connect(journal) as db:
        recorded = {int(key) for (key,) in db.execute("SELECT key FROM items")}
    db.close()
    assert recorded == ran  # the writer went on recording until the run stopped
    called.clear()
    resumed = manyhands.run(fn, range(2000), journal=journal)
    assert (resumed.skipped, resumed.succeeded) == (len(ran), 2000 - len(ran))
    assert not ran & set(called)


def test_a_journal_locked_a_moment_ago_names_its_holder_once_it_wrote_its_line(
    tmp_path: Path,
) -> None:
    """The holder writes who it is just after it locks: a run between the two waits for it."""
    import fcntl

    journal = tmp_path / "run.db"
    with open(f"{journal}.lock", "wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)

        def write_line() -> None:
            held.write(b"pid 7 on host\n")
            held.flush()

        late = threading.Timer(0.05, write_line)
        late.start()
        try:
            with pytest.raises(manyhands.JournalError, match="in use by pid 7 on host"):
                manyhands.run(str, [1], journal=journal)
        finally:
            late.join()


def test_a_journal_in_use_names_its_holder_even_from_a_lock_file_that_is_not_utf8(
    tmp_path: Path,
) -> None:
    import fcntl

    journal = tmp_path / "run.db"
    with open(f"{journal}.lock", "wb") as held:
        held.write(b"pid 1 on h\xf6st\n")  # a host name from another locale
        held.flush()
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(manyhands.JournalError, match=r"in use by pid 1 on h\\xf6st"):
            manyhands.run(str, [1], journal=journal)


@pytest.fixture
def read_only_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on read-only storage: SQLite cannot make the -shm file a WAL reader needs.

    (Mounting a read-only folder needs privileges a test does not have; this is what
    SQLite then raises, and what os.access says.)
    """
    from manyhands import _inspect

    meta = _inspect._meta
    calls = []

    def unable(db: sqlite3.Connection) -> dict[str, str] | None:
        calls.append(db)
        if len(calls) == 1:
            raise sqlite3.OperationalError("unable to open database file")
        return meta(db)

    monkeypatch.setattr(_inspect, "_meta", unable)
    monkeypatch.setattr(_inspect.os, "access", lambda path, mode: False)


def test_a_journal_on_read_only_storage_can_be_read(tmp_path: Path, read_only_folder: None) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(lambda x: 1 // (x - 3), range(5), journal=journal)
    status = read_status(journal)
    assert status.states == {"done": 4, "failed": 1}


def test_a_journal_on_read_only_storage_with_unmerged_commits_says_how_to_read_it(
    tmp_path: Path, read_only_folder: None
) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(abs, range(5), journal=journal)
    Path(f"{journal}-wal").write_bytes(b"x" * 100)  # (commits SQLite could not merge)
    with pytest.raises(manyhands.JournalError, match=r"read-only storage.*copy the journal"):
        read_status(journal)


def test_reading_a_finished_journal_leaves_no_wal_or_shm_file_behind(tmp_path: Path) -> None:
    from manyhands._inspect import read_failures

    journal = tmp_path / "run.db"
    manyhands.run(lambda x: 1 // (x - 3), range(5), journal=journal)
    before = journal.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["run.db", "run.db.lock"]
    assert read_status(journal).states == {"done": 4, "failed": 1}
    assert len(read_failures(journal)) == 1
    assert sorted(os.listdir(tmp_path)) == ["run.db", "run.db.lock"]
    assert journal.read_bytes() == before


@pytest.fixture
def committed(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Waits until the journal's writer has committed at least ``n`` rows."""
    from manyhands._journal_group import Group
    from manyhands._journal_writer import Writer

    rows = [0]
    changed = threading.Condition()
    commit = Writer._commit

    def counted(self: Writer, group: Group) -> None:
        commit(self, group)
        with changed:
            rows[0] += group.rows
            changed.notify_all()

    monkeypatch.setattr(Writer, "_commit", counted)

    def wait(n: int) -> None:
        with changed:
            assert changed.wait_for(lambda: rows[0] >= n, timeout=60), rows[0]

    return wait


def test_reading_a_journal_in_use_sees_its_latest_commits_and_leaves_its_files(
    tmp_path: Path, committed: Callable[[int], None]
) -> None:
    journal = tmp_path / "run.db"
    with manyhands.map(abs, range(1000), journal=journal, workers=1, batch_size=1) as outcomes:
        got = [next(outcomes) for _ in range(100)]
        # Recorded once delivered (the last batch as the next is asked for), committed
        # by the writer, which creates a new journal beside the run's start.
        delivered = len(got) - 1
        committed(delivered)
        assert read_status(journal).total >= delivered
        assert os.path.exists(f"{journal}-wal") and os.path.exists(f"{journal}-shm")
        got += list(outcomes)
    assert len(got) == 1000
    assert read_status(journal).states == {"done": 1000}


@pytest.mark.parametrize("held", ["empty file", "no tables yet"])
def test_a_journal_a_starting_run_creates_reads_as_none_yet_never_as_an_sqlite_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], held: str
) -> None:
    """The writer creates a new journal beside the run's start: the file exists before its
    tables do. Read then (``status``, ``failures``), it is not there yet, with a clear
    message; once created, it is whole."""
    from manyhands import _journal, _journal_file
    from manyhands._inspect import read_failures
    from manyhands.cli import main

    reached, go_on = threading.Event(), threading.Event()
    # (before SQLite opens the file the run created; or once in WAL mode, before its tables)
    module, name = (
        (_journal, "open_db") if held == "empty file" else (_journal_file, "_create_schema")
    )
    create = getattr(module, name)

    def holding(*args: Any) -> Any:
        reached.set()
        assert go_on.wait(60)
        return create(*args)

    monkeypatch.setattr(module, name, holding)
    journal = tmp_path / "run.db"
    reports: list[manyhands.Report] = []
    run = threading.Thread(
        target=lambda: reports.append(manyhands.run(abs, range(10), journal=journal))
    )
    run.start()
    try:
        assert reached.wait(60)
        for read in (read_status, read_failures):
            with pytest.raises(manyhands.JournalError, match=r"^no journal at '.*run.db' yet: "):
                read(journal)
        capsys.readouterr()
        assert main(["status", str(journal)]) == 2
        shown = capsys.readouterr()
        assert shown.err.startswith("manyhands: error: no journal at") and " yet: " in shown.err
        assert "no such table" not in shown.err
    finally:
        go_on.set()
        run.join()
    assert reports[0].succeeded == 10
    assert read_status(journal).states == {"done": 10}
