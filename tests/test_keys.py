"""Default journal keys: distinct items never share a key, equal items always do.

"Equal" is stricter than Python's ``==``: 1, 1.0 and True are three items
(as they are three JSON values), and so are 0.0 and -0.0. A tuple and a list
with the same elements are one item, and so are bytes, bytearray and
memoryview with the same bytes. A float NaN is one item, whatever ``==`` says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import manyhands
from manyhands._keys import default_key


def identity(value: Any) -> Any:
    """What makes two items the same item (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return ("const", value)
    if isinstance(value, int):
        return ("int", int(value))
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, str):
        return ("str", str(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(value))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(identity(element) for element in value))
    assert isinstance(value, dict)
    return ("dict", frozenset((identity(k), identity(v)) for k, v in value.items()))


def blurred(value: Any) -> Any:
    """The item JSON would make of ``value``: what a careless key confuses with it."""

    def plain(found: Any) -> Any:
        if isinstance(found, (bytes, bytearray, memoryview)):
            return {"$bytes": bytes(found).hex()}
        raise TypeError(found)

    try:
        return json.loads(json.dumps(value, default=plain))
    except TypeError:  # a tuple as a dict key: JSON has nothing to confuse it with
        return value


# Few distinct atoms, so that structures built from them often look alike.
TEXTS = st.sampled_from(
    [
        "",
        "1",
        "1.0",
        "true",
        "null",
        "NaN",
        "a",
        "$bytes",
        "$dict",
        "00",
        '"a"',
        "[1]",
        "sha256:",
        "\\udce9",
        "caf\udce9",
        "\udce9",
        "\ud83d\ude00",
        "😀",
        "é",
    ]
) | st.text(max_size=4)
LONG_TEXTS = st.text(alphabet="ab$\\\udce9", min_size=190, max_size=210)  # around MAX_KEY_TEXT
NUMBERS = st.integers(-2, 2) | st.integers() | st.sampled_from(
    [0.0, -0.0, 1.0, 2.0, 1.5, math.nan, math.inf, -math.inf]
) | st.floats()  # fmt: skip
BYTES = st.binary(max_size=3) | st.binary(max_size=2).map(bytearray)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXTS | BYTES
HASHABLE = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXTS | st.binary(max_size=2),
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=4,
)
ITEMS = st.recursive(
    SCALARS | LONG_TEXTS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(HASHABLE | TEXTS, inner, max_size=3)
    ),
    max_leaves=8,
)


def assert_injective(items: list[Any]) -> None:
    by_key: dict[str, Any] = {}
    by_identity: dict[Any, str] = {}
    for item in items:
        key, same = default_key(item), identity(item)
        key.encode("utf-8")  # storable as SQLite text: no lone surrogate left
        assert by_key.setdefault(key, same) == same, f"{item!r} shares key {key!r}"
        assert by_identity.setdefault(same, key) == key, f"{item!r} got two keys"


@settings(max_examples=400, deadline=None)
@given(st.lists(ITEMS, max_size=6))
@example([{1: "a"}, {"1": "a"}, {True: 1}, {"true": 1}, {None: 1}, {"null": 1}])
@example([b"\x00", {"$bytes": "00"}, {"$dict": [["$bytes", "00"]]}, {"$bytes": b"\x00"}])
@example([1, 1.0, True, "1", 0.0, -0.0, [1], (1,), {1: 1, "1": 1}, {1.0: 1}])
@example(["caf\udce9", "caf\\udce9", "\ud83d\ude00", "😀"])
def test_distinct_items_never_share_a_key_and_equal_items_always_do(items: list[Any]) -> None:
    assert_injective(items)


@settings(max_examples=300, deadline=None)
@given(ITEMS)
def test_an_item_and_what_json_makes_of_it_share_a_key_only_if_they_are_equal(
    item: Any,
) -> None:
    assert_injective([item, blurred(item)])


def version_1_key(item: Any) -> str:
    """How keys were made before dicts got tags: still right for everything else."""

    def plain(found: Any) -> Any:
        assert isinstance(found, bytes)
        return {"$bytes": found.hex()}

    text = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=plain)  # fmt: skip
    if len(text) > 200:
        return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text


JSON_TEXT = st.text().filter(lambda text: text not in ("$bytes", "$dict"))
JSON_DATA = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | JSON_TEXT | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JSON_TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(JSON_DATA)
@example("https://example.com/1")
@example(10**300)
@example({"$bytes": "00", "other": 1})
def test_keys_of_json_items_are_unchanged_so_older_journals_stay_valid(item: Any) -> None:
    old = version_1_key(item)
    try:
        old.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: it crashed the journal before
        return
    assert default_key(item) == old


