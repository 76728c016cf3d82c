"""A batch: the unit of work a backend executes, and the code that runs it in a worker."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from threading import get_ident
from time import perf_counter, thread_time
from types import TracebackType
from typing import Any

from ._outcome import Failure, set_traceback

__all__ = [
    "FINISHED",
    "RUNNING",
    "TIMED_OUT",
    "Batch",
    "Task",
    "execute",
    "execute_measured",
    "leave_if_forked",
    "unwatch_this_thread",
    "watch_forks_in_this_thread",
]

RUNNING, FINISHED, TIMED_OUT = 0, 1, 2  # Batch.state, with timeout=


class Task:
    """What the workers need to know about one run: its function and where batches go back.

    A pool's workers serve many runs; each batch carries its run's Task.

    Attributes:
        fn: called as ``fn(item)``.
        done: takes each finished batch (from any thread); the run's completions.
        priority: higher runs first when runs share a pool (``priority=``).
        timeout: seconds a call may run, for a backend that applies it per call
            (asyncio); ``None`` for no limit.
        timed: the backend must know when each batch started and who runs it
            (``timeout=``, or a shared pool, which may have to abandon a run's calls).
        bounded: the run has a ``timeout``: a batch that no worker can start (each
            is held by a call past its timeout) fails at once rather than waits.
        abandoned: workers this run's calls were left to (a timeout, or the end
            of a run in a shared pool), counted for its Report.
        served: the scheduler's account of the workers' time this run had, for
            fairness between runs of equal priority.
        cost: the run's measured seconds per item (how much ``served`` grows per item).
        waiting: since when (``time.monotonic``) it has had a batch waiting and
            got none, for the scheduler's starvation rule; None when it was just served.
        measure: the workers measure each batch's CPU time (``batch.cpu``), while
            the run chooses its backend (``backend="auto"``).
        key: a number of the pool's own for this task (e.g. which function a
            worker process has loaded).
        early: the run takes a batch's finished items before its last one
            (delivered as completed): a backend that runs a batch's items at
            once (asyncio) may send them back in pieces (``Batch.piece``).
        expecting: the run has more work to queue (a Pool's run on threads or
            processes, its input not read to the end).
        passed_over: how many times a worker took work of a lower priority
            while this ``expecting`` run had none queued (counted by the
            lanes; the run then queues that much more ahead).
        leaving: if set, told of each piece of work a worker takes from the
            pool's lanes, as the backend queued it (a Batch, or for processes a
            ``(Batch, indices)`` pair), under the lanes' lock; False drops it
            (never run, never reported). The Executor face's Futures on
            processes run from then on, or are cancelled before.
        withdrawable: its batches may be taken back one by one until a worker
            begins one (the Executor face's ``cancel()`` on Dask: a backend's
            optional ``withdraw``); a Dask task of it checks in before its first call.
    """

    __slots__ = (
        "abandoned",
        "bounded",
        "cost",
        "done",
        "early",
        "expecting",
        "fn",
        "key",
        "leaving",
        "measure",
        "passed_over",
        "priority",
        "served",
        "stops",
        "timed",
        "timeout",
        "waiting",
        "withdrawable",
    )

    def __init__(
        self,
        fn: Callable[[Any], Any],
        done: Callable[[Batch], None],
        *,
        priority: int = 0,
        timeout: float | None = None,
        timed: bool = False,
        bounded: bool = False,
        early: bool = False,
    ) -> None:
        self.fn = fn
        self.done = done
        self.priority = priority
        self.timeout = timeout
        self.timed = timed
        self.bounded = bounded
        self.abandoned = 0
        self.served = 0.0
        self.cost = 0.0
        self.waiting: float | None = None
        self.key = 0
        self.measure = False  # the workers time each batch's CPU too (backend="auto")
        self.early = early  # finished items may come back before their batch's last
        self.leaving: Callable[[object], bool] | None = None
        self.expecting = False  # (see the docstring; set and cleared by the run)
        self.passed_over = 0  # (counted by the lanes, under their lock)
        self.stops = False  # a stop rule watches the failures (Dask: first batches in parts)
        self.withdrawable = False


class Batch:
    """Consecutive input items sent to one worker at once, and what came back.

    The engine fills ``seq``/``items``/``attempt``; the worker fills
    ``values``, ``errors`` and ``elapsed``; the engine then turns ``errors``
    into ``failures``.

    Attributes:
        seq: position of this batch in the input, for ordered delivery
            (-1 for the retry of a single item).
        items: the input items.
        task: the run it belongs to: its function, and where it goes back.
        attempt: which attempt this is for its items (1 for the first).
        values: one result per item (``None`` where the item failed).
        errors: index in ``items`` -> the exception raised (threads), its
            Failure (asyncio), or its already-described Failure (other
            processes); ``None`` if all succeeded.
        frames: (threads) index -> the traceback of the call that raised that
            error, as the worker caught it (see :func:`execute`).
        elapsed: seconds the worker spent on the whole batch.
        cpu: of those, the CPU time of its thread (threads: only while
            ``task.measure``), or of its worker process (processes: always).
        via: which of its run's backends it went to (a run on ``auto`` may move).
        failures: index -> final Failure, filled by the engine; ``None`` if none.
        attempts: index -> attempts, for items that took more than ``attempt``.
        pending: items of this batch still waiting for a retry (ordered runs).
        parent: for a retry, the batch (and index in it) the item came from.
        history: for a retry, the error types of the item's earlier attempts.
        last_failure: for a retry, the item's last failure, if the retry never runs.
        sent: while the slowdown watches, when the engine sent the batch (``time.monotonic``).
        keys: with a journal, each item's key.
        started: with ``task.timed``, when a worker began the batch (``time.monotonic``).
        state: with ``task.timed``: RUNNING, FINISHED or TIMED_OUT, changed under the
            backend's lock, so a batch either finishes or times out, never both.
        owner: with ``task.timed``, the running worker (the backend's own token).
        skipped: for items not run (final in the journal, or duplicates), why.
        nbytes: (processes) the larger of the batch's items and results as
            pickles, in bytes; 0 where nothing was pickled. Batches are sized
            to keep it under the engine's ``BATCH_BYTES``.
        piece: the finished items of a batch whose other items still run
            (``task.early``): the batch is still out, and its last piece
            (``piece`` False) brings back the rest.
    """

    __slots__ = (
        "attempt",
        "attempts",
        "cpu",
        "elapsed",
        "errors",
        "failures",
        "frames",
        "history",
        "items",
        "keys",
        "last_failure",
        "nbytes",
        "owner",
        "parent",
        "pending",
        "piece",
        "rerouted",
        "sent",
        "seq",
        "skipped",
        "started",
        "state",
        "task",
        "values",
        "via",
    )

    def __init__(self, seq: int, items: list[Any], task: Task, attempt: int = 1) -> None:
        self.seq = seq
        self.items = items
        self.task = task
        self.attempt = attempt
        self.values: list[Any] = []
        self.errors: dict[int, BaseException | Failure] | None = None
        self.frames: dict[int, TracebackType | None] | None = None
        self.elapsed = 0.0
        self.failures: dict[int, Failure] | None = None
        self.attempts: dict[int, int] | None = None
        self.pending = 0
        self.parent: tuple[Batch, int] | None = None
        self.history: tuple[str, ...] = ()
        self.last_failure: Failure | None = None
        self.sent = 0.0
        self.keys: list[str] | None = None
        self.skipped: list[str] | None = None
        self.started: float | None = None
        self.state = RUNNING
        self.owner: Any = None
        self.cpu = 0.0
        self.via = 0
        self.nbytes = 0
        self.piece = False
        # (auto, on processes) items a worker process could not run, by index: "item"
        # (it did not pickle) or "fn" (fn could not be loaded there); see _unsent.
        self.rerouted: dict[int, str] | None = None

    def without(self, indices: set[int]) -> Batch:
        """A copy holding every item but those at ``indices`` (sent to be retried)."""
        return self._part([i for i in range(len(self.items)) if i not in indices])

    def prefix(self, count: int) -> Batch:
        """A copy holding the first ``count`` items (those a consumer received)."""
        return self._part(list(range(count)))

    def part(self, keep: list[int]) -> Batch:
        """A copy holding the items at ``keep``, with their values, errors and keys."""
        part = self._part(keep)
        errors = self.errors
        if errors:
            moved = {new: errors[old] for new, old in enumerate(keep) if old in errors}
            part.errors = moved or None
        if self.frames:
            traces = {new: self.frames[old] for new, old in enumerate(keep) if old in self.frames}
            part.frames = traces or None
        part.sent = self.sent
        part.via = self.via
        return part

    def _part(self, keep: list[int]) -> Batch:
        part = Batch(self.seq, [self.items[i] for i in keep], self.task, self.attempt)
        part.values = [self.values[i] for i in keep]
        part.elapsed = self.elapsed * len(keep) / len(self.items) if self.items else 0.0
        if self.keys is not None:
            part.keys = [self.keys[i] for i in keep]
        if self.failures:
            moved = {
                new: self.failures[old] for new, old in enumerate(keep) if old in self.failures
            }
            part.failures = moved or None
        if self.attempts:
            tries = {
                new: self.attempts[old] for new, old in enumerate(keep) if old in self.attempts
            }
            part.attempts = tries or None
        return part


def execute(fn: Callable[[Any], Any], batch: Batch) -> None:
    """Run ``fn`` over the batch's items, catching every per-item error.

    This is the hot loop: one call, one append and a zero-cost ``try`` per
    item; the clock is read once per batch. ``BaseException`` is caught too,
    so ``SystemExit`` or ``KeyboardInterrupt`` raised *by fn* fail only that
    item (a real Ctrl-C is delivered to the main thread, never here).

    If ``fn`` forks and its child returns here (it returned, or raised, e.g.
    ``sys.exit()`` in a daemon's child), the child must not go on as a second
    worker: :func:`_stop_in_forked_child` empties the list being iterated in
    the child, and the child leaves once the call is over.

    An error's traceback is kept apart (``batch.frames``), as this call's:
    one exception object may be raised by many calls at once (a module's
    constant, a failed Future's ``result()`` in every call), and its
    ``__traceback__`` is only the last raise's. It is read as the handler
    starts, before anything can let another thread run (``sys.exc_info``: on
    3.10 this thread's own copy), and taken off the object, which would
    otherwise chain every call's frames onto the next raise of it.
    """
    values: list[Any] = []
    append = values.append
    errors: dict[int, BaseException | Failure] | None = None
    items = batch.items
    running = _running
    ident = get_ident()
    outer = running.get(ident)  # (a run nested in a call: inline in this thread)
    running[ident] = items  # (per batch: what a fork in this thread must stop)
    frames: dict[int, TracebackType | None] = {}
    exc_info = sys.exc_info
    start = perf_counter()
    for item in items:
        try:
            append(fn(item))
        except BaseException as exc:
            frames[len(values)] = exc_info()[2]  # (first: see the docstring)
            set_traceback(exc, None)
            if errors is None:
                errors = {}
            errors[len(values)] = exc
            append(None)
    batch.elapsed = perf_counter() - start
    if outer is None:
        del running[ident]  # an idle worker keeps no items alive
    else:
        running[ident] = outer
    batch.values = values
    batch.errors = errors
    batch.frames = frames or None
    if _forked:
        leave_if_forked(errors and errors.get(len(values) - 1))


EXECUTE_CODE = execute.__code__


def execute_measured(fn: Callable[[Any], Any], batch: Batch) -> None:
    """:func:`execute`, and the CPU time its thread spent on the batch (``batch.cpu``)."""
    began = thread_time()
    execute(fn, batch)
    batch.cpu = thread_time() - began


# -- a call that forks -------------------------------------------------------
#
# A worker thread's fn may fork (a daemon, a library that forks without exec).
# The child is a copy of this process with one thread, the caller's: when the
# call returns into the worker's loop, the child would run the rest of the
# batch and take queued batches, running items twice, and block forever on
# queues nobody else serves. The at-fork hook below runs in the child only, at
# no cost per item in the parent: it empties the child's copy of the items
# list that the forking thread iterates, so the loop ends after this call,
# and the child then leaves with os._exit, as a forked child must.

_running: dict[int, list[Any] | None] = {}  # thread -> items it is running now
_forked = False  # True in a child forked from inside a call


def _stop_in_forked_child() -> None:
    global _forked  # noqa: PLW0603 - one flag, the cheapest thing for the hot loop to test
    items = _running.get(get_ident())
    if items is not None:  # forked from inside a call: stop this thread's loop
        items.clear()
        _forked = True


def watch_forks_in_this_thread() -> None:
    """Treat a fork from this thread as a fork from inside a call (an event loop's thread).

    The caller then checks ``_forked`` after each call and calls
    :func:`leave_if_forked`.
    """
    _running[get_ident()] = []


def unwatch_this_thread() -> None:
    """Undo :func:`watch_forks_in_this_thread`."""
    _running.pop(get_ident(), None)


def leave_if_forked(error: object = None) -> None:
    """In a child forked from inside a call: exit now, with the child's own exit code.

    ``error``: what the call raised in the child, if anything (``sys.exit(3)``
    exits 3; any other exception 1; a call that returned exits 0), or its Failure.
    """
    if not _forked:
        return
    if isinstance(error, Failure):
        error = error.exception
    code = 0
    if isinstance(error, SystemExit):
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
    elif isinstance(error, BaseException):
        code = 1
    os._exit(code)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_stop_in_forked_child)
