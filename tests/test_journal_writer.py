"""The journal's writer thread: group commit, back-pressure, flushed on every way a run ends."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands import _journal_file, _journal_watch, _journal_writer
from manyhands._journal_group import Group
from manyhands._journal_writer import Writer
from manyhands._keys import default_key

from .conftest import Hands
from .test_journal_files import once_open


def recorded(journal: Path) -> dict[str, str]:
    with sqlite3.connect(journal) as db:
        found = dict(db.execute("SELECT key, state FROM items").fetchall())
    db.close()
    return found


def fail_at_150(x: int) -> int:
    if x == 150:
        raise ValueError(x)
    return x


@pytest.fixture
def slow_writer(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Each commit takes 10 ms more (a slow disk); returns the keys of each group written."""
    groups: list[list[str]] = []
    commit = Writer._commit

    def slow(self: Writer, group: Group) -> None:
        time.sleep(0.01)
        commit(self, group)
        groups.append([key for keys in group.keys for key in keys])

    monkeypatch.setattr(Writer, "_commit", slow)
    return groups


def test_a_slow_disk_makes_finishing_calls_wait_instead_of_piling_up_rows(
    tmp_path: Path, slow_writer: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_journal_writer, "MAX_PENDING", 100)
    journal = tmp_path / "run.db"
    report = manyhands.run(abs, range(3000), journal=journal, workers=4, batch_size=10)
    assert report.succeeded == 3000
    assert len(recorded(journal)) == 3000
    sizes = [len(group) for group in slow_writer]
    assert max(sizes) <= 100  # never more rows waiting than the bound ...
    assert max(sizes) == 100  # ... and the work did wait for the disk


ENDINGS = ["end", "break", "stop rule", "input error", "interrupt"]


def items_until(n: int, broken_at: int | None) -> Iterator[int]:
    for x in range(n):
        if x == broken_at:
            raise OSError("the input broke")
        yield x


def logging_calls(log: Path) -> Callable[[int], int]:
    """``fail_at_150``, writing down each item it is called with (in any process)."""

    def fn(x: int) -> int:
        with open(log, "a") as calls:  # (one short line per write: appends never mix)
            calls.write(f"{x}\n")
        return fail_at_150(x)

    return fn


@pytest.mark.parametrize("ending", ENDINGS)
def test_every_way_a_run_ends_flushes_the_writer_and_leaves_no_thread(
    tmp_path: Path, hands: Hands, slow_writer: list[list[str]], no_thread_left: None, ending: str
) -> None:
    journal, log = tmp_path / "run.db", tmp_path / "calls.txt"
    options: dict[str, Any] = {"journal": journal, "workers": 3, "batch_size": 5}
    if ending == "stop rule":
        options["stop_after_failures"] = 1
    items = items_until(400, 250 if ending == "input error" else None)
    seen: list[str] = []
    never_called: list[str] = []  # (processes, after a stop rule: batches not begun)
    try:
        with hands.map(logging_calls(log), items, **options) as outcomes:
            for outcome in outcomes:
                error = outcome.error.exception if outcome.error is not None else None
                if isinstance(error, manyhands.WorkerCrashed) and not error.ran:
                    never_called.append(default_key(outcome.item))
                    continue
                seen.append(default_key(outcome.item))
                if len(seen) == 200 and ending in ("break", "interrupt"):
                    if ending == "interrupt":
                        raise KeyboardInterrupt
                    break
    except (KeyboardInterrupt, manyhands.InputError):
        pass
    called = set(log.read_text().split())
    assert set(seen) <= called and not called & set(never_called)
    assert ending != "end" or len(seen) == 400
    if ending == "stop rule":
        # Every item read before the failure has its outcome: called, or (processes)
        # never begun. Which ones a worker held unbegun as the rule fired is timing:
        # under load, one worker's first batch can wait while the others reach 150.
        assert "150" in seen
        assert {str(x) for x in range(150)} <= set(seen) | set(never_called)
    else:
        assert len(seen) >= 150
    # Every outcome of a call the consumer got is committed by the time the run
    # returned; those of items never called are not (a resume runs them).
    journaled = recorded(journal)
    assert set(journaled) == set(seen)
    assert ending != "stop rule" or journaled["150"] == "failed"
    assert not never_called or (hands.backend == "processes" and ending == "stop rule")
    assert slow_writer, "the writer did the writing"


