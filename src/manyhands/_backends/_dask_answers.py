"""The Dask backend's answers: the collector thread, which fetches and files the tasks' answers.

Dask's callback thread only queues a finished future (``_done``); the
collector fetches the answers of those that finished together in one
``gather``, files each (values, failures, the items a stopped task did not
call), and hands a batch back to its run once its last part is done. A task
that failed because its worker died goes to ``_dask_crashes``.
"""

from __future__ import annotations

import contextlib
import pickle
from typing import Any

from .._batch import Batch
from .._exceptions import WorkerCrashed, not_called
from ._dask_crashes import DaskCrashes
from ._dask_parts import Part, all_of
from ._not_loaded import fn_not_loaded
from ._process_batches import fail_items, file_results
from ._remote_calls import ABANDONED_MESSAGE

__all__ = ["DaskAnswers"]


class DaskAnswers(DaskCrashes):
    """Files a :class:`~._dask.DaskBackend`'s answers (a mixin: see ``_dask_parts``)."""

    def _collect(self) -> None:
        """Fetch the answers of the tasks that finished, many at once, and file them.

        Dask's callback thread only queues a finished future; the answers are
        fetched here, those that finished together in one ``gather``, so no
        round trip to a worker waits behind another.
        """
        done = self._done
        while True:
            futures = all_of(done)
            stop = None in futures
            futures = [future for future in futures if future is not None]
            with self._lock:
                wanted = {
                    f.key: f for f in futures if f.key in self._out and f.status == "finished"
                }
            answers = self._gather(wanted)
            for future in futures:
                self._finished(future, answers.get(future.key))
            if stop:
                return
            future = None  # (an idle collector holds no task of a run: not the last one either)
            del futures, wanted, answers

    def _gather(self, wanted: dict[str, Any]) -> dict[str, bytes]:
        """The answers of ``wanted`` (by key) that could be fetched; {} if none."""
        if not wanted:
            return {}
        try:
            answers: dict[str, bytes] = self._client.gather(wanted, errors="skip", direct=True)
        except Exception:  # (each is then lost, and sent again: _finished)
            return {}
        return answers

    def _finished(self, future: Any, answer: bytes | None) -> None:
        with self._lock:
            part = self._out.pop(future.key, None)
            stopping = self._stopping
            if not self._out:
                self._emptied.notify_all()
        if part is None:  # cancelled: its batch was dropped
            return
        batch, indices = part.batch, part.indices
        status = future.status
        if stopping:  # (shutdown) what it called goes back; nothing runs again
            self._hand_back(part, answer if status == "finished" else None)
            return
        try:
            if status == "finished" and answer is not None:
                self._heard.add(id(batch.task))
                self._file(batch, indices, answer)
            elif status == "error" and type(future.exception()).__name__ == "KilledWorker":
                self._crashed(part, future.exception())
                return
            elif status == "error":  # failed outside fn: e.g. fn cannot be loaded there
                fail_items(batch, indices, future.exception())
            else:  # lost with a worker that died before the answer was fetched: again
                self._cancel([part])  # (not Dask's own recomputation)
                self._resend(part, [Part(batch, indices, part.payload, part.deaths)])
                return
        except BaseException as exc:  # (the answer could not be read): the items fail
            fail_items(batch, indices, WorkerCrashed(f"the Dask task's answer was lost: {exc}"))
        self._part_done(batch, indices)

    def _hand_back(self, part: Part, answer: bytes | None) -> None:
        """(shutdown) The items ``part`` called go back to the run, as a batch of their own."""
        batch = part.batch
        with self._lock:
            if id(batch) not in self._parts:
                return  # dropped meanwhile
        called: list[int] = []
        if answer is not None:
            with contextlib.suppress(Exception):  # (an answer that cannot be read: none)
                called = self._file(batch, part.indices, answer)
        if not called:
            return
        if len(called) == len(batch.items):
            batch.task.done(batch)
        else:
            batch.task.done(batch.part(called))

    def _file(self, batch: Batch, indices: list[int], answer: bytes) -> list[int]:
        """File a task's answer for the items at ``indices``; return the items it called."""
        kind, *rest = pickle.loads(answer)
        called: list[int] | None = None
        if kind == "stopped":  # (stop_tasks: the run stopped) it called only these
            called, answer = rest
            uncalled = sorted(set(range(len(indices))) - set(called))
            fail_items(
                batch,
                [indices[at] for at in uncalled],
                not_called(
                    "its Dask task was told to stop first (the run stopped, or it was cancelled)"
                ),
            )
            indices = [indices[at] for at in called]
            kind, *rest = pickle.loads(answer)
        if kind in ("unloadable", "no_fn"):
            error = rest[0]
            if kind == "no_fn":  # (not fn's call: its loading, that a worker's imports failed)
                error = fn_not_loaded(error, batch.task.fn, "a Dask worker process")
            fail_items(batch, indices, error)
            return indices
        values, errors, elapsed = rest
        if called is not None:
            position = {at: new for new, at in enumerate(called)}
            values = [values[at] for at in called]
            errors = {position[at]: error for at, error in errors.items()}
        file_results(batch, indices, values, errors, elapsed)
        if errors and batch.task.timeout is not None:
            left = sum(error[1].endswith(ABANDONED_MESSAGE) for error in errors.values())
            self.abandoned += left
            batch.task.abandoned += left
        return indices
