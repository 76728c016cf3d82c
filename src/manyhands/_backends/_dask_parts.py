"""The Dask backend's books: the parts of batches out on the cluster, and what they share.

:class:`~._dask.DaskBackend` is made of parts that read and write the same
state: sending batches as tasks (:mod:`._dask_send`), filing the tasks'
answers (:mod:`._dask_answers`) and the crashes of the workers that ran
them (:mod:`._dask_crashes`). They are mixins of one object, not objects
that call each other, so that the path of every task costs no more than
one class's methods would. :class:`DaskParts` declares what they share
(``DaskBackend.__init__`` sets it, with what each holds), and keeps the
books every part writes: a part handed to the sender (``_send``), sent
again (``_resend``), done (``_part_done``), dropped (``_drop``) or
cancelled on the scheduler (``_cancel``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from .._batch import Batch

__all__ = ["DaskParts", "Part", "all_of"]

T = TypeVar("T")


class Part:
    """Items of a batch out on the cluster as one task."""

    __slots__ = ("batch", "deaths", "future", "indices", "key", "payload", "tier")

    def __init__(
        self, batch: Batch, indices: list[int], payload: bytes, deaths: int = 0, tier: int = 0
    ):
        self.batch = batch
        self.indices = indices
        self.payload = payload
        self.deaths = deaths  # workers that died with it queued, and no word of its progress
        self.tier = tier  # (a batch sent in parts: _dask_send) the smaller parts go first
        self.key = ""  # its task's key, once sent
        self.future: Any = None  # its task, once the sender submitted it


class DaskParts:
    """The state the parts of a :class:`~._dask.DaskBackend` share, and its books of parts out."""

    _client: Any
    _cluster: Any
    _share: bool
    _lock: threading.Lock
    _emptied: threading.Condition
    _sending: threading.Lock
    _out: dict[str, Part]
    _parts: dict[int, int]
    _pieces: dict[int, tuple[set[int], list[float]]]
    _heard: set[int]
    _fns: dict[int, Any]
    _prefixes: dict[int, str]
    _count: Iterator[int]
    abandoned: int
    notes: list[str]
    _done: SimpleQueue[Any]
    _to_send: SimpleQueue[Part | None]
    _stopping: bool
    _deaths: int
    _dead: set[tuple[Any, Any]]
    _note: int

    def _send(self, part: Part) -> None:
        """Hand ``part`` to the sender thread (see _submit): out from now on."""
        part.key = f"{self._prefixes.get(id(part.batch.task), 'manyhands-')}{next(self._count)}"
        with self._lock:
            if id(part.batch) not in self._parts or self._stopping:  # (dropped meanwhile)
                return
            self._out[part.key] = part
        self._to_send.put(part)

    def _resend(self, part: Part, again: list[Part]) -> None:
        with self._lock:
            if id(part.batch) not in self._parts:
                return  # dropped meanwhile
            self._parts[id(part.batch)] += len(again) - 1
        for new in again:
            self._send(new)

    def _part_done(self, batch: Batch, indices: list[int] | None = None) -> None:
        """A part of ``batch`` is done (``indices``: its items, filed); the last hands it back.

        In a run delivered as completed (``task.early``), the items of a part
        that is not the last go back at once, as a piece of their batch.
        """
        with self._lock:
            left = self._parts.get(id(batch))
            if left is None:
                return  # dropped meanwhile
            if left > 1:
                self._parts[id(batch)] = left - 1
                if indices is None or not batch.task.early:
                    return
                sent, seconds = self._pieces.setdefault(id(batch), (set(), [0.0]))
                sent.update(indices)
            else:
                del self._parts[id(batch)]
                sent, seconds = self._pieces.pop(id(batch), (set(), [0.0]))
                indices = None
        if indices is not None:  # (a piece)
            piece = batch.part(indices)
            piece.piece = True
            piece.elapsed, seconds[0] = batch.elapsed - seconds[0], batch.elapsed
            batch.task.done(piece)
        elif sent:
            rest = batch.part([index for index in range(len(batch.items)) if index not in sent])
            rest.elapsed = batch.elapsed - seconds[0]
            batch.task.done(rest)
        else:
            batch.task.done(batch)

    def _drop(self, parts: list[Part]) -> list[Batch]:
        """Forget ``parts`` (under the lock); their batches, once each."""
        batches: dict[int, Batch] = {}
        for part in parts:
            del self._out[part.key]
            batches[id(part.batch)] = part.batch
            self._parts.pop(id(part.batch), None)
            self._pieces.pop(id(part.batch), None)
        return list(batches.values())

    def _cancel(self, parts: list[Part]) -> None:
        """Cancel the tasks of ``parts`` (those not yet submitted never will be: see _submit)."""
        futures = [part.future for part in parts if part.future is not None]
        if futures:
            self._client.cancel(futures, force=True)


def all_of(queue: SimpleQueue[T]) -> list[T]:
    """What ``queue`` holds, waiting for the first if it is empty."""
    taken = [queue.get()]
    with contextlib.suppress(Empty):
        while True:
            taken.append(queue.get_nowait())
    return taken
