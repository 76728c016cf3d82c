"""Any ``concurrent.futures.Executor`` as a backend: one ``executor.submit`` per batch.

For loky, an MPI pool, ``client.get_executor()``, a ThreadPoolExecutor of
your own... The executor stays yours: a run neither starts nor shuts it down.
What it guarantees is what an Executor allows:

- each batch is one call of ``run_items`` (items and answer as pickles, so
  an executor of other processes works as well as one of threads); an
  exception in ``fn`` fails its item only, with its traceback;
- a batch's future that fails by itself (``BrokenProcessPool``, the
  executor shut down) fails every item of the batch with that error: an
  Executor does not say which item was running;
- ``timeout=`` is applied in the call (see ``_remote_calls``);
- stopping cancels the futures not begun (``Future.cancel``); those running
  get the grace period, then are left to finish, their results dropped.
"""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import Executor, Future
from time import monotonic, sleep

from .._batch import Batch, Task
from ._process_batches import fail_items, file_results, pickle_batch
from ._remote_calls import ABANDONED_MESSAGE, run_items

__all__ = ["ExecutorBackend"]


class ExecutorBackend:
    """Runs batches through ``executor.submit``; see the module docstring."""

    handles_timeouts = True  # applied in the call: see _remote_calls
    timeout_action = ABANDONED_MESSAGE
    concurrent_items = False

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self.name = f"executor ({type(executor).__name__})"
        self._lock = threading.Lock()  # guards _out
        self._out: dict[Future[bytes], tuple[Batch, list[int]]] = {}
        self.abandoned = 0
        self.notes: list[str] = []

    def start(self) -> None:
        pass  # the executor is the caller's, already running

    def attach(self, task: Task) -> None:
        pass

    def detach(self, task: Task) -> None:
        pass

    def inside(self) -> bool:
        return False

    def wind_down(self) -> None:
        pass

    def submit(self, batch: Batch) -> None:
        pickled = pickle_batch(batch)
        if pickled is None:  # no item could be pickled: each failed with why
            return
        payload, indices = pickled
        try:
            future = self._executor.submit(run_items, batch.task.fn, payload, batch.task.timeout)
        except Exception as exc:  # shut down, or broken: the batch fails with why
            fail_items(batch, indices, exc)
            batch.task.done(batch)
            return
        with self._lock:
            self._out[future] = (batch, indices)
        future.add_done_callback(self._finished)

    def _finished(self, future: Future[bytes]) -> None:
        with self._lock:
            entry = self._out.pop(future, None)
        if entry is None:  # dropped: cancelled or given up
            return
        batch, indices = entry
        try:
            kind, *rest = pickle.loads(future.result())
            if kind == "unloadable":
                fail_items(batch, indices, rest[0])
            else:
                file_results(batch, indices, *rest)
        except BaseException as exc:  # the future itself failed: the whole batch does
            fail_items(batch, indices, exc)
        batch.task.done(batch)

    def cancel(self, task: Task) -> list[Batch]:
        """Cancel the futures of ``task`` not begun; their batches are dropped."""
        with self._lock:
            mine = [future for future, (batch, _) in self._out.items() if batch.task is task]
        dropped: list[Batch] = []
        for future in mine:
            if future.cancel():
                with self._lock:
                    entry = self._out.pop(future, None)
                if entry is not None:
                    dropped.append(entry[0])
        return dropped

    def expire(self, batch: Batch) -> bool:
        """Give up a batch: its result, when it comes, is dropped."""
        with self._lock:
            mine = [future for future, (b, _) in self._out.items() if b is batch]
            for future in mine:
                del self._out[future]
        for future in mine:
            if not future.cancel():
                self.abandoned += 1
                batch.task.abandoned += 1
        return bool(mine)

    def shutdown(self, grace: float) -> int:
        """Cancel what was not begun; wait up to ``grace`` for the rest. The executor stays."""
        with self._lock:
            futures = list(self._out)
        running = [future for future in futures if not future.cancel()]
        deadline = monotonic() + grace  # (polled: a Dask executor's futures are not stdlib's)
        while any(not future.done() for future in running) and monotonic() < deadline:
            sleep(0.01)
        with self._lock:
            self._out.clear()
        return sum(not future.done() for future in running)
