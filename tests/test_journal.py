"""The journal: resume after any stop, skip what is final, run duplicates once."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import functools
import json
import operator
import os
import sqlite3
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands import _journal, _journal_read
from manyhands._batch import Batch
from manyhands._outcome import Failure

from .conftest import Hands, python_subprocess_env


def rows(path: Path) -> dict[str, tuple[Any, ...]]:
    """key -> (state, attempts, error_type, message) of every record."""
    with contextlib.closing(sqlite3.connect(path)) as db:  # (3.13 warns of unclosed ones)
        found = db.execute("SELECT key, state, attempts, error_type, message FROM items")
        return {key: tuple(rest) for key, *rest in found}


def counting(fail: set[int] | None = None) -> tuple[Counter[int], Any]:
    calls: Counter[int] = Counter()
    lock = threading.Lock()

    def fn(x: int) -> int:
        with lock:
            calls[x] += 1
        if fail and x in fail:
            raise ValueError(f"bad {x}")
        return x * 2

    return calls, fn


def test_rerun_skips_done_and_failed_items_and_counts_add_up(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    calls, fn = counting(fail={3, 30, 300})
    first = manyhands.run(fn, range(1000), journal=journal, workers=8)
    assert (first.succeeded, first.failed, first.skipped) == (997, 3, 0)
    recorded = rows(journal)
    assert len(recorded) == 1000
    assert recorded["30"] == ("failed", 1, "builtins.ValueError", "bad 30")
    assert recorded["31"][0] == "done"

    second = manyhands.run(fn, range(1200), journal=journal, workers=8)
    assert (second.succeeded, second.failed, second.skipped) == (200, 0, 1000)
    assert second.total == 1200
    assert all(calls[n] == 1 for n in range(1200)), "a final item ran again"
    assert "997 skipped (done in the journal), 3 skipped (failed in the journal" in str(second)


def test_map_yields_skipped_outcomes_with_stored_results_in_order(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    calls, fn = counting(fail={2})
    list(manyhands.map(fn, range(5), journal=journal, store_results=True))
    outs = list(manyhands.map(fn, range(7), journal=journal, store_results=True, ordered=True))
    assert [o.item for o in outs] == list(range(7))
    assert [o.skipped for o in outs] == [
        "done in the journal",
        "done in the journal",
        "failed in the journal",
        "done in the journal",
        "done in the journal",
        None,
        None,
    ]
    assert [o.value for o in outs] == [0, 2, None, 6, 8, 10, 12]
    failed = outs[2].error
    assert failed is not None and failed.error_type == "builtins.ValueError"
    assert failed.message == "bad 2" and "ValueError: bad 2" in failed.traceback
    assert outs[0].attempts == 0 and outs[5].attempts == 1
    assert sum(calls.values()) == 7


def test_values_that_are_not_json_are_not_stored_and_their_items_stay_done(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"
    calls, _ = counting()

    def fn(x: int) -> Any:
        calls[x] += 1
        return {x} if x % 2 else [x, "ok"]

    with pytest.warns(
        manyhands.JournalWarning,
        match=r"item 1, a set, cannot be stored as JSON "
        r"\(TypeError: Object of type set is not JSON serializable\)\.",
    ):
        outs = list(manyhands.map(fn, range(4), journal=journal, store_results=True))
    assert all(o.ok for o in outs) and {o.item: o.value for o in outs}[1] == {1}
    with pytest.warns(manyhands.JournalWarning, match=r"of 1, done in the journal, was not stored"):
        again = list(manyhands.map(fn, range(4), journal=journal, store_results=True, ordered=True))
    assert [o.value for o in again] == [[0, "ok"], None, [2, "ok"], None]
    assert {o.skipped for o in again} == {"done in the journal"}
    assert calls == Counter(range(4)), "a done item ran again"


def test_store_results_pickle_keeps_any_picklable_value_exactly(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    values = {0: {1, 2}, 1: (1, "a"), 2: {1: "int key"}}
    list(manyhands.map(values.get, values, journal=journal, store_results="pickle"))
    again = list(manyhands.map(values.get, values, journal=journal, store_results="pickle"))
    assert {o.item: o.value for o in again} == values
    assert {o.skipped for o in again} == {"done in the journal"}
    with pytest.raises(ValueError, match=r"store_results must be True .* 'pickle' .* got 'yes'"):
        manyhands.run(str, [1], journal=journal, store_results="yes")  # type: ignore[arg-type]


def test_retry_failed_runs_only_the_failures_again(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    _, fn = counting(fail={1, 2})
    manyhands.run(fn, range(10), journal=journal)
    _, fixed = counting()
    report = manyhands.run(fixed, range(10), journal=journal, retry_failed=True)
    assert (report.succeeded, report.failed, report.skipped) == (2, 0, 8)
    assert {key: state for key, (state, *_) in rows(journal).items()} == {
        str(n): "done" for n in range(10)
    }


def test_duplicate_keys_in_one_input_run_once(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    calls, fn = counting()
    items = [1, 2, 2, 3, 1, 2] * 3
    outs = list(manyhands.map(fn, items, journal=journal, ordered=True, workers=4))
    assert [o.item for o in outs] == items
    assert calls == Counter({1: 1, 2: 1, 3: 1})
    assert sum(o.skipped == "duplicate key" for o in outs) == 15
    report = manyhands.run(fn, [7, 7, 7], journal=journal)
    assert (report.succeeded, report.duplicates, report.total) == (1, 2, 3)
    assert "2 skipped (duplicate keys)" in str(report)


@pytest.mark.parametrize(("ordered", "fresh_keys"), [(False, 0), (True, 0), (True, 250_000)])
def test_a_duplicate_has_its_first_copys_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ordered: bool, fresh_keys: int
) -> None:
    """A later copy of a key says what happened to the first: ok, or its Failure.

    Before, every copy said ok, even of an item that failed. Copies come while
    the first still runs, once it is final but not committed, and (after the
    pause) once it is committed and looked up again: each path gives the same.
    (With fresh_keys, the journal is new to the run: committed keys stay in
    memory and their failures are read from the file.)
    """
    monkeypatch.setattr(_journal_read, "BLOCK", 8)
    monkeypatch.setattr(_journal_read, "FRESH_KEYS", fresh_keys)
    failing = {3, 6, 13}
    calls, counted = counting(fail=failing)

    def fn(x: int) -> int:
        time.sleep(0.002 * (x % 4))  # (first copies still running when later ones come)
        return int(counted(x))

    def items() -> Any:
        yield from [1, 3, 3, 2, 6, 1, 6, 4, 3, 13, 5, 13, *range(20, 30), 6, 1]
        time.sleep(0.1)  # (the first copies are committed by now)
        yield from [3, 1, 13, 2]

    listed = list(items())
    once = manyhands.Retry(retries=1, backoff=0.001)
    outcomes = manyhands.map(
        fn, items(), journal=tmp_path / "run.db", ordered=ordered, workers=4, retry=once
    )
    outs = list(outcomes)
    assert sorted(o.item for o in outs) == sorted(listed)
    if ordered:
        assert [o.item for o in outs] == listed
    assert calls == Counter(dict.fromkeys(set(listed), 1)) + Counter(dict.fromkeys(failing, 1))
    firsts = {o.item: o for o in outs if o.skipped is None}
    copies = [o for o in outs if o.skipped == "duplicate key"]
    assert len(firsts) == len(set(listed)) and len(copies) == len(listed) - len(set(listed))
    for copy in copies:
        first = firsts[copy.item]
        assert copy.ok == first.ok == (copy.item not in failing), copy
        assert copy.attempts == 0 and copy.value is None
        if not copy.ok:
            assert copy.error is not None and first.error is not None
            assert (copy.error.error_type, copy.error.message, copy.error.attempts) == (
                "builtins.ValueError",
                f"bad {copy.item}",
                2,
            )
            assert copy.error.item == copy.item and copy.error.traceback == first.error.traceback
    report = outcomes.report
    assert (report.failed, report.duplicates) == (len(failing), len(copies))


def test_duplicates_waiting_for_their_first_copy_when_the_consumer_leaves(
    tmp_path: Path,
) -> None:
    release = threading.Event()

    def fn(x: int) -> int:
        if x == 0:
            release.wait(5)
        return x

    outs = manyhands.map(fn, [0, 0, 0, 1, 2], journal=tmp_path / "run.db", workers=2)
    for outcome in outs:
        assert outcome.item in (1, 2)  # the copies of 0 wait for it, and it waits
        break
    release.set()
    outs.close()
    report = outs.report
    assert (report.total, report.duplicates) == (1, 0)  # counted: what the consumer got


@pytest.mark.parametrize("resumed", [False, True])
def test_a_slow_input_runs_items_as_they_come(tmp_path: Path, resumed: bool) -> None:
    """Lines from a pipe or a queue: items run while the input is still giving more."""
    journal = tmp_path / "run.db"
    calls, fn = counting()
    if resumed:  # (items looked up in the journal take another path)
        manyhands.run(fn, range(0, 20, 2), journal=journal)
        calls.clear()
    called_by_the_last: list[int] = []

    def source() -> Any:
        for item in range(20):
            time.sleep(0.05)  # (a producer: one item every 50 ms)
            if item == 19:
                called_by_the_last.append(sum(calls.values()))
            yield item

    report = manyhands.run(fn, source(), journal=journal, workers=4)
    assert (report.succeeded, report.skipped) == ((10, 10) if resumed else (20, 0))
    # Before, the journal read 512 items (or the whole input) before running any.
    assert called_by_the_last[0] >= (5 if resumed else 10)


@pytest.mark.parametrize("workers", [1, 4])
def test_blocks_of_new_keys_and_blocks_with_known_ones_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Input is read in blocks: one of new keys is taken without checks, others item by item."""
    monkeypatch.setattr(_journal_read, "BLOCK", 8)
    journal = tmp_path / "run.db"
    calls, fn = counting(fail={21})
    manyhands.run(fn, range(16, 24), journal=journal)  # a block recorded before
    calls.clear()
    # Blocks: new; new; new but for 9 and 10 (repeated); recorded; new; repeats of the first.
    items = [*range(8), *range(8, 16), 9, 10, *range(24, 30), *range(16, 24), *range(30, 38)]
    items += [*range(8)]
    outs = list(manyhands.map(fn, items, journal=journal, ordered=True, workers=workers))
    assert [o.item for o in outs] == items
    assert calls == Counter(set(items) - set(range(16, 24)))  # each new key once
    reasons = Counter(o.skipped for o in outs)
    assert reasons == {
        None: 30,
        "duplicate key": 10,
        "done in the journal": 7,
        "failed in the journal": 1,
    }


