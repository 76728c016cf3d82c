"""What the process backend writes on a Batch: items out as a pickle, results and failures in.

A batch may travel in parts: the items that pickle (when some do not), or
the rest of a batch after its worker died. ``indices`` always says which of
the batch's items a part holds, and results are filed back by them.
"""

from __future__ import annotations

import pickle
from typing import Any

from .._batch import Batch
from .._exceptions import WorkerCrashed
from .._outcome import Failure, safe_repr
from ._process_spawn import how_it_ended
from ._process_worker import RemoteError

__all__ = [
    "NOT_SENT",
    "blame_crash",
    "fail_items",
    "file_results",
    "pickle_batch",
    "pickle_items",
]

NOT_SENT = "could not be sent to a worker process"  # (auto runs such an item on threads)


def pickle_batch(batch: Batch) -> tuple[bytes, list[int]] | None:
    """A whole batch's items as one pickle (``batch.nbytes`` set), and which they are.

    None when no item could be pickled: each failed with why, and the batch is
    handed back to its run at once (another engine's backend sends it nowhere).
    """
    payload, indices = pickle_items(batch, list(range(len(batch.items))))
    if payload is None:
        batch.task.done(batch)
        return None
    batch.nbytes = len(payload)
    return payload, indices


def pickle_items(batch: Batch, indices: list[int]) -> tuple[bytes | None, list[int]]:
    """The items at ``indices`` as one pickle, and which they are.

    An item that cannot be pickled fails here, with a message naming it, and
    is left out; ``None`` if no item is left.
    """
    whole = len(indices) == len(batch.items)  # (the common case: no per-item copy)
    items = batch.items if whole else [batch.items[i] for i in indices]
    try:
        return pickle.dumps(items, pickle.HIGHEST_PROTOCOL), indices
    except Exception:
        pass
    kept: list[int] = []
    for index in indices:
        item = batch.items[index]
        try:
            pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            batch.errors = batch.errors or {}
            batch.errors[index] = Failure(
                item,
                f"{type(exc).__module__}.{type(exc).__qualname__}",
                f"item {safe_repr(item, 80)} {NOT_SENT}: {exc}",
                attempts=batch.attempt,
            )
            batch.rerouted = batch.rerouted or {}
            batch.rerouted[index] = "item"
        else:
            kept.append(index)
    if not kept:
        return None, kept
    return pickle.dumps([batch.items[i] for i in kept], pickle.HIGHEST_PROTOCOL), kept


def file_results(
    batch: Batch,
    indices: list[int],
    values: list[Any],
    errors: dict[int, RemoteError],
    elapsed: float,
) -> None:
    """File a worker's answer for the items at ``indices``."""
    if len(indices) == len(batch.items):
        batch.values = values  # the whole batch, in order
    else:
        _sized(batch)
        for position, index in enumerate(indices):
            batch.values[index] = values[position]
    for position, remote in errors.items():
        index = indices[position]
        batch.errors = batch.errors or {}
        batch.errors[index] = _failure(batch.items[index], remote, batch.attempt)
    batch.elapsed += elapsed


def fail_items(batch: Batch, indices: list[int], error: BaseException | RemoteError) -> None:
    """Fail every item at ``indices`` with ``error`` (an exception, or one described remotely)."""
    _sized(batch)
    batch.errors = batch.errors or {}
    for index in indices:
        if isinstance(error, BaseException):
            batch.errors[index] = error
        else:
            batch.errors[index] = _failure(batch.items[index], error, batch.attempt)


def blame_crash(batch: Batch, indices: list[int], position: int, code: int | None) -> list[int]:
    """The worker died running ``indices[position]``: that item fails; return the rest."""
    position = min(max(position, 0), len(indices) - 1)
    crashed = indices[position]
    batch.errors = batch.errors or {}
    batch.errors[crashed] = WorkerCrashed(
        f"the worker process running this item died ({how_it_ended(code)})"
    )
    return indices[:position] + indices[position + 1 :]


def _sized(batch: Batch) -> None:
    if len(batch.values) != len(batch.items):
        batch.values = [None] * len(batch.items)


def _failure(item: Any, remote: RemoteError, attempt: int) -> Failure:
    error_type, message, trace, lineage, retry_after = remote
    failure = Failure(item, error_type, message, trace, attempt)
    failure.lineage = lineage
    failure.retry_after = retry_after
    return failure
