"""Delivering settled batches: as completed, or in input order through a bounded buffer.

A retried item travels alone (a batch of one whose ``parent`` is the batch it
came from). Delivered as completed, it goes out on its own; in input order,
its outcome is written back into its parent, which waits in the buffer until
none of its items is still being retried and every earlier batch went out.
The buffer holds at most what the run's window admits.

Failures that wait in the buffer keep their tracebacks' frames (each with
its call's local variables) up to ``FRAMES_HELD`` of them; past that, a
Failure that waits lets go of its frames' local variables (10,000 failed
calls that each held a 200 KB buffer pinned 1.7 GB while the first item
ran; see ``Failure.clear_locals``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

from ._batch import Batch

if TYPE_CHECKING:
    from ._outcome import Failure

__all__ = ["FRAMES_HELD", "Delivery"]

FRAMES_HELD = 64  # failures waiting for their turn that keep their frames, at most


class Delivery:
    """Turns settled batches into delivered ones, in order or as completed."""

    def __init__(self, ordered: bool) -> None:
        self._ordered = ordered
        self._held: dict[int, Batch] = {}  # in order: waiting for their turn or a retry
        self._turn = 0
        self._framed = 0  # failures held with their frames (see FRAMES_HELD)
        self._framed_in: dict[int, int] = {}  # of them, by their batch's seq

    def settled(self, batch: Batch, retried: set[int]) -> Iterator[Batch]:
        """What can be delivered once ``batch`` settled (``retried``: its items tried again)."""
        if batch.parent is not None:  # a retried item
            if retried:
                return  # tried again later
            if not self._ordered:
                yield batch
                return
            parent = self._fill_parent(batch)
            if batch.failures and self._waits(parent):
                self._hold_frames(parent.seq, batch.failures.values())
            yield from self._release()
        elif self._ordered:
            batch.pending = len(retried)
            self._held[batch.seq] = batch
            if batch.failures and self._waits(batch):
                self._hold_frames(batch.seq, batch.failures.values())
            yield from self._release()
        else:
            yield batch.without(retried) if retried else batch

    def _waits(self, batch: Batch) -> bool:
        """Whether ``batch`` (held) waits: for a retry of one of its items, or for its turn."""
        return bool(batch.pending) or batch.seq != self._turn

    def _fill_parent(self, batch: Batch) -> Batch:
        """Write a retried item's outcome back into the batch it came from; that batch."""
        assert batch.parent is not None
        parent, index = batch.parent
        parent.values[index] = batch.values[0] if batch.values else None
        if batch.failures:
            parent.failures = parent.failures or {}
            parent.failures[index] = batch.failures[0]
        elif parent.failures:
            parent.failures.pop(index, None)
        parent.attempts = parent.attempts or {}
        parent.attempts[index] = batch.attempt
        parent.pending -= 1
        return parent

    def held(self) -> list[Batch]:
        """The batches waiting for their turn (in order), which nobody got yet."""
        return list(self._held.values())

    def drop(self) -> None:
        """Let go of the batches waiting for their turn (the consumer left without them)."""
        self._held.clear()
        self._framed_in.clear()
        self._framed = 0

    def _hold_frames(self, seq: int, failures: Collection[Failure]) -> None:
        """Failures of batch ``seq`` wait: they keep their frames while few wait."""
        if self._framed + len(failures) <= FRAMES_HELD:
            self._framed += len(failures)
            self._framed_in[seq] = self._framed_in.get(seq, 0) + len(failures)
            return
        for failure in failures:
            failure.clear_locals()

    def _release(self) -> Iterator[Batch]:
        held = self._held
        while (batch := held.get(self._turn)) is not None and not batch.pending:
            del held[self._turn]
            if self._framed_in:
                self._framed -= self._framed_in.pop(self._turn, 0)
            self._turn += 1
            yield batch
