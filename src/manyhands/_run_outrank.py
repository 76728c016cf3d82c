"""A Pool's run, while its input has more, queues ahead of lower-priority work.

A free worker takes the head of the highest-priority lane with work.
Until its first round came back (the sizer) and its round trips
proved no server limits it (the slowdown), a run keeps no batch
queued ahead of the workers; and once it does, a batch per worker
covers this thread's turnaround of a batch only if the calls last
longer than that (a thread that waits for the GIL behind CPU-bound
calls, or for a core, falls behind short ones). Either way a worker
that ends one of its calls finds its lane empty and takes the
lower-priority work waiting there, before this thread sends the
next. So the run queues ahead at once when it finds such work
waiting as it warms up, and a batch more for each time the lanes
saw a worker take it while its lane was empty (``Task.passed_over``;
the window bounds the queue, and a refusal or a rate limit still
ends it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._run_slowdown import obey_slowdown

if TYPE_CHECKING:
    from ._run_state import RunState

__all__ = ["may_outrank", "outrank"]


def may_outrank(run: RunState) -> bool:
    """Whether the run shares its workers with runs it may outrank (a Pool's threads or
    processes; on asyncio a batch's items are handed out one by one, each at once)."""
    return (
        not run._owns_backend
        and not run._items_are_calls
        and hasattr(run._backend, "waiting_below")
    )


def outrank(run: RunState) -> None:
    """Queue ahead of lower-priority work, when the lanes show some waiting (see above)."""
    task = run.task
    missed = task.passed_over - run._passes_seen
    if missed:
        run._passes_seen += missed
        run._outranking = True
        run._sizer.queue_ahead()
        run._sizer.deepen(missed)
        obey_slowdown(run)
    elif (
        not run._outranking
        and (run._sizer.warming or not run._queueing)
        and run._backend.waiting_below(task.priority)  # type: ignore[attr-defined]
    ):
        run._outranking = True
        run._sizer.queue_ahead()
        obey_slowdown(run)
    if not task.expecting:
        run._claiming = False
