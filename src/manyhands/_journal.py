"""The journal: an SQLite file that makes a run resumable.

Resume semantics:

- each item runs *at least once*; the journal holds *exactly one* final
  record per key (``items`` has the key as its primary key, and a row is
  written only when the item's outcome is final, after its retries);
- a rerun of the same call skips keys already done or failed
  (``retry_failed=True`` runs the failed ones again); items that were in
  flight when a run died have no record, so they run again;
- skipped items still get an Outcome and are counted in the Report, as are
  duplicate keys within one input (which run once);
- with ``key=``, a later copy of a key that is a different item (its
  fingerprint differs from the first copy's) is refused, on the first run and
  on every rerun alike (``changed_items="skip"``: a duplicate), so that an
  input whose key= collides never turns into "the input was edited" on resume.

Writes go through a writer thread with group commit (:mod:`._journal_writer`):
it commits whatever outcomes were handed over as soon as its previous commit
returns, in WAL mode with ``synchronous=NORMAL`` (a process crash loses
nothing committed; a power cut may lose the last commits) or ``FULL``
(``durability="full"``: fsync at every commit). A killed run loses at most
the rows of the commit in progress and those handed over during it, and
those items simply run again. Lookups read through a second connection,
so they never wait for a commit.

A new journal (no file, and no WAL a killed run left) is opened by the
writer thread as the run starts: nothing in it can be looked up, so the
first items need not wait for it (2-4 ms). The consumer waits for it only
where it needs the file (a lookup, a row naming the run, the end); a
failure to open it stops the run like a failed commit. An existing journal
is opened before the run: its records decide what runs.

One run at a time: a lock file next to the journal (``<journal>.lock``) is
held with an OS lock for the whole run, so the OS releases it when the
process dies, however it dies: a lock left by a killed run is never in the
way. The file names the holder (pid, host) for the error a second run gets.

The journal's parts are in modules of their own, mixed into :class:`Journal`
(their shared state is in :mod:`._journal_state`): reading the input through
it, in blocks looked up at once (:meth:`Journal.take`, :mod:`._journal_read`);
which items are skipped, and why (:mod:`._journal_skip`); recording outcomes
(:meth:`Journal.record`, :mod:`._journal_record`); recording the run's start
(:mod:`._journal_begin`). This module opens the journal, and closes it and
its run's row as the run ends.

Values (``store_results``) are stored as JSON: reading a journal must never
run code from it. ``store_results="pickle"`` stores any picklable value and
unpickles it on resume, so it is only for journal files the user trusts.
A value that cannot be stored as asked leaves its item done, with no value
kept, and a JournalWarning says so.

Creating, checking and locking the files are in :mod:`._journal_file`,
watching them in :mod:`._journal_watch`; storing text that UTF-8 cannot
encode, and within SQLite's length limit, in :mod:`._journal_text`; values
in :mod:`._journal_values`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._exceptions import JournalError
from ._journal_begin import JournalBeginning
from ._journal_file import (
    NOTHING_RUN,
    acquire_lock,
    create_private,
    holds_data,
    one_name,
    open_db,
    open_reader,
    release_lock,
)
from ._journal_read import JournalReading
from ._journal_record import DONE_DETAILED_SQL, DONE_SQL, JournalRecording
from ._journal_rows import FAILED, Unrecordable
from ._journal_state import DONE, Memo, Segment
from ._journal_text import LENGTH_LIMIT, length_limit
from ._journal_values import StoredValues
from ._journal_watch import Watch
from ._journal_writer import ALL_RECORDED, Writer
from ._key_check import KeyCheck
from ._outcome import Failure

__all__ = ["DONE", "FAILED", "FINAL_STATES", "Journal", "Segment"]

FINAL_STATES = (DONE, FAILED, "crashed", "timed_out")


class Journal(JournalBeginning, JournalReading, JournalRecording):
    """An open journal, locked for one run; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fn: Callable[..., Any],
        *,
        key: Callable[[Any], Any] | None = None,
        retry_failed: bool = False,
        store_results: bool | str = False,
        durability: str = "normal",
        changed_items: str = "refuse",
        options: dict[str, Any] | None = None,
    ) -> None:
        self.path = one_name(path)  # (symlinks resolved: one lock, one -wal, for one file)
        self._key = key
        self._retry_failed = retry_failed
        self._store_results = bool(store_results)
        self._values = StoredValues(pickled=store_results == "pickle")
        self._changed_items = changed_items
        self._lock = acquire_lock(self.path)
        self._detailed = key is not None or self._store_results  # done rows carry more columns
        done_sql = DONE_DETAILED_SQL if self._detailed else DONE_SQL
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._watch: Watch | None = None
        self.run_id = 0  # (known once the journal is open: see _opened)
        self._limit = LENGTH_LIMIT  # bytes in a row (SQLite's; read as the journal opens)
        self._unrecordable = Unrecordable()  # keys too long to record
        # With a key= other than the journal's: whether it changed the keys, told by
        # the first items read (see _key_check).
        self._key_check: KeyCheck | None = None
        self._start(fn, options or {}, durability, done_sql)
        self._source: Iterator[Any] | None = None
        self._buffer: deque[tuple[Any, str, str | None]] = deque()
        # A block whose keys are all new (none recorded, running, pending or
        # repeated in it) is taken in slices, with nothing more to check.
        self._new_items: list[Any] = []
        self._new_keys: list[str] = []
        self._new_prints: list[str | None] = []  # (with key=)
        self._new_at = 0
        self._block = 1  # items the next block reads (doubles while the input keeps up)
        self._looked_up: dict[str, tuple[Any, ...]] = {}  # key -> journal row, for the buffer
        # The sets of keys below hold them as memory_key has them: a long key
        # (from key=) as its digest. Segments, batches and rows hold the keys.
        self._running: set[Memo] = set()  # keys admitted to run, not recorded
        self._rerunning: set[Memo] = set()  # of those, failed ones run again (retry_failed)
        self.reran_failed = 0  # items recorded failed before, recorded again by this run
        # Keys recorded that a lookup may not find: not known to be committed,
        # or recorded while the journal was fresh (nothing was looked up then).
        self._unsaved: set[Memo] = set()
        self._unsaved_failed: dict[Memo, Failure] = {}  # the failed ones not known committed
        # Failed keys recorded while fresh and committed since: their Failure is
        # read from the file when a later copy needs it.
        self._failed_kept: set[Memo] = set()
        # With key=: where the first copy of each key this run took was, and what
        # it was (see _first), so that a later copy that differs is told apart
        # from a plain duplicate: while the key runs or is unsaved, and for up to
        # FRESH_KEYS keys skipped as recorded (their later copies, here, are not
        # edits of the input).
        self._firsts: dict[Memo, int] = {}
        # With key=: the fingerprint of each running item, taken as it was read,
        # which is the one recorded (the call may change the item in place).
        self._prints: dict[Memo, str | None] = {}
        self.pulled = 0  # items read from the input
        self.error: BaseException | None = None  # why reading stopped early, if it did
        self._ended = False
        self.closed = False
        self.closed_as: str | None = None  # the status close() wrote in the run's row

    # -- opening ---------------------------------------------------------

    def _start(
        self, fn: Callable[..., Any], options: dict[str, Any], durability: str, done_sql: str
    ) -> None:
        """Open the journal (a new one in the writer's thread) and start the writer."""
        path = self.path
        # New: no journal yet (this run holds the lock: no other run can create it
        # now), and no WAL a killed run left beside it (opening that brings back
        # its records).
        try:
            new = not holds_data(self.path) and not holds_data(Path(f"{self.path}-wal"))
        except OSError:
            new = False  # (opening it says what is wrong)
        if new:
            try:
                create_private(self.path)
                self._watch = Watch(self.path, self._lock)  # (the file this run created)
            except OSError as exc:
                release_lock(self._lock, unused=True)
                raise JournalError(f"cannot write the journal {path}: {exc}{NOTHING_RUN}") from exc
            except BaseException:
                release_lock(self._lock, unused=True)
                raise

        def open_files() -> tuple[sqlite3.Connection, Watch, int]:
            return self._open_files(fn, options, durability, new)

        if new:
            # Nothing to look up, nothing to warn about: the writer's thread opens it
            # while the run starts, and the consumer waits for it only where it needs
            # the file (a commit, a lookup, the end). A failure to open it (or the
            # file removed or replaced meanwhile) stops the run at the next outcome.
            self._fresh = True
            self._writer = Writer(open_files, done_sql)
        else:
            try:
                files = open_files()
            except BaseException:
                release_lock(self._lock, unused=True)  # (a refused file: no lock file left)
                raise
            self._fresh = (
                self._db is not None
                and self._db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is None
            )
            self._writer = Writer(lambda: files, done_sql)  # (last: a thread)

    def _open_files(
        self, fn: Callable[..., Any], options: dict[str, Any], durability: str, new: bool
    ) -> tuple[sqlite3.Connection, Watch, int]:
        """Open the journal and a reader, record the run's start; raise JournalError if not.

        Leaves nothing open if it fails (the lock is the caller's).
        """
        db: sqlite3.Connection | None = None
        reader: sqlite3.Connection | None = None
        watch = self._watch
        try:
            db = open_db(self.path, durability)
            if watch is not None:  # (new: never write into another file put in its place)
                watch.note_sidecars()  # (ours: removed as the journal closes, if it moved)
                problem = watch.journal_problem()
                if problem is not None:
                    raise JournalError(problem)
            self._limit = length_limit(db)
            run_id = self._begin(db, fn, options)
            if watch is None:
                watch = Watch(self.path, self._lock)
            reader = open_reader(self.path)
        except BaseException as exc:
            for each in (db, reader):
                if each is not None:
                    each.close()
            problem = watch.journal_problem() if new and watch is not None else None
            if problem is not None:  # (removed or replaced as it was opened)
                raise JournalError(problem) from exc.__cause__
            if new and isinstance(exc, JournalError):  # (opened beside the run's start)
                raise JournalError(str(exc).replace(NOTHING_RUN, "")) from exc.__cause__
            if not isinstance(exc, (sqlite3.Error, OSError)):
                raise
            then = "" if new else NOTHING_RUN
            raise JournalError(f"cannot write the journal {self.path}: {exc}{then}") from exc
        # (the reader last: the consumer reads it without waiting once it is set)
        self._db, self._watch, self.run_id, self._reader = db, watch, run_id, reader
        return db, watch, run_id

    def _opened(self) -> sqlite3.Connection:
        """The reader, once the journal is open (a new one opens beside the run's start).

        Raises:
            JournalError: it could not be opened (or a commit failed).
        """
        if self._reader is None:
            self._writer.wait_open()
        assert self._reader is not None
        return self._reader

    def commit(self) -> None:
        """Wait until every outcome recorded so far is committed."""
        self._writer.flush()

    def _stop_if(self, problem: str | None, then: str) -> None:
        """Stop the run over what happened to the journal's files, if anything did."""
        if problem is not None:
            error = JournalError(f"{problem}; the run stopped.{then}")
            error.writing = True
            raise error

    def close(self, status: str, counts: dict[str, int]) -> None:
        """Commit what is recorded, note how the run ended, release the lock; idempotent."""
        if self.closed:
            return
        if self._key_check is not None and self._reader is not None:  # (fewer items read)
            with contextlib.suppress(sqlite3.Error):
                self._settle_key_check()
        self.closed = True
        try:
            self._writer.close()  # (the connection is this thread's again)
            db, watch, _ = self._writer.wait_open()  # (open: the writer would have raised)
            self._stop_if(watch.journal_problem(), "")
            try:
                with db:
                    db.execute(
                        "UPDATE runs SET finished = ?, status = ?, succeeded = ?, failed = ?, "
                        "skipped = ?, duplicates = ? WHERE id = ?",
                        (
                            time.time(),
                            status,
                            counts.get("succeeded", 0),
                            counts.get("failed", 0),
                            counts.get("skipped", 0),
                            counts.get("duplicates", 0),
                            self.run_id,
                        ),
                    )
            except sqlite3.Error as exc:
                error = JournalError(
                    f"writing the journal {self.path} failed ({exc}) as the run ended; every "
                    "finished item was recorded, but the run's summary was not"
                )
                error.writing = True
                raise error from exc
            self.closed_as = status
            self._stop_if(watch.lock_problem(), ALL_RECORDED)
        finally:
            self._release()

    def _release(self) -> None:
        self._writer.stop()  # (stopped already, unless close was interrupted)
        for db in (self._reader, self._db):
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
        if self._watch is not None:
            self._watch.tidy_after_close()
        release_lock(self._lock)

    def abandon(self) -> None:
        """Close after a failed write: stop the writer, release everything, write nothing more."""
        if self.closed:
            return
        self.closed = True
        self._release()
