"""A batch on the asyncio backend, and the pieces its finished items go back in.

The backend's tasks take a batch's items one at a time (:class:`Entry`
counts them out and back). A batch goes back when its last call ends; a run
delivered as completed (``task.early``) does not wait that long for all of
them: once a batch's calls have all started and run ``STRAGGLING`` times the
usual time per call, its finished items go back as a *piece*
(``Batch.piece``), and so on until its last call ends (:class:`Stragglers`).
Otherwise a few slow calls in each batch would hold the rest in the run's
window.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from time import perf_counter
from typing import Any

from .._batch import Batch
from .._outcome import Failure, exception_traceback, set_traceback

__all__ = ["STRAGGLING", "STRAGGLING_AFTER", "UNFINISHED", "Entry", "Stragglers"]

STRAGGLING = 2.0  # a batch's calls straggle past this many times the usual time per call...
STRAGGLING_AFTER = 0.01  # ...and this many seconds
UNFINISHED: Any = object()  # a value not in yet (Batch.values)
_NONE_SENT: frozenset[int] = frozenset()


class Entry:
    """A queued batch: how many of its items were taken, and how many are still out."""

    __slots__ = (
        "abandoned",
        "batch",
        "due",
        "elapsed",
        "errors",
        "left",
        "runners",
        "sent",
        "taken",
    )

    def __init__(self, batch: Batch) -> None:
        batch.values = [UNFINISHED] * len(batch.items)
        self.batch = batch
        self.abandoned = False  # its run ended (a shared pool): it is never reported
        self.runners: set[asyncio.Task[None]] = set()  # (shared) the tasks running its items
        self.taken = 0
        self.left = len(batch.items)
        self.elapsed = 0.0  # the sum of its items' call times (since its last piece)
        self.errors: dict[int, BaseException | Failure] | None = None
        self.due = math.inf  # (task.early) when its calls still running straggle
        self.sent: frozenset[int] = _NONE_SENT  # indices gone back in pieces

    def fail(self, index: int, error: BaseException) -> None:
        """Item ``index`` failed with ``error``, just caught by the caller.

        Its Failure is made now, with this call's traceback (the catching frame
        left out), taken off the exception object: one object raised by many
        calls would otherwise show, and chain, another call's frames (see
        ``_batch.execute``).
        """
        frames = exception_traceback(error)
        set_traceback(error, None)
        batch = self.batch
        failure = Failure.from_exception(
            batch.items[index], error, batch.attempt, frames.tb_next if frames else None
        )
        if self.errors is None:
            self.errors = {}
        self.errors[index] = failure
        batch.values[index] = None


class Stragglers:
    """The batches all of whose calls started, oldest first, until their calls straggle.

    ``running`` is tested by the backend's tasks after each call
    (``running and now > running[0].due``: then :meth:`send_pieces`).
    """

    def __init__(self) -> None:
        self.running: deque[Entry] = deque()
        self.latency = 0.0  # seconds per call, smoothed over finished batches (0: none yet)
        self._timer: asyncio.TimerHandle | None = None

    def started(self, entry: Entry, now: float) -> None:
        """All of ``entry``'s calls started (by ``now``)."""
        entry.due = now + max(STRAGGLING * self.latency, STRAGGLING_AFTER)
        self.running.append(entry)

    def finished(self, entry: Entry) -> Batch:
        """The last call of ``entry`` ended: the batch to send back (or, after pieces, the rest)."""
        batch = entry.batch
        if batch.task.early:
            latency = entry.elapsed / (len(batch.items) - len(entry.sent))
            old = self.latency
            self.latency = old + (latency - old) / 8 if old else latency
            running = self.running
            while running and not running[0].left:  # (batches come back about in order)
                running.popleft()
        batch.errors = entry.errors
        if not entry.sent:
            batch.elapsed = entry.elapsed
            return batch
        rest = batch.part([i for i in range(len(batch.items)) if i not in entry.sent])
        rest.elapsed = entry.elapsed
        return rest

    def send_pieces(self, now: float) -> None:
        """Send back the finished items of the batches whose calls straggle by ``now``."""
        running = self.running
        again: list[Entry] = []
        while running and now > running[0].due:
            entry = running.popleft()
            if not entry.left or entry.abandoned:
                continue  # (it came back whole meanwhile)
            again.append(entry)
            batch = entry.batch
            values, sent = batch.values, entry.sent
            finished = [
                i for i in range(len(values)) if values[i] is not UNFINISHED and i not in sent
            ]
            if not finished:
                continue
            entry.sent = sent.union(finished)
            batch.errors = entry.errors
            piece = batch.part(finished)
            piece.piece = True
            piece.elapsed = entry.elapsed
            entry.elapsed = 0.0  # (the next piece brings back its own calls' time)
            batch.task.done(piece)
        due = now + max(STRAGGLING * self.latency, STRAGGLING_AFTER)
        for entry in again:
            entry.due = due
            running.append(entry)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Check on the oldest batch when it is due: no task has a call left to end first."""
        if self.running and self._timer is None:
            delay = max(self.running[0].due - perf_counter(), 0.0)
            self._timer = loop.call_later(delay, self._due, loop)

    def _due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self.send_pieces(perf_counter())
        self.watch(loop)

    def cancel(self) -> None:
        """No more checks (the backend stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
