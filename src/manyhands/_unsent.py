"""backend="auto", once on processes: an item that cannot go to one runs on threads.

Before it moves, the run checks that its first items pickle (see
:mod:`._autopilot`); an item further on that does not (it holds a lock, a
connection) cannot be sent to a worker process, and the processes backend
fails it with a Failure that says so (``NOT_SENT``), marking it on the batch
(``Batch.rerouted``). On threads it would
have run: it runs there, on the threads the run started on (they are still
the run's). Its batch waits here meanwhile, and is settled whole once they
are back, so ordered delivery, the journal and the counts see one batch, as
for any other.

The same for the items of a batch whose worker process could not load fn
(marked ``"fn"``: a Pool's processes load a run's fn when its first batch
comes, not at their start, so the move cannot find out before): they run on
threads, and the run goes back to threads (see ``_autopilot``).
"""

from __future__ import annotations

from collections.abc import Callable

from ._batch import Batch
from ._outcome import Failure

__all__ = ["Unsent"]


class Unsent:
    """The batches that came back from the processes with items not sent, while those
    items run on threads.

    Args:
        send: sends a batch of such items to the threads.
    """

    def __init__(self, send: Callable[[Batch], None]) -> None:
        self._send = send
        # The part sent to the threads (by id) -> (its batch, the indices of its items).
        self.waiting: dict[int, tuple[Batch, list[int]]] = {}
        self.count = 0  # items that did not pickle sent to the threads so far, for the Report
        self.fn_not_loaded: str | None = None  # why a worker process could not load fn

    def came_back(self, batch: Batch) -> Batch | None:
        """``batch`` as the run settles it now; None while some of its items run on threads.

        ``batch`` has errors, or is a part that ran on threads (then its batch,
        with the part's outcomes, is returned).
        """
        held = self.waiting.pop(id(batch), None)
        if held is not None:
            return _merged(*held, batch)
        marks, batch.rerouted = batch.rerouted or {}, None
        errors = batch.errors or {}
        # (marked by the processes backend, not read from a message: a call's own
        # error may say the same words, and its item ran)
        unsent = sorted(index for index in marks if index in errors)
        if not unsent:
            return batch
        self.count += sum(marks[index] == "item" for index in unsent)
        unloaded = next((errors[index] for index in unsent if marks[index] == "fn"), None)
        if unloaded is not None and self.fn_not_loaded is None:
            from ._backends._not_loaded import DID_NOT_RUN

            message = unloaded.message if isinstance(unloaded, Failure) else str(unloaded)
            self.fn_not_loaded = message.removesuffix(DID_NOT_RUN)
        part = Batch(batch.seq, [batch.items[i] for i in unsent], batch.task, batch.attempt)
        if batch.keys is not None:
            part.keys = [batch.keys[i] for i in unsent]
        self.waiting[id(part)] = (batch, unsent)
        self._send(part)
        return None

    def held(self) -> list[Batch]:
        """The run ends: the batches still waiting (the calls of their other items ran)."""
        batches = [batch for batch, _ in self.waiting.values()]
        self.waiting.clear()
        return batches


def _merged(batch: Batch, indices: list[int], part: Batch) -> Batch:
    """``batch`` with the outcomes of its items at ``indices``, which ran as ``part``."""
    if len(batch.values) != len(batch.items):  # (none of its items went)
        batch.values = [None] * len(batch.items)
    errors = batch.errors
    assert errors is not None
    failed = part.errors or {}
    traces = part.frames or {}
    for position, index in enumerate(indices):
        batch.values[index] = part.values[position] if part.values else None
        error = failed.get(position)
        if error is None:
            del errors[index]
        else:
            errors[index] = error
            if position in traces:  # (its call's traceback, kept apart: see _batch.execute)
                if batch.frames is None:
                    batch.frames = {}
                batch.frames[index] = traces[position]
    batch.errors = errors or None
    batch.elapsed += part.elapsed
    return batch
