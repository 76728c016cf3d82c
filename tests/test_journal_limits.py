"""Rows longer than SQLite stores: the run goes on, and only that item loses what did not fit.

SQLite refuses a string, a BLOB or a row longer than its length limit (1e9
bytes by default), and with it the whole commit. These tests lower the limit
(the connection's own, on Python 3.11+, or the constant the journal reads) so
that nothing big is allocated.
"""

from __future__ import annotations

import contextlib
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands import _journal, _journal_rows, _journal_text

LIMIT = 20_000  # bytes in a row
BIG = 30_000


@pytest.fixture
def sqlite_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's connection refuses rows longer than LIMIT, as SQLite does past 1e9 bytes."""
    if not hasattr(sqlite3.Connection, "setlimit"):
        pytest.skip("Connection.setlimit is Python 3.11+")
    opened = _journal.open_db

    def open_db(path: Path, durability: str) -> sqlite3.Connection:
        db = opened(path, durability)
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, LIMIT)
        return db

    monkeypatch.setattr(_journal, "open_db", open_db)


def stored(path: Path) -> dict[str, tuple[Any, ...]]:
    """key -> (state, message, traceback, result) of every record."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        found = db.execute("SELECT key, state, message, traceback, result FROM items")
        return {key: tuple(rest) for key, *rest in found}


def big_value(x: int) -> Any:
    if x == 3:
        return b"x" * BIG
    if x == 4:
        return "y" * BIG
    return x


@pytest.mark.usefixtures("sqlite_limit")
@pytest.mark.parametrize("store_results", [True, "pickle"])
def test_a_value_too_long_for_a_row_leaves_its_item_done_without_it(
    tmp_path: Path, store_results: Any
) -> None:
    # (Before, the commit failed with "string or blob too big": the run stopped with
    # a JournalError naming no item, and every resume stopped there again.)
    journal = tmp_path / "run.db"
    calls: list[int] = []

    def fn(x: int) -> Any:
        calls.append(x)
        return big_value(x) if store_results == "pickle" or x != 3 else x

    first = "3, a bytes" if store_results == "pickle" else "4, a str"
    with pytest.warns(manyhands.JournalWarning, match=rf"value of item {first}, is 30,0\d\d bytes"):
        report = manyhands.run(fn, range(10), journal=journal, store_results=store_results)
    assert (report.succeeded, report.failed) == (10, 0)
    rows = stored(journal)
    assert len(rows) == 10
    assert rows["4"][0] == "done" and rows["4"][3] is None
    calls.clear()
    with pytest.warns(manyhands.JournalWarning, match="was not stored"):
        outs = list(manyhands.map(fn, range(10), journal=journal, store_results=store_results))
    assert calls == []
    values = {out.item: out.value for out in outs}
    assert values[4] is None and values[7] == 7


@pytest.mark.usefixtures("sqlite_limit")
def test_a_long_error_message_is_stored_cut_and_the_run_goes_on(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"

    def fn(x: int) -> int:
        if x == 2:
            raise ValueError("start " + "m" * BIG + " end")
        return x

    report = manyhands.run(fn, range(5), journal=journal)
    assert (report.succeeded, report.failed) == (4, 1)
    assert report.failures[0].message.endswith(" end")  # (the Failure itself is whole)
    state, message, traceback, _ = stored(journal)["2"]
    assert state == "failed"
    assert message.startswith("start mmm") and message.endswith("mmm end")
    assert "characters not stored" in message and len(message) < LIMIT // 4
    assert "ValueError" in traceback.splitlines()[0] + traceback
    again = manyhands.run(fn, range(5), journal=journal)
    assert (again.skipped_failed, again.succeeded) == (1, 0)


@pytest.mark.usefixtures("sqlite_limit")
def test_a_key_too_long_for_a_row_is_left_out_with_a_warning(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        return x

    def key(x: int) -> str:
        return "k" * BIG if x == 1 else f"k{x}"

    for succeeded, skipped in ((3, 0), (1, 2)):
        with pytest.warns(manyhands.JournalWarning, match=r"key of item 1 is 30,000 bytes"):
            report = manyhands.run(fn, [0, 1, 2, 1], journal=journal, key=key)
        assert (report.succeeded, report.skipped) == (succeeded, skipped)
        assert report.duplicates == 1  # (its copy is still a duplicate)
    assert sorted(calls) == [0, 1, 1, 2]  # only the item that could not be recorded ran again
    assert sorted(stored(journal)) == ["k0", "k2"]


def test_the_limit_is_read_where_python_cannot_ask_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_journal_text, "LENGTH_LIMIT", LIMIT)  # (Python 3.10 reads only it)
    journal = tmp_path / "run.db"
    with pytest.warns(manyhands.JournalWarning, match=r"value of item 3, a bytes, is 3\d,\d+ "):
        report = manyhands.run(big_value, range(5), journal=journal, store_results="pickle")
    assert report.succeeded == 5
    assert stored(journal)["3"][3] is None and stored(journal)["2"][3] is not None


def test_messages_and_tracebacks_are_cut_to_max_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_journal_rows, "MAX_TEXT", 1000)
    journal = tmp_path / "run.db"

    def fn(x: int) -> int:
        raise ValueError("m" * 5000 if x else "short")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manyhands.run(fn, range(2), journal=journal)
    rows = stored(journal)
    assert rows["0"][1] == "short"
    assert len(rows["1"][1]) <= 1000 and len(rows["1"][2]) <= 1000
    assert "of 5,000 characters not stored" in rows["1"][1]
