"""A batch: the unit of work a backend executes, and the code that runs it in a worker."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from ._outcome import Failure

__all__ = ["Batch", "execute"]


class Batch:
    """Consecutive input items sent to one worker at once, and what came back.

    The engine fills ``seq``/``items``/``attempt``; the worker fills
    ``values``, ``errors`` and ``elapsed``; the engine then turns ``errors``
    into ``failures``.

    Attributes:
        seq: position of this batch in the input, for ordered delivery.
        items: the input items.
        attempt: which attempt this is for its items (1 for the first).
        values: one result per item (``None`` where the item failed).
        errors: index in ``items`` -> the exception raised (threads) or its
            already-described Failure (other processes); ``None`` if all succeeded.
        elapsed: seconds the worker spent on the whole batch.
        failures: index -> Failure, filled by the engine; ``None`` if all succeeded.
    """

    __slots__ = ("attempt", "elapsed", "errors", "failures", "items", "seq", "values")

    def __init__(self, seq: int, items: list[Any], attempt: int = 1) -> None:
        self.seq = seq
        self.items = items
        self.attempt = attempt
        self.values: list[Any] = []
        self.errors: dict[int, BaseException | Failure] | None = None
        self.elapsed = 0.0
        self.failures: dict[int, Failure] | None = None


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
