"""The journal's files: named once, created private, checked when opened, locked, watched.

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
- :class:`Watch` notices (before a write, at most every 50 ms, and as the
  journal closes) that the journal or its lock
  file was removed or replaced under the run: SQLite would go on writing
  into a file that no path leads to any more, and the run would "succeed"
  with its journal gone.
- The lock (one run at a time) is :mod:`._journal_lock`'s; its names are
  re-exported here.
- Text is stored losslessly: a str that UTF-8 cannot encode (a lone
  surrogate, from a file name that is not UTF-8) is stored as a BLOB of its
  ``surrogatepass`` bytes, and read back as the same str.
- A row never exceeds SQLite's length limit (:func:`length_limit`): a commit
  that held one would fail whole, and every resume would fail there again.
  A value that does not fit is not stored (its item is done, without its
  value), a failure's texts are cut (:func:`cut_text`), and a row whose key
  alone does not fit is not written (see ``Journal``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Any

from ._exceptions import JournalError, JournalWarning, user_stacklevel
from ._journal_lock import NOTHING_RUN, Lock, acquire_lock, lock_path, release_lock
from ._outcome import safe_message, safe_repr

__all__ = [
    "FORMAT",
    "NOTHING_RUN",
    "VERSION",
    "Lock",
    "StoredValues",
    "Watch",
    "acquire_lock",
    "check_version",
    "create_private",
    "cut_short",
    "cut_text",
    "db_size",
    "from_db",
    "has_item_json",
    "holds_data",
    "length_limit",
    "lock_path",
    "one_name",
    "open_db",
    "open_reader",
    "release_lock",
    "to_db",
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
#: SQLite's limit on the length of a string, a BLOB and a whole row, in bytes
#: (SQLITE_MAX_LENGTH, unless the build set another). Python 3.11+ reads the
#: connection's own limit, which can only be lower (:func:`length_limit`).
LENGTH_LIMIT = 1_000_000_000
#: Bytes of a row kept for its record header and its numbers (state, attempts,
#: times, run, fingerprint, value format), beside its key, value and texts.
ROW_MARGIN = 1024
#: A failure's message and traceback (and error type, and the item's repr) are
#: stored cut to this many characters (the middle is left out, and says so).
MAX_TEXT = 1_000_000

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


def to_db(text: str) -> str | bytes:
    """``text`` as SQLite can store it: itself, or its bytes when UTF-8 cannot encode it.

    >>> to_db("café"), to_db("caf\\udce9")
    ('café', b'caf\\xed\\xb3\\xa9')
    """
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
    return text


def from_db(value: Any) -> Any:
    """What :func:`to_db` stored, as the str it was; other values as they are.

    >>> from_db(to_db("caf\\udce9")) == "caf\\udce9", from_db(None)
    (True, None)
    """
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # not written by to_db: show it, never fail on it
        return value.decode("utf-8", "backslashreplace")


def length_limit(db: sqlite3.Connection) -> int:
    """The most bytes a string, a BLOB or a row may hold in ``db`` (see ``LENGTH_LIMIT``)."""
    if sys.version_info < (3, 11):  # (no getlimit)
        return LENGTH_LIMIT
    return min(LENGTH_LIMIT, db.getlimit(sqlite3.SQLITE_LIMIT_LENGTH))


def db_size(data: str | bytes) -> int:
    """The bytes SQLite stores for ``data`` (a str as :func:`to_db` binds it).

    >>> db_size("abc"), db_size("café"), db_size(b"\\x00")
    (3, 5, 1)
    """
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


def cut_text(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters; else its start and end, and a note.

    The end of a traceback says what was raised, so both ends are kept.

    >>> cut_text("abc", 10)
    'abc'
    >>> cut_text("a" * 100 + "z" * 100, 120)
    'aaaaaaaaaaaaaaaaaaaa\\n[... 160 of 200 characters not stored ...]\\nzzzzzzzzzzzzzzzzzzzz'
    """
    if len(text) <= limit:
        return text
    keep = max(limit - 80, 0) // 2  # (the note takes fewer than 80)
    note = f"\n[... {len(text) - 2 * keep:,} of {len(text):,} characters not stored ...]\n"
    return text[:keep] + note + text[len(text) - keep :]


# -- values ---------------------------------------------------------------


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


# -- opening -------------------------------------------------------------


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


# -- noticing the files were removed or replaced -------------------------


class Watch:
    """The identity of the journal's files, checked around writes (see ``WATCH_INTERVAL``).

    SQLite holds the journal open: once its path is removed or leads to
    another file, every commit "succeeds" into a file nobody will find. A
    removed lock file lets another run lock a new one and run the same items.

    Made once the journal file exists; :meth:`note_sidecars` once the run's
    first write created the ``-wal`` and ``-shm`` files.
    """

    def __init__(self, path: Path, lock: Lock) -> None:
        self.path = path
        self.lock_path = lock_path(path)
        self._journal = _identity(os.stat(path))
        self._lock = _identity(os.fstat(lock.fileno()))
        self._sidecars: dict[Path, tuple[int, int]] = {}
        self.note_sidecars()

    def note_sidecars(self) -> None:
        """Note the identity of the journal's ``-wal`` and ``-shm`` files, once they exist."""
        self._sidecars = {
            Path(f"{self.path}{suffix}"): _identity(os.stat(f"{self.path}{suffix}"))
            for suffix in ("-wal", "-shm")
            if os.path.exists(f"{self.path}{suffix}")
        }

    def journal_problem(self) -> str | None:
        """What happened to the journal, if it is gone or is another file; else None."""
        what = _changed(self.path, self._journal)
        if what == "removed":
            return (
                f"the journal {self.path} was removed during the run (or its directory was); "
                "what was recorded in it went with it"
            )
        if what == "replaced":
            return (
                f"the journal {self.path} was replaced by another file during the run; that "
                "file was left untouched, and this run's records are not in it"
            )
        return None

    def lock_problem(self) -> str | None:
        """What happened to the lock file, if it is gone or is another file; else None."""
        what = _changed(self.lock_path, self._lock)
        if what is None:
            return None
        return (
            f"the journal's lock file {self.lock_path} was {what} during the run, so "
            "another run could have started on the same journal"
        )

    def tidy_after_close(self) -> None:
        """Once the database is closed: if the journal moved, remove our -wal and -shm.

        SQLite keeps the WAL of a database that moved rather than checkpoint
        it. Left next to whatever the path now leads to, the next reader
        would apply this run's pages to that file.
        """
        if _changed(self.path, self._journal) is None:
            return
        for sidecar, identity in self._sidecars.items():
            if _changed(sidecar, identity) is None:  # ours still: not another file's
                with contextlib.suppress(OSError):
                    os.remove(sidecar)


def _identity(found: os.stat_result) -> tuple[int, int]:
    return found.st_dev, found.st_ino


def _changed(path: Path, identity: tuple[int, int]) -> str | None:
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "removed"
    except OSError:
        return None  # cannot tell (e.g. permissions): the write itself will say
    return None if _identity(found) == identity else "replaced"
