"""The process backend's dispatcher thread: it sends batches to the workers and reads their answers.

One select loop over every worker's socket and process sentinel, and the
wake-up socket of the engine's threads (see ``_processes``). It starts with
the workers, and is stopped before multiprocessing ends them at the
interpreter's exit.

Per answer the dispatcher does the least it can, since a worker waits for
it (and shares a core with it): it sends that worker its next batch before it
even unpickles the answer, looks at no other worker (each was full if work
waited), reads the wake-up socket only when the select says a byte came, and
hands the batch to its run last. Looking at every worker is for what else can
make room: a wake-up, a worker ready, lost or added (``_look``).

A worker's start, end and replacement are the other parts' (``_lost``,
``_expire_starts``...: see ``_process_state``); should this thread fail, every
batch queued, sent or to come fails (``_break``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import pickle
import selectors
import threading
import weakref
from time import monotonic

from .._batch import FINISHED, RUNNING, Batch
from .._exceptions import WorkerCrashed, not_called
from .._outcome import describe_exception
from ._not_loaded import fn_not_loaded
from ._process_batches import fail_items, file_results, pickle_items
from ._process_channel import Frame
from ._process_spawn import Worker
from ._process_state import NEVER, ProcessState
from ._process_worker import HEADER, RemoteError

__all__ = ["FUNCTIONS_KEPT", "IDLE_SECONDS", "ProcessDispatcher", "not_begun"]

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

#: Functions a worker keeps loaded (a Pool's runs); the oldest is dropped first.
FUNCTIONS_KEPT = 16
#: The dispatcher's longest sleep with nothing to do (everything that changes wakes it).
IDLE_SECONDS = 1.0

#: The backends whose dispatcher runs, for the interpreter's exit (see _stop_at_exit).
_running: weakref.WeakSet[ProcessDispatcher] = weakref.WeakSet()
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


def _watch_exit(backend: ProcessDispatcher) -> None:
    with _exit_lock:
        _register_exit_handler()
        _running.add(backend)


@functools.cache
def _register_exit_handler() -> None:  # (once)
    import multiprocessing.util  # noqa: F401 (its exit handler is registered first)

    atexit.register(_stop_at_exit)  # (so this one runs before it)


class ProcessDispatcher(ProcessState):
    """The dispatcher thread of a ``ProcessBackend``; see the module docstring."""

    def _start_dispatcher(self) -> None:
        """Start the thread (the first workers are ready); stopped at exit if still running."""
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="manyhands-processes", daemon=True
        )
        self._dispatcher.start()
        _watch_exit(self)

    def stop_dispatcher(self, timeout: float) -> None:
        """Stop the dispatcher (waiting up to ``timeout``): no batch is sent, no worker started."""
        with self._lock:
            self._stopping = self._closing = True
        self._wake()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
        _running.discard(self)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            assert self._wake_w is not None
            self._wake_w.send(b"\0")

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
            if self._start_due != NEVER and monotonic() >= self._start_due:
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
            self._start_due = min(starting, default=NEVER)  # (none: no clock read per round)
            return
        self._start_error(worker, reply)

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
            fail_items(batch, indices, not_begun())
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
                batch.rerouted = {**(batch.rerouted or {}), **dict.fromkeys(indices, "fn")}
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
            self._fail(batch, indices, not_begun())
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


def not_begun() -> WorkerCrashed:
    """The error of an item whose batch no worker began: its run stopped first."""
    return not_called("the run stopped before a worker process began its batch")
