"""Calls past ``timeout=`` on threads and processes, whose backend cannot stop a call itself.

The run keeps the :class:`~._timers.Deadlines` of its batches out; once one
passes, the backend gives up the call (``expire``: its worker is abandoned and
replaced, or killed) and the batch comes back through the completions as a
:class:`~manyhands.Timeout`, settled like any other (a retry, a failure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._exceptions import Timeout

if TYPE_CHECKING:
    from ._run_state import RunState
    from ._timers import Deadlines

__all__ = ["expire_overdue"]


def expire_overdue(run: RunState, deadlines: Deadlines, now: float) -> None:
    """Time out the batches running past ``timeout``."""
    timeout = deadlines.timeout
    for batch in deadlines.overdue(now):
        started = batch.started
        if not run._backend_of(batch).expire(batch):
            # It finished meanwhile (it is in the completions queue), or it began
            # later than the run knew (the backend's own clock): not over yet.
            if batch.started is not None and started is not None and batch.started > started:
                deadlines.next_check = min(deadlines.next_check, batch.started + timeout)
            continue
        deadlines.back(batch)
        started = batch.started
        assert started is not None
        batch.values = [None] * len(batch.items)
        batch.errors = {
            0: Timeout(
                f"the call ran past timeout={timeout:g}s; "
                f"{run._backend_of(batch).timeout_action}"  # (read after expire)
            )
        }
        batch.elapsed = now - started
        run._completions.put(batch)  # settled like any completion
    run.statistics.abandoned = run.task.abandoned
