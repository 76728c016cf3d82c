"""The interface between a run and a backend (a pool's workers)."""

from __future__ import annotations

from typing import Protocol

from .._batch import Batch, Task

__all__ = ["Backend"]


class Backend(Protocol):
    """Executes batches; hands each finished one back through ``batch.task.done``.

    A backend is a pool's workers. A private one serves one run and is
    started and shut down by it; a shared one (a :class:`~manyhands.Pool`)
    serves many runs, each a :class:`~manyhands._batch.Task` it is told of
    with :meth:`attach` and :meth:`detach`. A run calls, from its consuming
    thread: ``submit`` many times, ``expire`` for a batch past its deadline
    (or still running when the run ends), ``cancel`` when it stops early.
    ``task.done`` may be called from any thread, once per submitted batch
    that ran and was not expired.

    ``name``: what the Report calls it (``"threads"``, ``"processes"``...).
    ``handles_timeouts``: True if the backend applies a task's ``timeout``
    to each call itself; else the run times batches out through
    :meth:`expire`, and ``timeout_action``, read right after ``expire``
    returned True, ends the Timeout's message (what became of that call).
    ``concurrent_items``: True if a batch's items run at
    the same time (asyncio), so a batch per worker is not needed, the last
    batches cannot straggle, and stopping cancels calls at once (no grace
    period). ``abandoned``: workers left to calls past their deadline, so far.
    ``notes``: one-line facts for the Report (e.g. it runs on fewer workers
    than asked because no more could be started).
    """

    name: str
    handles_timeouts: bool
    timeout_action: str
    concurrent_items: bool
    abandoned: int
    notes: list[str]

    def start(self) -> None:
        """Start the workers (or get ready to start them as work arrives)."""

    def attach(self, task: Task) -> None:
        """A run begins: its batches will carry ``task`` (e.g. ship its function)."""

    def detach(self, task: Task) -> None:
        """A run ended: forget ``task`` (none of its batches is queued or running)."""

    def inside(self) -> bool:
        """True when called from one of this backend's workers (a nested run)."""

    def submit(self, batch: Batch) -> None:
        """Queue a batch for execution; never blocks for long."""

    def cancel(self, task: Task) -> list[Batch]:
        """Drop the queued batches of ``task`` no worker began, and return them.

        Dropped batches are never reported through ``done``.
        """

    def wind_down(self) -> None:
        """No batch is expected after those submitted: idle workers may exit.

        A hint (private backends) that overlaps teardown with the last
        batches; a later ``submit`` still runs.
        """

    def expire(self, batch: Batch) -> bool:
        """Give up a running batch (a timeout, or its run ended); False if it finished first.

        The backend frees the worker (kills it, or abandons and replaces it,
        or cancels the call) and never reports the batch through ``done``.
        """

    def shutdown(self, grace: float) -> int:
        """Drop queued batches, wait up to ``grace`` seconds for running ones, stop.

        Returns the number of workers still busy after the grace period, which
        are abandoned. A KeyboardInterrupt during the wait ends it at once and
        is re-raised after the workers were told to stop.
        """
