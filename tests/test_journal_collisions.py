"""Different items under one ``key=``: one rule on the first run and on every rerun.

Items 0 and 10 under ``key=lambda x: x % 10`` share a key. Before, the first
run yielded item 10 as a duplicate (its call never ran), and the rerun of the
unchanged input stopped with "the input was edited": an interrupted run over
such data could never be resumed, and ``changed_items="rerun"`` ran one copy
again at every rerun, forever.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import decimal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import manyhands

from .conftest import python_subprocess_env


def counting() -> tuple[Counter[int], Any]:
    calls: Counter[int] = Counter()

    def fn(x: int) -> int:
        calls[x] += 1
        return x

    return calls, fn


def last_digit(x: int) -> int:
    return x % 10


@pytest.mark.parametrize("changed_items", ["refuse", "rerun"])
def test_different_items_under_one_key_are_refused_on_every_run(
    tmp_path: Path, changed_items: str
) -> None:
    journal = tmp_path / "run.db"
    calls, fn = counting()
    refused = r"item 10 \(10\) and item 0 have the same key '0' but differ: key= must tell"
    for _ in range(3):
        with pytest.raises(manyhands.JournalError, match=refused) as raised:
            manyhands.run(
                fn, range(20), journal=journal, key=last_digit, changed_items=changed_items
            )
        assert "changed_items='skip'" in str(raised.value)
        assert ("'rerun' would run them in turn" in str(raised.value)) == (changed_items == "rerun")
    assert calls == Counter(range(10))  # once each, on the first run; item 10 never


def test_with_skip_the_later_items_are_duplicates_and_a_rerun_settles(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    calls, fn = counting()
    first = manyhands.run(fn, range(20), journal=journal, key=last_digit, changed_items="skip")
    assert (first.succeeded, first.duplicates, first.skipped) == (10, 10, 0)
    for _ in range(2):
        again = manyhands.run(fn, range(20), journal=journal, key=last_digit, changed_items="skip")
        assert (again.succeeded, again.duplicates, again.skipped) == (0, 10, 10)
    assert calls == Counter(range(10))
    outs = list(manyhands.map(fn, range(20), journal=journal, key=last_digit, changed_items="skip"))
    assert {out.item: out.skipped for out in outs}[13] == "duplicate key"


def test_equal_copies_stay_plain_duplicates(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    rows = [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"v": "a", "id": 1}]
    first = manyhands.run(str, rows, journal=journal, key=lambda row: row["id"])
    assert (first.succeeded, first.duplicates) == (2, 1)
    again = manyhands.run(str, rows, journal=journal, key=lambda row: row["id"])
    assert (again.succeeded, again.skipped) == (0, 3)  # (the copy: as its first, recorded)


@pytest.mark.parametrize("changed_items", ["refuse", "rerun"])
def test_a_resume_tells_a_second_item_under_a_key_from_an_edit(
    tmp_path: Path, changed_items: str
) -> None:
    # The first run stopped (a crash, a Ctrl-C) after item 0 and before item 10:
    # the rerun skips item 0 as recorded, then meets item 10.
    journal = tmp_path / "run.db"
    calls, fn = counting()
    manyhands.run(fn, range(10), journal=journal, key=last_digit)
    with pytest.raises(manyhands.JournalError, match=r"item 10 .* and item 0 have the same key"):
        manyhands.run(fn, range(20), journal=journal, key=last_digit, changed_items=changed_items)
    assert calls == Counter(range(10))


def test_an_edited_item_still_follows_changed_items(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(str, [{"id": 1, "v": "a"}], journal=journal, key=lambda row: row["id"])
    edited = [{"id": 1, "v": "b"}]
    with pytest.raises(manyhands.JournalError, match="the input was edited"):
        manyhands.run(str, edited, journal=journal, key=lambda row: row["id"])
    rerun = manyhands.run(
        str, edited, journal=journal, key=lambda row: row["id"], changed_items="rerun"
    )
    assert rerun.succeeded == 1


def test_a_copy_of_a_key_committed_earlier_in_the_run_is_compared_too(tmp_path: Path) -> None:
    # A journal with records is looked up: a key this run recorded and committed
    # is found in the file, and its row's fingerprint is compared.
    journal = tmp_path / "run.db"
    calls, fn = counting()

    def key(x: int) -> int:
        return x % 3000 if x <= 3000 else x

    manyhands.run(fn, [10**6], journal=journal, key=key)
    with pytest.raises(manyhands.JournalError, match=r"item 3000 \(3000\) and (item 0|an earl)"):
        manyhands.run(fn, range(3001), journal=journal, key=key)
    assert calls == Counter([*range(3000), 10**6])


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell command")
def test_the_command_line_refuses_two_rows_with_one_key_on_every_run(tmp_path: Path) -> None:
    rows = '{"id": 1, "v": "a"}\n{"id": 2, "v": "b"}\n{"id": 1, "v": "c"}\n'
    (tmp_path / "in.jsonl").write_text(rows)
    command = [sys.executable, "-m", "manyhands", "run", "--sh", "echo {v}", "in.jsonl",
               "--jsonl", "--key", "id", "--journal", "j.db", "--no-progress"]  # fmt: skip
    for _ in range(2):
        done = subprocess.run(
            command, cwd=tmp_path, env=python_subprocess_env(), capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "item 2 ({'id': 1, 'v': 'c'}) and item 0 have the same key '1'" in done.stderr
        assert "--key must tell different items apart" in done.stderr
        assert "--changed-items skip" in done.stderr


def test_an_item_without_a_fingerprint_cannot_be_told_apart_so_its_copies_are_duplicates(
    tmp_path: Path,
) -> None:
    items = [object(), {"id": 1}, object()]  # (an object has no fingerprint: no stable state)
    report = manyhands.run(str, items, journal=tmp_path / "run.db", key=lambda item: 1)
    assert (report.succeeded, report.duplicates) == (1, 2)


@dataclasses.dataclass
class Row:
    id: int
    v: Any


def _pairs() -> list[tuple[Any, Any]]:
    """Two different items of each kind that has a fingerprint, with the same id."""
    day = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    return [
        (Row(1, "a"), Row(1, "b")),
        ({"id": 1, "t": day}, {"id": 1, "t": day + datetime.timedelta(days=1)}),
        (Row(1, decimal.Decimal("1.5")), Row(1, decimal.Decimal("2.5"))),
        (Row(1, uuid.UUID(int=1)), Row(1, uuid.UUID(int=2))),
        (Row(1, frozenset({"a", "b"})), Row(1, frozenset({"a", "c"}))),
        ((1, {"x", "y"}), (1, {"x", "z"})),
        (Row(1, datetime.date(2020, 1, 1)), Row(1, datetime.time(1))),
    ]


@pytest.mark.parametrize(
    ("first", "second"), _pairs(), ids=["dataclass", "datetime", "decimal", "uuid", "set",
                                         "tuple-set", "date-time"]
)  # fmt: skip
def test_items_that_are_not_json_like_are_told_apart_under_one_key(
    tmp_path: Path, first: Any, second: Any
) -> None:
    # Before, they had no fingerprint: the second was skipped as a duplicate of
    # the first, and an edited item was skipped as done.
    journal = tmp_path / "run.db"

    def key(item: Any) -> int:
        return int(item.id if isinstance(item, Row) else item["id"] if isinstance(item, dict)
                   else item[0])  # fmt: skip

    with pytest.raises(manyhands.JournalError, match="have the same key '1' but differ"):
        manyhands.run(str, [first, second], journal=journal, key=key)
    # An equal copy (made anew, not the same object) is a plain duplicate, and the
    # rerun skips both; the edited item is refused as edited.
    report = manyhands.run(str, [first, copy.deepcopy(first)], journal=journal, key=key)
    assert report.skipped == 2  # (done in the journal, both)
    other = tmp_path / "other.db"
    report = manyhands.run(str, [first, copy.deepcopy(first)], journal=other, key=key)
    assert (report.succeeded, report.duplicates) == (1, 1)
    with pytest.raises(manyhands.JournalError, match="the input was edited"):
        manyhands.run(str, [second], journal=journal, key=key)


def test_a_fingerprint_is_the_same_in_every_process() -> None:
    # (a set's order and str hashes change with PYTHONHASHSEED: not its fingerprint)
    code = (
        "import dataclasses, datetime, decimal, uuid\n"
        "from manyhands._keys import fingerprint\n"
        "@dataclasses.dataclass\n"
        "class Row:\n"
        "    id: int\n"
        "    v: object\n"
        "print(fingerprint([Row(1, {'a', 'b', 'c', 'd'}), {'t': datetime.date(2020, 1, 1)},"
        " decimal.Decimal('1.5'), uuid.UUID(int=7), frozenset({'x', 'yy', 'zzz'})]))\n"
    )
    prints = set()
    for seed in ("1", "2", "3"):
        env = {**python_subprocess_env(), "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        prints.add(done.stdout.strip())
    assert len(prints) == 1 and "None" not in prints


@pytest.mark.parametrize("earlier", [False, True], ids=["new-journal", "journal-with-records"])
def test_an_item_its_call_changes_in_place_is_recorded_as_it_was_read(
    tmp_path: Path, earlier: bool
) -> None:
    # Its fingerprint is the one taken as the input was read: recorded after the
    # call, it was the changed item's, and the rerun of the same input refused
    # every item as edited.
    journal = tmp_path / "run.db"
    tries: Counter[int] = Counter()

    def mark(row: dict[str, Any]) -> int:
        row["seen"] = True  # (the function's own business)
        tries[row["id"]] += 1
        if row["id"] % 7 == 0 and tries[row["id"]] == 1:
            raise ValueError("once")  # (retried: recorded at its second attempt)
        return int(row["id"])

    def rows() -> list[dict[str, Any]]:
        return [{"id": n} for n in range(3000)]

    def by_id(row: dict[str, Any]) -> Any:
        return row["id"]

    if earlier:  # (then a block holding id 5 is looked up, and taken item by item)
        manyhands.run(mark, [{"id": 5}], journal=journal, key=by_id)
    first = manyhands.run(mark, rows(), journal=journal, key=by_id, retry=1)
    assert (first.succeeded, first.skipped) == (3000 - earlier, earlier)
    rerun = manyhands.run(mark, rows(), journal=journal, key=by_id)
    assert rerun.skipped == 3000 and rerun.succeeded == 0
