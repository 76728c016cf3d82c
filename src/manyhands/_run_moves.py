"""A run on ``backend="auto"`` moves to another backend, as its autopilot chose.

New batches go to the backend the run moved to; those out finish where they
are (``Batch.via`` names the backend a batch went to, ``Run._previous`` holds
the ones it moved from; ``Run._send_back_to`` sends one there: a worker
process's items that cannot be sent to it run on the threads it moved from).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._run_outrank import may_outrank

if TYPE_CHECKING:
    from ._backends import Backend
    from ._run import Run

__all__ = ["calls_running", "resize", "switch_to"]


def calls_running(run: Run) -> int:
    """Calls started and not finished, about (on threads, a batch out is a call)."""
    return min(run._in_backend, run._workers)


def switch_to(run: Run, backend: Backend, workers: int) -> None:
    """New batches go to ``backend`` (``workers``); those out finish where they are."""
    run._previous.append(run._backend)
    run._backend = backend
    run._items_are_calls = backend.concurrent_items
    run._via += 1
    run._in_previous += run._in_backend
    run._in_backend = 0
    resize(run, workers)


def resize(run: Run, workers: int) -> None:
    """The run's batches now go to ``workers`` workers."""
    run._workers = workers
    run._sizer = run._new_sizer(workers)
    run._sizer.hold(not run._queueing)
    if run._outranking:
        run._sizer.queue_ahead()
    run._claiming = run.task.expecting and may_outrank(run)
