"""The process backend's workers started: the first ones, and more of them (``grow``).

The first workers start when the backend does (a Pool's) or when its run
attaches (a run's own): the forkserver boots while the payload is pickled
(the initializer, its arguments and a run's own function, in one pickle, so
that a function of ``__main__`` shares its globals with the initializer), then
every worker is started at once and awaited, and the dispatcher thread starts
once they are ready. A worker that the system refuses (out of processes or
file descriptors) leaves the backend to run on with those that started
(``notes`` says why); with none, ``WorkerInitError`` names the limit. Workers
that start later (``grow``, and those started in place of a lost one: see
``_process_losses``) are started by the dispatcher, and sent work once they
say they are ready.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections.abc import Callable
from typing import Any

from .._batch import Task
from .._exceptions import WorkerInitError
from ._not_loaded import module_of
from ._process_dispatcher import ProcessDispatcher
from ._process_spawn import (
    Worker,
    await_ready,
    ensure_forkserver,
    limit_hint,
    spawn_worker,
    stop_workers,
)
from ._process_state import NEVER
from ._process_worker import FnFollows

__all__ = ["START_RETRIES", "ProcessStarts", "pickled_fn"]

#: A worker that dies or hangs before it is ready (killed from outside while it
#: started, say) is replaced this many times in a row at most; after that, the
#: one that failed to start is not replaced, and the run goes on with fewer workers.
START_RETRIES = 1


def pickled_fn(fn: Callable[[Any], Any]) -> bytes:
    """``fn`` as it travels to a worker; TypeError, saying why, if it cannot."""
    import cloudpickle  # type: ignore[import-untyped]

    try:
        return bytes(cloudpickle.dumps(fn))
    except Exception as exc:
        raise TypeError(f"fn cannot be sent to a worker process: {exc}") from exc


class ProcessStarts(ProcessDispatcher):
    """How a ``ProcessBackend`` starts its workers; see the module docstring."""

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
                pickled_fn(fn)  # (raises, naming fn, when fn is what does not pickle)
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
            self._start_due = NEVER  # (all ready: the dispatcher has no start to watch)
        except BaseException:
            stop_workers(self._pool)
            self._close_own_fds()
            raise
        self.workers_started = len(self._pool)
        self._started = True
        self._start_dispatcher()

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

    def _close_own_fds(self) -> None:
        for resource in (self._selector, self._wake_r, self._wake_w):
            if resource is not None:
                with contextlib.suppress(OSError):
                    resource.close()
