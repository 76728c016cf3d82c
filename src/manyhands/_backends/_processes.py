"""The process backend: CPU-bound work on worker processes that survive crashes and hangs.

``fn`` travels to the workers once, with cloudpickle (lambdas, closures and
functions of ``__main__`` work); items and results use pickle. Each worker
has its own socket; one thread of the parent (the *dispatcher*) sends batches
to idle workers and reads what comes back, so the engine never blocks on a
pipe::

    engine thread                 dispatcher thread (one select loop)      worker processes
    submit ──▶ inbox ──(wake)──▶  send a batch to a worker with room, ──▶  recv, run fn,
    expire, shutdown              written as its socket takes it;           send the results
                                  read results as they arrive ◀─────────   (blocking)
                                  └──▶ done(batch): the engine's queue

The engine wakes the dispatcher (a byte on a socket pair) only when the inbox
was empty: a batch waiting there means every worker had work when the
dispatcher last looked, and the next answer makes it look again. A run keeps
a batch per worker waiting in the inbox (``sizing["ahead"]``), so a worker's
next batch goes out as its answer comes in, without a round trip through the
run's thread. (How the dispatcher spends as little as it can per answer: see
``_process_dispatcher``.)

The dispatcher never blocks on a socket: what a worker has not read yet waits
in a buffer (see ``_process_channel``), so a large batch on its way in never
stops the results of another from being read. ``_lock`` guards the inbox, the
pool, what each worker was sent and a batch's state; it is never held across
I/O, pickling, a kill or a callback, so ``submit``, ``expire`` and
``shutdown`` never wait behind a socket, and a report of a batch never runs
inside the lock that reporting takes.

One backend serves many runs (a Pool's): each run's function travels to a
worker with the first batch of that run it is sent, and stays loaded there
(the last ``_process_dispatcher.FUNCTIONS_KEPT`` of them); batches wait in lanes (priority, then
fairness between runs; see ``_lanes``), not in one queue.

A worker that dies (a segfault, ``os._exit``, the OOM killer's SIGKILL)
costs only the item it was running, which fails as ``"manyhands.WorkerCrashed"``
with the exit code or signal; the rest of its batch is sent again without
being charged an attempt, and a new worker takes its place. A timed-out
item's worker is killed with its process group, so its children go too; a
call counts as timed out only if the worker's own clock says it ran past the
limit, and no other item reaches a worker that is about to be killed.
Workers ignore SIGINT (the parent decides), run in a process group of their
own, and exit when the parent is gone, however it went.

A run that stops (Ctrl-C, an exception in its loop, ``break``: ``shutdown``, or
``cancel_sent`` for a Pool's run; a stop rule: ``halt``) begins no further batch:
its batches queued here are dropped, and those a worker holds in its pipe and
has not begun are marked, in the worker's shared ``stamp``, for it to answer
``"not_begun"`` without a call; they come back failed as never called
(``ran`` False: not retried, no call counted, not journaled). Its running calls
finish. (Sending ahead is what keeps a busy worker from waiting for work, so a
stop cannot simply take those batches back.)

A worker that fails to start (its initializer raises, dies, or is not done
in ``start_timeout`` seconds, 60 by default) ran no item. A replacement that
dies or hangs is tried ``_process_starts.START_RETRIES`` more times in its place (a kill from
outside may be a one-off), and so is one of the first workers killed by a
signal while the backend starts; then the backend runs on with fewer workers, never restarting one
in a loop, and with none left it stops: every item queued or to come fails
(``_break``).

``ProcessBackend`` holds what the runs call (attach, submit, expire, halt,
shutdown...); its other parts are mixins of the same object, whose shared
state ``_process_state`` declares: the dispatcher thread
(``_process_dispatcher``), the workers' start (``_process_starts``), and a
worker lost or failed to start, with the one started in its place
(``_process_losses``).
"""

from __future__ import annotations

import itertools
import multiprocessing
import selectors
import socket
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

from .._batch import RUNNING, TIMED_OUT, Batch, Task
from .._exceptions import WorkerCrashed, WorkerInitError
from .._lanes import Lanes
from .._signal_waits import wait_sliced
from ._not_loaded import module_of
from ._process_dispatcher import not_begun
from ._process_losses import ProcessLosses
from ._process_spawn import (
    Worker,
    default_start_method,
    kill,
    refuse_while_importing_main,
    stop_workers,
)
from ._process_starts import pickled_fn
from ._process_state import NEVER
from ._process_worker import BATCH, SKIP, SKIP_SLOTS, STARTED

__all__ = ["ProcessBackend", "default_start_method"]


