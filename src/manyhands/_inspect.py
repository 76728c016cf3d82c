"""Reading a journal back: what ran, how it ended, which items failed and why.

A journal may come from anyone: it is read as data only. Nothing here reads
the stored values (``store_results``), so nothing is ever unpickled, and the
schema's SQL is not trusted to call functions. Text that was stored as bytes
(it held a lone surrogate) comes back as the str it was.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._exceptions import JournalError
from ._journal_file import FORMAT, check_version, cut_short, has_item_json
from ._journal_text import from_db

__all__ = ["JournalStatus", "creation_cut_short", "read_failures", "read_status", "reading"]


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
def reading(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the journal at ``path``, checked to be one this reads."""
    journal = Path(path)
    if not journal.is_file():
        raise JournalError(f"no journal at {str(journal)!r}")
    # (through a symlink: by the file's own name, as a run names its -wal and -shm)
    resolved = os.path.realpath(journal)
    journal = journal if resolved == os.path.abspath(journal) else Path(resolved)
    db = _connect(journal, _mode(journal))
    try:
        try:
            meta = _meta(db)
        except sqlite3.OperationalError as exc:
            # A journal on read-only storage: SQLite cannot make its -shm file there.
            # Nothing can be writing it then, so it is read as an unchanging file.
            if os.access(journal.parent, os.W_OK):
                raise JournalError(f"{str(journal)!r} is not a readable journal ({exc})") from exc
            if _unmerged(journal):
                raise JournalError(
                    f"the journal {str(journal)!r} is on read-only storage, and its -wal file "
                    "holds commits not merged into it yet, which SQLite reads only where it "
                    "can write: copy the journal with its -wal file to a writable folder"
                ) from exc
            db.close()
            db = _connect(journal, "immutable=1")
            try:
                meta = _meta(db)
            except sqlite3.DatabaseError as again:
                raise _unreadable(journal, again) from again
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{str(journal)!r} is not a readable journal ({exc})") from exc
        if meta is None:
            raise JournalError(_not_created(journal))
        if meta.get("format") != FORMAT:
            raise JournalError(f"{str(journal)!r} is not a manyhands journal")
        check_version(meta.get("version"), repr(str(journal)))
        yield db
    finally:
        db.close()


def creation_cut_short(path: str | Path) -> bool:
    """Whether ``path`` is a journal whose creation was cut short, which a run takes as new.

    The process was killed as it created the file: it is empty, or an SQLite
    database with no tables, or only a journal's own tables, empty. Another
    program's database, or a file that is no database at all, is not.
    """
    journal = Path(path)
    if not journal.is_file():
        return False
    if journal.stat().st_size == 0:
        return True
    try:
        db = _connect(journal, _mode(journal))
    except JournalError:
        return False
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        return cut_short(db, tables)
    except sqlite3.Error:  # (not a database, or a damaged one: not to be taken for new)
        return False
    finally:
        db.close()


def _unreadable(journal: Path, exc: sqlite3.Error) -> JournalError:
    return JournalError(f"{str(journal)!r} is not a readable journal ({exc})")


def _mode(journal: Path) -> str:
    """How to open the journal: read-only while it has a ``-wal`` or ``-shm`` file; else
    read-write, every write refused (``query_only``).

    Reading a WAL journal needs its ``-wal`` and ``-shm`` files, which SQLite
    creates if they are missing; only a read-write connection, the last to
    close, removes them. A journal that has them is in use (its reader sees
    the latest commits either way), or was left by a killed run: it is read
    as it is, its commits not merged into it.
    """
    if any(os.path.exists(f"{journal}{suffix}") for suffix in ("-wal", "-shm")):
        return "mode=ro"
    return "mode=rw"


def _connect(journal: Path, mode: str) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(f"{journal.resolve().as_uri()}?{mode}", uri=True)
        db.execute("PRAGMA trusted_schema = OFF")
        db.execute("PRAGMA query_only = ON")  # (read-write only to tidy up as it closes)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {str(journal)!r}: {exc}") from exc
    return db


