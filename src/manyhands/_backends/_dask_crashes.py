"""The Dask backend's crashes: a worker that died under a task, and the items it was calling.

A dead worker fails its task with ``KilledWorker``. The task marked the items
it was calling in a file (see ``_remote_calls``): read here when the worker
was on this host, else asked of the worker's nanny once it is back. Those
items fail as ``manyhands.WorkerCrashed``; the others are sent again,
uncharged. A part with no word of its progress is sent again whole, then in
two halves: an item is charged only when it is known to be the one running.
"""

from __future__ import annotations

import time
from typing import Any

from .._exceptions import WorkerCrashed
from ._dask_parts import DaskParts, Part
from ._process_batches import fail_items, pickle_items
from ._remote_calls import nanny_progress, read_progress

__all__ = ["DaskCrashes"]

_DIED = "the Dask worker process running this item died"
_NANNY_WAIT = 10.0  # seconds to wait for a dead worker's nanny to answer again


class DaskCrashes(DaskParts):
    """A :class:`~._dask.DaskBackend`'s worker deaths (a mixin: see ``_dask_parts``)."""

    def _crashed(self, part: Part, error: BaseException) -> None:
        """The worker running ``part`` died: the items it was calling fail, the others run again.

        Which items were running is read from the task's progress file: here
        when the worker was on this host (a LocalCluster), else from the dead
        worker's nanny once it answers again (``read_progress``: several items
        when threads of its worker shared them). None running (the task was
        between items, or its thread was calling other batches' items): all
        of them run again, uncharged. No word at all (the task had not begun,
        queued on that worker; or a worker without a nanny): they run again
        too; a part that dies that way twice is split in two, and only a part
        of one item that dies that way a third time fails: an item is charged
        only when it is known to be the one running.
        """
        batch, indices = part.batch, part.indices
        worker = getattr(error, "last_worker", None)
        self._note_death(worker)
        running = self._progress(part.key, getattr(worker, "nanny", None))
        if running == []:  # (the word: none of them was running)
            self._resend(part, [Part(batch, indices, part.payload, part.deaths)])
            return
        if running is None:
            again = self._again(part)
            if again:
                self._resend(part, again)
            else:
                self._part_done(batch)
            return
        killers = {min(max(at, 0), len(indices) - 1) for at in running}
        fail_items(batch, [indices[at] for at in sorted(killers)], WorkerCrashed(_DIED))
        rest = [index for at, index in enumerate(indices) if at not in killers]
        if not rest:
            self._part_done(batch)
            return
        payload, rest = pickle_items(batch, rest)
        assert payload is not None  # (these items pickled before)
        self._resend(part, [Part(batch, rest, payload, 0)])

    def _again(self, part: Part) -> list[Part]:
        """A part that died with no word of its progress, to send again: whole, or split in two.

        Its only item fails at its third such death (then returns ``[]``).
        """
        batch, indices = part.batch, part.indices
        deaths = part.deaths + 1
        if deaths < 2 or (len(indices) == 1 and deaths < 3):
            return [Part(batch, indices, part.payload, deaths)]
        if len(indices) == 1:
            fail_items(batch, indices, WorkerCrashed(_DIED))
            return []
        halves = []
        middle = len(indices) // 2
        for half in (indices[:middle], indices[middle:]):
            payload, kept = pickle_items(batch, half)
            assert payload is not None  # (these items pickled before)
            halves.append(Part(batch, kept, payload, 0))
        return halves

    def _note_death(self, worker: Any) -> None:
        """Count a death: a worker process (its address and pid) once, whatever it ran."""
        who = (getattr(worker, "address", None), getattr(worker, "pid", None))
        with self._lock:
            if who[0] is not None:
                if who in self._dead:
                    return
                self._dead.add(who)
            if not self._deaths:
                self.notes.append("")
                self._note = len(self.notes) - 1
            self._deaths += 1
            times = f"{self._deaths} time{'s' if self._deaths > 1 else ''}"
            self.notes[self._note] = (
                f"a Dask worker process died under this run's tasks ({times}): the item "
                "it was calling failed (manyhands.WorkerCrashed); the others ran again, uncharged"
            )

    def _progress(self, key: str, nanny: str | None) -> list[int] | None:
        """The items the task ``key`` was running when its worker died; None: no word of it.

        A worker on this host left its file here. Otherwise the worker's nanny
        (``nanny``) is asked once it is back (it restarts its worker first, and
        the scheduler knows it again only then): up to ``_NANNY_WAIT`` seconds.
        """
        running = read_progress(key)
        if running is not None or self._cluster is not None:  # (all its workers are here)
            return running
        deadline = time.monotonic() + _NANNY_WAIT
        while True:
            try:
                answers = self._client.run(nanny_progress, key, nanny=True)
            except Exception:  # (no nanny to ask)
                return None
            found = [at for _, at in answers.values() if at is not None]
            if found:
                return list(found[0])
            heard = {address for address, _ in answers.values()}
            if nanny is None or nanny in heard or time.monotonic() > deadline:
                return None
            time.sleep(0.1)