class ProcessBackend(ProcessLosses):
    """Runs batches on ``workers`` processes; see the module docstring."""

    name = "processes"
    handles_timeouts = False  # the engine times batches out; expire() kills the worker
    concurrent_items = False
    timeout_action = "its worker process was killed and replaced"

    def __init__(
        self,
        workers: int,
        timed: bool = False,
        shared: bool = False,
        start_method: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        start_timeout: float | None = None,
    ) -> None:
        refuse_while_importing_main()
        if multiprocessing.current_process().daemon:
            # (multiprocessing would fail the first start with an AssertionError)
            raise WorkerInitError(
                "no worker process can be started from this process: it is a daemonic "
                "process (a worker process of manyhands, or of a multiprocessing.Pool), "
                "which multiprocessing forbids to have children. Make the inner calls in "
                "the call itself, or on threads (backend='threads')"
            )
        self._start_timeout = start_timeout  # (None: START_SECONDS)
        self._workers = workers
        self._shared = shared  # a Pool's: workers start with the pool, serve every run
        self._depth = 1 if timed else 2  # batches sent ahead to each worker
        assert self._depth <= SKIP_SLOTS  # (a worker can be told to skip each of them)
        # A run keeps a batch per worker waiting here beyond those sent ahead, for
        # the dispatcher to send as an answer comes in, not after a round trip to
        # the run's thread (see submit).
        self.sizing = {"ahead": self._depth + 1}
        self._context = multiprocessing.get_context(start_method or default_start_method())
        self._initializer = initializer
        self._initargs = initargs
        self._payload = b""
        self._first_key = 0  # the function in the payload (a run's own workers)
        # fn's (the payload's) and the initializer's modules: words if one cannot be loaded.
        self._modules: dict[str, str | None] = {"fn": None, "initializer": module_of(initializer)}
        self._lock = threading.Lock()  # see the module docstring
        # Batches not yet sent, with which of their items: a lane per run.
        self._inbox: Lanes[tuple[Batch, list[int]]] = Lanes(lambda work: len(work[1]))
        self._keys = itertools.count(1)  # a number per run's function (Task.key)
        self._functions: dict[int, bytes] = {}  # the runs attached: their pickled fn
        self._halted: set[int] = set()  # the runs stopped (Task.key): no batch of theirs begins
        self._started = False
        self._woken = False  # a wake-up byte is on its way to the dispatcher
        self._look = False  # (dispatcher) a worker may have room that no answer filled
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._pool: list[Worker] = []
        self._stopping = False  # shutdown began: nothing new is sent
        self._closing = False  # the dispatcher must return now
        self._idle = threading.Event()  # stopping, and no batch is out any more
        self._broken: WorkerCrashed | None = None  # the dispatcher died: every item fails
        self._more = 0  # workers to add (grow), started by the dispatcher
        # (dispatcher) the earliest time a starting worker is due to be ready (inf: none).
        self._start_due = NEVER
        self._dispatcher: threading.Thread | None = None
        self.abandoned = 0  # processes are killed, never abandoned
        self.workers_started = 0  # how many of ``workers`` could start
        self.notes: list[str] = []  # for the Report: why fewer than ``workers`` ran, if so

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """A Pool's workers start now; a run's own start when it attaches (fn is checked first)."""
        if self._shared:
            self._start_workers_once()

    def detach(self, task: Task) -> None:
        with self._lock:
            self._functions.pop(task.key, None)
            self._halted.discard(task.key)

    def inside(self) -> bool:
        """True on the dispatcher thread (a callback of a batch's run, or of a Future).

        A worker process has no handle on this backend; the dispatcher is the
        thread that reads the workers' results, so anything there that waits
        for them (a nested run, a Future's result, shutdown) would wait forever.
        """
        dispatcher = self._dispatcher
        return dispatcher is not None and threading.current_thread() is dispatcher

    def cancel(self, task: Task) -> list[Batch]:
        """Drop the batches no worker was sent, and return them."""
        return [batch for batch, _ in self._inbox.cancel(task)]

    def halt(self, task: Task) -> None:
        """The run stopped (a stop rule, Ctrl-C): none of its batches begins from now.

        Its running calls finish. Its batches queued here, and those sent ahead
        to a worker that has not begun them, come back failed as never called
        (``WorkerCrashed`` with ``ran`` False: not retried, no call counted, not
        recorded in a journal, so a resume runs them); so does any batch it
        submits from now on. The workers hold their batches in their pipes: each
        is told, in shared memory, the numbers of those it must not begin.
        """
        with self._lock:
            self._halted.add(task.key)
            queued = self._inbox.cancel(task)
            self._skip_sent(lambda batch: batch.task is task)
        for batch, indices in queued:
            self._fail(batch, indices, not_begun())

    def cancel_sent(self, task: Task) -> None:
        """(a Pool's run stopped: Ctrl-C, an exception, ``break``) Its batches that a worker
        holds and has not begun are not begun (see :meth:`halt`); ``cancel`` took the rest."""
        self.halt(task)

    def _skip_sent(self, chosen: Callable[[Batch], bool]) -> None:
        """(under the lock) Tell the workers not to begin the batches sent them that are ``chosen``.

        One that a worker began already runs on; its answer says which it was.
        """
        for worker in self._pool:
            stamp = worker.stamp
            for number, (batch, _) in enumerate(worker.sent, worker.answered + 1):
                if chosen(batch):
                    stamp[SKIP + number % SKIP_SLOTS] = number

    def attach(self, task: Task) -> None:
        """Take ``task``'s function (it must pickle), then start the workers if not yet started.

        Starting waits until each worker is ready (or its initializer failed).
        If the system refuses more processes or file descriptors, the run goes
        on with the workers that started (:attr:`notes` says why); if none did,
        WorkerInitError names the limit.
        """
        with self._lock:
            task.key = next(self._keys)
        if not self._started and not self._shared:
            # A run's own workers get fn with the initializer, in one pickle: a
            # function of __main__ (pickled by value) then shares its globals with
            # the initializer (``connection = ...`` set there is seen by fn), as with
            # multiprocessing; a replacement worker gets the same payload.
            self._start_workers_once(first=task)
            return
        code = pickled_fn(task.fn)
        with self._lock:
            self._functions[task.key] = code
        self._start_workers_once()

    def grow(self, count: int) -> None:
        """Start ``count`` more workers (a run of its own on ``auto``: calls that wait too).

        The dispatcher starts them; each is sent work once it reports ready.
        """
        with self._lock:
            if self._shared or self._stopping or not self._started or count <= 0:
                return
            self._more += count
            self._workers += count
            wake, self._woken = not self._woken, True
        if wake:
            self._wake()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids."""
        with self._lock:
            return [worker.process.pid for worker in self._pool]

    def submit(self, batch: Batch) -> None:
        indices = list(range(len(batch.items)))
        with self._lock:
            broken = self._broken
            if broken is None:
                # A wake-up only if the dispatcher may be asleep with a worker's room
                # empty: after its last look, work left waiting means every worker
                # was full, and the next answer makes it look again (one wake-up
                # fewer per batch: a context switch on a machine the workers keep busy).
                idle = self._inbox.put((batch, indices), batch.task)  # (nothing waited)
                wake = idle and not self._woken
                self._woken = self._woken or wake
        if broken is not None:
            self._fail(batch, indices, broken)
        elif wake:
            self._wake()

    def waiting_below(self, priority: int) -> bool:
        """Whether work of a lower priority than ``priority`` waits to be sent to a worker."""
        return self._inbox.waiting_below(priority)

    def wind_down(self) -> None:
        pass  # workers are few and started once; shutdown stops them

    def expire(self, batch: Batch) -> bool:
        """Time out a running batch, judged by its worker's clock; False if it is not over.

        The engine asks once ``batch.started + timeout`` has passed. If the
        worker began the batch later than that (the parent was late to see
        it: busy, or stopped with SIGSTOP), ``batch.started`` moves to the real
        start and the engine asks again then. If the worker is between batches
        (the call returned; its results are on their way), it is not a timeout.
        """
        with self._lock:
            if batch.state != RUNNING:
                return False
            holder = next((w for w in self._pool if w.sent and w.sent[0][0] is batch), None)
            if holder is None or holder.doomed:
                return False  # not sent (queued again after a crash): not running
            stamp = holder.stamp
            running, started = stamp[BATCH] == holder.answered + 1, stamp[STARTED]
            if not running or (batch.started is not None and started > batch.started):
                batch.started = started if running else monotonic()
                return False
            batch.state = TIMED_OUT
            holder.doomed = True  # the dispatcher sends it nothing more
        kill(holder)  # (outside the lock: the worker can start no other item meanwhile)
        return True

    def shutdown(self, grace: float) -> int:
        """Drop queued batches; wait up to ``grace`` for running ones; then kill every worker.

        The batches sent ahead to a worker that has not begun them are not begun
        (see :meth:`halt`): the wait is for the calls running, not for those.
        """
        with self._lock:
            self._inbox.clear()
            self._stopping = True
            if not self._started:  # (attach failed: fn did not pickle, or no worker started)
                return 0
            self._skip_sent(lambda batch: True)
        self._wake()
        try:  # a second Ctrl-C here ends the wait at once
            if self._dispatcher is not None and self._dispatcher.is_alive():
                wait_sliced(self._idle.wait, grace)
        finally:
            busy = self._close()
        return busy

    def _close(self) -> int:
        """Stop the dispatcher, kill the workers still busy, end the others."""
        try:
            self.stop_dispatcher(timeout=10)
        finally:
            with self._lock:
                busy = [w for w in self._pool if w.sent]
            for worker in busy:
                kill(worker)  # still running after the grace period
            stop_workers(self._pool)
            self._close_own_fds()
        return len(busy)