def taken(
    journal: _journal.Journal, source: Any, size: int = 8, fail: frozenset[int] = frozenset()
) -> list[_journal.Segment]:
    """Every segment ``journal.take`` gives for ``source``; the run ones recorded as done.

    Or as failed: the items in ``fail``.
    """
    segments = []
    while (segment := journal.take(source, size, size)) is not None:
        segments.append(segment)
        if segment.reasons is None and segment.items:
            batch = Batch(len(segments), segment.items, None)  # type: ignore[arg-type]
            batch.keys, batch.values = segment.keys, list(segment.items)
            batch.failures = {
                index: Failure(item, "builtins.ValueError", f"bad {item}", "Traceback", 1)
                for index, item in enumerate(segment.items)
                if item in fail
            }
            journal.record(batch, set())
            journal.commit()  # (committed: a lookup, if any, finds them)
    return segments


@pytest.mark.parametrize("fresh_keys", [10_000, 20, 0])
def test_a_journal_new_to_the_run_skips_lookups_up_to_a_bound_and_repeats_still_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_keys: int
) -> None:
    """A journal with no record keeps the run's keys in memory, up to FRESH_KEYS.

    Within the bound nothing is looked up; past it, no more committed keys are
    kept and lookups find them: either way a repeated key is skipped, once.
    """
    monkeypatch.setattr(_journal_read, "FRESH_KEYS", fresh_keys)
    journal = _journal.Journal(tmp_path / "run.db", str)
    reader = journal._opened()
    looked_up: list[int] = []

    class Reader:  # (counts the lookups)
        def execute(self, query: str, keys: list[str]) -> Any:
            looked_up.append(len(keys))
            return reader.execute(query, keys)

        def close(self) -> None:
            reader.close()

    journal._reader = Reader()  # type: ignore[assignment]
    try:
        segments = taken(journal, iter([*range(40), *range(40), *range(40, 48)]))
        kept = len(journal._unsaved)
    finally:
        journal.close("finished", {})
    ran = [item for segment in segments if segment.reasons is None for item in segment.items]
    skipped = [reason for segment in segments for reason in segment.reasons or ()]
    assert sorted(ran) == list(range(48))
    assert skipped == ["duplicate key"] * 40
    if fresh_keys == 10_000:
        assert (looked_up, kept) == ([], 48)  # no lookup; every key in memory
    else:
        assert sum(looked_up) > 0
        assert kept < 48  # past the bound, committed keys are not kept


