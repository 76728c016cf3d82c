"""The thread backend: a pool of worker threads fed from one queue."""

from __future__ import annotations

import _thread
import sys
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from time import monotonic
from typing import Any

from .._batch import FINISHED, RUNNING, TIMED_OUT, Batch, execute
from .._exceptions import WorkerInitError

__all__ = ["ThreadBackend"]


class ThreadBackend:
    """Runs batches on up to ``workers`` threads, started as work arrives.

    Workers are started with the low-level ``_thread`` API: ``Thread.start()``
    waits for each new thread to check in, which made starting 1,000 workers
    take ~0.13 s here against ~0.03 s, a ramp that cost IO-bound runs several
    percent of their wall time. Each worker holds a lock for its lifetime,
    which is what ``shutdown`` waits on; tracing and profiling hooks set
    through ``threading`` (coverage, profilers) are installed as
    ``threading.Thread`` would.

    Like daemon threads, workers do not keep the interpreter alive: a call
    that never returns cannot be killed, so after the grace period its worker
    is abandoned rather than hanging the program; it exits once the call
    returns.

    With ``timed=True`` (the run has a ``timeout``), :meth:`expire` times out
    a running batch: its worker is abandoned and a new one takes its place,
    so capacity is kept, up to ``abandon_limit`` abandoned threads; past that
    the worker is kept and capacity is lost until its call returns.
    """

    handles_timeouts = False  # the engine times batches out through expire()
    timeout_action = "it was left running in an abandoned thread and the item failed"
    concurrent_items = False
    _start_thread = staticmethod(_thread.start_new_thread)  # (tests inject a failing one)

    def __init__(self, workers: int, timed: bool = False, abandon_limit: int | None = None) -> None:
        self._workers = workers
        self._timed = timed
        self._guard = _thread.allocate_lock()  # a batch finishes or times out, not both
        self.abandoned = 0  # threads left to a call past its timeout, and replaced
        self.abandon_limit = workers if abandon_limit is None else abandon_limit
        self._tasks: SimpleQueue[Batch | None] = SimpleQueue()
        self._alive: list[_thread.LockType] = []  # one held lock per worker started
        self._retiring = 0  # stop sentinels queued so far
        self._fn: Callable[[Any], Any] | None = None
        self._done: Callable[[Batch], None] | None = None
        self.notes: list[str] = []  # for the Report: e.g. fewer workers than asked

    def start(self, fn: Callable[[Any], Any], done: Callable[[Batch], None]) -> None:
        self._fn = fn
        self._done = done

    def submit(self, batch: Batch) -> None:
        self._tasks.put(batch)
        if len(self._alive) - self._retiring < self._workers:
            self._add_worker()

    def _add_worker(self) -> None:
        assert self._fn is not None and self._done is not None, "start() was not called"
        alive = _thread.allocate_lock()
        alive.acquire()
        hooks = (threading.gettrace(), threading.getprofile())
        args: tuple[Any, ...] = (self._tasks.get, self._fn, self._done, alive, hooks)
        try:
            if self._timed:
                self._start_thread(_work_timed, (*args, self._guard))
            else:
                self._start_thread(_work, args)
        except RuntimeError as exc:  # "can't start new thread": a limit of the system
            self._cannot_start(exc)
            return
        self._alive.append(alive)

    def _cannot_start(self, error: RuntimeError) -> None:
        """No more threads: go on with those running, or end the run if there are none."""
        running = len(self._alive) - self._retiring
        if running <= 0:
            raise WorkerInitError(
                f"no worker thread could be started ({error}): the system's limit on threads "
                "or on memory for their stacks is reached (ulimit -u, ulimit -v, "
                "/proc/sys/kernel/threads-max, a container's pids limit). Lower workers= "
                "or raise the limit"
            ) from error
        asked, self._workers = self._workers, running  # no new attempt for each batch
        self.notes.append(
            f"ran on {running} worker thread{'s' if running > 1 else ''}, not {asked}: no "
            f"more could be started ({error}; the system's limit on threads or memory was "
            "reached)"
        )

    def expire(self, batch: Batch) -> bool:
        """Time out a running batch; False if it finished first.

        Its worker is abandoned to the call and replaced (up to
        ``abandon_limit``); the call's result, when it comes, is dropped.
        """
        with self._guard:
            if batch.state != RUNNING:
                return False
            batch.state = TIMED_OUT
            if self.abandoned >= self.abandon_limit:
                return True  # the worker stays ours: it goes on once the call returns
            owner, batch.owner = batch.owner, None  # tells the worker it was replaced
        self.abandoned += 1
        self._alive.remove(owner)  # shutdown does not wait for it
        self._add_worker()
        return True

    def wind_down(self) -> None:
        # Stop sentinels queue behind the remaining batches: each worker exits
        # as soon as it runs out of work, instead of all of them being woken
        # at the end (~50 us each, serialized on the GIL).
        self._retire(len(self._alive) - self._retiring)

    def _retire(self, count: int) -> None:
        for _ in range(count):
            self._tasks.put(None)
        self._retiring += count

    def shutdown(self, grace: float) -> int:
        try:
            while True:  # batches nobody has started are dropped, not run
                if self._tasks.get_nowait() is None:
                    self._retiring -= 1
        except Empty:
            pass
        self._retire(len(self._alive) - self._retiring)
        deadline = monotonic() + grace
        busy = 0
        for alive in self._alive:
            if alive.acquire(timeout=max(deadline - monotonic(), 0.0)):
                alive.release()
            else:
                busy += 1
        return busy


def _install(hooks: tuple[Any, Any]) -> None:
    """The tracing and profiling hooks ``threading.Thread`` would install."""
    trace, profile = hooks
    if trace is not None:
        sys.settrace(trace)
    if profile is not None:
        sys.setprofile(profile)


def _work(
    get: Callable[[], Batch | None],
    fn: Callable[[Any], Any],
    done: Callable[[Batch], None],
    alive: _thread.LockType,
    hooks: tuple[Any, Any],
) -> None:
    try:
        _install(hooks)
        while True:
            batch = get()
            if batch is None:
                return
            execute(fn, batch)
            done(batch)
            del batch  # an idle worker must not keep its last batch alive
    finally:
        alive.release()


def _work_timed(
    get: Callable[[], Batch | None],
    fn: Callable[[Any], Any],
    done: Callable[[Batch], None],
    alive: _thread.LockType,
    hooks: tuple[Any, Any],
    guard: _thread.LockType,
) -> None:
    """``_work`` for runs with a timeout: each batch says when it started, and
    a batch the engine timed out is dropped (and, if this worker was replaced
    meanwhile, the worker exits)."""
    try:
        _install(hooks)
        while True:
            batch = get()
            if batch is None:
                return
            batch.owner = alive
            batch.started = monotonic()
            execute(fn, batch)
            with guard:
                finished = batch.state == RUNNING
                if finished:
                    batch.state = FINISHED
                replaced = batch.owner is None
            if finished:
                done(batch)
            elif replaced:
                return
            del batch
    finally:
        alive.release()