def _meta(db: sqlite3.Connection) -> dict[str, str] | None:
    """The journal's format and version; None while it has no tables at all (empty for
    a database without a journal's ``meta`` table).

    A run creates a new journal beside its start: the file exists, empty, then
    its tables and its format come in one transaction. So the tables are looked
    for first: once they are seen, every later read sees the format too.
    """
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    if not tables:
        return None
    if "meta" not in tables:  # (another program's database)
        return {}
    query = "SELECT name, value FROM meta WHERE name IN (?, ?)"
    return dict(db.execute(query, ("format", "version")))


def _not_created(journal: Path) -> str:
    return (
        f"no journal at {str(journal)!r} yet: the file has no tables, which a run creates as "
        "it starts (or one stopped before it could); try again in a moment"
    )


def _unmerged(journal: Path) -> bool:
    """Commits still in the journal's -wal file (reading it needs a writable folder)."""
    try:
        return Path(f"{journal}-wal").stat().st_size > 0
    except OSError:
        return False


def read_status(path: str | Path) -> JournalStatus:
    """Counts by state, errors by type and the run history of a journal."""
    with reading(path) as db:
        states = {
            from_db(state): count
            for state, count in db.execute("SELECT state, count(*) FROM items GROUP BY state")
        }
        errors = {
            from_db(name): count
            for name, count in db.execute(
                "SELECT error_type, count(*) AS n FROM items WHERE state != 'done' "
                "GROUP BY error_type ORDER BY n DESC"
            )
        }
        columns = ("id", "fn", "started", "finished", "status", "succeeded", "failed", "skipped",
                   "pid", "host")  # fmt: skip
        runs = [
            dict(zip(columns, map(from_db, row), strict=True))
            for row in db.execute(f"SELECT {', '.join(columns)} FROM runs ORDER BY id")
        ]
        unclosed = [
            run
            for run, later in zip(runs, [*runs[1:], None], strict=True)
            if run["status"] == "running" and (later is not None or _gone(run["pid"], run["host"]))
        ]
        for run in unclosed:  # (its process ended without closing the journal)
            run["status"] = _UNCLOSED
        running = [run for run in runs if run["status"] == "running"]  # (still at it)
        _count_records(db, unclosed + running)
    return JournalStatus(Path(path), states, errors, runs)


#: How ``status`` shows a run whose process ended without recording its end.
_UNCLOSED = "ended without closing (killed, or the journal could not be written)"


def _count_records(db: sqlite3.Connection, runs: list[dict[str, Any]]) -> None:
    """Count what runs that ended without closing, or are running, recorded.

    (Their rows get their counts only as they end.)

    Their ``succeeded`` and ``failed`` are then the items still recorded
    under their ids, ``skipped`` is None (not known), and ``last_record``
    is when the last of them was recorded (None: none is).
    """
    if not runs:
        return
    by_id = {run["id"]: run for run in runs}
    for run in runs:
        run.update(succeeded=0, failed=0, skipped=None, last_record=None)
    marks = ",".join("?" * len(by_id))
    query = (
        "SELECT run, state = 'done', count(*), max(finished) FROM items "
        f"WHERE run IN ({marks}) GROUP BY run, state = 'done'"
    )
    for run_id, done, count, last in db.execute(query, list(by_id)):
        run = by_id[run_id]
        run["succeeded" if done else "failed"] += count
        run["last_record"] = max(run["last_record"] or 0.0, last or 0.0) or None


def _gone(pid: Any, host: Any) -> bool:
    """Whether process ``pid`` of ``host`` is known to have ended (only on this host)."""
    if host != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # (alive, another user's)
        return False
    return False


def read_failures(path: str | Path) -> list[dict[str, Any]]:
    """Every item whose final record is not ``done``, in the order they failed.

    ``item`` is its repr; ``item_json`` the item as JSON, where the journal
    keeps it (an item that is JSON, in a journal of version 3 on), else None.
    """
    with reading(path) as db:
        as_json = "item_json" if has_item_json(db) else "NULL"
        rows = db.execute(
            "SELECT key, item, state, error_type, message, attempts, traceback, "
            f"{as_json} FROM items WHERE state != 'done' ORDER BY finished, key"
        )
        names = ("key", "item", "state", "error_type", "message", "attempts", "traceback",
                 "item_json")  # fmt: skip
        return [dict(zip(names, map(from_db, row), strict=True)) for row in rows]
