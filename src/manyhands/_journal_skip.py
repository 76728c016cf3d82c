"""Which items read are skipped, and what the journal holds for them.

An item is skipped when the journal has a final record for its key (done,
or failed unless ``retry_failed``), or when this input repeated a key it
had already: a duplicate, or, with ``key=``, a different item under the
same key, refused (``changed_items``). A recorded item that differs from
the one read (the input was edited) is refused, run again or skipped, as
``changed_items`` says. Reading is in :mod:`._journal_read`.
"""

from __future__ import annotations

from typing import Any

from ._exceptions import JournalError
from ._journal_state import DONE, JournalState
from ._journal_text import from_db, to_db
from ._keys import memory_key
from ._outcome import DUPLICATE, SKIPPED_DONE, SKIPPED_FAILED, Failure, duplicate_failure, safe_repr

__all__ = ["PRINT_MASK", "SHIFTED", "JournalSkip", "first_copy"]


PRINT_MASK = (1 << 64) - 1
SHIFTED = (64).__rlshift__  # position -> position << 64
_NO_PRINT = hash(None) & PRINT_MASK  # (an item with no fingerprint: nothing to compare)


def first_copy(position: int, print_: str) -> int:
    """Where a key's first copy is in the input, and a hash of its fingerprint, in one int.

    One int (36 bytes) rather than a tuple of the two (~150): up to FRESH_KEYS
    of them are kept. The hash is compared within this process only. Two
    different items share one with probability 2**-64: the later is then taken
    for a plain duplicate.
    """
    return position << 64 | (hash(print_) & PRINT_MASK)


class JournalSkip(JournalState):
    """Skip reasons for the items read, and the journal's records of them."""

    def _skip_reason(self, item: Any, key: str, print_: str | None) -> str | None:
        held = key if self._key is None else memory_key(key)  # (default keys are short)
        if held in self._running or held in self._unsaved:
            return self._copy(item, key, print_, None)
        row = self._looked_up.get(key)
        if row is None:
            return None
        state, run, stored_print = row[0], row[1], row[2]
        if run == self.run_id:
            return self._copy(item, key, print_, stored_print)
        if print_ is not None and stored_print is not None and print_ != stored_print:
            if held in self._firsts:  # a copy of an item of this input, skipped as recorded
                return self._copy(item, key, print_, stored_print)
            return self._changed(item, key)
        if state == DONE or not self._retry_failed:
            return SKIPPED_DONE if state == DONE else SKIPPED_FAILED
        return None

    def _copy(
        self, item: Any, key: str, print_: str | None, stored_print: str | None
    ) -> str | None:
        """A later copy of a key this input had: a duplicate, or a different item (None).

        A different item under the same key (key= does not tell them apart) is
        refused, with the default changed_items="refuse" and with "rerun" (the
        two would replace each other's record at every run and never settle),
        or skipped as a duplicate with "skip". The same on the first run and
        on every rerun.
        """
        if print_ is None:
            return DUPLICATE
        first = self._firsts.get(memory_key(key))
        if first is not None and first & PRINT_MASK != _NO_PRINT:
            same = first & PRINT_MASK == hash(print_) & PRINT_MASK
        else:
            same = stored_print is None or stored_print == print_
        if same or self._changed_items == "skip":
            return DUPLICATE
        position = self.pulled - len(self._buffer)
        earlier = f"item {first >> 64}" if first is not None else "an earlier item"
        again = ", and 'rerun' would run them in turn at every run" * (
            self._changed_items == "rerun"
        )
        self.error = JournalError(
            f"item {position} ({safe_repr(item, 80)}) and {earlier} have the same key "
            f"{safe_repr(key, 80)} but differ: key= must tell different items apart (key on "
            f"what identifies an item, e.g. its id, or pass no key=). Items before {position} "
            f"ran; it and the items after it did not. Pass changed_items='skip' to run only "
            f"the first item of each key{again}"
        )
        self._buffer.clear()
        self._ended = True
        return None

    def _changed(self, item: Any, key: str) -> str | None:
        """The item recorded under ``key`` differs from this one (the input was edited)."""
        if self._changed_items == "rerun":
            self._looked_up.pop(key, None)
            return None
        if self._changed_items == "skip":
            return SKIPPED_DONE if self._looked_up[key][0] == DONE else SKIPPED_FAILED
        # "refuse": the input ends here; the items before it run as usual.
        position = self.pulled - len(self._buffer)
        self.error = JournalError(
            f"item {position} ({safe_repr(item, 80)}, key {safe_repr(key, 80)}) differs "
            f"from the item recorded under that key in {self.path}: the input was edited "
            "(or key= gives it and an earlier item the same key). "
            f"Items before {position} ran; it and the items after it did not. Pass "
            "changed_items='rerun' to run such items again, changed_items='skip' to keep "
            "their old record, or use a new journal"
        )
        self._buffer.clear()
        self._ended = True
        return None

    def _first_copys_failure(self, item: Any, key: str) -> Failure | None:
        """The Failure of a key this run made final (None: it succeeded), for a later copy."""
        held = memory_key(key)
        failure = self._unsaved_failed.get(held)  # (recorded, not known to be committed)
        if failure is None:
            if held not in self._unsaved:  # committed: looked up with its block
                row = self._looked_up.get(key)
            elif held in self._failed_kept:  # failed while the journal was fresh
                row = self._rows([key]).get(key)
            else:  # it succeeded
                return None
            _, failure = self._stored(item, row)
        return None if failure is None else duplicate_failure(item, failure)

    def _lookup(self, keys: list[str]) -> None:
        if not keys or self._fresh:  # (fresh: every record is this run's, in _unsaved)
            return
        self._looked_up.update(self._rows(keys))

    def _rows(self, keys: list[str]) -> dict[str, tuple[Any, ...]]:
        """key -> the journal's row for it (state, run, fingerprint, ...), for those it has."""
        fields = "key, state, run, fingerprint, attempts, error_type, message, traceback"
        if self._store_results:
            fields += ", result, result_format"
        marks = ",".join("?" * len(keys))
        query = f"SELECT {fields} FROM items WHERE key IN ({marks})"
        if self._key is None:  # default keys are always valid UTF-8 text (see default_key)
            return {row[0]: row[1:] for row in self._opened().execute(query, keys)}
        # A str from key= may not be: it is stored as bytes (see to_db).
        found = self._opened().execute(query, [to_db(key) for key in keys])
        return {from_db(row[0]): row[1:] for row in found}

    def _stored(self, item: Any, row: tuple[Any, ...] | None) -> tuple[Any, Failure | None]:
        """The value (with store_results) or Failure the journal holds for an item."""
        if row is None:
            return None, None
        state, _run, _print, attempts, error_type, message, traceback = row[:7]
        if state != DONE:
            error_type, message, traceback = map(from_db, (error_type, message, traceback))
            return None, Failure(item, error_type or state, message or "", traceback, attempts)
        if self._store_results:
            return self._values.read(item, row[7], row[8]), None
        return None, None
