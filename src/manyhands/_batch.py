"""A batch: the unit of work a backend executes, and the code that runs it in a worker."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from ._outcome import Failure

__all__ = ["FINISHED", "RUNNING", "TIMED_OUT", "Batch", "execute"]

RUNNING, FINISHED, TIMED_OUT = 0, 1, 2  # Batch.state, with timeout=


class Batch:
    """Consecutive input items sent to one worker at once, and what came back.

    The engine fills ``seq``/``items``/``attempt``; the worker fills
    ``values``, ``errors`` and ``elapsed``; the engine then turns ``errors``
    into ``failures``.

    Attributes:
        seq: position of this batch in the input, for ordered delivery
            (-1 for the retry of a single item).
        items: the input items.
        attempt: which attempt this is for its items (1 for the first).
        values: one result per item (``None`` where the item failed).
        errors: index in ``items`` -> the exception raised (threads) or its
            already-described Failure (other processes); ``None`` if all succeeded.
        elapsed: seconds the worker spent on the whole batch.
        failures: index -> final Failure, filled by the engine; ``None`` if none.
        attempts: index -> attempts, for items that took more than ``attempt``.
        pending: items of this batch still waiting for a retry (ordered runs).
        parent: for a retry, the batch (and index in it) the item came from.
        history: for a retry, the error types of the item's earlier attempts.
        last_failure: for a retry, the item's outcome if it never runs (a stop rule).
        epoch: the engine's rate epoch when the batch was sent.
        keys: with a journal, each item's key.
        started: with ``timeout=``, when a worker began the batch (``time.monotonic``).
        state: with ``timeout=``: RUNNING, FINISHED or TIMED_OUT, changed under the
            backend's lock, so a batch either finishes or times out, never both.
        owner: with ``timeout=``, the running worker's lifetime lock.
        skipped: for items not run (final in the journal, or duplicates), why.
        nbytes: (processes) the larger of the batch's items and results as
            pickles, in bytes; 0 where nothing was pickled. Batches are sized
            to keep it under the engine's ``BATCH_BYTES``.
    """

    __slots__ = (
        "attempt",
        "attempts",
        "elapsed",
        "epoch",
        "errors",
        "failures",
        "history",
        "items",
        "keys",
        "last_failure",
        "nbytes",
        "owner",
        "parent",
        "pending",
        "seq",
        "skipped",
        "started",
        "state",
        "values",
    )

    def __init__(self, seq: int, items: list[Any], attempt: int = 1) -> None:
        self.seq = seq
        self.items = items
        self.attempt = attempt
        self.values: list[Any] = []
        self.errors: dict[int, BaseException | Failure] | None = None
        self.elapsed = 0.0
        self.failures: dict[int, Failure] | None = None
        self.attempts: dict[int, int] | None = None
        self.pending = 0
        self.parent: tuple[Batch, int] | None = None
        self.history: tuple[str, ...] = ()
        self.last_failure: Failure | None = None
        self.epoch = 0
        self.keys: list[str] | None = None
        self.skipped: list[str] | None = None
        self.started: float | None = None
        self.state = RUNNING
        self.owner: Any = None
        self.nbytes = 0

    def without(self, indices: set[int]) -> Batch:
        """A copy holding every item but those at ``indices`` (sent to be retried)."""
        keep = [i for i in range(len(self.items)) if i not in indices]
        part = Batch(self.seq, [self.items[i] for i in keep], self.attempt)
        part.values = [self.values[i] for i in keep]
        part.elapsed = self.elapsed
        if self.failures:
            moved = {
                new: self.failures[old] for new, old in enumerate(keep) if old in self.failures
            }
            part.failures = moved or None
        return part


def execute(fn: Callable[[Any], Any], batch: Batch) -> None:
    """Run ``fn`` over the batch's items, catching every per-item error.

    This is the hot loop: one call, one append and a zero-cost ``try`` per
    item; the clock is read once per batch. ``BaseException`` is caught too,
    so ``SystemExit`` or ``KeyboardInterrupt`` raised *by fn* fail only that
    item (a real Ctrl-C is delivered to the main thread, never here).
    """
    values: list[Any] = []
    append = values.append
    errors: dict[int, BaseException | Failure] | None = None
    start = perf_counter()
    for item in batch.items:
        try:
            append(fn(item))
        except BaseException as exc:
            if errors is None:
                errors = {}
            errors[len(values)] = exc
            append(None)
    batch.elapsed = perf_counter() - start
    batch.values = values
    batch.errors = errors


EXECUTE_CODE = execute.__code__
