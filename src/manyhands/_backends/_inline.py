"""Runs each batch at once in the calling thread: a run nested in a pool's own worker.

A worker of a pool that starts a run on the same pool and waits for it
would wait for workers that may all be doing the same: the classic nested
submit deadlock. Such a run is executed inline instead, one batch at a time
in the worker that asked for it.
"""

from __future__ import annotations

from .._batch import Batch, Task, execute

__all__ = ["InlineBackend"]


class InlineBackend:
    """A backend without workers: ``submit`` runs the batch before it returns.

    ``timeout=`` cannot be applied (the caller's own thread runs the call).
    """

    name = "inline"
    handles_timeouts = True  # (nothing to apply it with: documented)
    timeout_action = "it ran inline"
    concurrent_items = False

    def __init__(self) -> None:
        self.abandoned = 0
        self.notes: list[str] = ["ran inline in the pool's worker that started it (a nested run)"]

    def start(self) -> None:
        pass

    def attach(self, task: Task) -> None:
        pass

    def detach(self, task: Task) -> None:
        pass

    def inside(self) -> bool:
        return False

    def submit(self, batch: Batch) -> None:
        task = batch.task
        execute(task.fn, batch)
        task.done(batch)

    def cancel(self, task: Task) -> list[Batch]:
        return []

    def wind_down(self) -> None:
        pass

    def expire(self, batch: Batch) -> bool:
        return False

    def shutdown(self, grace: float) -> int:
        return 0
