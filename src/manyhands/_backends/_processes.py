"""The process backend: CPU-bound work on worker processes that survive crashes and hangs.

``fn`` travels to the workers once, with cloudpickle (lambdas, closures and
functions of ``__main__`` work); items and results use pickle. Each worker
has its own pipe; one thread of the parent (the *dispatcher*) sends batches
to idle workers and reads what comes back, so the engine never blocks on a
pipe.

A worker that dies (a segfault, ``os._exit``, the OOM killer's SIGKILL)
costs only the item it was running, which fails as ``"manyhands.WorkerCrashed"``
with the exit code or signal; the rest of its batch is sent again without
being charged an attempt, and a new worker takes its place. A timed-out
item's worker is killed with its process group, so its children go too.
Workers ignore SIGINT (the parent decides), run in a process group of their
own, and exit when the parent is gone, however it went.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from time import monotonic
from typing import Any

from .._batch import FINISHED, RUNNING, TIMED_OUT, Batch, Task
from .._exceptions import WorkerCrashed, WorkerInitError
from .._outcome import Failure, describe_exception, safe_repr
from ._process_worker import RemoteError, serve

__all__ = ["ProcessBackend", "default_start_method"]

START_SECONDS = 60.0  # a worker that does not report ready by then failed to start


def default_start_method() -> str:
    """forkserver where it exists (fork is unsafe once threads run), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


