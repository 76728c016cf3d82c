"""A run's start in its journal: what wrote it, checked and recorded, and the run's row.

The journal notes the function that wrote it and the ``key=`` it was keyed
by. A run that calls another function (or the same one, changed) is warned
that the items recorded are still skipped; one whose ``key=`` changed is
told once its first items show whether the keys changed too
(:mod:`._key_check`). Then the run's row is added, its options recorded as
plain data (never an object's repr: it may hold secrets).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import warnings
from collections.abc import Callable
from typing import Any

from ._exceptions import JournalWarning, user_stacklevel
from ._journal_file import FORMAT, VERSION, has_item_json
from ._journal_state import JournalState
from ._journal_text import from_db, to_db
from ._key_check import KeyCheck, key_changed, key_identity
from ._keys import code_hash, function_name

__all__ = ["JournalBeginning"]


class JournalBeginning(JournalState):
    """Recording a run's start: the journal's function and key checked, the run's row."""

    def _begin(
        self, db: sqlite3.Connection, fn: Callable[..., Any], options: dict[str, Any]
    ) -> int:
        name, digest = function_name(fn), code_hash(fn)
        key_name, key_digest = key_identity(self._key)
        meta = {field: from_db(value) for field, value in db.execute("SELECT * FROM meta")}
        has_items: bool | None = None  # (looked up once, if a warning may be due)
        if meta.get("fn") is not None and (meta.get("fn"), meta.get("code_hash")) != (
            name,
            digest,
        ):
            has_items = db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is not None
            if has_items:
                warnings.warn(
                    JournalWarning(
                        f"journal {self.path} was written by {meta.get('fn')} and this run "
                        f"calls {name}"
                        + (" (same name, changed code)" if meta.get("fn") == name else "")
                        + ": items it recorded are still skipped. Use another journal= "
                        "to start afresh, or retry_failed=True to rerun its failures."
                    ),
                    stacklevel=user_stacklevel(),
                )
        # (a journal from before key= was recorded has no "key": nothing to compare)
        if meta.get("key") is not None and (meta.get("key"), meta.get("key_hash")) != (
            key_name,
            key_digest,
        ):
            if has_items is None:
                has_items = db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is not None
            if has_items:  # (the warning waits for the first items: same keys need none)
                before = meta.get("key") or ""
                warning = key_changed(self.path, before, key_name)
                self._key_check = KeyCheck(warning, default_before=not before)
        with db:
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [
                    ("format", FORMAT),
                    ("version", str(VERSION if has_item_json(db) else 2)),  # (see VERSION)
                    ("fn", to_db(name)),
                    ("code_hash", digest),
                    ("key", to_db(key_name)),
                    ("key_hash", to_db(key_digest)),
                ],
            )
            cursor = db.execute(
                "INSERT INTO runs (fn, code_hash, options, pid, host, started, status) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running')",
                (
                    to_db(name),
                    digest,
                    json.dumps(options, default=_described),  # (ASCII: surrogates escaped)
                    os.getpid(),
                    to_db(socket.gethostname()),
                    time.time(),
                ),
            )
        run_id = cursor.lastrowid
        assert run_id is not None
        return run_id


def _described(value: object) -> str:
    """A recorded option that is not plain data: its type only (a repr may hold secrets)."""
    return f"<{type(value).__qualname__}>"
