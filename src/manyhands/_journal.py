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

Reading the input goes through :meth:`Journal.take`, which reads blocks of
items, computes their keys, looks them all up in one query, and hands the
engine consecutive segments of items to run or to skip, in input order. A
journal that held no record when the run began needs no lookup: the keys
the run records stay in memory instead (up to ``FRESH_KEYS``).

Values (``store_results``) are stored as JSON: reading a journal must never
run code from it. ``store_results="pickle"`` stores any picklable value and
unpickles it on resume, so it is only for journal files the user trusts.
A value that cannot be stored as asked leaves its item done, with no value
kept, and a JournalWarning says so.

Creating, checking, locking and watching the files, and storing text that
UTF-8 cannot encode, are in :mod:`._journal_file`.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import socket
import sqlite3
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from pathlib import Path
from typing import Any

from ._batch import Batch
from ._exceptions import JournalError, JournalWarning, Timeout, WorkerCrashed, user_stacklevel
from ._journal_file import (
    FORMAT,
    LENGTH_LIMIT,
    NOTHING_RUN,
    ROW_MARGIN,
    VERSION,
    StoredValues,
    Watch,
    acquire_lock,
    create_private,
    db_size,
    from_db,
    holds_data,
    length_limit,
    one_name,
    open_db,
    open_reader,
    release_lock,
    to_db,
)
from ._journal_rows import FAILED, Unrecordable, failed_row, room_for
from ._journal_writer import ALL_RECORDED, Group, Writer
from ._key_check import KeyCheck, key_changed, key_identity
from ._keys import (
    MAX_KEY_TEXT,
    KeyTypeError,
    code_hash,
    default_key,
    default_keys,
    fingerprint,
    function_name,
    memory_key,
)
from ._outcome import (
    DUPLICATE,
    SKIPPED_DONE,
    SKIPPED_FAILED,
    Failure,
    duplicate_failure,
    safe_repr,
)
from ._reader import input_broke

__all__ = ["DONE", "FAILED", "FINAL_STATES", "Journal", "Segment"]

Memo = str | bytes  # a key as the sets in memory hold it (see memory_key)

BLOCK = 512  # items read and looked up at once, at most
#: While the journal held no record when the run began, the keys this run
#: records stay in memory, up to this many (a few tens of MB), and reading
#: needs no lookup: nothing else can be in the file. Past it, blocks are
#: looked up again and no more keys are kept (those kept stay).
FRESH_KEYS = 250_000
#: A block that took longer than this to read is followed by a smaller one: a
#: slow input (lines from a pipe, a queue) is not held back to fill a block.
READ_SECONDS = 0.01

DONE = "done"
FINAL_STATES = (DONE, FAILED, "crashed", "timed_out")

