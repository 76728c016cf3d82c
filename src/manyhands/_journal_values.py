"""The values of done items (``store_results``): how they are stored, and read back.

:class:`StoredValues` writes a value as JSON, or pickled when the run asked
for pickle, and reads it back without ever unpickling a journal the run did
not say it trusts. A value that cannot be stored as asked, or that does not
fit its row beside its key (SQLite's length limit: :mod:`._journal_text`),
leaves its item done without its value.
"""

from __future__ import annotations

import json
import pickle
import warnings
from typing import Any

from ._exceptions import JournalWarning, user_stacklevel
from ._journal_text import db_size, from_db, to_db
from ._outcome import safe_message, safe_repr

__all__ = ["StoredValues"]


class StoredValues:
    """Values stored with ``store_results``: written as JSON (or pickle), read back safely.

    Reading never unpickles unless the run asked for pickle, which trusts
    the file. What cannot be written or read costs the item its value, never
    the run: one JournalWarning says so, naming the first such item.
    """

    def __init__(self, *, pickled: bool) -> None:
        self.pickled = pickled
        self.unstored = 0  # values this run could not store (the first is warned about)
        self._told: set[str] = set()  # reading problems already warned about

    def write(self, item: Any, value: Any, room: int) -> tuple[Any, str | None]:
        """The stored form of ``value`` and its format; (None, None) if it cannot be stored.

        ``room``: the bytes its row has left for it (SQLite refuses a longer row).
        """
        try:
            data, form = self._encode(value)
        except Exception as exc:  # (any error: pickling runs the value's own code)
            message = safe_message(exc, 100)
            why = f"cannot {self._how} ({type(exc).__qualname__}: {message})"
            hint = "" if self.pickled else ": return JSON-like values, or store_results='pickle'"
            return self._unstored(item, value, why, hint)
        if 4 * len(data) > room and (size := db_size(data)) > room:  # (4: bytes a character)
            why = (
                f"is {size:,} bytes {'pickled' if self.pickled else 'as JSON'}, more "
                f"than its row in the journal holds ({max(room, 0):,} bytes: SQLite's limit on "
                "a row, less its key)"
            )
            return self._unstored(item, value, why)
        return data, form

    def storable(self, value: Any, room: int) -> bool:
        """Whether ``value`` can be stored as asked, in ``room`` bytes (no warning either way)."""
        try:
            data, _ = self._encode(value)
        except Exception:  # (any error: pickling runs the value's own code)
            return False
        return 4 * len(data) <= room or db_size(data) <= room

    @property
    def _how(self) -> str:
        return "be pickled" if self.pickled else "be stored as JSON"

    def _encode(self, value: Any) -> tuple[str | bytes, str]:
        if self.pickled:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), "pickle"
        return to_db(json.dumps(value, ensure_ascii=False, allow_nan=True)), "json"

    def _unstored(self, item: Any, value: Any, why: str, hint: str = "") -> tuple[None, None]:
        self.unstored += 1
        if self.unstored == 1:
            _warn(
                f"store_results: the value of item {safe_repr(item, 60)}, a "
                f"{type(value).__qualname__}, {why}. The item is done, and its value was not "
                "stored, so a resumed run yields None for it (the same for any other such "
                f"value){hint}"
            )
        return None, None

    def read(self, item: Any, data: Any, form: Any) -> Any:
        """The value stored for a done item; None (with a warning) if there is none to read."""
        if form == "json" and data is not None:
            try:
                return json.loads(from_db(data))
            except (TypeError, ValueError, RecursionError) as exc:
                return self._unread(item, "unreadable", f"cannot be read back ({exc})")
        if form == "pickle" and data is not None:
            if not self.pickled:
                return self._unread(
                    item,
                    "pickle",
                    "is a pickle, which is not loaded: unpickling runs code from the file. "
                    "Pass store_results='pickle' only if you trust this journal file",
                )
            try:
                return pickle.loads(data)  # the user trusts this file
            except Exception as exc:
                return self._unread(item, "unreadable", f"cannot be read back ({exc!r})")
        return self._unread(
            item,
            "missing",
            "was not stored (the run that recorded it had no store_results, or could not "
            "store that value)",
        )

    def _unread(self, item: Any, problem: str, detail: str) -> None:
        if problem not in self._told:
            self._told.add(problem)
            _warn(
                f"store_results: the value of {safe_repr(item, 60)}, done in the journal, "
                f"{detail}; its outcome's value is None (the same for any other such item)"
            )


def _warn(message: str) -> None:
    warnings.warn(JournalWarning(message), stacklevel=user_stacklevel())
