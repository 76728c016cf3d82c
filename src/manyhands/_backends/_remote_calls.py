"""What a batch runs as on another engine's worker (a Dask task, an Executor's call).

Kept small and free of the engine: a Dask worker imports it to run a batch.
Items come as one pickle and the answer goes back as one (built by the
process worker's ``_pack``: a value that cannot be pickled fails its item
only), so the other engine moves bytes and never serializes an item of ours
with rules of its own. Errors travel as plain tuples (see ``RemoteError``).

On Dask, the task keeps the index of the item it is calling in a small
file that the worker's nanny (which outlives it, on the same host) can read
once the worker died: ``progress_file``. Which item killed a worker is then
known, and the task's other items run again uncharged.

With a ``timeout``, the calls run in a thread of their own that the task
waits for up to ``timeout`` seconds a call; past that the item fails with
``manyhands.Timeout`` and the task goes on with the next item in a new
thread, leaving the call to finish in its abandoned thread (a running call
cannot be stopped).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import struct
import tempfile
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from time import perf_counter
from typing import Any

from .._exceptions import Timeout
from ._process_worker import RemoteError, _pack, describe_remote

__all__ = ["ABANDONED_MESSAGE", "call_batch", "progress_file", "read_progress", "run_items"]

ABANDONED_MESSAGE = "it was left running in an abandoned thread on its worker"


def run_items(
    fn: Callable[[Any], Any],
    payload: bytes,
    timeout: float | None = None,
    name: str | None = None,
) -> bytes:
    """Unpickle the items, call ``fn`` on each, and return the answer as one pickle.

    ``name``: keep the progress in :func:`progress_file` ``(name)`` meanwhile.
    """
    if name is None:
        return _run(fn, payload, timeout, None)
    try:
        path = progress_file(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, 8)
            progress = mmap.mmap(fd, 8)
        finally:
            os.close(fd)
    except OSError:  # (no room, no permission): untracked, a crash cannot name its item
        return _run(fn, payload, timeout, None)
    try:
        return _run(fn, payload, timeout, progress)
    finally:
        progress.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def progress_file(name: str) -> str:
    """Where a task called ``name`` keeps the index of the item it runs."""
    user = os.getuid() if hasattr(os, "getuid") else ""  # (a folder of each user's own)
    folder = os.path.join(tempfile.gettempdir(), f"manyhands-progress-{user}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return os.path.join(folder, name)


def read_progress(name: str) -> int | None:
    """The item the task ``name`` was running when its worker died; None if it never began."""
    path = progress_file(name)
    try:
        with open(path, "rb") as file:
            data = file.read(8)
        os.unlink(path)
    except OSError:
        return None
    return int(struct.unpack("q", data)[0]) if len(data) == 8 else 0


def _run(
    fn: Callable[[Any], Any], payload: bytes, timeout: float | None, progress: mmap.mmap | None
) -> bytes:
    try:
        items = pickle.loads(payload)
    except Exception as exc:  # an item that cannot be rebuilt here: the batch fails
        return pickle.dumps(("unloadable", describe_remote(exc)))
    values, errors, elapsed = call_batch(fn, items, timeout, progress)
    return _pack(values, errors, elapsed)


def call_batch(
    fn: Callable[[Any], Any],
    items: list[Any],
    timeout: float | None,
    progress: mmap.mmap | None = None,
) -> tuple[list[Any], dict[int, RemoteError], float]:
    """Call ``fn`` on each item: (values, errors by index, seconds)."""
    values: list[Any] = []
    errors: dict[int, RemoteError] = {}
    timed = None if timeout is None else _Timed(fn, timeout)
    call = fn if timed is None else timed
    mark = struct.Struct("q").pack_into
    start = perf_counter()
    try:
        for index, item in enumerate(items):
            if progress is not None:
                mark(progress, 0, index)
            try:
                values.append(call(item))
            except BaseException as exc:
                if exc.__traceback__ is not None:  # the user's frames only, not this loop
                    exc.__traceback__ = exc.__traceback__.tb_next
                errors[index] = describe_remote(exc)
                values.append(None)
    finally:
        if timed is not None:
            timed.close()
    return values, errors, perf_counter() - start


class _Timed:
    """Calls ``fn`` in a thread of its own, waiting for each call up to ``timeout``.

    The thread serves the batch's calls one after another; a call that overruns
    is left to it, and the next call gets a new thread. (A thread per call cost
    ~150 us a call on a busy worker; handing calls to one thread, ~30 us.)
    """

    def __init__(self, fn: Callable[[Any], Any], timeout: float) -> None:
        self._fn = fn
        self._timeout = timeout
        self._calls: SimpleQueue[Any] = SimpleQueue()  # to the thread; _STOP: end
        self._answers: SimpleQueue[tuple[bool, Any]] = SimpleQueue()
        self._thread: threading.Thread | None = None

    def __call__(self, item: Any) -> Any:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve,
                args=(self._fn, self._calls, self._answers),
                name="manyhands-timed-call",
                daemon=True,
            )
            self._thread.start()
        self._calls.put(item)
        try:
            succeeded, outcome = self._answers.get(timeout=self._timeout)
        except Empty:
            self.close()  # (it ends once its call returns)
            self._calls, self._answers = SimpleQueue(), SimpleQueue()
            raise Timeout(
                f"the call ran past timeout={self._timeout:g}s; {ABANDONED_MESSAGE}"
            ) from None
        if succeeded:
            return outcome
        raise outcome

    def close(self) -> None:
        """The thread ends (once its call, if one is running, returns)."""
        if self._thread is not None:
            self._calls.put(_STOP)
            self._thread = None

    @staticmethod
    def _serve(
        fn: Callable[[Any], Any], calls: SimpleQueue[Any], answers: SimpleQueue[tuple[bool, Any]]
    ) -> None:
        while (item := calls.get()) is not _STOP:
            try:
                answers.put((True, fn(item)))
            except BaseException as exc:
                answers.put((False, exc))
            del item


_STOP = object()
