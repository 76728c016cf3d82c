"""The journal's writer thread: group commit.

::

    consuming thread                       writer thread
    Journal.record(batch)                  ┌──────────────────────────────────────────┐
      └─ hand over ──▶ pending rows ──────▶│ take ALL pending, one transaction, commit │
         (waits while MAX_PENDING rows     │ then tell the consumer which keys it made │
          are pending: back-pressure)      │ durable (committed), and loop             │
                                           └──────────────────────────────────────────┘

The writer commits whatever has been handed over as soon as its previous
commit returns (and at most every ``COMMIT_INTERVAL``, 2 ms), so an
outcome waits for at most the commit in progress and its own: the group
grows by itself when outcomes come faster than a commit (a database's
group commit). A crash of the process loses only the rows of those two
commits, at most ``2 * MAX_PENDING`` rows plus a batch each.

A group is committed in one transaction, with the statements of
:mod:`._journal_group` (the common rows in one, read from JSON).

A commit that fails stops the writer: what it held and everything handed
over after is not recorded, and the consumer gets a :class:`JournalError`
saying how many items will run again. A lock file removed or replaced
under the run is told once, and the writer goes on recording (the journal
itself is fine): the run stops with every finished item recorded.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from ._exceptions import JournalError
from ._journal_file import has_item_json
from ._journal_group import Group, insert_batches, supports_json
from ._journal_rows import failed_rows
from ._journal_watch import Watch
from ._signal_waits import WAIT_SLICE, wait_sliced

__all__ = [
    "ALL_RECORDED",
    "COMMIT_INTERVAL",
    "MAX_PENDING",
    "WATCH_INTERVAL",
    "Writer",
    "not_recorded",
]

#: Rows handed over and not yet taken by the writer, past which the consumer
#: waits (a batch bigger than this is still taken whole, once nothing waits).
#: It binds only when SQLite is slower than the work (items of a few us): then
#: larger groups mean fewer commits and fewer waits for the GIL between them
#: (tiny items: 8,000 took ~8% less time than 2,000, 500 ~10% more).
MAX_PENDING = 8000
#: Commits begin at most this often: a small commit costs 100-300 us of CPU
#: (and GIL hand-offs) whatever its size, so outcomes that finish within 2 ms
#: of each other go in one. A commit that takes longer is followed at once.
#: (At 1 ms, a kill of 16 workers on ~2 ms calls re-ran as many items, ~20, and
#: the writer used a third more CPU.)
COMMIT_INTERVAL = 0.002
#: The journal's files are checked (:class:`Watch`) before a commit at most this
#: often, and once more as the journal closes. Each check is an ``os.stat``,
#: which gives up the GIL and then waits behind the busy threads to take it back:
#: checked around every commit, the writer spent 17-77 ms of a half-second run
#: (tiny or io items, bench_journal.py) waiting there. A file removed or replaced
#: under the run is told at the next check; what was committed since went with it
#: (as everything before it did).
WATCH_INTERVAL = 0.05

#: What opens the journal for the writer: its connection, the identity of its
#: files and the run's id. Raises JournalError if it cannot.
Opener = Callable[[], tuple[sqlite3.Connection, Watch, int]]


class Writer:
    """The thread that commits a journal's rows; see the module docstring.

    Args:
        open_files: opens the journal, first thing in the writer's thread, so
            a new journal is created beside the run's start (the consumer may
            hand over rows meanwhile: they wait for it). The connection is the
            writer's alone until :meth:`close`.
        done_sql: the statement for :attr:`Group.done` rows.
    """

    def __init__(self, open_files: Opener, done_sql: str) -> None:
        self._open_files = open_files
        self._done_sql = done_sql
        self._db: sqlite3.Connection | None = None
        self._watch: Watch | None = None
        self._run = 0
        self._json = False
        self._item_json = False
        self._opened = threading.Event()  # set once the journal is open, or failed to
        self._lock = threading.Lock()  # (taken as is where nothing waits: a Condition's
        self._cond = threading.Condition(self._lock)  # with costs twice as much)
        self._pending = Group()
        self._writing = 0  # rows of the commit in progress
        self._idle = False  # the writer waits for rows
        self._full = False  # the consumer waits for room
        self._ending = False  # write what is pending, then stop
        self._discard = False  # stop without writing more
        self._failure: tuple[str, BaseException | None] | None = None
        self._lost = 0  # rows not recorded since the failure
        self._problem: str | None = None  # a lock problem, told once
        self.committed: deque[Sequence[str | bytes]] = (
            deque()
        )  # keys made durable, for the consumer
        self.commits = 0
        self.checks = 0  # times the files were checked
        self._checked = -WATCH_INTERVAL  # when, last (time.monotonic)
        self._thread = threading.Thread(target=self._loop, name="manyhands-journal", daemon=True)
        self._thread.start()

    # -- the consuming thread's side --------------------------------------

    def wait_open(self) -> tuple[sqlite3.Connection, Watch, int]:
        """What ``open_files`` returned, once it did.

        Raises:
            JournalError: the journal could not be opened, or a commit failed.
        """
        wait_sliced(self._opened.wait, None)  # (opening checks the file: it may take a while)
        with self._cond:
            if self._failure is not None:
                raise self._error()
        assert self._db is not None and self._watch is not None
        return self._db, self._watch, self._run

    def hand_over(self, group: Group) -> None:
        """Queue rows for the next commit; wait while too many are pending.

        Raises:
            JournalError: a commit failed (these rows are not recorded), or,
                once, the lock file was removed or replaced (these rows are).
        """
        with self._cond:
            pending = self._room(group.rows)
            pending.batches += group.batches
            pending.done += group.done
            pending.failed += group.failed
            pending.keys += group.keys
            pending.rows += group.rows
            self._handed_over()

    def hand_over_done(
        self, attempts: int, elapsed: float, finished: float, keys: list[str]
    ) -> None:
        """:meth:`hand_over` for the common batch: done, default keys, nothing stored."""
        with self._lock:  # (the condition's)
            pending = self._pending
            if pending.rows + len(keys) > MAX_PENDING or self._failure is not None:
                pending = self._room(len(keys))  # (the uncommon case: wait, or raise)
            pending.batches.append((attempts, int(elapsed * 1e9), int(finished * 1e6), keys))
            pending.keys.append(keys)
            pending.rows += len(keys)
            if self._idle or self._problem is not None:
                self._handed_over()

    def _room(self, rows: int) -> Group:
        """The pending group, once it has room for ``rows`` more (condition held)."""
        while (
            self._pending.rows
            and self._pending.rows + rows > MAX_PENDING
            and self._failure is None
            and not self._discard
        ):
            self._full = True  # the writer takes the group now, not at its next interval
            self._cond.notify_all()
            self._cond.wait(WAIT_SLICE)  # (in slices: see _signal_waits)
        self._full = False
        if self._failure is not None:
            self._lost += rows
            raise self._error()
        return self._pending

    def _handed_over(self) -> None:
        """Wake the writer if it waits for rows; tell a lock problem once (condition held)."""
        if self._idle:
            self._idle = False  # (one wake-up: the hand-overs until it runs need none)
            self._cond.notify()
        if self._problem is not None:
            problem, self._problem = self._problem, None
            raise _writing(JournalError(problem))

    def flush(self) -> None:
        """Wait until every row handed over is committed (or a commit failed)."""
        wait_sliced(self._opened.wait, None)
        with self._cond:
            while (self._pending.rows or self._writing) and self._failure is None:
                self._cond.wait(WAIT_SLICE)
            if self._failure is not None:
                raise self._error()

    def close(self) -> None:
        """Commit what is pending, then stop the thread; raise if a commit failed.

        (A lock problem not told yet is not raised here: the journal checks
        the lock file itself as it closes.)
        """
        with self._cond:
            self._ending = True
            self._cond.notify_all()
        self._join()
        with self._cond:
            if self._failure is not None:
                raise self._error()

    def stop(self) -> None:
        """Stop the thread without writing more (the commit in progress ends first)."""
        with self._cond:
            self._discard = True
            self._cond.notify_all()
        self._join()

    def _join(self) -> None:
        """Wait for the thread to end, in slices (a signal: see _signal_waits)."""
        while self._thread.is_alive():
            self._thread.join(WAIT_SLICE)

    def _error(self) -> JournalError:
        assert self._failure is not None
        text, cause = self._failure
        error = _writing(JournalError(f"{text}; the run stopped.{not_recorded(self._lost)}"))
        error.__cause__ = cause
        return error

    # -- the writer thread --------------------------------------------------

    def _open(self) -> bool:
        """Open the journal (``open_files``); False, the failure noted, if it cannot."""
        try:
            db, self._watch, self._run = self._open_files()
            # Transactions are the writer's: BEGIN/COMMIT, or one statement.
            db.isolation_level = None
            self._json = supports_json(db, self._run)
            self._item_json = has_item_json(db)  # (not in a journal of an earlier version)
            self._db = db
        except BaseException as exc:  # (anything: the consumer must never wait in vain)
            text = (
                str(exc)
                if isinstance(exc, JournalError)
                else f"opening the journal failed ({exc!r})"
            )
            with self._cond:
                self._failure = (text, exc.__cause__ if isinstance(exc, JournalError) else exc)
                self._lost = self._pending.rows
                self._pending = Group()
                self._cond.notify_all()
            return False
        finally:
            self._opened.set()
        return True

    def _loop(self) -> None:
        if not self._open():
            return
        cond = self._cond
        started = -COMMIT_INTERVAL
        while True:
            with cond:
                self._wait_for_rows(started)
                group, self._pending = self._pending, Group()
                self._writing = group.rows
                cond.notify_all()  # room for a consumer waiting to hand over
                if self._discard or not group.rows:
                    self._writing = 0
                    return
            started = time.monotonic()
            try:
                self._commit(group)
            except BaseException as exc:  # (anything: the consumer must never wait in vain)
                if isinstance(exc, _Failed):
                    failure = (exc.text, exc.__cause__)
                else:
                    failure = (f"the journal's writer failed ({exc!r})", exc)
                with cond:
                    self._failure = failure
                    self._lost = group.rows + self._pending.rows
                    self._writing = 0
                    cond.notify_all()
                return
            with cond:
                self.committed.extend(group.keys)
                self.commits += 1
                self._writing = 0
                cond.notify_all()

    def _wait_for_rows(self, started: float) -> None:
        """Until rows are pending and the last commit began COMMIT_INTERVAL ago, or the end.

        Called with the condition held.
        """
        cond = self._cond
        while not (self._ending or self._discard):
            early = started + COMMIT_INTERVAL - time.monotonic()
            if not self._pending.rows:
                if early > 0:
                    # Rows are likely to come before the next commit may begin: look
                    # then, unwoken (a wake-up costs the consumer a notify, and this
                    # thread one more wait for the GIL).
                    cond.wait(early)
                    continue
                self._idle = True  # (a hand-over wakes it)
                cond.wait()
                self._idle = False
                continue
            if early <= 0 or self._full or self._pending.rows >= MAX_PENDING:
                return
            cond.wait(early)

    def _commit(self, group: Group) -> None:
        now = time.monotonic()
        check = now - self._checked >= WATCH_INTERVAL
        if check:
            self._checked = now
            self.checks += 1
            assert self._watch is not None
            problem = self._watch.journal_problem()
            if problem is not None:  # stop writing into a file that is gone or another's
                raise _Failed(problem)
        db = self._db
        assert db is not None and self._watch is not None
        try:
            if group.done or group.failed or not self._json:
                db.execute("BEGIN IMMEDIATE")
                try:
                    insert_batches(db, group.batches, self._run, self._json)
                    if group.done:
                        db.executemany(self._done_sql, group.done)
                    if group.failed:
                        db.executemany(*failed_rows(group.failed, self._item_json))
                    db.execute("COMMIT")
                except BaseException:
                    db.rollback()  # nothing half-written
                    raise
            else:
                # (one statement: its own transaction)
                insert_batches(db, group.batches, self._run, self._json)
        except (sqlite3.Error, ValueError, OverflowError) as exc:  # (the last two: binding)
            raise _Failed(f"writing the journal {self._watch.path} failed ({exc})") from exc
        problem = self._watch.lock_problem() if check else None
        if problem is not None:
            with self._cond:
                if self._problem is None:
                    self._problem = f"{problem}; the run stopped.{ALL_RECORDED}"


class _Failed(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


ALL_RECORDED = " Every finished item was recorded."


def _writing(error: JournalError) -> JournalError:
    """``error``, marked as a failure to write the journal during the run."""
    error.writing = True
    return error


def not_recorded(count: int) -> str:
    """The end of a JournalError's message: how many finished items will run again."""
    if not count:
        return ""
    return f" {count:,} finished item(s) were not recorded and will run again when you rerun"
