"""Whether a run's ``key=`` gives the journal's items other keys than the one that wrote it.

The journal records which ``key=`` wrote it: its name and a digest of its
code and what it captures (:func:`key_identity`). A run whose ``key=`` is
another may still give every item the key it had (a lambda rewritten, a key
function refactored), and then nothing recorded is lost: warning would be a
false alarm. So the warning waits for the first items read (``SAMPLE``),
and is given when one of them has another key than before, or when none of
them can tell (as it was before this check):

- with a journal written with default keys, an item's old key is known: its
  default key, compared with its new one;
- with a journal written with ``key=`` (every row keeps its item's
  fingerprint): an item whose new key finds a record of an earlier run (of
  the same fingerprint, where both are known) kept its key; an item recorded
  by an earlier run under another key, found by its fingerprint, did not;
  an item with no record (a new one), or no fingerprint, tells nothing.

It costs nothing unless ``key=`` changed: then a lookup of the sample's
keys, once, and, for the items not found under their new key, a lookup of
their fingerprints, which reads every row (0.4 s for a million rows).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from ._exceptions import JournalWarning
from ._journal_text import from_db, to_db
from ._keys import KeyTypeError, code_hash, default_key, fingerprint, function_name
from ._outcome import safe_repr

__all__ = ["SAMPLE", "KeyCheck", "key_changed", "key_identity"]

#: The first items read that tell whether a changed ``key=`` changed the keys.
SAMPLE = 100


def key_identity(keyfn: Callable[[Any], Any] | None) -> tuple[str, str]:
    """What tells one ``key=`` from another: its qualified name and a hash of its code.

    ("", "") without key= (default keys). A callable with no Python code
    (``operator.itemgetter("id")``) is told by its repr, which names its fields.
    A key function may say what it is by a ``journal_identity`` attribute (the
    command's ``--key FIELD``: one function for every field).
    """
    if keyfn is None:
        return "", ""
    told = getattr(keyfn, "journal_identity", None)  # (the command's --key: its FIELD)
    if isinstance(told, tuple) and len(told) == 2 and all(isinstance(t, str) for t in told):
        return told
    digest = code_hash(keyfn, state=True)
    if digest is None and type(keyfn).__module__ == "operator":
        digest = safe_repr(keyfn, 200)
    return function_name(keyfn), digest or ""


def key_changed(path: object, before: str, key_name: str) -> JournalWarning:
    """The warning that the keys changed: the journal's ``key=`` was ``before``."""

    def named(name: str) -> str:
        return f"key={name}" if name else "no key= (default keys)"

    same = " (same name, changed code or captured values)" if before == key_name else ""
    return JournalWarning(
        f"journal {path} was written with {named(before)} and this run has "
        f"{named(key_name)}{same}: where the keys differ, the items recorded are not "
        "found, so they run again. Pass the same key= to resume, or use another journal= "
        "to start afresh."
    )


class KeyCheck:
    """The first items of a run whose ``key=`` changed, and whether their keys did.

    Args:
        warning: what to warn if they did.
        default_before: the journal was written with default keys (else with key=).
    """

    def __init__(self, warning: JournalWarning, *, default_before: bool) -> None:
        self.warning = warning
        self._default_before = default_before
        self._items: list[Any] = []
        self._keys: list[str] = []
        self._prints: list[str | None] = []

    @property
    def full(self) -> bool:
        """Whether the sample holds ``SAMPLE`` items."""
        return len(self._keys) >= SAMPLE

    def add(self, items: list[Any], keys: list[str], prints: list[str | None]) -> None:
        """Take the first items of a block read (``prints``: their fingerprints, or [])."""
        count = min(SAMPLE - len(self._keys), len(keys))
        self._items += items[:count]
        self._keys += keys[:count]
        if not self._default_before:  # (without key=, none was taken: taken here)
            self._prints += prints[:count] if prints else map(fingerprint, items[:count])

    def changed(self, db: sqlite3.Connection, run_id: int) -> bool:
        """Whether the sample shows a key changed, or shows nothing either way.

        ``db`` reads the journal; the rows of run ``run_id`` (this one) tell nothing.
        """
        if self._default_before:
            return self._changed_from_default_keys()
        same = changed = False
        unresolved: dict[str, set[str]] = {}  # fingerprint -> new keys of the items
        found = self._fingerprints_by_key(db, run_id)
        for key, print_ in zip(self._keys, self._prints, strict=True):
            if key in found and (print_ is None or found[key] in (None, print_)):
                same = True  # (its record is found under its new key)
            elif print_ is not None:
                unresolved.setdefault(print_, set()).add(key)
        for print_, old_key in self._keys_by_fingerprint(db, run_id, list(unresolved)):
            if old_key in unresolved[print_]:
                same = True
            else:
                changed = True  # (recorded under another key than this run gives it)
        return changed or not same

    def _changed_from_default_keys(self) -> bool:
        compared = False
        for item, key in zip(self._items, self._keys, strict=True):
            try:
                before = default_key(item)
            except (KeyTypeError, ValueError, RecursionError):
                continue  # (it had no default key: it tells nothing)
            if before != key:
                return True
            compared = True
        return not compared

    def _fingerprints_by_key(self, db: sqlite3.Connection, run_id: int) -> dict[str, Any]:
        keys = list(dict.fromkeys(self._keys))
        query = (
            f"SELECT key, fingerprint FROM items WHERE key IN ({','.join('?' * len(keys))}) "
            "AND run != ?"
        )
        found = db.execute(query, [*map(to_db, keys), run_id])
        return {from_db(key): print_ for key, print_ in found}

    def _keys_by_fingerprint(
        self, db: sqlite3.Connection, run_id: int, prints: list[str]
    ) -> list[tuple[str, str]]:
        if not prints:
            return []
        query = (
            "SELECT fingerprint, key FROM items "
            f"WHERE fingerprint IN ({','.join('?' * len(prints))}) AND run != ?"
        )
        return [(print_, from_db(key)) for print_, key in db.execute(query, [*prints, run_id])]