def test_items_that_json_confuses_each_run_once_and_are_skipped_on_resume(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"
    items: list[Any] = [{1: "a"}, {"1": "a"}, {True: 1}, {"true": 1}, b"\x00", {"$bytes": "00"},
                        1, 1.0, True]  # fmt: skip
    ran: list[Any] = []
    report = manyhands.run(ran.append, items, journal=journal, workers=1)
    assert (report.succeeded, report.duplicates) == (len(items), 0)
    assert [identity(item) for item in ran] == [identity(item) for item in items]
    again = manyhands.run(ran.append, items, journal=journal)
    assert (again.skipped, again.succeeded, len(ran)) == (len(items), 0, len(items))


def test_an_item_that_contains_itself_has_no_default_key_and_names_the_fix(
    tmp_path: Path,
) -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(manyhands.JournalError, match=r"item 1 .* no default journal key.*key="):
        manyhands.run(str, [0, loop], journal=tmp_path / "run.db")


def set_version(journal: Path, version: str) -> None:
    with sqlite3.connect(journal) as db:
        db.execute("UPDATE meta SET value = ? WHERE name = 'version'", (version,))
    db.close()


def test_a_version_1_journal_resumes_and_a_newer_one_is_refused_untouched(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(str, ["a", 1, {"id": 2}], journal=journal)
    set_version(journal, "1")
    report = manyhands.run(str, ["a", 1, {"id": 2}, 3], journal=journal)
    assert (report.skipped, report.succeeded) == (3, 1)

    set_version(journal, "4")
    before = journal.read_bytes()
    with pytest.raises(manyhands.JournalError, match="format version '4', newer than"):
        manyhands.run(str, ["a"], journal=journal)
    from manyhands._inspect import read_status

    with pytest.raises(manyhands.JournalError, match="newer than"):
        read_status(journal)
    assert journal.read_bytes() == before


def failures_json(journal: Path) -> list[dict[str, Any]]:
    from manyhands._cli_journal import _failure_record
    from manyhands._inspect import read_failures

    return [_failure_record(row, row["item"], False) for row in read_failures(journal)]


def fail(item: object) -> None:
    raise ValueError("no")


def test_a_failed_item_is_kept_as_json_where_it_is_json_and_as_its_repr_always(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"

    class Thing:
        def __repr__(self) -> str:
            return "Thing()"

    items = [{"id": 1}, (1, "a"), "s", Thing(), {1, 2}, {"n": math.inf}]
    manyhands.run(fail, items, journal=journal, key=lambda item: repr(item))
    found = {r["item_repr"]: r.get("item", "(none)") for r in failures_json(journal)}
    assert found == {
        "{'id': 1}": {"id": 1},
        "(1, 'a')": [1, "a"],  # (as JSON reads it back)
        "'s'": "s",
        "Thing()": "(none)",  # not JSON: its repr only
        "{1, 2}": "(none)",
        "{'n': inf}": "(none)",
    }


def drop_item_json(journal: Path) -> None:
    """The journal as a manyhands writing format version 2 left it: no item_json column."""
    with contextlib.closing(sqlite3.connect(journal)) as db, db:
        db.execute("ALTER TABLE items DROP COLUMN item_json")
        db.execute("UPDATE meta SET value = '2' WHERE name = 'version'")


def test_a_version_2_journal_is_read_and_resumed_as_it_is_its_failures_by_their_repr(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(fail, [{"id": 1}], journal=journal)
    drop_item_json(journal)
    assert failures_json(journal) == [
        {"key": '{"id":1}', "item_repr": "{'id': 1}", "state": "failed",
         "error_type": "builtins.ValueError", "message": "no", "attempts": 1}
    ]  # fmt: skip
    report = manyhands.run(fail, [{"id": 1}, {"id": 2}], journal=journal)  # records a failure
    assert (report.skipped, report.failed) == (1, 1)
    assert [r["item_repr"] for r in failures_json(journal)] == ["{'id': 1}", "{'id': 2}"]
    with contextlib.closing(sqlite3.connect(journal)) as db:  # (an older manyhands resumes it)
        assert db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone() == ("2",)
        assert "item_json" not in [row[1] for row in db.execute("PRAGMA table_info(items)")]


def test_a_journal_whose_creation_an_older_manyhands_cut_short_is_taken_as_new(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(str, [], journal=journal)
    drop_item_json(journal)
    with contextlib.closing(sqlite3.connect(journal)) as db, db:
        db.execute("DELETE FROM meta")
        db.execute("DELETE FROM runs")
    report = manyhands.run(fail, ["a"], journal=journal)  # (not "not a manyhands journal")
    assert report.failed == 1 and [r["item_repr"] for r in failures_json(journal)] == ["'a'"]


@pytest.mark.parametrize("version", ["abc", None, "0"])
def test_a_journal_with_no_version_or_an_unknown_one_is_refused_untouched(
    tmp_path: Path, version: str | None
) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(str, ["a"], journal=journal)
    with contextlib.closing(sqlite3.connect(journal)) as db, db:
        if version is None:
            db.execute("DELETE FROM meta WHERE name = 'version'")
        else:
            db.execute("UPDATE meta SET value = ? WHERE name = 'version'", (version,))
    before = journal.read_bytes()
    from manyhands._inspect import read_status

    for read in (lambda: manyhands.run(str, ["a"], journal=journal), lambda: read_status(journal)):
        with pytest.raises(manyhands.JournalError, match="not a version this manyhands knows"):
            read()
    assert journal.read_bytes() == before
