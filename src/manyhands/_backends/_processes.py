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
run's thread.

Per answer the dispatcher does the least it can, since a worker waits for
it (and shares a core with it): it sends that worker its next batch before it
even unpickles the answer, looks at no other worker (each was full if work
waited), reads the wake-up socket only when the select says a byte came, and
hands the batch to its run last. Looking at every worker is for what else can
make room: a wake-up, a worker ready, lost or added (``_look``).

The dispatcher never blocks on a socket: what a worker has not read yet waits
in a buffer (see ``_process_channel``), so a large batch on its way in never
stops the results of another from being read. ``_lock`` guards the inbox, the
pool, what each worker was sent and a batch's state; it is never held across
I/O, pickling, a kill or a callback, so ``submit``, ``expire`` and
``shutdown`` never wait behind a socket, and a report of a batch never runs
inside the lock that reporting takes.

One backend serves many runs (a Pool's): each run's function travels to a
worker with the first batch of that run it is sent, and stays loaded there
(the last ``FUNCTIONS_KEPT`` of them); batches wait in lanes (priority, then
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
dies or hangs is tried ``START_RETRIES`` more times in its place (a kill from
outside may be a one-off), and so is one of the first workers killed by a
signal while the backend starts; then the backend runs on with fewer workers, never restarting one
in a loop, and with none left it stops: every item queued or to come fails
(``_break``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import multiprocessing
import pickle
import selectors
import socket
import threading
import weakref
from collections.abc import Callable
from time import monotonic
from typing import Any

from .._batch import FINISHED, RUNNING, TIMED_OUT, Batch, Task
from .._exceptions import WorkerCrashed, WorkerInitError, not_called
from .._lanes import Lanes
from .._outcome import describe_exception
from .._signal_waits import wait_sliced
from ._not_loaded import fn_not_loaded, module_of, not_loaded
from ._process_batches import blame_crash, fail_items, file_results, pickle_items
from ._process_channel import Frame
from ._process_spawn import (
    Worker,
    await_ready,
    default_start_method,
    died_starting,
    ensure_forkserver,
    hung_starting,
    kill,
    limit_hint,
    refuse_while_importing_main,
    spawn_worker,
    stop_workers,
)
from ._process_worker import BATCH, HEADER, SKIP, SKIP_SLOTS, STARTED, FnFollows, RemoteError

__all__ = ["ProcessBackend", "default_start_method"]

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_NEVER = float("inf")

#: Functions a worker keeps loaded (a Pool's runs); the oldest is dropped first.
FUNCTIONS_KEPT = 16
#: The dispatcher's longest sleep with nothing to do (everything that changes wakes it).
IDLE_SECONDS = 1.0
#: A worker that dies or hangs before it is ready (killed from outside while it
#: started, say) is replaced this many times in a row at most; after that, the
#: one that failed to start is not replaced, and the run goes on with fewer workers.
START_RETRIES = 1


#: The backends whose dispatcher runs, for the interpreter's exit (see _stop_at_exit).
_running: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()
_exit_lock = threading.Lock()


def _stop_at_exit() -> None:
    """At the interpreter's exit, stop the dispatchers before multiprocessing ends the workers.

    Registered after multiprocessing's own exit handler, so it runs first. That
    handler terminates the (daemonic) workers of a pool never shut down; a
    dispatcher still running took each for a crash and started a replacement
    as the interpreter went, and the forkserver's half-started child printed
    an EOFError traceback.
    """
    for backend in list(_running):
        backend.stop_dispatcher(timeout=1.0)


def _watch_exit(backend: ProcessBackend) -> None:
    with _exit_lock:
        _register_exit_handler()
        _running.add(backend)


@functools.cache
def _register_exit_handler() -> None:  # (once)
    import multiprocessing.util  # noqa: F401 (its exit handler is registered first)

    atexit.register(_stop_at_exit)  # (so this one runs before it)


def _pickled_fn(fn: Callable[[Any], Any]) -> bytes:
    import cloudpickle  # type: ignore[import-untyped]

    try:
        return bytes(cloudpickle.dumps(fn))
    except Exception as exc:
        raise TypeError(f"fn cannot be sent to a worker process: {exc}") from exc


class ProcessBackend:
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
        self._start_due = _NEVER
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
            self._fail(batch, indices, _not_begun())

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
        code = _pickled_fn(task.fn)
        with self._lock:
            self._functions[task.key] = code
        self._start_workers_once()

    def _start_workers_once(self, first: Task | None = None) -> None:
        if self._started:
            return
        if self._context.get_start_method() == "forkserver":
            try:
                ensure_forkserver()  # (it boots while the payload is pickled)
            except (OSError, EOFError) as exc:
                raise WorkerInitError(
                    f"no worker process could be started: {limit_hint(exc)}"
                ) from exc
        import cloudpickle

        key, fn = (first.key, first.fn) if first is not None else (0, None)
        try:
            payload = (self._initializer, self._initargs, FnFollows(), key, fn)
            self._payload = cloudpickle.dumps(payload)
        except Exception as exc:
            if fn is not None:
                _pickled_fn(fn)  # (raises, naming fn, when fn is what does not pickle)
            raise TypeError(f"initializer cannot be sent to a worker process: {exc}") from exc
        self._first_key = key
        self._modules["fn"] = module_of(fn)
        try:
            try:
                self._selector = selectors.DefaultSelector()
                self._wake_r, self._wake_w = socket.socketpair()
            except OSError as exc:
                raise WorkerInitError(
                    f"no worker process could be started: {limit_hint(exc)}"
                ) from exc
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._start_workers()
            await_ready(self._pool, self._start_timeout, self._start_again, self._modules)
            self._start_due = _NEVER  # (all ready: the dispatcher has no start to watch)
        except BaseException:
            stop_workers(self._pool)
            self._close_own_fds()
            raise
        self.workers_started = len(self._pool)
        self._started = True
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="manyhands-processes", daemon=True
        )
        self._dispatcher.start()
        _watch_exit(self)

    def _start_again(self, worker: Worker) -> Worker | None:
        """One of the first workers died before it was ready: the one started in its place.

        Only for a death by a signal (a kill from outside, the OOM killer: it
        may be a one-off), ``START_RETRIES`` times in a row at most; an exit of
        its own (its initializer's) is not tried again: None.
        """
        code = worker.process.exitcode
        if code is None or code >= 0 or worker.retries >= START_RETRIES:
            return None
        self._pool.remove(worker)
        stop_workers([worker])
        try:
            replacement = self._spawn()
        except (OSError, EOFError):  # out of processes or fds: the start fails as it died
            return None
        replacement.retries = worker.retries + 1
        self._pool.append(replacement)
        return replacement

    def _start_workers(self) -> None:
        for _ in range(self._workers):
            try:
                worker = self._spawn()
            except (OSError, EOFError) as exc:  # out of file descriptors or processes
                if not self._pool:
                    raise WorkerInitError(
                        f"no worker process could be started: {limit_hint(exc)}"
                    ) from exc
                self.notes.append(
                    f"ran with {len(self._pool)} of {self._workers} worker processes: "
                    f"no more could be started ({limit_hint(exc)})"
                )
                return
            self._pool.append(worker)

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

    def _add_workers(self, count: int) -> None:
        for _ in range(count):
            try:
                worker = self._spawn()
            except Exception as exc:  # out of processes or fds: run on with those there are
                self.notes.append(f"could not start more worker processes: {limit_hint(exc)}")
                return
            with self._lock:
                self._pool.append(worker)
            self._watch(worker)

    def _spawn(self) -> Worker:
        worker = spawn_worker(self._context, self._payload, self._own_fds(), self._start_timeout)
        if self._first_key:  # (it came with the initializer)
            worker.functions[self._first_key] = None
        self._start_due = min(self._start_due, worker.start_by)
        return worker

    def _own_fds(self) -> list[int]:
        """The fds a worker forked from this process must close (see ``spawn_worker``)."""
        if self._context.get_start_method() != "fork":
            return []
        assert self._wake_r is not None and self._wake_w is not None
        assert self._selector is not None
        fds = [self._wake_r.fileno(), self._wake_w.fileno()]
        fds.append(self._selector.fileno())  # type: ignore[attr-defined]
        for worker in self._pool:
            fds += [worker.channel.fileno(), worker.lifeline.fileno()]
        return fds

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

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            assert self._wake_w is not None
            self._wake_w.send(b"\0")

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

    def stop_dispatcher(self, timeout: float) -> None:
        """Stop the dispatcher (waiting up to ``timeout``): no batch is sent, no worker started."""
        with self._lock:
            self._stopping = self._closing = True
        self._wake()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
        _running.discard(self)

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

    def _close_own_fds(self) -> None:
        for resource in (self._selector, self._wake_r, self._wake_w):
            if resource is not None:
                with contextlib.suppress(OSError):
                    resource.close()

    # -- the dispatcher thread -------------------------------------------

    def _dispatch_loop(self) -> None:
        try:
            self._dispatch_forever()
        except BaseException as exc:  # no worker can be started, or a bug: never a hang
            self._break(exc)

    def _break(self, error: BaseException) -> None:
        """Fail what is queued or running, and every batch submitted from now on.

        What never reached a worker fails with ``ran`` False: the run does not
        retry it, nor count a call for it.
        """
        why = f"the process backend stopped: {type(error).__name__}: {error}"
        crashed, unsent = WorkerCrashed(why), WorkerCrashed(why)
        crashed.__cause__ = unsent.__cause__ = error
        unsent.ran = False
        with self._lock:
            self._broken = unsent
            queued = self._inbox.clear()
            held: list[tuple[Batch, list[int]]] = []
            for worker in self._pool:
                held += worker.sent
                worker.sent.clear()
        for batch, indices in queued:
            self._fail(batch, indices, unsent)
        for batch, indices in held:  # (they may have run, in part)
            self._fail(batch, indices, crashed)
        self._idle.set()

    def _dispatch_forever(self) -> None:
        selector = self._selector
        wake_r = self._wake_r
        assert selector is not None and wake_r is not None
        selector.register(wake_r, _READ)
        for worker in self._pool:
            self._watch(worker)
        select = selector.select
        woken = True  # (the first round reads the wake-up socket and looks at everything)
        stopping = False
        while True:
            if woken:
                # The wake-ups are read before the state they announce: read after it, a
                # wake-up sent in between (shutdown's) was read and lost, and the run's
                # end waited out the select's timeout (1 s, at the end of ~1 run in 10).
                # Read only when the select said a byte came: a read that finds none is
                # a system call per answer for nothing.
                with contextlib.suppress(OSError):
                    while wake_r.recv(4096):
                        pass
                with self._lock:
                    self._woken = False
                    if self._closing:
                        return
                    stopping = self._stopping
                    more, self._more = self._more, 0
                if more and not stopping:
                    self._add_workers(more)
                self._look = True
            if stopping:
                if not any(w.sent for w in self._pool):
                    self._idle.set()
            elif self._look:
                # Something other than an answer came (a wake-up, a worker ready, lost
                # or added): look at every worker. An answer fed its worker already.
                self._look = False
                self._feed()
            woken = False
            if self._start_due != _NEVER and monotonic() >= self._start_due:
                self._expire_starts()
            ready = select(timeout=IDLE_SECONDS)
            if not ready:  # (idle a while: look anyway, whatever may have been missed)
                self._look = True
            for key, events in ready:
                data = key.data
                if data is None:  # the wake-up socket
                    woken = True
                    continue
                kind, worker = data
                if worker not in self._pool:  # retired by an earlier event of this round
                    continue
                if kind == "socket":
                    self._serve(worker, events)
                else:  # its sentinel: the process ended
                    self._look = True
                    self._lost(worker)

    def _watch(self, worker: Worker) -> None:
        assert self._selector is not None
        self._selector.register(worker.channel.sock, _READ, ("socket", worker))
        self._selector.register(worker.process.sentinel, _READ, ("sentinel", worker))

    def _serve(self, worker: Worker, events: int) -> None:
        channel = worker.channel
        if events & _WRITE and channel.flush():
            self._listen(worker, _READ)
        if events & _READ:
            for frame in channel.receive():
                self._handle(worker, frame, refill=True)
            if channel.closed:  # the process is ending: its sentinel says when
                self._listen(worker, 0)

    def _listen(self, worker: Worker, events: int) -> None:
        assert self._selector is not None
        sock = worker.channel.sock
        with contextlib.suppress(KeyError, ValueError):
            if events:
                self._selector.modify(sock, events, ("socket", worker))
            else:
                self._selector.unregister(sock)

    def _handle(self, worker: Worker, frame: Frame, refill: bool = False) -> None:
        """One message from ``worker``; ``refill``: it is alive, and may be sent its next batch
        before the results go to their run (the worker waits for no thread of this process)."""
        if worker.ready:  # an answer to its oldest batch (all a ready worker sends)
            self._answer(worker, frame, refill)
            return
        reply = pickle.loads(frame)
        if reply[0] == "ready":  # a worker started
            worker.ready = True
            self._look = True
            starting = (w.start_by for w in self._pool if not w.ready)
            self._start_due = min(starting, default=_NEVER)  # (none: no clock read per round)
            return
        # Its initializer raised this time (or its payload could not be loaded: a
        # module removed since), a replacement: run on without it.
        error_type, text = reply[1][0], reply[1][1]
        why = f"the initializer of a replacement raised {error_type}: {text}"
        if reply[0] == "load_failed":
            where = "a replacement worker process"
            why = not_loaded(reply[2], reply[1], self._modules[reply[2]], where)
        self._start_failed(worker, why, False)

    def _start_failed(self, worker: Worker, why: str, again: bool) -> None:
        """``worker`` failed to start (``why``): kill it; replace it if ``again`` allows.

        A worker that died or hung while starting may have been killed from
        outside: it is replaced, up to ``START_RETRIES`` times in a row, never
        in an endless loop. An initializer that raised is not tried again.
        With no worker left, every item queued or to come fails (see ``_break``).
        """
        self._retire(worker)
        kill(worker)
        with self._lock:
            stopping = self._stopping
            left = len(self._pool)
        if stopping:
            return
        if again and worker.retries < START_RETRIES:
            self._replace(worker.retries + 1)
            return
        if not left:
            raise WorkerInitError(f"no worker process is left: {why}")
        note = f"ran on with fewer worker processes: {why}"
        if note not in self.notes:
            self.notes.append(note)

    def _expire_starts(self) -> None:
        """Kill the workers that were due to be ready by now (their initializer hangs)."""
        now = monotonic()
        self._start_due = _NEVER
        for worker in list(self._pool):
            if worker.ready:
                continue
            for frame in worker.channel.receive():  # ("ready" may have just come)
                self._handle(worker, frame)
            if worker.ready or worker not in self._pool:
                continue
            if worker.start_by <= now:
                self._start_failed(worker, hung_starting(self._start_timeout), True)
            else:
                self._start_due = min(self._start_due, worker.start_by)

    def _answer(self, worker: Worker, frame: Frame, refill: bool) -> None:
        """The worker answered its oldest batch: send it its next one, then read the answer.

        The next batch goes first, before even the answer is unpickled: the worker
        waits for it, and once this thread hands the batch to its run, the run's
        thread wants the GIL.
        """
        with self._lock:
            batch, indices = worker.sent.popleft()
            worker.answered += 1
            if worker.sent:
                worker.sent[0][0].started = monotonic()  # the next one starts now
            report = batch.state == RUNNING
            if report:
                batch.state = FINISHED  # from here, expire() leaves it alone
        if refill and not worker.channel.closed:
            # Only this worker's room changed: any other worker was full if work
            # waited (the rule that _feed keeps; see submit).
            self._fill(worker, self._depth)
        else:
            self._look = True
        try:
            reply = pickle.loads(frame)
        except Exception as exc:  # results this process cannot rebuild
            # The worker ran them, so they are not sent again. The results travel as
            # one pickle, so which value broke it is unknown: every item fails.
            error_type, message, trace = describe_exception(exc)
            message = (
                f"the results of this item's batch ran but could not be unpickled in the "
                f"parent process: {message}"
            )
            reply = ("failed", (error_type, message, trace, (), None))
        if not report:  # timed out: the engine has already settled it
            return
        kind = reply[0]
        if kind == "not_begun":  # its run stopped before the worker began it (halt)
            fail_items(batch, indices, _not_begun())
        elif kind == "done":
            _, values, errors, elapsed, cpu = reply
            file_results(batch, indices, values, errors, elapsed)
            batch.cpu += cpu
            batch.nbytes = max(batch.nbytes, len(frame))
        else:
            remote: RemoteError = reply[1]
            if kind == "unloadable":  # the worker could not unpickle the batch
                error_type, message, trace, lineage, _ = remote
                message = (
                    f"this item's batch could not be unpickled in the worker process (an "
                    f"item of it cannot be rebuilt there); none of it ran: {message}"
                )
                remote = (error_type, message, trace, lineage, None)
            elif kind == "no_fn":  # the worker could not load the run's function
                remote = fn_not_loaded(remote, batch.task.fn, "a worker process")
            fail_items(batch, indices, remote)
        self._deliver(batch)

    def _feed(self) -> None:
        """Send queued batches to the workers with room: idle ones first."""
        for depth in range(1, self._depth + 1):
            for worker in list(self._pool):
                if not self._fill(worker, depth):
                    return

    def _fill(self, worker: Worker, depth: int) -> bool:
        """Send ``worker`` queued batches until it holds ``depth``; False once none is left.

        (A loop: a batch that never reaches it, e.g. none of its items pickled,
        leaves its room for the next; nothing would wake this thread for it
        while other work waits: see submit.)
        """
        while worker.ready and not worker.doomed and len(worker.sent) < depth:
            with self._lock:
                work = None if self._stopping else self._inbox.take()
            if work is None:
                return False
            self._send(worker, *work)
        return True

    def _send(self, worker: Worker, batch: Batch, indices: list[int]) -> None:
        data, indices = pickle_items(batch, indices)
        if data is None:  # no item could be pickled: done without a trip
            self._report(batch)
            return
        key = batch.task.key
        with self._lock:
            if self._stopping:
                return  # dropped, as shutdown drops what is queued
            halted = key in self._halted  # its run stopped since it was queued (see halt)
            if not halted:
                if worker.doomed:  # expire() chose it since _feed looked: another takes it
                    self._inbox.put((batch, indices), batch.task, front=True)
                    self._look = True
                    return
                code, forget = b"", 0
                if key not in worker.functions:  # its function goes with its first batch
                    function = self._function_for(worker, key)
                    if function is None:  # its run has ended (detached): nobody waits for it
                        return
                    code, forget = function
                if not worker.sent:
                    batch.started = monotonic()
                worker.sent.append((batch, indices))
        if halted:
            self._fail(batch, indices, _not_begun())
            return
        batch.nbytes = len(data)
        data = b"".join((HEADER.pack(key, forget, len(code)), code, data))
        if not worker.channel.send(data):  # the rest when the socket can take it
            self._listen(worker, _READ | _WRITE)

    def _function_for(self, worker: Worker, key: int) -> tuple[bytes, int] | None:
        """(under the lock) Run ``key``'s pickled function, for ``worker`` to load, and the
        function it may drop (0: none); None if the run has ended (detached)."""
        code = self._functions.get(key, b"")
        if not code:
            return None
        worker.functions[key] = None
        forget = 0
        if len(worker.functions) > FUNCTIONS_KEPT:
            forget = next(iter(worker.functions))
            del worker.functions[forget]
        return code, forget

    def _retire(self, worker: Worker) -> list[tuple[Batch, list[int]]]:
        """Take a worker out of the pool, close its ends; return what it was sent."""
        with self._lock:
            if worker in self._pool:
                self._pool.remove(worker)
            held = list(worker.sent)
            worker.sent.clear()
        assert self._selector is not None
        for fileobj in (worker.channel.sock, worker.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fileobj)
        with contextlib.suppress(OSError):
            worker.channel.close()
        with contextlib.suppress(OSError):
            worker.lifeline.close()
        return held

    def _lost(self, worker: Worker) -> None:
        """A worker died: fail the item it ran, send the rest again, replace it."""
        for frame in worker.channel.receive():  # what it sent before it died counts
            self._handle(worker, frame)
        if worker not in self._pool:  # its initializer raised: retired, not replaced
            return
        worker.process.join(1.0)  # (it has exited: only its status is read)
        code = worker.process.exitcode
        if not worker.ready:  # it died while starting (in its initializer): no item ran
            self._start_failed(worker, died_starting(code), True)
            return
        held = self._retire(worker)
        with self._lock:
            stopping = self._stopping
        if held:
            self._settle_lost(worker, held, code, stopping)
        if not stopping:
            self._replace()

    def _replace(self, retries: int = 0) -> None:
        """Start a worker in place of one that was lost (or run on without, if none can start).

        ``retries``: how many in a row failed to start in that place before it.
        """
        try:  # a new worker; it is sent work once it reports ready
            replacement = self._spawn()
            replacement.retries = retries
        except Exception as exc:  # e.g. out of processes or fds: run on with fewer
            with self._lock:
                left = len(self._pool)
            if not left:
                raise WorkerInitError(
                    f"no worker process could be started: {limit_hint(exc)}"
                ) from exc
            self.notes.append(
                f"ran on with {left} of {self._workers} worker processes: a worker that "
                f"died could not be replaced ({limit_hint(exc)})"
            )
            return
        with self._lock:
            self._pool.append(replacement)
        self._watch(replacement)

    def _settle_lost(
        self, worker: Worker, held: list[tuple[Batch, list[int]]], code: int | None, stopping: bool
    ) -> None:
        """The lost worker's batches: its item fails, the rest go back to the front.

        Once the run is stopping, a batch with items that never ran is dropped,
        not reported: their values would read as results (and be journaled).
        """
        batch, indices = held[0]
        again = held[1:]  # sent ahead, never started: all of them again
        with self._lock:
            timed_out = batch.state == TIMED_OUT
        if not timed_out:  # (else the engine killed it, and has settled the batch)
            rest = blame_crash(batch, indices, worker.progress.value, code)
            again.insert(0, (batch, rest))  # the rest: not charged an attempt
        for lost, rest in reversed(again):  # back at the front, in their order
            if not rest:
                self._report(lost)
            elif not stopping:
                with self._lock:
                    lost.started = None  # not running: no deadline until it is sent
                    self._inbox.put((lost, rest), lost.task, front=True)

    def _fail(self, batch: Batch, indices: list[int], error: BaseException) -> None:
        fail_items(batch, indices, error)
        self._report(batch)

    def _report(self, batch: Batch) -> None:
        """Hand a batch to the engine, unless it timed out meanwhile."""
        with self._lock:
            if batch.state != RUNNING:
                return  # timed out: the engine has already settled it
            batch.state = FINISHED
        self._deliver(batch)

    def _deliver(self, batch: Batch) -> None:
        if len(batch.values) != len(batch.items):
            batch.values = [None] * len(batch.items)
        batch.task.done(batch)  # (never under the lock: see the module docstring)


def _not_begun() -> WorkerCrashed:
    """The error of an item whose batch no worker began: its run stopped first."""
    return not_called("the run stopped before a worker process began its batch")