class _Worker:
    __slots__ = ("conn", "lifeline", "process", "progress", "ready", "sent")

    def __init__(self, process: Any, conn: Connection, progress: Any, lifeline: Connection) -> None:
        self.process = process
        self.conn = conn
        self.lifeline = lifeline  # never written: the worker exits when it closes
        self.progress = progress  # index of the item it is running, in shared memory
        # What it was sent and has not answered: (batch, which of its items), oldest
        # first. Up to two, so that it never waits for the next batch (not with a
        # timeout: a deadline counts from the send).
        self.sent: deque[tuple[Batch, list[int]]] = deque()
        self.ready = False


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
        start_method: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._workers = workers
        self._depth = 1 if timed else 2  # batches sent ahead to each worker
        self._context = multiprocessing.get_context(start_method or default_start_method())
        if self._context.get_start_method() == "forkserver":
            # Import what every worker needs once, in the forkserver: each new worker
            # (a replacement after a crash, too) then starts in a few milliseconds.
            # (sharedctypes brings ctypes, which the worker's progress value needs:
            # 4 ms per worker otherwise; _forkserver_main imports __main__.)
            self._context.set_forkserver_preload(
                [
                    "__main__",
                    "manyhands._backends._forkserver_main",
                    "manyhands._backends._process_worker",
                    "cloudpickle",
                    "multiprocessing.sharedctypes",
                ]
            )
        self._initializer = initializer
        self._initargs = initargs
        self._payload = b""
        self._lock = threading.Lock()  # the inbox, and a batch's state
        self._inbox: deque[tuple[Batch, list[int]]] = deque()
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._pool: list[_Worker] = []
        self._stopping = False
        self._broken: WorkerCrashed | None = None  # the dispatcher died: every item fails
        self._dispatcher: threading.Thread | None = None
        self.abandoned = 0  # processes are killed, never abandoned
        self.notes: list[str] = []  # for the Report

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        pass  # workers start when the run attaches: they are sent its function

    def detach(self, task: Task) -> None:
        pass

    def inside(self) -> bool:
        return False  # (a worker process has no handle on this backend)

    def cancel(self, task: Task) -> list[Batch]:
        """Drop the batches no worker was sent, and return them."""
        with self._lock:
            dropped = [batch for batch, _ in self._inbox]
            self._inbox.clear()
        return dropped

    def attach(self, task: Task) -> None:
        """Start every worker and wait until each is ready (or its initializer failed)."""
        if self._context.get_start_method() == "forkserver":
            _ensure_forkserver()  # it boots while fn is pickled here
        import cloudpickle  # type: ignore[import-untyped]

        fn = task.fn
        try:
            self._payload = cloudpickle.dumps((fn, self._initializer, self._initargs))
        except Exception as exc:
            raise TypeError(
                f"fn (or initializer) cannot be sent to a worker process: {exc}"
            ) from exc
        for _ in range(self._workers):
            self._pool.append(self._spawn())
        deadline = monotonic() + START_SECONDS
        try:
            for worker in self._pool:
                self._await_ready(worker, deadline)
        except BaseException:
            self._kill_all()
            raise
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="manyhands-processes", daemon=True
        )
        self._dispatcher.start()

    def _spawn(self) -> _Worker:
        parent, child = self._context.Pipe()
        life_r, life_w = self._context.Pipe(duplex=False)
        progress = self._context.Value("i", 0, lock=False)
        # A forked child inherits every fd of the parent, this backend's own ends of
        # its pipes included: while it holds a worker's pipe end, that worker sees no
        # EOF, so it outlives a killed parent and is not done at shutdown. The child
        # closes them (forkserver and spawn children never have them).
        inherited: list[int] = []
        if self._context.get_start_method() == "fork":
            inherited = [parent.fileno(), life_w.fileno(), self._wake_r.fileno()]
            inherited += [self._wake_w.fileno()]
            for worker in self._pool:
                inherited += [worker.conn.fileno(), worker.lifeline.fileno()]
        process = self._context.Process(  # type: ignore[attr-defined]
            target=serve,
            args=(child, self._payload, progress, life_r, tuple(inherited)),
            daemon=True,
        )
        process.start()
        child.close()
        life_r.close()
        return _Worker(process, parent, progress, life_w)

    def _await_ready(self, worker: _Worker, deadline: float) -> None:
        if not worker.conn.poll(max(deadline - monotonic(), 0.0)):
            raise WorkerInitError(f"a worker process did not start in {START_SECONDS:.0f}s")
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            code = worker.process.exitcode
            raise WorkerInitError(
                f"a worker process died while starting ({_how_it_ended(code)})"
            ) from None
        if message[0] == "init_failed":
            error_type, text, trace = message[1][0], message[1][1], message[1][2]
            raise WorkerInitError(
                f"the worker initializer raised {error_type}: {text}; no item was run",
                trace,
            )
        worker.ready = True

    def submit(self, batch: Batch) -> None:
        indices = list(range(len(batch.items)))
        with self._lock:
            broken = self._broken
            if broken is None:
                self._inbox.append((batch, indices))
        if broken is not None:
            self._fail(batch, indices, broken)
            return
        self._wake_w.send_bytes(b"")

    def wind_down(self) -> None:
        pass  # workers are few and started once; shutdown stops them

    def expire(self, batch: Batch) -> bool:
        """Time out a running batch: kill its worker (and process group); a new one follows."""
        with self._lock:
            if batch.state != RUNNING:
                return False
            batch.state = TIMED_OUT
            holder = next((w for w in self._pool if w.sent and w.sent[0][0] is batch), None)
        if holder is not None:
            _kill(holder)
        return True

    def shutdown(self, grace: float) -> int:
        """Drop queued batches; wait up to ``grace`` for running ones; then kill every worker."""
        with self._lock:
            self._inbox.clear()
            self._stopping = True
        deadline = monotonic() + grace
        try:  # a second Ctrl-C here ends the wait at once
            while monotonic() < deadline and any(w.sent for w in self._pool):
                wait([w.process.sentinel for w in self._pool], timeout=0.01)
        finally:
            busy = [w for w in self._pool if w.sent]
            for worker in busy:
                _kill(worker)  # still running after the grace period
            self._wake_w.send_bytes(b"")
            if self._dispatcher is not None:
                self._dispatcher.join(10)
            self._kill_all()
        return len(busy)

    def _kill_all(self) -> None:
        for worker in self._pool:
            with contextlib.suppress(OSError):
                worker.conn.close()  # an idle worker exits on EOF
            with contextlib.suppress(OSError):
                worker.lifeline.close()  # and any worker, once this is gone
        for worker in self._pool:
            worker.process.join(0.2)
            if worker.process.is_alive():
                _kill(worker)
                worker.process.join(5)
        self._pool.clear()

    # -- the dispatcher thread -------------------------------------------

    def _dispatch_loop(self) -> None:
        try:
            self._dispatch_forever()
        except BaseException as exc:  # no worker can be started, or a bug: never a hang
            self._break(exc)

    def _break(self, error: BaseException) -> None:
        """Fail what is queued or running, and every batch submitted from now on."""
        crashed = WorkerCrashed(f"the process backend stopped: {type(error).__name__}: {error}")
        crashed.__cause__ = error
        with self._lock:
            self._broken = crashed
            held = list(self._inbox)
            self._inbox.clear()
            for worker in self._pool:
                held += worker.sent
                worker.sent.clear()
        for batch, indices in held:
            self._fail(batch, indices, crashed)

    def _fail(self, batch: Batch, indices: list[int], error: BaseException) -> None:
        if len(batch.values) != len(batch.items):
            batch.values = [None] * len(batch.items)
        batch.errors = batch.errors or {}
        for index in indices:
            batch.errors[index] = error
        self._report(batch)

    def _dispatch_forever(self) -> None:
        while True:
            with self._lock:
                if self._stopping and not any(w.sent for w in self._pool):
                    return
            self._send_waiting()
            watched: list[Any] = [self._wake_r]
            for worker in self._pool:
                watched += [worker.conn, worker.process.sentinel]
            for ready in wait(watched, timeout=1.0):
                if ready is self._wake_r:
                    with contextlib.suppress(EOFError, OSError):
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                    continue
                owner = next((w for w in self._pool if ready in (w.conn, w.process.sentinel)), None)
                if owner is not None:
                    self._serve(owner, ready)

    def _serve(self, worker: _Worker, ready: Any) -> None:
        if ready is worker.conn:
            try:
                message = worker.conn.recv_bytes()
            except (EOFError, OSError):
                message = None
            if message is not None:
                try:
                    reply = pickle.loads(message)
                except Exception as exc:  # results this process cannot rebuild
                    self._undecodable(worker, exc)
                    return
                if reply[0] == "done":
                    self._finish(worker, reply)
                elif reply[0] == "ready":  # a replacement started
                    worker.ready = True
                else:  # its initializer failed this time: run on without it
                    self._pool.remove(worker)
                    _kill(worker)
                    if not self._pool:
                        error_type, text = reply[1][0], reply[1][1]
                        raise WorkerInitError(
                            f"no worker process is left: the initializer of every "
                            f"replacement raised {error_type}: {text}"
                        )
                return
        worker.process.join(1.0)
        self._lost(worker)

    def _send_waiting(self) -> None:
        with self._lock:
            if self._stopping:
                return
            for worker in self._pool:
                while worker.ready and len(worker.sent) < self._depth and self._inbox:
                    batch, indices = self._inbox.popleft()
                    self._send(worker, batch, indices)

    def _send(self, worker: _Worker, batch: Batch, indices: list[int]) -> None:
        whole = len(indices) == len(batch.items)  # (the common case: no per-item copy)
        items = batch.items if whole else [batch.items[i] for i in indices]
        try:
            data = pickle.dumps((id(batch), items), pickle.HIGHEST_PROTOCOL)
        except Exception:
            items, indices = self._drop_unpicklable(batch, indices)
            data = pickle.dumps((id(batch), items), pickle.HIGHEST_PROTOCOL)
        if len(batch.values) != len(batch.items):
            batch.values = [None] * len(batch.items)
        if not indices:  # every item failed to pickle: done without a trip
            self._report(batch)
            return
        if not worker.sent:
            batch.started = monotonic()
        worker.sent.append((batch, indices))
        with contextlib.suppress(OSError, ValueError):  # it died meanwhile: seen as lost
            worker.conn.send_bytes(data)

    def _drop_unpicklable(self, batch: Batch, indices: list[int]) -> tuple[list[Any], list[int]]:
        kept: list[int] = []
        for index in indices:
            item = batch.items[index]
            try:
                pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                batch.errors = batch.errors or {}
                batch.errors[index] = Failure(
                    item,
                    f"{type(exc).__module__}.{type(exc).__qualname__}",
                    f"item {safe_repr(item, 80)} could not be sent to a worker process: {exc}",
                    attempts=batch.attempt,
                )
            else:
                kept.append(index)
        return [batch.items[i] for i in kept], kept

    def _finish(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        _, _, values, errors, elapsed = message
        batch, indices = worker.sent.popleft()
        if worker.sent:
            worker.sent[0][0].started = monotonic()  # the next one starts now
        if len(indices) == len(batch.items):
            batch.values = values  # the whole batch, in order
        else:
            for position, index in enumerate(indices):
                batch.values[index] = values[position]
        for position, remote in errors.items():
            index = indices[position]
            batch.errors = batch.errors or {}
            batch.errors[index] = _failure(batch.items[index], remote, batch.attempt)
        batch.elapsed += elapsed
        self._report(batch)

    def _undecodable(self, worker: _Worker, exc: Exception) -> None:
        """A batch's results came back but cannot be unpickled here: its items fail.

        The worker ran them, so they are not sent again. The results travel as one
        pickle, so which value broke it is unknown: every item of the batch fails.
        """
        batch, indices = worker.sent.popleft()
        if worker.sent:
            worker.sent[0][0].started = monotonic()
        error_type, message, trace = describe_exception(exc)
        message = (
            f"the results of this item's batch ({len(indices)} items) ran but could not be "
            f"unpickled in the parent process: {message}"
        )
        batch.errors = batch.errors or {}
        for index in indices:
            batch.errors[index] = Failure(
                batch.items[index], error_type, message, trace, batch.attempt
            )
        self._report(batch)

    def _lost(self, worker: _Worker) -> None:
        """A worker died: fail the item it ran, send the rest again, replace it."""
        code = worker.process.exitcode
        self._pool.remove(worker)
        with contextlib.suppress(OSError):
            worker.conn.close()
        with contextlib.suppress(OSError):
            worker.lifeline.close()
        with self._lock:
            stopping = self._stopping
        if worker.sent:
            self._settle_lost(worker, code, stopping)
        if stopping:
            return
        try:  # a new worker; it is sent work once it reports ready
            self._pool.append(self._spawn())
        except Exception as exc:  # e.g. out of processes or memory: run on with fewer
            if not self._pool:
                raise WorkerInitError(f"no worker process could be started: {exc}") from exc

    def _settle_lost(self, worker: _Worker, code: int | None, stopping: bool) -> None:
        """The lost worker's batches: its item fails, the rest go back to the front."""
        batch, indices = worker.sent.popleft()
        again = list(worker.sent)  # sent ahead, never started: all of them again
        with self._lock:
            timed_out = batch.state == TIMED_OUT
        if not timed_out:  # (else the engine killed it, and has settled the batch)
            position = min(max(worker.progress.value, 0), len(indices) - 1)
            crashed = indices.pop(position)
            batch.errors = batch.errors or {}
            batch.errors[crashed] = WorkerCrashed(
                f"the worker process running this item died ({_how_it_ended(code)})"
            )
            again.insert(0, (batch, indices))  # the rest: not charged an attempt
        for lost, rest in reversed(again):  # back at the front, in their order
            if rest and not stopping:
                with self._lock:
                    self._inbox.appendleft((lost, rest))
            else:
                self._report(lost)

    def _report(self, batch: Batch) -> None:
        with self._lock:
            if batch.state != RUNNING:
                return  # timed out: the engine has already settled it
            batch.state = FINISHED
        batch.task.done(batch)


_forkserver_lock = threading.Lock()


def _ensure_forkserver() -> None:
    """Start the forkserver (if it is not running) so that it imports ``__main__`` once.

    See ``_forkserver_main``: what it needs travels in an environment variable
    that is set only while the forkserver starts.
    """
    from multiprocessing import forkserver

    from ._forkserver_main import ENV, main_spec

    with _forkserver_lock:
        spec = main_spec()
        if spec is None or ENV in os.environ:
            forkserver.ensure_running()
            return
        os.environ[ENV] = spec
        try:
            forkserver.ensure_running()
        finally:
            os.environ.pop(ENV, None)


def _failure(item: Any, remote: RemoteError, attempt: int) -> Failure:
    error_type, message, trace, lineage, retry_after = remote
    failure = Failure(item, error_type, message, trace, attempt)
    failure.lineage = lineage
    failure.retry_after = retry_after
    return failure


def _kill(worker: _Worker) -> None:
    pid = worker.process.pid
    if pid is None:
        return
    with contextlib.suppress(OSError):
        if hasattr(os, "killpg"):
            os.killpg(pid, signal.SIGKILL)  # its process group: children go too
        else:  # pragma: no cover - Windows
            worker.process.kill()


def _how_it_ended(code: int | None) -> str:
    """
    >>> _how_it_ended(-9), _how_it_ended(3), _how_it_ended(None)
    ('killed by signal SIGKILL', 'exit code 3', 'exit code unknown')
    """
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
