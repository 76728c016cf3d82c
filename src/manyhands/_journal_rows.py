"""One item's row in the journal, kept within SQLite's length limit.

SQLite refuses a string, a BLOB or a whole row longer than its length limit
(:func:`._journal_text.length_limit`, 1e9 bytes by default), and it refuses
the whole commit that holds it: every item of that commit would run again,
and so would every resume, at the same item. So a row is made to fit before
it is handed to the writer:

- a value that does not fit beside its key is not stored
  (:meth:`._journal_values.StoredValues.write`): the item is done, without
  its value;
- a failure's texts (error type, message, traceback, the item's repr) are
  cut to ``MAX_TEXT`` characters each, and less if the row needs it; the
  item's JSON (:func:`item_json`) is kept whole or not at all (a JSON text
  cut short is no JSON);
- a key that alone does not fit (a ``key=`` returning hundreds of MB) cannot
  be recorded at all: its item is left out of the journal, so it runs again
  on a resume, and a JournalWarning names the first such item.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

from ._exceptions import JournalWarning, user_stacklevel
from ._journal_text import MAX_TEXT, ROW_MARGIN, cut_text, db_size, to_db
from ._outcome import Failure, safe_repr

__all__ = ["FAILED", "Unrecordable", "failed_row", "failed_rows", "item_json", "room_for"]

FAILED = "failed"
#: The texts of a failed row: error type, message, traceback, the item's repr and JSON.
_TEXTS = 5
#: A failed row, as a journal of version 3 has it; earlier ones, without its last column.
_FAILED_SQL = "INSERT OR REPLACE INTO items VALUES ({})"
_COLUMNS = 14
_BYTES_PER_CHARACTER = 4  # (at most, in UTF-8)


def room_for(key: str, limit: int) -> int:
    """The bytes a row whose key is ``key`` has left for its value or texts (< 0: none).

    >>> room_for("k", 10_000)
    8975
    """
    return limit - ROW_MARGIN - db_size(key)


def item_json(item: Any) -> str | None:
    """The item as JSON, as a failed row keeps it; None for an item that is not JSON.

    As JSON reads it back, like a stored value: a tuple is a list. A line of
    the command that is no item (unreadable, or without a key) is its text,
    as its ``--output`` line has it.

    >>> item_json({"id": 1, "tags": ("a",)}), item_json(object()), item_json(float("nan"))
    ('{"id": 1, "tags": ["a"]}', None, None)
    """
    inputs = sys.modules.get("manyhands._inputs")  # (the command's rows: loaded by it)
    if inputs is not None and type(item) is inputs.BadLine:
        item = item.text
    try:
        return json.dumps(item, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # not JSON, a cycle, a huge int
        return None


def failed_row(
    key: str,
    failure: Failure,
    item: Any,
    room: int,
    fields: tuple[float, float, str | None, int],
) -> tuple[Any, ...]:
    """The row of a failed item, its texts cut to fit ``room`` bytes.

    ``fields`` are (elapsed, finished, fingerprint, run). The item is kept as
    its repr, and as JSON where it is JSON and that fits whole.
    """
    elapsed, finished, print_, run = fields
    most = min(MAX_TEXT, room // (_TEXTS * _BYTES_PER_CHARACTER))
    error_type, message, traceback, shown = (
        None if text is None else to_db(cut_text(text, most))
        for text in (failure.error_type, failure.message, failure.traceback, safe_repr(item))
    )
    as_json = item_json(item)
    kept = to_db(as_json) if as_json is not None and len(as_json) <= most else None
    return (to_db(key), FAILED, failure.attempts, error_type, message, traceback,
            elapsed, finished, print_, shown, None, None, run, kept)  # fmt: skip


def failed_rows(rows: list[tuple[Any, ...]], with_json: bool) -> tuple[str, list[tuple[Any, ...]]]:
    """The statement and rows that record failed rows: without their item's JSON
    (``with_json`` False) in a journal of a version before 3, which has no column for it."""
    columns = _COLUMNS if with_json else _COLUMNS - 1
    if not with_json:
        rows = [row[:columns] for row in rows]
    return _FAILED_SQL.format(", ".join("?" * columns)), rows


class Unrecordable:
    """Keys too long for a row: counted, and the first one's item named in a warning."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, item: Any, key: str, limit: int) -> None:
        self.count += 1
        if self.count > 1:
            return
        warnings.warn(
            JournalWarning(
                f"the key of item {safe_repr(item, 60)} is {db_size(key):,} bytes, more than "
                f"a row of the journal holds (SQLite's limit on a row: {limit:,} bytes), so "
                "its outcome is not recorded and it runs again when you rerun (the same for "
                "any other such item). Return a shorter key from key=, e.g. an id, or a "
                "digest of the item"
            ),
            stacklevel=user_stacklevel(),
        )
