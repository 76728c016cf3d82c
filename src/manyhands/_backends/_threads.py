"""The thread backend: worker threads fed from one queue, for one run or a pool's many."""

from __future__ import annotations

import _thread
import functools
import sys
import threading
import time
from collections.abc import Callable
from queue import Empty, SimpleQueue
from time import monotonic
from typing import Any

from .._batch import FINISHED, RUNNING, TIMED_OUT, Batch, Task, execute, execute_measured
from .._exceptions import WorkerInitError
from .._lanes import Lanes

#: Each thread's CPU clock can be read without giving up the GIL (backend="auto").
_CPU_CLOCKS = hasattr(time, "pthread_getcpuclockid")

__all__ = ["ThreadBackend"]

TAKE = object()  # a queued token: take the next batch from the lanes


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

    A private backend (one run: ``manyhands.run``) queues batches first come,
    first served; a shared one (a :class:`~manyhands.Pool`) queues them in
    :class:`~manyhands._lanes.Lanes`, and a worker that comes free takes the
    batch the lanes choose (priority, then fairness).

    For a timed task (its run has a ``timeout``, or the pool is shared),
    :meth:`expire` frees the worker of a running batch: the worker is
    abandoned to its call and a new one takes its place, so capacity is kept,
    while fewer than ``abandon_limit`` abandoned threads are still in their
    calls; past that the worker is kept and capacity is lost until its call
    returns.
    """

    name = "threads"
    handles_timeouts = False  # the engine times batches out through expire()
    timeout_action = "it was left running in an abandoned thread and the item failed"
    concurrent_items = False
    _start_thread = staticmethod(_thread.start_new_thread)  # (tests inject a failing one)

    def __init__(
        self,
        workers: int,
        *,
        shared: bool = False,
        spare: int = 0,
        abandon_limit: int | None = None,
    ) -> None:
        self._workers = workers
        # Spare workers (a shared pool's ``spare=``) take only work above priority 0,
        # so it starts at once even when every worker is busy with the bulk.
        self._spare = spare
        self._spare_queue: SimpleQueue[Any] = SimpleQueue()  # TAKE tokens, or None: exit
        self._spare_alive: list[_thread.LockType] = []
        self._asked = workers
        self._lanes: Lanes[Batch] | None = Lanes(lambda b: len(b.items)) if shared else None
        self._guard = _thread.allocate_lock()  # a batch finishes or times out, not both
        self.abandoned = 0  # threads left to a call past its timeout, and replaced
        self.abandon_limit = workers if abandon_limit is None else abandon_limit
        self._stuck = [0]  # abandoned threads still in their call (they count themselves out)
        # Workers kept in a call past its timeout (the abandon limit was reached):
        # their item has failed already, so shutdown does not wait for them.
        self._overdue: set[_thread.LockType] = set()
        self._queue: SimpleQueue[Any] = SimpleQueue()  # batches, TAKE tokens, or None: exit
        self._alive: list[_thread.LockType] = []  # one held lock per worker started
        self._retiring = 0  # exit sentinels queued so far
        self._waiting: list[None] = []  # one entry per worker waiting for work (atomic ops)
        self.notes: list[str] = []  # for the Report: e.g. fewer workers than asked
        self.native_ids: set[int] = set()  # the worker threads' (for backend="auto")
        self.cpu_clocks: dict[int, int] | None = {} if _CPU_CLOCKS else None  # theirs, by id

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        pass  # workers start as batches arrive

    def attach(self, task: Task) -> None:
        pass

    def detach(self, task: Task) -> None:
        pass

    def submit(self, batch: Batch) -> None:
        if self._lanes is None:
            self._queue.put(batch)
        else:
            self._lanes.put(batch, batch.task)
            self._queue.put(TAKE)
            if self._spare and batch.task.priority > 0:  # whoever is free first takes it
                self._spare_queue.put(TAKE)
                if len(self._spare_alive) < self._spare:
                    self._add_worker(spare=True)
        if len(self._alive) - self._retiring < self._workers:
            self._add_worker()

    def inside(self) -> bool:
        """True when called from one of this backend's worker threads."""
        return getattr(_serving, "backend", None) is self

    def free_workers(self) -> int:
        """About how many workers would take a batch submitted now without waiting.

        Those waiting for work and those not started yet, less the batches
        queued for them. (Spare threads are left out: they take urgent work only.)
        """
        unstarted = self._workers - (len(self._alive) - self._retiring)
        return max(unstarted, 0) + len(self._waiting) - self._queue.qsize()

    def _add_worker(self, spare: bool = False) -> None:
        alive = _thread.allocate_lock()
        alive.acquire()
        hooks = (threading.gettrace(), threading.getprofile())
        take: Callable[[], Batch | None] = _nothing
        if self._lanes is not None:
            take = functools.partial(self._lanes.take, 0) if spare else self._lanes.take
        get = self._spare_queue.get if spare else self._queue.get
        waiting: list[None] = [] if spare else self._waiting
        args = (self, get, take, alive, hooks, self._guard, self._stuck, self._overdue, waiting)
        try:
            self._start_thread(_work, args)
        except RuntimeError as exc:  # "can't start new thread": a limit of the system
            if spare:
                return  # (the workers will take it)
            self._cannot_start(exc)
            return
        (self._spare_alive if spare else self._alive).append(alive)

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
        """Free the worker of a running batch (timed tasks); False if it finished first.

        Its worker is abandoned to the call and replaced (while fewer than
        ``abandon_limit`` abandoned threads are still in their calls); the
        call's result, when it comes, is dropped.
        """
        with self._guard:
            if batch.state != RUNNING:
                return False
            batch.state = TIMED_OUT
            owner = batch.owner
            if owner is None or self._stuck[0] >= self.abandon_limit:
                if owner is not None:
                    self._overdue.add(owner)
                return True  # the worker stays ours: it goes on once the call returns
            batch.owner = None  # tells the worker it was replaced
            self._stuck[0] += 1
        self.abandoned += 1
        batch.task.abandoned += 1
        self._alive.remove(owner)  # shutdown does not wait for it
        self._add_worker()
        return True

    def cancel(self, task: Task) -> list[Batch]:
        """Drop the batches of ``task`` no worker has taken, and return them."""
        if self._lanes is not None:
            return self._lanes.cancel(task)
        dropped: list[Batch] = []  # one run: everything queued is its
        try:
            while True:
                work = self._queue.get_nowait()
                if work is None:
                    self._retiring -= 1
                else:
                    dropped.append(work)
        except Empty:
            pass
        return dropped

    def wind_down(self) -> None:
        # Exit sentinels queue behind the remaining batches: each worker exits
        # as soon as it runs out of work, instead of all of them being woken
        # at the end (~50 us each, serialized on the GIL).
        if self._lanes is None:
            self._retire(len(self._alive) - self._retiring)

    def _retire(self, count: int) -> None:
        for _ in range(count):
            self._queue.put(None)
        self._retiring += count

    def shutdown(self, grace: float) -> int:
        """Drop what is queued; wait up to ``grace`` for running calls; workers exit.

        Returns how many workers were still busy after the grace period (they
        are abandoned: each exits once its call returns). A KeyboardInterrupt
        during the wait ends it at once.
        """
        if self._lanes is not None:
            self._lanes.clear()
        try:
            while True:  # batches nobody has started are dropped, not run
                if self._queue.get_nowait() is None:
                    self._retiring -= 1
        except Empty:
            pass
        self._retire(len(self._alive) - self._retiring)
        for _ in self._spare_alive:
            self._spare_queue.put(None)
        deadline = monotonic() + grace
        busy = 0
        for alive in [*self._alive, *self._spare_alive]:
            with self._guard:
                overdue = alive in self._overdue  # (its item failed: nothing to wait for)
            if alive.acquire(timeout=0.0 if overdue else max(deadline - monotonic(), 0.0)):
                alive.release()
            else:
                busy += 1
        return busy


_serving = threading.local()  # in a worker thread: the backend it serves


def _nothing() -> None:
    return None


def _install(hooks: tuple[Any, Any]) -> None:
    """The tracing and profiling hooks ``threading.Thread`` would install."""
    trace, profile = hooks
    if trace is not None:
        sys.settrace(trace)
    if profile is not None:
        sys.setprofile(profile)


def _work(
    backend: ThreadBackend,
    get: Callable[[], Any],
    take: Callable[[], Batch | None],
    alive: _thread.LockType,
    hooks: tuple[Any, Any],
    guard: _thread.LockType,
    stuck: list[int],
    overdue: set[_thread.LockType],
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
        _install(hooks)
        _serving.backend = backend
        while True:
            waiting.append(None)
            batch = get()
            waiting.pop()
            if batch is None:
                return
            if batch is TAKE:
                batch = take()
                if batch is None:  # (its run was cancelled meanwhile)
                    continue
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
                    overdue.discard(alive)
                replaced = batch.owner is None
                if replaced:
                    stuck[0] -= 1
            if finished:
                task.done(batch)
            elif replaced:
                return
            del batch, task
    finally:
        backend.native_ids.discard(me)
        if clocks is not None:
            clocks.pop(me, None)
        alive.release()
