"""The journal's files: named once, created private, checked when opened.

- The journal, its ``-wal`` and ``-shm`` files (SQLite gives them the
  journal's mode) and its ``.lock`` file are created ``0600``: they hold
  items, error messages and tracebacks. An existing file keeps its mode.
- The journal has one name: its path with every symlink resolved
  (:func:`one_name`), so a run through a link and a run through the file
  take the same lock, and SQLite names ``-wal`` and ``-shm`` after one path.
  A file with other hard links cannot be given one name, and is refused.
- A file that is corrupt, not a journal, or written by a newer manyhands is
  refused and left untouched. Version 1 journals are read as they are (see
  ``VERSION``).
- The lock (one run at a time) is :mod:`._journal_lock`'s; its names are
  re-exported here.

The files removed or replaced under the run are noticed by
:mod:`._journal_watch`; text stored losslessly and within SQLite's length
limit is :mod:`._journal_text`'s, and the values of ``store_results``
:mod:`._journal_values`'.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path
from typing import Any

from ._exceptions import JournalError
from ._journal_lock import NOTHING_RUN, Lock, acquire_lock, lock_path, release_lock
from ._journal_text import from_db

__all__ = [
    "FORMAT",
    "NOTHING_RUN",
    "VERSION",
    "Lock",
    "acquire_lock",
    "check_version",
    "create_private",
    "cut_short",
    "has_item_json",
    "holds_data",
    "lock_path",
    "one_name",
    "open_db",
    "open_reader",
    "release_lock",
]

FORMAT = "manyhands-journal"
#: 2: dicts with keys that are not str, and dicts whose only key is "$bytes"
#: or "$dict", got keys of their own (they shared keys with other items in
#: 1). A version 1 journal is read as it is: those rare items run once more.
#: 3: a failed item's row keeps the item as JSON too (``item_json``), where it
#: is JSON. A journal of version 1 or 2 is read and written as it is, without
#: that column (its rows have none), and says version 2 once written: a
#: manyhands that writes version 2 resumes it, and refuses version 3, as newer
#: (it would write rows without the column).
VERSION = 3  # (stored as text)
MODE = 0o600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    fn TEXT, code_hash TEXT, options TEXT, pid INTEGER, host TEXT,
    started REAL, finished REAL, status TEXT,
    succeeded INTEGER, failed INTEGER, skipped INTEGER, duplicates INTEGER
);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error_type TEXT, message TEXT, traceback TEXT,
    elapsed REAL, finished REAL,
    fingerprint TEXT,
    item TEXT,
    result BLOB, result_format TEXT,
    run INTEGER NOT NULL,
    item_json TEXT
) WITHOUT ROWID;
"""
#: The columns versions before 3 did not have, by table.
_ADDED = {"items": ["item_json"]}


def one_name(path: str | os.PathLike[str]) -> Path:
    """The journal's one name: ``path`` with every symlink resolved (as given if it has none).

    The lock is a file next to the journal, and SQLite names ``-wal`` and
    ``-shm`` after the path it opened: a run through ``link.db -> run.db``
    and a run through ``run.db`` must use the same names, or both run the
    same items at once. A file with other hard links has no one name, so it
    is refused before anything is written.
    """
    resolved = os.path.realpath(path)
    real = Path(path) if resolved == os.path.abspath(path) else Path(resolved)
    try:
        links = os.stat(real).st_nlink
    except OSError:
        return real  # no file yet, or opening it says what is wrong
    if links > 1:
        raise JournalError(
            f"the journal {os.fspath(path)} is a file with {links} names (hard links): a run "
            "through one name cannot lock out a run through another, and both would run the "
            "same items. Give it one name: remove the other links, or copy the file to a new "
            f"path and use that; it was left untouched{NOTHING_RUN}"
        )
    return real


def open_db(path: Path, durability: str) -> sqlite3.Connection:
    """Open (or create, private) the journal; refuse, never replace, a file that is not one."""
    existed = holds_data(path)
    create_private(path)
    try:
        db = sqlite3.connect(path, check_same_thread=False)
    except sqlite3.Error as exc:
        raise JournalError(
            f"cannot open the journal {path}: {exc} (is the directory writable?)"
        ) from exc
    try:
        db.execute("PRAGMA trusted_schema = OFF")  # a journal from elsewhere is data, not code
        if existed:
            _check_journal(db, path)
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
        _create_schema(db)
    except sqlite3.Error as exc:
        db.close()
        raise JournalError(
            f"cannot write the journal {path}: {exc}{NOTHING_RUN} "
            "(is the location writable, and is there free space?)"
        ) from exc
    except BaseException:
        db.close()
        raise
    return db


