"""A thread backend's worker: its loop, and the tokens queued for it besides batches."""

from __future__ import annotations

import _thread
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from time import monotonic
from typing import TYPE_CHECKING, Any

from .._batch import FINISHED, RUNNING, Batch, execute, execute_measured

if TYPE_CHECKING:
    from ._threads import ThreadBackend

__all__ = ["SERVING", "STOP", "TAKE", "Exit", "install", "nothing", "serving", "work"]

TAKE = object()  # a queued token: take the next batch from the lanes


class Exit:
    """A queued token: the worker that takes it exits, if the token is still valid.

    ``wind_down`` queues one per worker behind the last batches; a batch
    submitted after it makes those tokens stale (workers pass them by), so
    it never waits behind a busy worker's exit for a worker to come free.
    """

    __slots__ = ()


STOP = Exit()  # shutdown's token: always obeyed


serving = threading.local()  # in a worker thread: the backend it serves
# The same, in the worker's context: seen by what copies it (asyncio.to_thread, a task
# made in a call, contextvars.copy_context().run), so that a run started from a thread
# a call waits for is known as nested too, and does not wait for the pool's workers.
SERVING: ContextVar[object] = ContextVar("manyhands_serving", default=None)


def nothing() -> None:
    return None


def install(hooks: tuple[Any, Any]) -> None:
    """The tracing and profiling hooks ``threading.Thread`` would install."""
    trace, profile = hooks
    if trace is not None:
        sys.settrace(trace)
    if profile is not None:
        sys.setprofile(profile)


def _mark_serving(backend: ThreadBackend) -> None:
    """This thread (and its context: see ``SERVING``) serves ``backend``."""
    serving.backend = backend
    SERVING.set(backend)


def work(
    backend: ThreadBackend,
    get: Callable[[], Any],
    take: Callable[[], Batch | None],
    alive: _thread.LockType,
    hooks: tuple[Any, Any],
    guard: _thread.LockType,
    stuck: list[int],
    overdue: dict[_thread.LockType, Batch],
    waiting: list[None],
) -> None:
    """A worker's loop: take a batch, run it, hand it back to its run; until told to exit.

    ``waiting`` holds an entry while it waits for work (see ``free_workers``).
    For a timed task each batch says when it started and which worker runs
    it, and a batch the engine timed out is dropped (and, if this worker was
    replaced meanwhile, the worker exits).
    """
    me = threading.get_native_id()
    backend.native_ids.add(me)
    clocks = backend.cpu_clocks
    if clocks is not None:
        clocks[me] = time.pthread_getcpuclockid(threading.get_ident())
    try:
        install(hooks)
        _mark_serving(backend)
        while True:
            waiting.append(None)
            batch = get()
            waiting.pop()
            if batch is TAKE:
                batch = take()
                if batch is None:  # (its run was cancelled meanwhile)
                    continue
            elif batch.__class__ is Exit:
                if backend._leaves(batch):
                    return
                continue  # (stale: a batch came after the wind-down)
            task = batch.task
            run = execute_measured if task.measure else execute
            if not task.timed:
                run(task.fn, batch)
                task.done(batch)
                del batch, task  # an idle worker must not keep its last batch alive
                continue
            batch.owner = alive
            batch.started = monotonic()
            run(task.fn, batch)
            with guard:
                finished = batch.state == RUNNING
                if finished:
                    batch.state = FINISHED
                else:
                    overdue.pop(alive, None)
                replaced = batch.owner is None
                if replaced:
                    stuck[0] -= 1
            if finished:
                task.done(batch)
            elif replaced:
                backend._relieve()  # (one abandoned thread fewer: a held worker may go)
                return
            del batch, task
    finally:
        backend.native_ids.discard(me)
        if clocks is not None:
            clocks.pop(me, None)
        alive.release()
