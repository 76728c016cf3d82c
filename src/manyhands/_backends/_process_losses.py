"""The process backend's workers lost, and those started in their place.

A worker that dies (a segfault, ``os._exit``, the OOM killer's SIGKILL)
costs only the item it was running: its batch is told which (``blame_crash``),
the rest of it and the batches sent ahead go back to the front of the queue,
not charged an attempt, and a new worker takes its place. A worker started
by the dispatcher that fails to start (its initializer raises, dies, or is not
ready in time) ran no item: one that dies or hangs may have been killed from
outside, and is replaced up to ``START_RETRIES`` times in a row; one whose
initializer raised is not tried again. Then the backend runs on with fewer
workers, and with none left the dispatcher stops (see ``_break``). (The first
workers' start is ``_process_starts``'s.)
"""

from __future__ import annotations

import contextlib
from time import monotonic
from typing import Any

from .._batch import TIMED_OUT, Batch
from .._exceptions import WorkerInitError
from ._not_loaded import not_loaded
from ._process_batches import blame_crash
from ._process_spawn import Worker, died_starting, hung_starting, kill, limit_hint
from ._process_starts import START_RETRIES, ProcessStarts
from ._process_state import NEVER

__all__ = ["ProcessLosses"]


class ProcessLosses(ProcessStarts):
    """How a ``ProcessBackend`` settles a lost worker and starts one in its place."""

    def _start_error(self, worker: Worker, reply: Any) -> None:
        """A replacement said why it could not start: run on without it.

        Its initializer raised this time (or its payload could not be loaded: a
        module removed since); it is not tried again.
        """
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
        self._start_due = NEVER
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
