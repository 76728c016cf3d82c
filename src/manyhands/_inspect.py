"""Reading a journal back: what ran, how it ended, which items failed and why."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._exceptions import JournalError
from ._journal import FORMAT

__all__ = ["JournalStatus", "read_failures", "read_status"]


@dataclass
class JournalStatus:
    """A journal's summary: counts by state, errors by type, and its runs (oldest first)."""

    path: Path
    states: dict[str, int]
    errors_by_type: dict[str, int]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Items with a final record."""
        return sum(self.states.values())


@contextlib.contextmanager
def _reading(path: str | Path) -> Iterator[sqlite3.Connection]:
    journal = Path(path)
    if not journal.is_file():
        raise JournalError(f"no journal at {str(journal)!r}")
    try:
        db = sqlite3.connect(f"{journal.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {str(journal)!r}: {exc}") from exc
    try:
        try:
            found = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{str(journal)!r} is not a readable journal ({exc})") from exc
        if not found or found[0] != FORMAT:
            raise JournalError(f"{str(journal)!r} is not a manyhands journal")
        yield db
    finally:
        db.close()


def read_status(path: str | Path) -> JournalStatus:
    """Counts by state, errors by type and the run history of a journal."""
    with _reading(path) as db:
        states = dict(db.execute("SELECT state, count(*) FROM items GROUP BY state"))
        errors = dict(
            db.execute(
                "SELECT error_type, count(*) AS n FROM items WHERE state != 'done' "
                "GROUP BY error_type ORDER BY n DESC"
            )
        )
        columns = ("id", "fn", "started", "finished", "status", "succeeded", "failed", "skipped")
        runs = [
            dict(zip(columns, row, strict=True))
            for row in db.execute(f"SELECT {', '.join(columns)} FROM runs ORDER BY id")
        ]
    return JournalStatus(Path(path), states, errors, runs)


def read_failures(path: str | Path) -> list[dict[str, Any]]:
    """Every item whose final record is not ``done``, in the order they failed."""
    with _reading(path) as db:
        rows = db.execute(
            "SELECT key, item, state, error_type, message, attempts, traceback FROM items "
            "WHERE state != 'done' ORDER BY finished, key"
        )
        names = ("key", "item", "state", "error_type", "message", "attempts", "traceback")
        return [dict(zip(names, row, strict=True)) for row in rows]
