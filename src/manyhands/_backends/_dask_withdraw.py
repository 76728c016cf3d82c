"""Taking back a Dask task before its worker begins it (a Pool's cancelled call).

Dask cancels a task asynchronously: the scheduler's word reaches the worker
later, and a task queued there may start first. So a cancel that must hold
(``Future.cancel()`` returning True: the call is never made) asks the workers
themselves, all at once (:func:`began_on_cluster`, which runs
:func:`withdraw_here` on each worker's event loop). A worker names the tasks
it began, and marks the others never to begin; a task that may be taken back
checks in (:func:`begin`) right before its first call. Both happen under one
lock, so for each task either the call wins (a worker named it: the cancel
fails, the call goes on) or the cancel does (the task calls nothing), never
both.

A worker remembers a task it began for as long as it holds the task (until
the driver fetched its answer and let go of it, or cancelled it): a cancel
that comes later finds the answer already back in the driver. A mark not to
begin is kept while the worker holds the task, and for a minute at least:
the driver cancels the task on the scheduler right after the workers
answered, so the scheduler hands it to no worker after that.

The one gap: a worker that joins the cluster between the workers' answer and
the scheduler's cancel (milliseconds) is not asked, and may be given the task.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

__all__ = ["began_on_cluster", "begin", "withdraw_here"]

_MARK_SECONDS = 60.0  # a mark not to begin outlives a task the worker never held this long


class _Gate:
    """One worker's tasks begun, and those it must not begin."""

    __slots__ = ("barred", "begun", "limit")

    def __init__(self) -> None:
        self.begun: dict[str, None] = {}  # tasks begun here (while the worker holds them)
        self.barred: dict[str, float] = {}  # task -> when it was marked not to begin
        self.limit = 1024  # begun tasks past which those let go of are forgotten

    def forget_let_go(self, held: Any, now: float) -> None:
        """Forget the tasks the worker no longer holds (marks: once a minute old)."""
        self.begun = {key: None for key in self.begun if key in held}
        self.barred = {
            key: when
            for key, when in self.barred.items()
            if key in held or now - when < _MARK_SECONDS
        }
        self.limit = max(1024, 2 * len(self.begun))


_lock = threading.Lock()  # guards every _Gate: begin and withdraw_here are atomic
_gates: weakref.WeakKeyDictionary[Any, _Gate] = weakref.WeakKeyDictionary()  # by Dask worker


def begin(name: str) -> bool:
    """(a task that may be taken back, before its first call) False: it was taken back."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except Exception:  # (not on a Dask worker: nothing can take it back)
        return True
    with _lock:
        gate = _gates.setdefault(worker, _Gate())
        if gate.barred.pop(name, None) is not None:
            return False
        gate.begun[name] = None
        if len(gate.begun) > gate.limit:
            gate.forget_let_go(worker.state.tasks, time.monotonic())
    return True


def withdraw_here(keys: list[str], dask_worker: Any = None) -> list[str]:
    """(run on each Dask worker) Which of the tasks ``keys`` began here; the rest never will."""
    with _lock:
        gate = _gates.setdefault(dask_worker, _Gate())
        gate.forget_let_go(dask_worker.state.tasks, time.monotonic())
        begun = [key for key in keys if key in gate.begun]
        now = time.monotonic()
        for key in keys:
            if key not in gate.begun:
                gate.barred[key] = now
    return begun


def began_on_cluster(client: Any, keys: list[str]) -> set[str] | None:
    """Ask every worker: the tasks of ``keys`` begun; the others never begin from now on.

    None if a worker did not answer (it may have begun any of them).
    """
    try:
        answers = client.run(withdraw_here, keys, on_error="return")
    except Exception:  # (the cluster is gone, or this is its own event loop)
        return None
    began: set[str] = set()
    for answer in answers.values():
        if isinstance(answer, BaseException):
            return None
        began.update(answer)
    return began