def test_runs_of_a_pool_each_have_their_writer_and_leave_none(
    tmp_path: Path, no_thread_left: None
) -> None:
    with manyhands.Pool(workers=4) as pool:
        results: dict[str, manyhands.Report] = {}

        def one(name: str) -> None:
            results[name] = pool.run(abs, range(2000), journal=tmp_path / f"{name}.db")

        threads = [threading.Thread(target=one, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results["a"].succeeded == results["b"].succeeded == 2000
    assert len(recorded(tmp_path / "a.db")) == len(recorded(tmp_path / "b.db")) == 2000


def test_a_failed_commit_stops_the_run_with_nothing_half_written(
    tmp_path: Path, slow_writer: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[list[str]] = []
    commit = Writer._commit  # (the slow one)

    def watched(self: Writer, group: Group) -> None:
        tried.append([key for keys in group.keys for key in keys])
        commit(self, group)

    monkeypatch.setattr(Writer, "_commit", watched)
    # The failure's row goes in the same transaction as the group's done rows: make it fail.
    nowhere = "INSERT INTO nowhere VALUES (?)"
    monkeypatch.setattr(_journal_writer, "failed_rows", lambda rows, _: (nowhere, rows))
    journal = tmp_path / "run.db"
    with pytest.raises(manyhands.JournalError, match="nowhere") as info:
        manyhands.run(fail_at_150, range(3000), journal=journal, workers=2, batch_size=10)
    assert "will run again" in str(info.value)
    kept = recorded(journal)
    assert set(kept) == {key for group in slow_writer for key in group}  # the groups committed
    assert not set(kept) & set(tried[-1])  # the failed group: none of its rows
    # (Under load the first group may already hold item 150: then nothing was committed.)
    assert "150" in tried[-1] and set(kept.values()) <= {"done"}
    monkeypatch.undo()
    resumed = manyhands.run(fail_at_150, range(3000), journal=journal, workers=2)
    assert resumed.skipped == len(kept) and resumed.total == 3000


def test_a_writer_that_breaks_stops_the_run_instead_of_hanging_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_thread_left: None
) -> None:
    def broken(self: Writer, group: Group) -> None:
        raise MemoryError

    monkeypatch.setattr(Writer, "_commit", broken)
    with pytest.raises(manyhands.JournalError, match=r"writer failed.*will run again"):
        manyhands.run(abs, range(5000), journal=tmp_path / "run.db", workers=2, batch_size=10)


@pytest.mark.parametrize(
    "items",
    [
        ['say "hi"', "back\\slash", "tab\there", "new\nline", "é", "日本", "🎉", "\x00", "\x7f"],
        [1, -1, 2**70, 1.5, True, None, b"\xff", (1, "a"), {"k": [1, 2]}],
    ],
    ids=["text", "other"],
)
def test_keys_written_by_the_writer_are_exactly_the_default_keys(
    tmp_path: Path, items: list[Any]
) -> None:
    journal = tmp_path / "run.db"
    assert manyhands.run(repr, items, journal=journal).succeeded == len(items)
    assert set(recorded(journal)) == {default_key(item) for item in items}
    assert manyhands.run(repr, items, journal=journal).skipped == len(items)


def test_durability_is_validated_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"durability='fsync' is not accepted.*'normal', 'full'"):
        manyhands.run(abs, [1], journal=tmp_path / "run.db", durability="fsync")
    assert not (tmp_path / "run.db").exists()


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[Writer]:
    """The writers made while the test runs."""
    made: list[Writer] = []
    init = Writer.__init__

    def keep(self: Writer, *args: Any) -> None:
        made.append(self)
        init(self, *args)

    monkeypatch.setattr(Writer, "__init__", keep)
    return made


def test_the_files_are_checked_once_per_interval_not_before_every_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writers: list[Writer]
) -> None:
    checked: list[str] = []
    journal_problem = _journal_watch.Watch.journal_problem

    def counted(self: _journal_watch.Watch) -> str | None:
        checked.append(threading.current_thread().name)
        return journal_problem(self)

    monkeypatch.setattr(_journal_watch.Watch, "journal_problem", counted)
    monkeypatch.setattr(_journal_writer, "WATCH_INTERVAL", 3600.0)
    slow = slowed(0.003)
    manyhands.run(slow, range(400), journal=tmp_path / "run.db", workers=4, batch_size=2)
    [writer] = writers
    assert writer.commits > 5
    # The writer checked before it opened the new journal and before its first commit
    # only; the journal again as it closed.
    assert writer.checks == 1
    assert checked.count("manyhands-journal") == 2
    assert len(checked) == 3