def open_reader(path: Path) -> sqlite3.Connection:
    """A second connection to the journal, for lookups while the writer commits.

    In WAL mode it reads the last commit and never waits for the next one.
    """
    db = sqlite3.connect(path, check_same_thread=False)
    try:
        db.execute("PRAGMA trusted_schema = OFF")
        db.execute("PRAGMA query_only = ON")
    except BaseException:
        db.close()
        raise
    return db


def _create_schema(db: sqlite3.Connection) -> None:
    """The tables and what marks the file a journal, all or nothing (one transaction).

    A run killed while it creates its journal leaves an empty database, which the
    next run takes as new, never a file it would refuse as not a journal. A reader
    sees no tables (the journal is not there yet) or every table and the format.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('format', ?), ('version', ?)",
            (FORMAT, str(VERSION)),
        )
    except BaseException:
        db.rollback()
        raise
    db.commit()


def holds_data(path: Path) -> bool:
    """Whether ``path`` exists and is not empty."""
    return path.exists() and path.stat().st_size > 0


def create_private(path: Path) -> None:
    """Create the journal 0600 if it does not exist (SQLite's -wal and -shm follow it)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE))
    except FileExistsError:
        pass  # its owner chose its mode
    except OSError as exc:
        raise JournalError(
            f"cannot create the journal {path}: {exc} (is the directory writable?)"
        ) from exc


def _check_journal(db: sqlite3.Connection, path: Path) -> None:
    untouched = "it was left untouched. Move it away or pass another journal= path"
    try:
        check = [row[0] for row in db.execute("PRAGMA quick_check")]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        meta: dict[str, Any] = {}
        if "meta" in tables:
            meta = dict(db.execute("SELECT name, value FROM meta"))
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path} is not a readable journal ({exc}); {untouched}") from exc
    if check != ["ok"]:
        detail = "; ".join(str(line) for line in check[:3])
        raise JournalError(f"the journal {path} is corrupt (quick_check: {detail}); {untouched}")
    if cut_short(db, tables):
        return  # nothing to lose
    if meta.get("format") != FORMAT:
        raise JournalError(f"{path} is not a manyhands journal; {untouched}")
    check_version(meta.get("version"), path)


def cut_short(db: sqlite3.Connection, tables: set[str]) -> bool:
    """Whether the database (its ``tables``) is a journal whose creation was cut short (a
    kill): no tables at all, or only a journal's own, empty and without its format."""
    return not tables or _never_written(db, tables)


def _never_written(db: sqlite3.Connection, tables: set[str]) -> bool:
    """Only a journal's own tables, with its columns, all empty (an older manyhands, killed
    while creating it); never another program's empty ``items`` table."""
    ours = _our_columns()
    if not tables <= ours.keys():
        return False
    for table in tables:
        columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
        before = [name for name in ours[table] if name not in _ADDED.get(table, ())]
        if columns not in (ours[table], before):
            return False
    return all(db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None for table in tables)


@functools.cache
def _our_columns() -> dict[str, list[str]]:
    """Each of a journal's tables and its columns, in order, as ``_SCHEMA`` creates them."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: [row[1] for row in db.execute(f"PRAGMA table_info({t})")] for t in tables}
    finally:
        db.close()


def has_item_json(db: sqlite3.Connection) -> bool:
    """Whether the journal's failed rows can keep their item as JSON (version 3 on)."""
    return any(row[1] == "item_json" for row in db.execute("PRAGMA table_info(items)"))


def check_version(version: Any, path: Path | str) -> None:
    """Refuse a journal whose format version this manyhands does not read (1 to ``VERSION``).

    A newer one may hold records this one would misread; no version, or one
    that is not a number, is no journal this manyhands wrote.
    """
    text = from_db(version)
    try:
        number = int(text)
    except (TypeError, ValueError):
        number = 0
    if number > VERSION:
        raise JournalError(
            f"the journal {path} has format version {text!r}, newer than this "
            f"manyhands reads ({VERSION}); it was left untouched. Upgrade manyhands to use it"
        )
    if number < 1:
        found = "no format version" if version is None else f"format version {text!r}"
        raise JournalError(
            f"the journal {path} has {found}, which is not a version this manyhands knows "
            f"(it reads 1 to {VERSION}); it was left untouched"
        )
