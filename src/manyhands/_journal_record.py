"""Recording outcomes: the final ones of each settled batch, and late batches.

A batch's rows go to the writer thread (:mod:`._journal_writer`), which
commits them in groups. A batch whose items all succeeded on this attempt
is handed over as its keys alone; any other is made into rows here, one per
item with a final outcome (a failure that will be retried, or a call never
made, is not final: a resume runs it).
"""

from __future__ import annotations

import time

from ._batch import Batch
from ._exceptions import Timeout, WorkerCrashed
from ._journal_group import Group
from ._journal_rows import FAILED, failed_row, room_for
from ._journal_state import DONE, JournalState, Memo
from ._journal_text import ROW_MARGIN, db_size, to_db
from ._keys import MAX_KEY_TEXT, memory_key
from ._outcome import Failure

__all__ = ["DONE_DETAILED_SQL", "DONE_SQL", "JournalRecording"]

# Done rows name their columns: binding 13 values, most of them NULL, costs
# more than twice as much per row.
DONE_SQL = (
    "INSERT OR REPLACE INTO items (key, state, attempts, elapsed, finished, run) "
    "VALUES (?, 'done', ?, ?, ?, ?)"
)
DONE_DETAILED_SQL = (
    "INSERT OR REPLACE INTO items "
    "(key, state, attempts, elapsed, finished, run, fingerprint, result, result_format) "
    "VALUES (?, 'done', ?, ?, ?, ?, ?, ?, ?)"
)


class JournalRecording(JournalState):
    """Handing the final outcomes of settled batches to the writer."""

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
            if self._rerunning:
                self._reran(keys)
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
        running, rerunning = self._running, self._rerunning
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
            never_called = failure is not None and _never_called(failure.exception)
            if rerunning and held in rerunning:  # (it had failed before: retry_failed)
                rerunning.discard(held)
                self.reran_failed += not never_called
            if never_called:
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
                group.failed.append(failed_row(key, failure, item, room, fields))
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

    def _reran(self, keys: list[str]) -> None:
        """Count the items of ``keys`` that had failed before (``retry_failed``)."""
        rerunning = self._rerunning
        for key in keys:
            held = memory_key(key)
            if held in rerunning:
                rerunning.discard(held)
                self.reran_failed += 1

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


def _never_called(error: BaseException | None) -> bool:
    """Whether an item failed without its call (the run stopped before it was made).

    Told by manyhands' own errors only: a user's exception may have any
    attribute named ``ran``, or one that raises when read.
    """
    return isinstance(error, (WorkerCrashed, Timeout)) and not error.ran