def test_a_journal_removed_between_checks_still_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_journal_writer, "WATCH_INTERVAL", 3600.0)
    folder = tmp_path / "state"
    folder.mkdir()
    journal = folder / "run.db"

    def fn(x: int) -> int:
        if x == 300:
            once_open(journal, lambda: shutil.rmtree(folder))()
        return x

    with pytest.raises(manyhands.JournalError, match="was removed during the run"):
        manyhands.run(fn, range(2000), journal=journal, workers=2, batch_size=10)
    assert not folder.exists(), "nothing was written where the journal was"


def test_each_time_the_writer_waits_for_rows_one_hand_over_wakes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writers: list[Writer]
) -> None:
    waits: list[int] = []  # the writer's waits for rows
    notified: list[int] = []  # the consumer's wake-ups of it
    wait, notify = threading.Condition.wait, threading.Condition.notify

    def counted_wait(self: threading.Condition, timeout: float | None = None) -> bool:
        writer = threading.current_thread().name == "manyhands-journal"
        if writer and self is writers[0]._cond and timeout is None:
            waits.append(1)
        return wait(self, timeout)

    def counted_notify(self: threading.Condition, n: int = 1) -> None:
        if writers and self is writers[0]._cond:
            notified.append(1)
        notify(self, n)

    def notify_all(self: threading.Condition) -> None:  # (not counted: not a hand-over's)
        notify(self, len(self._waiters))  # type: ignore[attr-defined]

    monkeypatch.setattr(threading.Condition, "wait", counted_wait)
    monkeypatch.setattr(threading.Condition, "notify", counted_notify)
    monkeypatch.setattr(threading.Condition, "notify_all", notify_all)
    report = manyhands.run(slowed(0.001), range(3000), journal=tmp_path / "run.db", workers=16)
    assert report.succeeded == 3000
    assert len(notified) <= len(waits)  # (before: a wake-up per hand-over while it woke)


def slowed(seconds: float) -> Any:
    def fn(x: int) -> int:
        time.sleep(seconds)
        return x

    return fn


