"""The interface between the engine and a backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .._batch import Batch

__all__ = ["Backend"]


class Backend(Protocol):
    """Executes batches; reports each finished one through ``done``.

    The engine calls, from one thread: ``start`` once, ``submit`` many times,
    ``shutdown`` once (always, also after errors). ``done`` may be called from
    any thread, once per submitted batch that ran.

    ``handles_timeouts``: True if the backend applies ``timeout=`` to each
    call itself; else the engine times batches out through :meth:`expire`,
    and ``timeout_action`` ends the Timeout's message (what became of the call).
    ``concurrent_items``: True if a batch's items run at the same time, so a
    batch per worker is not needed and the last batches cannot straggle.
    ``abandoned``: workers left to calls past their timeout, so far.
    ``notes``: one-line facts for the Report (e.g. it runs on fewer workers
    than asked because no more could be started).
    """

    handles_timeouts: bool
    timeout_action: str
    concurrent_items: bool
    abandoned: int
    notes: list[str]

    def start(self, fn: Callable[[Any], Any], done: Callable[[Batch], None]) -> None:
        """Prepare to run ``fn``; finished batches go to ``done``."""

    def submit(self, batch: Batch) -> None:
        """Queue a batch for execution; never blocks for long."""

    def wind_down(self) -> None:
        """No batch is expected after those submitted: idle workers may exit.

        A hint that overlaps teardown with the last batches; a later
        ``submit`` still runs (the backend starts workers again as needed).
        """

    def expire(self, batch: Batch) -> bool:
        """Time out a running batch (``timeout=``); False if it finished first.

        The backend frees the worker (kills or abandons and replaces it) and
        never reports the batch through ``done``.
        """

    def shutdown(self, grace: float) -> int:
        """Drop queued batches, wait up to ``grace`` seconds for running ones.

        Returns the number of workers still busy after the grace period, which
        are abandoned. A KeyboardInterrupt during the wait ends it at once and
        is re-raised after the workers were told to stop.
        """
