"""The thread backend: worker threads fed from one queue, for one run or a pool's many."""

from __future__ import annotations

import _thread
import functools
import threading
import time
from collections.abc import Callable
from queue import Empty, SimpleQueue
from time import monotonic
from typing import Any

from .._batch import FINISHED, RUNNING, TIMED_OUT, Batch, Task
from .._exceptions import Timeout, WorkerInitError
from .._lanes import Lanes
from .._signal_waits import wait_sliced
from ._thread_jam import ABANDONED, held_message, unstarted_note, unstarted_why
from ._thread_worker import SERVING, STOP, TAKE, Exit, nothing, serving, work

#: Each thread's CPU clock can be read without giving up the GIL (backend="auto").
_CPU_CLOCKS = hasattr(time, "pthread_getcpuclockid")

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

    A private backend (one run: ``manyhands.run``) queues batches first come,
    first served; a shared one (a :class:`~manyhands.Pool`) queues them in
    :class:`~manyhands._lanes.Lanes`, and a worker that comes free takes the
    batch the lanes choose (priority, then fairness).

    For a timed task (its run has a ``timeout``, or the pool is shared),
    :meth:`expire` frees the worker of a running batch: the worker is
    abandoned to its call and a new one takes its place, so capacity is kept,
    while fewer than ``abandon_limit`` abandoned threads are still in their
    calls (the number of threads stays bounded). Past that the worker is kept
    by its call ("held"), and is abandoned and replaced as soon as an
    abandoned thread's call returns. Once every worker is held, no batch can
    start: the queued ones, and those submitted while it lasts, fail at once
    with a :class:`~manyhands.Timeout` whose ``ran`` is False (a run never
    hangs on calls that never return).
    """

    name = "threads"
    handles_timeouts = False  # the engine times batches out through expire()
    #: What became of the call :meth:`expire` gave up last (the Timeout's message ends so).
    timeout_action = ABANDONED
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
        # Workers held by a call past its timeout (the abandon limit was reached), with
        # that call's batch: its item has failed already, so shutdown does not wait.
        self._overdue: dict[_thread.LockType, Batch] = {}
        self._queue: SimpleQueue[Any] = SimpleQueue()  # batches, TAKE or Exit tokens
        self._alive: list[_thread.LockType] = []  # one held lock per worker started
        self._exit: Exit | None = None  # the valid exit token, once wind_down queued some
        self._retiring = 0  # workers told to exit (by a valid token) so far
        self._exited = 0  # workers that took a valid token and exited
        self._waiting: list[None] = []  # one entry per worker waiting for work (atomic ops)
        self._bounded: set[Task] = set()  # the runs with a timeout (they never wait on a jam)
        self._unstarted = 0  # items failed uncalled as every worker was held (and their note)
        self._unstarted_retries = 0  # retries failed so: their items were called before
        self._unstarted_note = 0
        self.notes: list[str] = []  # for the Report: e.g. fewer workers than asked
        self.native_ids: set[int] = set()  # the worker threads' (for backend="auto")
        self.cpu_clocks: dict[int, int] | None = {} if _CPU_CLOCKS else None  # theirs, by id

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        pass  # workers start as batches arrive

    def attach(self, task: Task) -> None:
        if task.bounded:
            self._bounded.add(task)

    def detach(self, task: Task) -> None:
        self._bounded.discard(task)

    def submit(self, batch: Batch) -> None:
        if self._exit is not None:  # a batch after the wind-down: it needs a worker now
            self._unwind()
        if self._overdue and batch.task.bounded and self._jammed(batch.task.priority):
            self._fail_unstarted([batch])
            return
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

    def _unwind(self) -> None:
        """The exit tokens queued so far become stale: every worker not gone stays."""
        with self._guard:
            self._exit = None
            self._retiring = self._exited

    def _leaves(self, token: Exit) -> bool:
        """A worker took ``token``: True if it exits (else the token was stale)."""
        if token is STOP:
            return True
        with self._guard:
            if token is not self._exit:
                return False
            self._exited += 1
            return True

    def inside(self) -> bool:
        """True when called from one of this backend's worker threads (or in its context).

        A thread that one of its calls started with the call's context
        (``asyncio.to_thread``, ``contextvars.copy_context().run``) counts: a run
        started there and waited for by the call is nested as one started in it.
        """
        return getattr(serving, "backend", None) is self or SERVING.get() is self

    def waiting_below(self, priority: int) -> bool:
        """(A pool's) whether work of a lower priority than ``priority`` waits for a worker."""
        return self._lanes is not None and self._lanes.waiting_below(priority)

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
        take: Callable[[], Batch | None] = nothing
        if self._lanes is not None:
            take = functools.partial(self._lanes.take, 0) if spare else self._lanes.take
        get = self._spare_queue.get if spare else self._queue.get
        waiting: list[None] = [] if spare else self._waiting
        args = (self, get, take, alive, hooks, self._guard, self._stuck, self._overdue, waiting)
        try:
            self._start_thread(work, args)
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
            held = owner is not None and self._stuck[0] >= self.abandon_limit
            if held:
                self._overdue[owner] = batch  # it goes on once the call returns
            elif owner is not None:
                self._abandon(owner, batch)
        if owner is None:
            self.timeout_action = ABANDONED
            return True
        if held:
            self.timeout_action = held_message(self.abandon_limit)
            if self._jammed(0):
                self._fail_unstarted(self._take_queued())
            return True
        self.timeout_action = ABANDONED
        self._replace(owner)
        return True

    def _abandon(self, owner: _thread.LockType, batch: Batch) -> None:
        """Leave ``owner`` to the call of ``batch`` (under the guard): it exits after it."""
        batch.owner = None  # tells the worker it was replaced
        self._stuck[0] += 1
        self.abandoned += 1
        batch.task.abandoned += 1

    def _replace(self, owner: _thread.LockType) -> None:
        """A new worker takes the place of ``owner``, abandoned (shutdown does not wait for it)."""
        spare = owner in self._spare_alive
        self._add_worker(spare)  # (first: the count of workers never dips, for submit)
        (self._spare_alive if spare else self._alive).remove(owner)

    def _relieve(self) -> None:
        """An abandoned thread's call returned: abandon and replace held workers, to the cap.

        Called from that thread.
        """
        while True:
            with self._guard:
                if not self._overdue or self._stuck[0] >= self.abandon_limit:
                    return
                owner, batch = self._overdue.popitem()
                self._abandon(owner, batch)
            try:
                self._replace(owner)
            except WorkerInitError:  # (no thread could be started: the others go on)
                return

    def _jammed(self, priority: int) -> bool:
        """True when no batch of ``priority`` can start: every worker is held past a timeout.

        (No more thread may be abandoned, and no worker may be added.)
        """
        spares = self._spare_alive
        with self._guard:  # (the held workers' calls return in their own threads)
            if self._stuck[0] < self.abandon_limit:
                return False
            held = sum(owner not in spares for owner in self._overdue)
            held_spares = len(self._overdue) - held
        live = len(self._alive) - self._exited
        if live < self._workers or held < live:
            return False
        if priority > 0 and self._spare:  # the spare workers may take it
            return len(spares) >= self._spare and held_spares >= len(spares)
        return True

    def _take_queued(self) -> list[Batch]:
        """The queued batches no worker can start (every worker is held)."""
        if self._lanes is None:
            return self._drain()  # (one run, and it has a timeout: it timed this call out)
        taken: list[Batch] = []
        for task in list(self._bounded):  # (a run without one waits for a worker)
            if self._jammed(task.priority):  # (else a spare worker may take its batches)
                taken += self._lanes.cancel(task)
        return taken

    def _fail_unstarted(self, batches: list[Batch]) -> None:
        """Fail ``batches`` at once: no worker can start them (they made no call)."""
        if not batches:
            return
        why = unstarted_why(len(self._overdue) + self._stuck[0], self.abandon_limit)
        if self._lanes is None:  # (a pool's notes would reach every run's Report)
            self._note_unstarted(batches)
        for batch in batches:
            error = Timeout(why)
            error.ran = False
            batch.values = [None] * len(batch.items)
            batch.errors = dict.fromkeys(range(len(batch.items)), error)
            batch.elapsed = 0.0
            batch.state = FINISHED  # (not to be expired: it never ran)
            batch.task.done(batch)

    def _note_unstarted(self, batches: list[Batch]) -> None:
        """Say in the Report how many items and retries never started, and why (one note,
        kept up to date).

        A retry's item was called before: it fails with its last failure (it counts in
        the Report's ``failed``), while an item never called counts in ``not_run``.
        """
        if not (self._unstarted or self._unstarted_retries):
            self.notes.append("")
            self._unstarted_note = len(self.notes) - 1
        for batch in batches:
            if batch.last_failure is None:
                self._unstarted += len(batch.items)
            else:
                self._unstarted_retries += len(batch.items)
        self.notes[self._unstarted_note] = unstarted_note(self._unstarted, self._unstarted_retries)

    def cancel(self, task: Task) -> list[Batch]:
        """Drop the batches of ``task`` no worker has taken, and return them."""
        if self._lanes is not None:
            return self._lanes.cancel(task)
        return self._drain()  # one run: everything queued is its

    def _drain(self) -> list[Batch]:
        """Empty the private queue: its batches (exit tokens are counted out)."""
        batches: list[Batch] = []
        try:
            while True:
                work = self._queue.get_nowait()
                if work.__class__ is not Exit:
                    batches.append(work)
                elif work is self._exit or work is STOP:
                    self._retiring -= 1
        except Empty:
            pass
        return batches

    def wind_down(self) -> None:
        # Exit sentinels queue behind the remaining batches: each worker exits
        # as soon as it runs out of work, instead of all of them being woken
        # at the end (~50 us each, serialized on the GIL).
        if self._lanes is None:
            if self._exit is None:
                self._exit = Exit()
            self._retire(len(self._alive) - self._retiring, self._exit)

    def _retire(self, count: int, token: Exit) -> None:
        for _ in range(count):
            self._queue.put(token)
        self._retiring += count

    def shutdown(self, grace: float) -> int:
        """Drop what is queued; wait up to ``grace`` for running calls; workers exit.

        Returns how many workers were still busy after the grace period (they
        are abandoned: each exits once its call returns). A KeyboardInterrupt
        during the wait ends it at once. Called again, it waits again (for the
        calls that were told to end since: ``Run.end_calls``).
        """
        if self._lanes is not None:
            self._lanes.clear()
        self._drain()  # batches nobody has started are dropped, not run
        self._retire(len(self._alive) - self._retiring, STOP)
        for _ in self._spare_alive:
            self._spare_queue.put(STOP)
        with self._guard:  # held workers' items failed: nothing to wait for; left to their calls
            held = list(self._overdue.items())
            self._overdue.clear()
            for owner, batch in held:
                self._abandon(owner, batch)
        for owner, _batch in held:
            (self._spare_alive if owner in self._spare_alive else self._alive).remove(owner)
        deadline = monotonic() + grace
        busy = len(held)
        for alive in [*self._alive, *self._spare_alive]:
            # (acquire(True, seconds): a wait of up to seconds)
            if wait_sliced(functools.partial(alive.acquire, True), deadline - monotonic()):
                alive.release()
            else:
                busy += 1
        return busy