@pytest.fixture(params=[True, False], ids=["json in sqlite", "row by row"])
def json_in_sqlite(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways the writer records done batches: one JSON statement, or a row at a time."""
    if not request.param:
        monkeypatch.setattr(_journal_writer, "supports_json", lambda db, run_id: False)
    return bool(request.param)


def test_done_rows_hold_each_items_seconds_and_when_it_finished(
    tmp_path: Path, json_in_sqlite: bool
) -> None:
    journal = tmp_path / "run.db"
    began = time.time()
    manyhands.run(slowed(0.02), range(6), journal=journal, workers=2, batch_size=3)
    ended = time.time()
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT key, elapsed, finished FROM items").fetchall()
    db.close()
    assert len(rows) == 6
    for _, elapsed, finished in rows:
        assert 0.02 <= elapsed < 5  # seconds per item
        assert began + 0.06 <= finished <= ended  # seconds since the epoch


@pytest.fixture
def new_writer(tmp_path: Path) -> Iterator[Callable[[], tuple[Writer, sqlite3.Connection, int]]]:
    """Makes a writer on a fresh journal of a run of its own: (writer, its db, the run's id)."""
    path = tmp_path / "run.db"
    lock = _journal_file.acquire_lock(path)
    db = _journal_file.open_db(path, "normal")

    def make() -> tuple[Writer, sqlite3.Connection, int]:
        run_id = db.execute("INSERT INTO runs (status) VALUES ('running')").lastrowid
        db.commit()
        assert run_id is not None
        watch = _journal_watch.Watch(path, lock)
        return Writer(lambda: (db, watch, run_id), "unused"), db, run_id

    yield make
    db.close()
    _journal_file.release_lock(lock)


def test_each_key_of_a_group_gets_its_own_batchs_fields(
    new_writer: Callable[[], tuple[Writer, sqlite3.Connection, int]], json_in_sqlite: bool
) -> None:
    writer, db, run_id = new_writer()
    batches = [
        (1, 1_000, 1_000_000, ["a", "b"]),
        (3, 2_000_000, 2_500_000, ["c"]),
        (2, 5, 7, ["d"]),
    ]
    # (attempts, elapsed in ns, finished in us): one group, so one statement
    writer.hand_over(Group(batches=batches, keys=[keys for *_, keys in batches], rows=4))
    writer.close()
    rows = db.execute("SELECT key, state, attempts, elapsed, finished, run FROM items ORDER BY key")
    assert rows.fetchall() == [
        ("a", "done", 1, 1e-6, 1.0, run_id),
        ("b", "done", 1, 1e-6, 1.0, run_id),
        ("c", "done", 3, 0.002, 2.5, run_id),
        ("d", "done", 2, 5e-9, 7e-6, run_id),
    ]


def test_rows_handed_over_during_the_interval_wait_for_it_without_waking_the_writer(
    new_writer: Callable[[], tuple[Writer, sqlite3.Connection, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_journal_writer, "COMMIT_INTERVAL", 30.0)
    writer, db, _ = new_writer()
    woken: list[int] = []
    notify = writer._cond.notify

    def counted(n: int = 1) -> None:
        if threading.current_thread() is threading.main_thread():  # (the writer's own: not)
            woken.append(n)
        notify(n)

    writer._cond.notify = counted  # type: ignore[method-assign]
    deadline = time.monotonic() + 10
    while not writer._idle and time.monotonic() < deadline:
        time.sleep(0.001)
    writer.hand_over_done(1, 0.001, time.time(), ["a"])  # an idle writer: woken
    while not writer.commits and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)  # (the writer waits for its next interval by now)
    writer.hand_over_done(1, 0.001, time.time(), ["b"])  # within the interval: not woken
    assert len(woken) == 1
    writer.close()  # (the end commits at once, whatever the interval)
    assert writer.commits == 2
    keys = [key for (key,) in db.execute("SELECT key FROM items ORDER BY key")]
    assert keys == ["a", "b"]


# -- a new journal opens beside the run's start --


def test_a_new_journal_is_opened_by_the_writer_and_an_existing_one_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from manyhands import _journal

    opened_in: list[str] = []
    open_db = _journal.open_db

    def noted(path: Path, durability: str) -> sqlite3.Connection:
        opened_in.append(threading.current_thread().name)
        return open_db(path, durability)

    monkeypatch.setattr(_journal, "open_db", noted)
    journal = tmp_path / "run.db"
    first = manyhands.run(str, range(100), journal=journal, workers=2)
    # (an existing journal: its records decide what runs, so it is read first)
    second = manyhands.run(str, range(120), journal=journal, workers=2)
    assert opened_in == ["manyhands-journal", "MainThread"]
    assert (first.succeeded, second.skipped, second.succeeded) == (100, 100, 20)
    assert len(recorded(journal)) == 120


def test_a_new_journal_that_cannot_be_opened_stops_the_run_at_its_first_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_thread_left: None
) -> None:
    from manyhands import _journal

    def broken(path: Path, durability: str) -> sqlite3.Connection:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(_journal, "open_db", broken)
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        time.sleep(0.001)
        return x

    with pytest.raises(manyhands.JournalError, match="cannot write the journal") as info:
        manyhands.run(fn, range(10_000), journal=tmp_path / "run.db", workers=2)
    message = str(info.value)
    assert "disk I/O error; the run stopped" in message  # (not "nothing was run": items ran)
    assert "will run again" in message
    assert 0 < len(calls) < 10_000  # it stopped at the first outcome it could not record
    monkeypatch.undo()
    resumed = manyhands.run(str, range(10), journal=tmp_path / "run.db")
    assert resumed.succeeded == 10  # nothing was recorded; the lock was released


def test_a_new_journal_replaced_as_it_opens_stops_the_run_and_the_other_file_is_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from manyhands import _journal

    other = tmp_path / "other.db"
    manyhands.run(str, ["a", "b"], journal=other)
    before = other.read_bytes()
    journal = tmp_path / "run.db"
    open_db = _journal.open_db

    def replaced_first(path: Path, durability: str) -> sqlite3.Connection:
        os.replace(other, journal)  # (another file put where the new journal was created)
        return open_db(path, durability)

    monkeypatch.setattr(_journal, "open_db", replaced_first)
    with pytest.raises(manyhands.JournalError, match="was replaced by another file"):
        manyhands.run(str, range(1000), journal=journal, workers=2)
    assert journal.read_bytes() == before