@pytest.mark.parametrize("fresh_keys", [10_000, 0])
def test_a_repeat_of_a_failed_key_committed_gets_its_failure_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_keys: int
) -> None:
    """Its first copy's Failure, whether the key stayed in memory (fresh) or is looked up."""
    monkeypatch.setattr(_journal_read, "FRESH_KEYS", fresh_keys)
    journal = _journal.Journal(tmp_path / "run.db", str)
    try:
        # (blocks of 8 then 16: the repeats come once the first copies are committed)
        segments = taken(journal, iter([*range(16), *range(8)]), fail=frozenset({3}))
    finally:
        journal.close("finished", {})
    copies = [segment for segment in segments if segment.reasons is not None]
    assert [item for segment in copies for item in segment.items] == list(range(8))
    failures = {
        segment.items[index]: failure
        for segment in copies
        for index, failure in (segment.failures or {}).items()
    }
    assert list(failures) == [3]
    assert (failures[3].item, failures[3].message, failures[3].traceback) == (
        3,
        "bad 3",
        "Traceback",
    )


def test_key_function_and_edited_items(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    calls: list[str] = []

    def fn(row: dict[str, Any]) -> str:
        calls.append(row["name"])
        return str(row["name"]).upper()

    rows_v1 = [{"id": n, "name": f"n{n}"} for n in range(5)]
    manyhands.run(fn, rows_v1, journal=journal, key=lambda row: row["id"])
    assert set(rows(journal)) == {str(n) for n in range(5)}  # a str of the id as JSON

    edited = [*rows_v1[:3], {"id": 3, "name": "changed"}, rows_v1[4]]
    with pytest.raises(manyhands.JournalError, match=r"item 3 .* differs from the item") as info:
        manyhands.run(fn, edited, journal=journal, key=lambda row: row["id"])
    assert "changed_items='rerun'" in str(info.value)
    assert info.value.report is not None and info.value.report.skipped == 3

    calls.clear()
    manyhands.run(fn, edited, journal=journal, key=lambda row: row["id"], changed_items="skip")
    assert calls == []
    report = manyhands.run(
        fn, edited, journal=journal, key=lambda row: row["id"], changed_items="rerun"
    )
    assert calls == ["changed"] and report.succeeded == 1 and report.skipped == 4


def test_an_item_without_a_default_key_names_the_fix(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"

    class Thing:
        pass

    items = [1, 2, Thing(), 4]
    with pytest.raises(manyhands.JournalError, match=r"item 2 .* Pass key=") as info:
        manyhands.run(str, items, journal=journal)
    assert info.value.report is not None and info.value.report.succeeded == 2
    assert set(rows(journal)) == {"1", "2"}  # the items before it ran and were recorded


def test_a_failing_key_function_names_the_item(tmp_path: Path) -> None:
    with pytest.raises(manyhands.JournalError, match=r"key= raised KeyError for item 1"):
        manyhands.run(str, [{"id": 1}, {}], journal=tmp_path / "j.db", key=lambda r: r["id"])


@pytest.mark.parametrize("call", ["run", "map"])
def test_a_key_function_raising_stops_the_run_there_and_loses_none_of_the_items_before_it(
    tmp_path: Path, hands: Hands, call: str
) -> None:
    """The items before it ran, were delivered and recorded; the message says so, and the
    rerun with the item mended runs it and those after it only."""
    journal = tmp_path / "j.db"
    items: list[dict[str, int]] = [{"id": n} for n in range(1500)]
    items[1200] = {}  # (in the third block read: the blocks before it run meanwhile)
    said = r"key= raised KeyError for item 1200 \(\{\}\): 'id'.* Items before 1200 ran; it and"
    got: list[Any] = []
    with pytest.raises(manyhands.JournalError, match=said) as info:
        if call == "run":
            hands.run(str, items, journal=journal, key=lambda r: r["id"], workers=4)
        else:
            got += hands.map(str, items, journal=journal, key=lambda r: r["id"], workers=4)
    if call == "run":
        assert info.value.report is not None and info.value.report.succeeded == 1200
    else:
        assert sorted(outcome.value for outcome in got) == sorted(map(str, items[:1200]))
    assert set(rows(journal)) == {str(n) for n in range(1200)}
    items[1200] = {"id": 1200}
    report = hands.run(str, items, journal=journal, key=lambda r: r["id"], workers=4)
    assert (report.skipped, report.succeeded, report.failed) == (1200, 300, 0)


def test_a_key_function_returning_none_is_refused_naming_the_item(tmp_path: Path) -> None:
    """None for every item (a field's name mistyped) would skip all but the first item."""
    journal = tmp_path / "j.db"
    with pytest.raises(manyhands.JournalError, match=r"key= returned None for item 1") as info:
        manyhands.run(str, [{"id": 1}, {"ID": 2}], journal=journal, key=lambda r: r.get("id"))
    assert info.value.report is not None and info.value.report.succeeded == 1


@pytest.mark.parametrize(
    ("key", "said"),
    [
        (lambda r: uuid.UUID(int=r["id"]), r"returned UUID\('[-0]+1'\) \(type UUID\) .*str\(\) of"),
        (lambda r: datetime.date(2020, 1, r["id"]), r"\(type date\) .*str\(\) of the date"),
        (lambda r: decimal.Decimal(r["id"]), r"\(type Decimal\) .*str\(\) of the Decimal"),
        (lambda r: {r["id"]}, r"key= returned \{1\} \(type set\) .*sorted list"),
        (lambda r: (r["id"], object()), r"\(type tuple, holding a value of type object\)"),
    ],
)
def test_a_key_function_returning_no_key_type_says_what_it_returned_and_the_fix(
    tmp_path: Path, key: Any, said: str
) -> None:
    """Not "key= raised KeyTypeError": key= raised nothing, it returned a value with no key."""
    with pytest.raises(manyhands.JournalError, match=said) as info:
        manyhands.run(str, [{"id": 1}], journal=tmp_path / "j.db", key=key)
    assert "raised" not in str(info.value) and "for item 0" in str(info.value)


def test_a_changed_key_function_warns_and_is_recorded(tmp_path: Path) -> None:
    # Before, a changed key= reran every item with no word; the runs table did not
    # even say which key= a run had.
    journal = tmp_path / "run.db"
    rows = [{"id": i, "name": f"n{i}"} for i in range(3)]
    manyhands.run(str, rows, journal=journal, key=lambda r: r["id"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same key= again: no warning
        assert manyhands.run(str, rows, journal=journal, key=lambda r: r["id"]).skipped == 3
    with pytest.warns(manyhands.JournalWarning, match=r"same name, changed code.*run again"):
        manyhands.run(str, rows, journal=journal, key=lambda r: r["name"])
    with pytest.warns(manyhands.JournalWarning, match=r"has no key= \(default keys\)"):
        manyhands.run(str, rows, journal=journal)
    with pytest.warns(manyhands.JournalWarning, match=r"written with no key=.*has key=.*getter"):
        manyhands.run(str, rows, journal=journal, key=operator.itemgetter("id"))
    with pytest.warns(manyhands.JournalWarning, match=r"key=operator.itemgetter"):
        manyhands.run(str, rows, journal=journal, key=operator.itemgetter("name", "id"))
    with sqlite3.connect(journal) as db:
        keys = [json.loads(options).get("key") for (options,) in db.execute(
            "SELECT options FROM runs ORDER BY id")]  # fmt: skip
    db.close()
    name = f"{__name__}.test_a_changed_key_function_warns_and_is_recorded.<locals>.<lambda>"
    assert keys == [name, name, name, None, "operator.itemgetter", "operator.itemgetter"]


def _by(field: str) -> Any:
    return lambda row: row[field]


class _Getter:
    def __init__(self, field: str) -> None:
        self.field = field

    def __repr__(self) -> str:
        return f"<_Getter at {id(self):#x}>"  # (another text in every run)

    def get(self, row: dict[str, Any]) -> Any:
        return row[self.field]


def _get(getter: _Getter, row: dict[str, Any]) -> Any:
    return getter.get(row)


def test_a_key_told_by_its_captured_values_not_by_addresses(tmp_path: Path) -> None:
    # A closure's captured field was not compared: key=_by("id") then _by("name")
    # reran every item with no word. A partial's argument counted by its repr, which
    # held its address: an unchanged key warned on every resume.
    rows = [{"id": i, "name": f"n{i}"} for i in range(3)]
    journal = tmp_path / "closure.db"
    manyhands.run(str, rows, journal=journal, key=_by("id"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert manyhands.run(str, rows, journal=journal, key=_by("id")).skipped == 3
    with pytest.warns(manyhands.JournalWarning, match="captured values.*run again"):
        manyhands.run(str, rows, journal=journal, key=_by("name"))
    journal = tmp_path / "partial.db"
    manyhands.run(str, rows, journal=journal, key=functools.partial(_get, _Getter("id")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # another _Getter, the same field: no warning
        key = functools.partial(_get, _Getter("id"))
        assert manyhands.run(str, rows, journal=journal, key=key).skipped == 3
    with pytest.warns(manyhands.JournalWarning, match="run again"):
        manyhands.run(str, rows, journal=journal, key=functools.partial(_get, _Getter("name")))
    journal = tmp_path / "opaque.db"  # a captured value with no stable text: left out
    lock, other = threading.Lock(), threading.Lock()
    manyhands.run(str, rows, journal=journal, key=lambda row: (lock, row["id"])[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        key = lambda row: (other, row["id"])[1]  # noqa: E731
        assert manyhands.run(str, rows, journal=journal, key=key).skipped == 3


def test_a_key_function_rewritten_to_give_the_same_keys_does_not_warn(tmp_path: Path) -> None:
    # Its code differed, so a resume warned that the items recorded would run again,
    # and none did: the functions were compared, not the keys they give.
    rows = [{"id": i, "name": f"n{i}"} for i in range(300)]
    journal = tmp_path / "key.db"
    manyhands.run(str, rows, journal=journal, key=lambda r: r["id"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for key in (lambda row: int(row["id"]), operator.itemgetter("id"), _by("id")):
            assert manyhands.run(str, rows, journal=journal, key=key).skipped == 300
    journal = tmp_path / "default.db"  # written with default keys, resumed with key=
    manyhands.run(str, range(300), journal=journal)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert manyhands.run(str, range(300), journal=journal, key=lambda x: x).skipped == 300
        assert manyhands.run(str, range(300), journal=journal, key=str).skipped == 300
        assert manyhands.run(str, range(300), journal=journal).skipped == 300


def test_a_key_function_that_gives_other_keys_still_warns(tmp_path: Path) -> None:
    rows = [{"id": i, "name": f"n{i}"} for i in range(300)]
    journal = tmp_path / "j.db"
    manyhands.run(str, rows, journal=journal, key=lambda r: r["id"])
    # Other keys for some of the first items read only (from the 50th on).
    with pytest.warns(manyhands.JournalWarning, match="changed code.*run again"):
        report = manyhands.run(
            str, rows, journal=journal, key=lambda r: r["id"] if r["id"] < 50 else r["name"]
        )
    assert (report.skipped, report.succeeded) == (50, 250)
    # Items the journal has no record of tell nothing: a changed key= warns, as it did.
    new = [{"id": i, "name": f"n{i}"} for i in range(1000, 1100)]
    with pytest.warns(manyhands.JournalWarning, match="run again"):
        manyhands.run(str, new, journal=journal, key=lambda r: r["name"])


def test_changed_code_warns(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(lambda x: x + 1, range(3), journal=journal)
    with pytest.warns(manyhands.JournalWarning, match="changed code") as caught:
        manyhands.run(lambda x: x + 2, range(3), journal=journal)
    assert caught[0].filename == __file__  # it points at the user's call
    with pytest.warns(manyhands.JournalWarning) as caught:
        for _ in manyhands.map(functools.partial(add, 5), range(3), journal=journal):
            pass
    assert caught[0].filename == __file__


def add(k: int, x: int) -> int:
    return x + k


def test_a_second_run_on_a_journal_in_use_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    release = threading.Event()
    started = threading.Event()

    def slow(x: int) -> int:
        started.set()
        release.wait(10)
        return x

    first = threading.Thread(
        target=manyhands.run, args=(slow, range(3)), kwargs={"journal": journal}
    )
    first.start()
    try:
        assert started.wait(5)
        with pytest.raises(manyhands.JournalError, match=rf"in use by pid {os.getpid()} on "):
            manyhands.run(str, range(3), journal=journal)
    finally:
        release.set()
        first.join()
    assert len(rows(journal)) == 3
    manyhands.run(slow, range(3), journal=journal)  # free again


def test_a_lock_left_by_a_killed_run_is_not_in_the_way(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    code = (
        "import os, signal, manyhands\n"
        "def fn(x):\n"
        "    if x == 50: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return x\n"
        f"manyhands.run(fn, range(100), journal={str(journal)!r}, workers=1, batch_size=1)\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], env=python_subprocess_env(), timeout=60)
    assert done.returncode == -9
    assert (tmp_path / "run.db.lock").exists()
    with warnings.catch_warnings():  # (what the killed run committed was written by fn)
        warnings.simplefilter("ignore", manyhands.JournalWarning)
        report = manyhands.run(str, range(100), journal=journal)
    assert report.total == 100 and report.succeeded + report.skipped == 100
    assert report.skipped <= 50  # recorded: only what finished before the kill


def test_a_corrupt_or_foreign_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    before = garbage.read_bytes()
    with pytest.raises(manyhands.JournalError, match="not a readable journal"):
        manyhands.run(str, range(3), journal=garbage)
    assert garbage.read_bytes() == before

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    db.close()
    with pytest.raises(manyhands.JournalError, match="not a manyhands journal"):
        manyhands.run(str, range(3), journal=foreign)

    damaged = tmp_path / "damaged.db"
    manyhands.run(str, range(5000), journal=damaged)
    data = bytearray(damaged.read_bytes())
    page = 4096
    data[page * 2 : page * 2 + 200] = b"\xff" * 200  # scribble over a b-tree page
    damaged.write_bytes(bytes(data))
    with pytest.raises(manyhands.JournalError, match=r"corrupt|not a readable journal"):
        manyhands.run(str, range(5000), journal=damaged)
    assert damaged.read_bytes() == bytes(data)


@pytest.mark.parametrize(
    "tables",
    [
        ["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"],
        ["CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)", "CREATE TABLE runs (id)"],
    ],
)
def test_another_programs_empty_tables_named_like_ours_are_refused_untouched(
    tmp_path: Path, tables: list[str]
) -> None:
    app = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(app)) as db:
        for table in tables:
            db.execute(table)
        db.commit()
    before = app.read_bytes()
    calls, fn = counting()
    for _ in range(2):
        with pytest.raises(manyhands.JournalError, match="not a manyhands journal"):
            manyhands.run(fn, range(5), journal=app)
    assert not calls
    assert app.read_bytes() == before  # no table added, no format stamped
    assert sorted(os.listdir(tmp_path)) == ["app.db"]


def test_an_unwritable_location_fails_before_anything_runs(tmp_path: Path) -> None:
    calls, fn = counting()
    with pytest.raises(manyhands.JournalError, match=r"directory .* does not exist"):
        manyhands.run(fn, range(3), journal=tmp_path / "missing" / "run.db")
    assert not calls


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_a_read_only_directory_fails_before_anything_runs(tmp_path: Path) -> None:
    calls, fn = counting()
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(manyhands.JournalError):
            manyhands.run(fn, range(3), journal=tmp_path / "run.db")
    finally:
        tmp_path.chmod(0o755)
    assert not calls


def test_a_full_disk_stops_the_run_and_records_nothing_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "run.db"
    opened = _journal.open_db

    def small_disk(path: Path, durability: str) -> sqlite3.Connection:
        db = opened(path, durability)
        # about 800 KiB: the first group (at most MAX_PENDING rows) fits, 200,000 rows
        # do not: "database or disk is full"
        db.execute("PRAGMA max_page_count = 200")
        return db

    monkeypatch.setattr(_journal, "open_db", small_disk)
    calls, fn = counting()
    with pytest.raises(manyhands.JournalError, match="disk is full") as info:
        manyhands.run(fn, range(200_000), journal=journal, workers=4)
    assert "will run again" in str(info.value)
    monkeypatch.undo()
    recorded = rows(journal)
    assert recorded, "the first commits fit"
    assert all(calls[int(key)] == 1 for key in recorded)  # only items that ran are recorded
    assert len(recorded) < sum(calls.values())
    resumed = manyhands.run(fn, range(200_000), journal=journal, workers=4)
    assert resumed.skipped == len(recorded)
    assert resumed.succeeded + resumed.skipped == 200_000


def test_durability_full_fsyncs_every_commit(tmp_path: Path) -> None:
    open_journal = _journal.Journal(tmp_path / "a.db", str, durability="full")
    try:
        open_journal.commit()  # (a new journal is opened beside the run's start)
        assert open_journal._db is not None
        assert open_journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert open_journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        open_journal.close("finished", {})
    normal = _journal.Journal(tmp_path / "b.db", str)
    try:
        normal.commit()
        assert normal._db is not None
        assert normal._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    finally:
        normal.close("finished", {})


def test_runs_table_records_what_ran(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(str, range(10), journal=journal, workers=3)
    manyhands.run(str, range(12), journal=journal, workers=3)
    with contextlib.closing(sqlite3.connect(journal)) as db:
        runs = db.execute(
            "SELECT fn, status, succeeded, failed, skipped, options FROM runs ORDER BY id"
        ).fetchall()
    assert runs[0][:5] == ("builtins.str", "finished", 10, 0, 0)
    assert runs[1][:5] == ("builtins.str", "finished", 2, 0, 10)
    assert '"workers": 3' in runs[1][5]


def test_the_end_of_a_block_of_new_keys_is_never_a_small_batch_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_journal_read, "READ_SECONDS", 3600.0)  # (blocks of 512, however loaded)
    journal = _journal.Journal(tmp_path / "run.db", abs)
    try:
        source = iter(range(5000))
        sizes: list[int] = []
        while (segment := journal.take(source, 7, 1000)) is not None:
            assert segment.reasons is None  # (a fresh journal: every item runs)
            sizes.append(len(segment.items))
            journal._running.difference_update(segment.keys)
    finally:
        journal.close("finished", {})
    assert sum(sizes) == 5000
    # Blocks of 512 leave 1 item after the 73rd slice of 7: it goes with that slice.
    assert all(3 <= size <= 7 + 2 for size in sizes[:-1]), Counter(sizes)
    assert 8 in sizes
    # ... and never past the room the run has.
    journal = _journal.Journal(tmp_path / "other.db", abs)
    try:
        source = iter(range(600))
        while (segment := journal.take(source, 7, 7)) is not None:
            assert len(segment.items) <= 7
    finally:
        journal.close("finished", {})


def test_items_the_journal_read_ahead_count_as_still_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch size shrinks near the input's end, judged from what is left in it:
    the items of the journal's block are left too (or the last block of a range,
    up to 512 items, would run one by one)."""
    from manyhands import _reader, _run

    taken = [0]
    seen: list[tuple[int, int]] = []
    segment, remaining = _reader.Reader.segment, _run.Run._remaining

    def counted(self: Any, journal: Any, size: int, room: int) -> Any:
        found = segment(self, journal, size, room)
        taken[0] += len(found.items) if found is not None else 0
        return found

    def watched(self: Any) -> int:
        left = remaining(self)
        seen.append((left, 3000 - taken[0]))
        return left

    monkeypatch.setattr(_reader.Reader, "segment", counted)
    monkeypatch.setattr(_run.Run, "_remaining", watched)
    report = manyhands.run(abs, range(3000), journal=tmp_path / "run.db", workers=4)
    assert report.succeeded == 3000
    assert seen and all(left == untaken for left, untaken in seen), seen[-5:]
    assert any(untaken < 512 for _, untaken in seen)  # (asked near the end too)


class BadLine:  # (a user's class, named as the command's own row class is)
    def __repr__(self) -> str:
        return "BadLine()"


def _fails(item: object) -> None:
    raise ValueError("no")


def test_a_failed_item_of_a_class_named_as_the_commands_rows_is_recorded(tmp_path: Path) -> None:
    report = manyhands.run(_fails, [BadLine()], journal=tmp_path / "j.db", key=repr)
    assert (report.failed, report.succeeded) == (1, 0)
    again = manyhands.run(_fails, [BadLine()], journal=tmp_path / "j.db", key=repr)
    assert (again.skipped, again.failed) == (1, 0)  # (recorded: a resume skips it)
