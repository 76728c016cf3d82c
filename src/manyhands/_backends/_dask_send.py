"""The Dask backend's sending: a run's batches as tasks, submitted together by a sender thread.

A batch is one task, but the first batches of a run with a stop rule go in
parts growing fourfold (``_in_parts``), so that their items come back soon.
The engine hands each part to the sender thread (``_send``), which submits
those waiting together: one message to the scheduler per run, not one per
task (``_submit``).
"""

from __future__ import annotations

from .._batch import Batch
from .._exceptions import WorkerCrashed
from ._dask_parts import DaskParts, Part, all_of
from ._process_batches import fail_items, pickle_batch, pickle_items
from ._remote_calls import run_items

__all__ = ["DaskSending"]

_PARTS_FROM = 32  # (with a stop rule) a first batch of this many items or more goes in parts


class DaskSending(DaskParts):
    """Sends a :class:`~._dask.DaskBackend`'s batches (a mixin: see ``_dask_parts``)."""

    def submit(self, batch: Batch) -> None:
        task = batch.task
        if (
            task.stops
            and task.early
            and id(task) not in self._heard
            and len(batch.items) >= _PARTS_FROM
        ):
            self._in_parts(batch)
            return
        pickled = pickle_batch(batch)
        if pickled is None:  # no item could be pickled: each failed with why
            return
        payload, indices = pickled
        with self._lock:
            self._parts[id(batch)] = 1
        self._send(Part(batch, indices, payload))

    def _in_parts(self, batch: Batch) -> None:
        """Send a batch of the run's first round as parts growing fourfold, the smallest first.

        With a stop rule, a run's first batches are not sent whole: the time an
        item takes is unknown yet, a run whose input fits a round goes out at
        once, and a task answers only once all its items were called, so a stop
        rule could fire only once every item had run. Each part's items go back
        as a piece of their batch (``Batch.piece``) as soon as it answers.
        """
        parts: list[Part] = []
        for tier, indices in enumerate(_growing(len(batch.items))):
            payload, kept = pickle_items(batch, indices)
            if payload is not None:
                parts.append(Part(batch, kept, payload, tier=tier))
        batch.nbytes = max((len(part.payload) for part in parts), default=0)
        if not parts:  # no item could be pickled: each failed with why
            batch.task.done(batch)
            return
        with self._lock:
            self._parts[id(batch)] = len(parts)
        for part in parts:
            self._send(part)

    def _send_all(self) -> None:
        """(the sender thread) Submit the parts handed over, all those waiting at once."""
        waiting = self._to_send
        while True:
            handed = all_of(waiting)
            parts = [part for part in handed if part is not None]
            try:
                self._submit(parts)
            except Exception as exc:  # (a thread that died here would leave the run waiting)
                self._lost(parts, exc)
            if None in handed:
                return
            del handed, parts  # (an idle sender holds no task of a run)

    def _submit(self, parts: list[Part]) -> None:
        """Submit ``parts`` as tasks: one message to the scheduler per run, not one per task.

        A task submitted alone costs the driver ~0.3 ms and the scheduler a
        message of its own: 200 at the start of a run kept the last of the
        first 100 waiting ~130 ms (submitted together: ~50 ms). Held under
        ``_sending``, so that a cancel never falls between the submission and
        the futures: a part dropped meanwhile is cancelled here, before
        anyone waiting on ``_sending`` goes on.
        """
        with self._sending:
            with self._lock:
                parts = [part for part in parts if part.key in self._out]
            parts.sort(key=lambda part: part.tier)  # (a batch's smaller parts first: _in_parts)
            runs: dict[int, list[Part]] = {}
            for part in parts:
                runs.setdefault(id(part.batch.task), []).append(part)
            for mine in runs.values():
                task = mine[0].batch.task
                keys = [part.key for part in mine]
                try:
                    futures = self._client.map(
                        run_items,
                        [self._fns[id(task)]] * len(mine),
                        [part.payload for part in mine],
                        [task.timeout] * len(mine),
                        keys,
                        [self._share] * len(mine),  # threads share the batches: _remote_calls
                        [task.withdrawable] * len(mine),  # (see withdraw)
                        key=keys,
                        pure=False,
                        retries=0,
                        priority=task.priority,
                    )
                except Exception as exc:  # the cluster is gone (the client closed...)
                    self._lost(mine, exc)
                    continue
                with self._lock:
                    for part, future in zip(mine, futures, strict=True):
                        part.future = future
                    dropped = [part for part in mine if part.key not in self._out]
                self._cancel(dropped)
                for part in mine:
                    part.future.add_done_callback(self._done.put)

    def _lost(self, parts: list[Part], exc: Exception) -> None:
        """``parts`` could not be submitted: the items of those still out fail."""
        with self._lock:
            parts = [part for part in parts if self._out.pop(part.key, None) is not None]
        for part in parts:
            fail_items(part.batch, part.indices, WorkerCrashed(f"the Dask cluster: {exc}"))
            self._part_done(part.batch)


def _growing(count: int) -> list[list[int]]:
    """``range(count)`` in parts growing fourfold from about 1/64 of it; the last takes the rest."""
    parts: list[list[int]] = []
    start, size = 0, max(1, count // 64)
    while start < count:
        take = count - start if count - start < 2 * size else size
        parts.append(list(range(start, start + take)))
        start += take
        size *= 4
    return parts