# Done rows name their columns: binding 13 values, most of them NULL, costs
# more than twice as much per row.
_DONE = (
    "INSERT OR REPLACE INTO items (key, state, attempts, elapsed, finished, run) "
    "VALUES (?, 'done', ?, ?, ?, ?)"
)
_DONE_DETAILED = (
    "INSERT OR REPLACE INTO items "
    "(key, state, attempts, elapsed, finished, run, fingerprint, result, result_format) "
    "VALUES (?, 'done', ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass
class Segment:
    """Consecutive input items, all to run or all to skip.

    For a skip segment, ``reasons`` says why each is skipped and ``values``
    and ``failures`` hold what the journal has (values only with
    ``store_results``).
    """

    items: list[Any]
    keys: list[str]
    reasons: list[str] | None = None
    values: list[Any] | None = None
    failures: dict[int, Failure] | None = None
    waiting: list[int] | None = None  # duplicates whose first copy still runs: by index


class Journal:
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
        done_sql = _DONE_DETAILED if self._detailed else _DONE
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
                    ("version", str(VERSION)),
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

    # -- reading the input -----------------------------------------------

    def take(self, source: Iterator[Any], size: int, room: int) -> Segment | None:
        """The next segment: at most ``size`` items to run or ``room`` to skip.

        None once the input is done. (A run segment may hold the last few
        items of a block of new keys more, within ``room``.)

        A run segment holds items with no final record (or failed ones, with
        ``retry_failed``); a skip segment holds items with a final record, or
        repeating a key run by this input.
        """
        self._source = source
        if self._new_at < len(self._new_keys):
            return self._take_new_block(size, room)
        buffer = self._buffer
        while True:
            if not buffer and not self._refill(size):
                return None if self._ended else Segment([], [])
            if not buffer:  # (a block of new keys)
                return self._take_new_block(size, room)
            first = self._skip_reason(*buffer[0])
            if buffer:  # (a refused item empties it)
                break
        items: list[Any] = []
        keys: list[str] = []
        if first is None and not self._looked_up:
            self._take_new(items, keys, size)
            if items:
                return Segment(items, keys)
        if first is None:
            running, unsaved, looked_up = self._running, self._unsaved, self._looked_up
            while True:
                position = self.pulled - len(buffer)
                item, key, print_ = buffer.popleft()
                running.add(held := memory_key(key))
                if print_ is not None:
                    self._firsts[held] = _first(position, print_)
                    self._prints[held] = print_
                items.append(item)
                keys.append(key)
                if len(items) >= size or not buffer:  # (the next block is read next time)
                    break
                upcoming = buffer[0][1]
                held = memory_key(upcoming)  # (the next item's)
                if (
                    (held in running or held in unsaved or upcoming in looked_up)
                    and self._skip_reason(*buffer[0]) is not None
                ) or not buffer:
                    break
            return Segment(items, keys)
        return self._take_skipped(first, room)

    @property
    def read_ahead(self) -> int:
        """Items read from the input and not taken yet (those of the current block)."""
        return len(self._new_keys) - self._new_at + len(self._buffer)

    def _take_skipped(self, first: str, room: int) -> Segment:
        """A skip segment: at most ``room`` items, the first one skipped as ``first``."""
        buffer = self._buffer
        items: list[Any] = []
        keys: list[str] = []
        reasons: list[str] = []
        values: list[Any] = []
        failures: dict[int, Failure] = {}
        waiting: list[int] = []
        reason: str | None = first
        firsts = self._firsts
        while True:
            item, key, print_ = buffer.popleft()
            assert reason is not None
            value: Any = None
            if reason != DUPLICATE:
                value, failure = self._stored(item, self._looked_up.get(key))
                if print_ is not None and len(firsts) < FRESH_KEYS:
                    position = self.pulled - len(buffer) - 1
                    firsts.setdefault(memory_key(key), _first(position, print_))
            elif memory_key(key) in self._running:  # its outcome is the first copy's, not known
                waiting.append(len(items))
                failure = None
            else:
                failure = self._first_copys_failure(item, key)
            if failure is not None:
                failures[len(items)] = failure
            items.append(item)
            keys.append(key)
            reasons.append(reason)
            values.append(value)
            if len(items) >= room or not buffer:
                break
            reason = self._skip_reason(*buffer[0])
            if reason is None or not buffer:
                break
        return Segment(items, keys, reasons, values, failures or None, waiting or None)

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

    def _take_new_block(self, size: int, room: int) -> Segment:
        """The next ``size`` items (or fewer, at its end) of a block of new keys.

        The block's last few items (fewer than half a batch) go with the
        slice before them, within ``room``: a batch of their own would be
        small, and the batches after a small one are small too (a batch
        grows at most twofold over the last that finished).
        """
        start = self._new_at
        end = start + size
        left = len(self._new_keys) - end
        if 0 < left < size // 2 and size + left <= room:
            end += left
        self._new_at = end
        keys = self._new_keys[start:end]
        items = self._new_items[start:end]
        held = self._held(keys)
        if self._new_prints:  # (key=)
            at = self.pulled - len(self._new_keys) + start
            self._note_firsts(at, held, self._new_prints[start:end])
        if end >= len(self._new_keys):
            self._new_items, self._new_keys, self._new_prints = [], [], []
            self._new_at = 0
        self._running.update(held)
        return Segment(items, keys)

    def _note_firsts(self, at: int, held: Sequence[Memo], prints: list[str | None]) -> None:
        """Note where and what the first copies of keys are (from position ``at`` on).

        Their fingerprints are kept too, to be recorded with them.
        """
        self._prints.update(zip(held, prints, strict=True))
        # _first of each, in map and zip: no Python code per item, on the path of
        # every item with key= (a None print, unknown, is hash(None): see _copy).
        positions = map(_SHIFTED, range(at, at + len(held)))
        hashes = map(_PRINT.__and__, map(hash, prints))
        self._firsts.update(zip(held, map(operator.or_, positions, hashes), strict=True))

    def _take_new(self, items: list[Any], keys: list[str], size: int) -> None:
        """The common case in bulk: the next items all run (their keys are new).

        New: no record was found for any key of the block (nothing looked
        up), and none is running, recorded by this run or repeated among
        them. Takes nothing if that does not hold for the next items. Stops
        at the end of the buffer: the next block may be taken whole.
        """
        buffer, running, unsaved = self._buffer, self._running, self._unsaved
        while buffer and not self._looked_up and len(items) < size:
            at = self.pulled - len(buffer)
            count = min(size - len(items), len(buffer))
            entries = list(islice(buffer, count))
            new = [entry[1] for entry in entries]
            held = self._held(new)
            if not (
                running.isdisjoint(held) and unsaved.isdisjoint(held) and len(set(new)) == count
            ):
                return
            if count == len(buffer):
                buffer.clear()
            else:
                popleft = buffer.popleft
                for _ in range(count):
                    popleft()
            running.update(held)
            if self._key is not None:
                self._note_firsts(at, held, [entry[2] for entry in entries])
            items += [entry[0] for entry in entries]
            keys += new

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
        if first is not None and first & _PRINT != _NO_PRINT:
            same = first & _PRINT == hash(print_) & _PRINT
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

    def _refill(self, size: int) -> bool:
        """Read and look up the next block; False when nothing more comes.

        The block holds ``size`` items or more: as many as the input gave
        in ``READ_SECONDS`` last time, up to ``BLOCK``. A block whose keys
        are all new goes to the slices of :meth:`_take_new_block`, any other
        to the buffer. Called only when both are empty: a segment never
        waits for the input with items already taken.
        """
        if self._ended or self._source is None:
            return False
        self._looked_up.clear()  # the buffer is empty: every looked-up row was used
        self._forget_committed()
        block: list[Any] = []
        wanted = min(max(self._block, size), BLOCK)
        began = time.monotonic()
        try:
            block.extend(islice(self._source, wanted))
        except BaseException as exc:  # the user's iterable broke: the engine raises InputError
            if not input_broke(exc):
                raise
            self.error = exc
            self._ended = True
        if len(block) < wanted and not getattr(self._source, "waiting", False):
            self._ended = True  # (an async input that is only waiting has not ended)
        elif len(block) == wanted:
            seconds = time.monotonic() - began
            if seconds > READ_SECONDS:
                self._block = max(1, int(wanted * READ_SECONDS / seconds))
            else:
                self._block = min(2 * wanted, BLOCK)
        keys: list[str] = []
        prints: list[str | None] = []  # (with key=: the items' fingerprints)
        keyfn = self._key
        if keyfn is None:
            with contextlib.suppress(Exception):  # (the loop below names the item)
                keys = default_keys(block)
        if len(keys) < len(block):
            keys = []
            for item in block:
                try:
                    if keyfn is None:
                        key = default_key(item)
                    else:
                        key = _as_key(keyfn(item))
                        prints.append(fingerprint(item))
                except Exception as exc:
                    self.error = _key_error(item, self.pulled + len(keys), exc, keyfn)
                    self._ended = True
                    del block[len(keys) :]
                    break
                keys.append(key)
        self.pulled += len(keys)
        if self._key_check is not None:
            self._check_keys(block, keys, prints)
        self._lookup(keys)
        if (
            keys
            and not self._looked_up
            and len(set(keys)) == len(keys)
            and self._running.isdisjoint(held := self._held(keys))
            and self._unsaved.isdisjoint(held)
        ):
            self._new_items, self._new_keys, self._new_prints = block, keys, prints
            return True
        fingerprints = prints if keyfn is not None else repeat(None)
        self._buffer.extend(zip(block, keys, fingerprints, strict=False))  # (repeat: endless)
        return bool(self._buffer)

    def _check_keys(self, items: list[Any], keys: list[str], prints: list[str | None]) -> None:
        """Note the keys of the first items read; once there are enough, or the input
        ended, warn if they show that the changed key= changed the keys."""
        assert self._key_check is not None
        self._key_check.add(items, keys, prints)
        if self._key_check.full or self._ended:
            self._settle_key_check()

    def _settle_key_check(self) -> None:
        check, self._key_check = self._key_check, None
        if check is not None and check.changed(self._opened(), self.run_id):
            warnings.warn(check.warning, stacklevel=user_stacklevel())

    def _held(self, keys: list[str]) -> Sequence[Memo]:
        """The keys as the sets in memory hold them (default keys are short: as they are)."""
        if self._key is None or max(map(len, keys), default=0) <= MAX_KEY_TEXT:
            return keys  # (memory_key keeps these as they are)
        return list(map(memory_key, keys))

    def _forget_committed(self) -> None:
        """Keep in memory only the recorded keys (and failures) the next lookup may not find.

        Keys recorded while the journal was fresh stay (at most FRESH_KEYS and
        a block): nothing looks them up. Their failures, once committed, are
        read from the file when needed.
        """
        if self._fresh and len(self._unsaved) > FRESH_KEYS:
            self._fresh = False  # (memory: no more keys are kept)
        committed = self._writer.committed
        while committed:  # committed before this lookup: it finds them (run == this run)
            keys = committed.popleft()
            if not self._fresh:
                self._unsaved.difference_update(keys)
                if self._firsts:  # (a later copy compares with the row it looks up)
                    for key in keys:
                        self._firsts.pop(key, None)
            failed = self._unsaved_failed
            if failed:
                for key in keys:
                    if failed.pop(key, None) is not None and key in self._unsaved:
                        self._failed_kept.add(key)

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

    # -- recording outcomes ----------------------------------------------

    def record(self, batch: Batch, retried: set[int]) -> None:
        """Hand the final outcomes of a settled batch to the writer.

        Waits while the writer has too many rows pending (back-pressure).

        Raises:
            JournalError: a commit failed, or the lock file was removed or replaced.
        """
        keys = batch.keys
        assert keys is not None
        failures = batch.failures
        attempts = batch.attempts or {}
        now = time.time()
        each = batch.elapsed / len(keys) if keys else 0.0
        running = self._running
        if not (failures or retried or attempts or self._detailed or self._looked_up):
            # The common case: every item of the batch succeeded on this attempt.
            self._unsaved.update(keys)
            running.difference_update(keys)
            if keys:
                self._writer.hand_over_done(batch.attempt, each, now, keys)
            return
        group = self._record_each(batch, retried, keys, failures or {}, attempts, each, now)
        if group.rows:
            self._writer.hand_over(group)

    def _record_each(
        self,
        batch: Batch,
        retried: set[int],
        keys: list[str],
        failures: dict[int, Failure],
        attempts: dict[int, int],
        each: float,
        now: float,
    ) -> Group:
        self._opened()  # (the run's id)
        run = self.run_id
        running = self._running
        looked_up = self._looked_up
        with_prints = self._key is not None  # with key=, the item may change under its key
        prints = self._prints
        group = Group()
        recorded: list[Memo] = []  # (as memory_key has them)
        limit = self._limit
        for index, key in enumerate(keys):
            if index in retried:
                continue
            item = batch.items[index]
            failure = failures.get(index)
            held = key if len(key) <= MAX_KEY_TEXT else memory_key(key)
            print_ = prints.pop(held, None) if with_prints else None  # (as it was read)
            if failure is not None and _never_called(failure.exception):
                running.discard(held)  # never called (the run stopped): a resume runs it
                continue
            # (room_for, inlined: a row longer than SQLite's limit fails its commit)
            room = limit - ROW_MARGIN - (len(key) if key.isascii() else db_size(key))
            if room < 0:  # the key alone is too long: the item runs again on a resume
                self._unrecordable.add(item, key, limit)
                self._unsaved.add(held)  # (kept, as never committed: for a later copy)
            elif failure is None:
                tries = attempts.get(index, batch.attempt)
                if self._detailed:
                    result, form = (
                        self._values.write(item, batch.values[index], room)
                        if self._store_results
                        else (None, None)
                    )
                    group.done.append((to_db(key), tries, each, now, run, print_, result, form))
                else:
                    group.done.append((key, tries, each, now, run))
            else:
                fields = (each, now, print_, run)
                group.failed.append(failed_row(key, failure, safe_repr(item), room, fields))
            if failure is not None:
                self._unsaved_failed[held] = failure  # (for a later copy, until committed)
            if room >= 0:
                recorded.append(held)
            if key in looked_up:  # a later copy in the buffer is a duplicate now
                looked_up[key] = (DONE if failure is None else FAILED, run, print_,
                                  *looked_up[key][3:])  # fmt: skip
            running.discard(held)
        self._unsaved.update(recorded)
        group.keys.append(recorded)
        group.rows = len(recorded)
        return group

    def record_late(
        self, batch: Batch, not_final: set[int], *, handed: bool = False
    ) -> tuple[int, list[Failure]]:
        """Record the items of a batch that came back after the run was interrupted.

        Its final outcomes: not those in ``not_final`` (a failure that would
        have been retried, a call never made), and with ``store_results``
        only the successes whose value can be stored: nobody got these values,
        and a resume yields them from the journal; unless they were ``handed``
        to the consumer after all (the command wrote their lines), which
        records them as delivered ones are. Its final failures
        (``batch.failures``) are recorded as any. Returns how many successes,
        and which failures, were recorded.
        """
        if batch.keys is None:
            return 0, []
        failures = batch.failures or {}
        left_out = set(not_final)
        if self._store_results and not handed and batch.values:
            self._opened()  # (SQLite's length limit)
            storable, keys, limit = self._values.storable, batch.keys, self._limit
            left_out.update(
                index
                for index, value in enumerate(batch.values)
                if index not in left_out
                and index not in failures
                and not storable(value, room_for(keys[index], limit))
            )
        recorded = [failure for index, failure in failures.items() if index not in left_out]
        if left_out:
            batch.failures = {i: f for i, f in failures.items() if i not in left_out} or None
        self.record(batch, left_out)
        return len(batch.keys) - len(left_out) - len(recorded), recorded

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


# -- helpers -------------------------------------------------------------


_PRINT = (1 << 64) - 1
_SHIFTED = (64).__rlshift__  # position -> position << 64
_NO_PRINT = hash(None) & _PRINT  # (an item with no fingerprint: nothing to compare)


def _first(position: int, print_: str) -> int:
    """Where a key's first copy is in the input, and a hash of its fingerprint, in one int.

    One int (36 bytes) rather than a tuple of the two (~150): up to FRESH_KEYS
    of them are kept. The hash is compared within this process only. Two
    different items share one with probability 2**-64: the later is then taken
    for a plain duplicate.
    """
    return position << 64 | (hash(print_) & _PRINT)


def _described(value: object) -> str:
    """A recorded option that is not plain data: its type only (a repr may hold secrets)."""
    return f"<{type(value).__qualname__}>"


def _as_key(value: Any) -> str:
    """What ``key=`` returned, as key text: a str as is, anything else as JSON.

    So ``key=`` returning ``"1"`` and returning ``1`` name the same item.
    """
    if isinstance(value, str):
        return value
    if value is None:  # (every item would share it: all but the first would be skipped)
        raise _NoKey
    try:
        return default_key(value)
    except KeyTypeError as exc:  # (not raised by key=: it returned what has no key)
        raise _BadKeyType(value, str(exc)) from None


class _NoKey(ValueError):
    """``key=`` returned None."""


class _BadKeyType(TypeError):
    """``key=`` returned a value that is no key (a UUID, a date, a set, an object)."""

    def __init__(self, value: Any, kind: str) -> None:
        super().__init__(kind)
        self.value = value
        self.kind = kind  # (the type that has no key: the value's, or one inside it)


def _key_error(
    item: Any, position: int, exc: Exception, keyfn: Callable[[Any], Any] | None
) -> JournalError:
    if keyfn is None:
        why = (
            "keys are made for str, bytes, numbers, bool, None and lists, tuples and dicts of those"
            if isinstance(exc, KeyTypeError)
            else f"{type(exc).__qualname__}: {exc}"
        )
        error = JournalError(
            f"item {position} ({safe_repr(item, 60)}, a {type(item).__qualname__}) has no "
            f"default journal key: {why}. Pass key=, e.g. key=lambda item: item.id"
        )
    elif isinstance(exc, _NoKey):
        error = JournalError(
            f"key= returned None for item {position} ({safe_repr(item, 60)}): return a "
            "value that tells the items apart (an id, a URL), or the items sharing it "
            "would all be skipped as duplicates but the first"
        )
    elif isinstance(exc, _BadKeyType):
        kind = type(exc.value).__qualname__
        inside = f", holding a value of type {exc.kind}" if exc.kind != kind else ""
        fix = (
            f"a sorted list of the {exc.kind}'s elements (a {exc.kind}'s order changes)"
            if exc.kind in ("set", "frozenset")
            else f"str() of the {exc.kind}, e.g. key=lambda item: str(item.id)"
        )
        error = JournalError(
            f"key= returned {safe_repr(exc.value, 60)} (type {kind}{inside}) for item "
            f"{position} ({safe_repr(item, 60)}): a key is a str or an int (or a float, "
            f"bool, bytes, or a list, tuple or dict of those). Return one instead: {fix}"
        )
    elif type(exc).__name__ == "UsageProblem":  # (the command's --key FIELD: it says what)
        error = JournalError(f"item {position}: {exc}")
    else:
        error = JournalError(
            f"key= raised {type(exc).__qualname__} for item {position} "
            f"({safe_repr(item, 60)}): {exc}"
        )
    error.__cause__ = exc
    return error


def _never_called(error: BaseException | None) -> bool:
    """Whether an item failed without its call (the run stopped before it was made).

    Told by manyhands' own errors only: a user's exception may have any
    attribute named ``ran``, or one that raises when read.
    """
    return isinstance(error, (WorkerCrashed, Timeout)) and not error.ran
