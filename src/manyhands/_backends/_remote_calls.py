"""What a batch runs as on another engine's worker (a Dask task, an Executor's call).

Kept small and free of the engine: a Dask worker imports it to run a batch.
Items come as one pickle and the answer goes back as one (built by the
process worker's ``_pack``: a value that cannot be pickled fails its item
only), so the other engine moves bytes and never serializes an item of ours
with rules of its own. Errors travel as plain tuples (see ``RemoteError``).

On Dask, the task marks the items being called (a byte per item) in a
small file that the worker's nanny (which outlives it, on the same host) can
read once the worker died: ``progress_file``. Which item killed a worker is
then known, and the task's other items run again uncharged. A Dask worker's
threads share the unstarted items of its running batches (``_Shared``).
A run that stops tells its tasks to call no further item (``stop_tasks``): a
running task then answers with the items it called, once its running call
returned, and one that starts later calls none. A task that may be taken back
(a Pool's cancellable call) checks in right before its first call, and calls
none if it was (``_dask_withdraw``).

With a ``timeout``, the calls run in a thread of their own that the task
waits for up to ``timeout`` seconds a call; past that the item fails with
``manyhands.Timeout`` and the task goes on with the next item in a new
thread, leaving the call to finish in its abandoned thread (a running call
cannot be stopped).
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import pickle
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from queue import Empty, SimpleQueue
from time import perf_counter
from typing import Any, cast

from .._cpu_readings import gil_enabled
from .._exceptions import Timeout
from .._outcome import set_traceback
from ._dask_withdraw import begin
from ._process_worker import RemoteError, _pack, describe_remote

__all__ = [
    "ABANDONED_MESSAGE",
    "NotLoaded",
    "Shipped",
    "call_batch",
    "load_fn",
    "nanny_progress",
    "progress_file",
    "read_progress",
    "run_items",
    "stop_tasks",
]

ABANDONED_MESSAGE = "it was left running in an abandoned thread on its worker"


class Shipped:
    """A run's ``fn``, pickled, travelling with each of its tasks; loaded once per process."""

    __slots__ = ("key", "payload")

    def __init__(self, key: str, payload: bytes) -> None:
        self.key = key
        self.payload = payload

    def __getstate__(self) -> tuple[str, bytes]:
        return self.key, self.payload

    def __setstate__(self, state: tuple[str, bytes]) -> None:
        self.key, self.payload = state

    def load(self) -> Callable[[Any], Any]:
        """The function, the same object for every task of the run in this process."""
        with _lock:
            fn = _loaded.get(self.key)
        if fn is None:
            fn = pickle.loads(self.payload)
            with _lock:
                fn = _loaded.setdefault(self.key, fn)
                while len(_loaded) > 16:  # (the oldest runs' first)
                    del _loaded[next(iter(_loaded))]
        return fn


class NotLoaded:
    """What :func:`load_fn` gives for a function that cannot be rebuilt in this process."""

    __slots__ = ("error",)

    def __init__(self, error: RemoteError) -> None:
        self.error = error

    def __getstate__(self) -> RemoteError:
        return self.error

    def __setstate__(self, error: RemoteError) -> None:
        self.error = error


def load_fn(payload: bytes) -> Callable[[Any], Any] | NotLoaded:
    """A run's large ``fn``, rebuilt once on the cluster (or why it cannot be).

    A task's failure would reach every batch that needs it as the loading's
    bare error, as if fn's call had raised it; ``run_items`` says what it is.
    """
    try:
        return cast("Callable[[Any], Any]", pickle.loads(payload))
    except Exception as exc:
        return NotLoaded(describe_remote(exc))


def run_items(
    fn: Callable[[Any], Any] | Shipped | NotLoaded,
    payload: bytes,
    timeout: float | None = None,
    name: str | None = None,
    shared: bool = False,
    withdrawable: bool = False,
) -> bytes:
    """Unpickle the items, call ``fn`` on each, and return the answer as one pickle.

    ``name``: mark the items running in :func:`progress_file` ``(name)``.
    ``shared``: the other threads of this process may call its unstarted items,
    and this one theirs once its own are taken (see ``_Shared``).
    ``withdrawable``: the task ``name`` may be taken back until it begins
    (``_dask_withdraw.begin``): then it calls none of its items.
    """
    if isinstance(fn, NotLoaded):  # (a large fn, which load_fn could not rebuild)
        return pickle.dumps(("no_fn", fn.error))
    try:
        if isinstance(fn, Shipped):
            fn = fn.load()
    except Exception as exc:  # fn cannot be rebuilt here: the batch fails, saying so
        return pickle.dumps(("no_fn", describe_remote(exc)))
    try:
        items = pickle.loads(payload)
    except Exception as exc:  # an item cannot be rebuilt here: the batch fails
        return pickle.dumps(("unloadable", describe_remote(exc)))
    if withdrawable and name is not None and not begin(name):
        # (taken back: its items come back never called, though the driver dropped it)
        return pickle.dumps(("stopped", [], _pack([None] * len(items), {}, 0.0)))
    path, progress = _open_progress(name, len(items)) if name is not None else ("", None)
    stopped = _stopped_check(name)
    called: list[int] = []
    try:
        if shared:
            shared_ = _Shared(fn, items, timeout, progress, stopped, called)
            values, errors, elapsed = shared_.run()
        else:
            values, errors, elapsed = call_batch(fn, items, timeout, progress, stopped, called)
    finally:
        if progress is not None:
            progress.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
    packed = _pack(values, errors, elapsed)
    if len(called) < len(items):  # told to stop (stop_tasks): which were called
        return pickle.dumps(("stopped", sorted(called), packed))
    return packed


def stop_tasks(prefix: str) -> None:
    """(run on each Dask worker) Its tasks named ``prefix...`` call no further item.

    A task stopped so answers with the items it called (``("stopped", their
    indices, its answer)``); one that starts later calls none.
    """
    with _lock:
        _stopping[prefix] = None
        while len(_stopping) > 256:  # (the oldest runs' first)
            del _stopping[next(iter(_stopping))]
        _stopped_since[0] += 1


def _stopped_check(name: str | None) -> Callable[[], bool] | None:
    """Whether the task ``name`` was told to stop (None: it never can be)."""
    if name is None:
        return None

    looked, told = [-1], [False]  # (the prefixes are looked at again only once they changed)

    def stopped() -> bool:
        since = _stopped_since[0]
        if since != looked[0]:
            looked[0] = since
            told[0] = told[0] or any(name.startswith(prefix) for prefix in list(_stopping))
        return told[0]

    return stopped


def _open_progress(name: str, count: int) -> tuple[str, mmap.mmap | None]:
    """The task's progress file, a byte per item (1: running), mapped; None if it cannot be."""
    try:
        path = progress_file(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, max(1, count))
            return path, mmap.mmap(fd, max(1, count))
        finally:
            os.close(fd)
    except OSError:  # (no room, no permission): untracked, a crash cannot name its item
        return "", None


def progress_file(name: str) -> str:
    """Where a task called ``name`` marks the items it runs."""
    user = os.getuid() if hasattr(os, "getuid") else ""  # (a folder of each user's own)
    folder = os.path.join(tempfile.gettempdir(), f"manyhands-progress-{user}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return os.path.join(folder, name)


def read_progress(name: str) -> list[int] | None:
    """The items of the task ``name`` running when its worker died; None if it never began."""
    path = progress_file(name)
    try:
        with open(path, "rb") as file:
            data = file.read()
        os.unlink(path)
    except OSError:
        return None
    return [index for index, running in enumerate(data) if running]


def nanny_progress(name: str, dask_worker: Any = None) -> tuple[str, list[int] | None]:
    """(run in a Dask nanny) Its address, and :func:`read_progress` ``(name)``."""
    return str(getattr(dask_worker, "address", "")), read_progress(name)


def call_batch(
    fn: Callable[[Any], Any],
    items: list[Any],
    timeout: float | None,
    progress: mmap.mmap | None = None,
    stopped: Callable[[], bool] | None = None,
    called: list[int] | None = None,
) -> tuple[list[Any], dict[int, RemoteError], float]:
    """Call ``fn`` on each item (until ``stopped``): (values, errors by index, seconds).

    ``called``: the indices of the items called are added to it.
    """
    values: list[Any] = [None] * len(items)
    errors: dict[int, RemoteError] = {}
    timed = None if timeout is None else _Timed(fn, timeout)
    try:
        take = itertools.count().__next__
        elapsed = _call(timed or fn, items, take, values, errors, progress, stopped, called)
    finally:
        if timed is not None:
            timed.close()
    return values, errors, elapsed


def _call(
    call: Callable[[Any], Any],
    items: list[Any],
    take: Callable[[], int],
    values: list[Any],
    errors: dict[int, RemoteError],
    progress: mmap.mmap | None,
    quit: Callable[[], bool] | None = None,
    called: list[int] | None = None,
) -> float:
    """Call the items ``take`` hands out until it gives one past the end (or ``quit``).

    Each result goes at its item's index, and the index in ``called``; the
    seconds spent are returned.
    """
    count = len(items)
    start = perf_counter()
    if quit is not None and quit():
        return 0.0
    while (index := take()) < count:
        if progress is not None:
            progress[index] = 1
        try:
            values[index] = call(items[index])
        except BaseException as exc:
            frames = sys.exc_info()[2]  # this call's (see _batch.execute), taken off the object
            set_traceback(exc, None)
            # (the user's frames only, not this loop's)
            errors[index] = describe_remote(exc, frames.tb_next if frames else None)
        if progress is not None:
            progress[index] = 0
        if called is not None:
            called.append(index)
        if quit is not None and quit():
            break
    return perf_counter() - start


class _Shared:
    """A batch on a worker whose unstarted items any thread of the process may call.

    With one task per thread, a thread whose items were quick would sit idle
    while another still has a long queue; with more tasks than threads, each
    thread waits for its next task to start on the worker. Instead, a thread
    that has taken its own batch's last item takes, one at a time, the
    unstarted items of the other running batches of the same ``fn`` (those with
    the most left first), while its worker has no task waiting to start. A
    task answers once every item of its batch was called, by whichever thread.
    A crash names every item that was running (a byte per item in the
    progress file, set by whoever calls it).
    """

    __slots__ = (
        "_next",
        "called",
        "elapsed",
        "errors",
        "fn",
        "helpers",
        "items",
        "progress",
        "stopped",
        "taken",
        "timeout",
        "values",
    )

    def __init__(
        self,
        fn: Callable[[Any], Any],
        items: list[Any],
        timeout: float | None,
        progress: mmap.mmap | None,
        stopped: Callable[[], bool] | None = None,
        called: list[int] | None = None,
    ) -> None:
        self.fn = fn
        self.stopped = stopped  # told to stop (stop_tasks): nobody calls its items then
        self.called = called  # the indices of the items called, by whichever thread
        self.items = items
        self.timeout = timeout
        self.progress = progress
        self.values: list[Any] = [None] * len(items)
        self.errors: dict[int, RemoteError] = {}
        # The next unstarted item: count's __next__ is atomic under the GIL; a
        # free-threaded build takes a lock for it.
        self._next = itertools.count().__next__ if gil_enabled() else _locked(itertools.count())
        self.taken = 0  # at most how many were taken (never fewer): see left()
        self.helpers = 0  # threads of other tasks calling its items now (under _lock)
        self.elapsed = 0.0  # their seconds on its items

    def run(self) -> tuple[list[Any], dict[int, RemoteError], float]:
        """(the batch's own task) Call its items, help the others, answer once all were called."""
        with _lock:
            _running.append(self)
        try:
            try:
                elapsed = self.call(None)
            finally:
                with _lock:
                    _running.remove(self)
            _help(self.fn)
        finally:  # (even if this thread failed: its progress file closes after this)
            with _lock:
                while self.helpers:
                    _helped.wait()
        return self.values, self.errors, elapsed + self.elapsed

    def call(self, quit: Callable[[], bool] | None) -> float:
        """Call this batch's unstarted items (until none is left, or ``quit``); seconds."""
        stopped = self.stopped
        if stopped is not None:
            quit = stopped if quit is None else _either(quit, stopped)
        timed = None if self.timeout is None else _Timed(self.fn, self.timeout)
        try:
            return _call(
                timed or self.fn,
                self.items,
                self.take,
                self.values,
                self.errors,
                self.progress,
                quit,
                self.called,
            )
        finally:
            if timed is not None:
                timed.close()

    def take(self) -> int:
        """The index of an unstarted item, each once; past the end once all were taken."""
        index = self._next()
        self.taken = index + 1  # (racing threads may set it lower: never past the truth)
        return index

    def left(self) -> int:
        """How many items nobody took yet, or more (never fewer)."""
        return len(self.items) - self.taken


def _either(first: Callable[[], bool], second: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: first() or second()


def _locked(counter: Iterator[int]) -> Callable[[], int]:
    """``next(counter)`` under a lock of its own."""
    lock = threading.Lock()

    def take() -> int:
        with lock:
            return next(counter)

    return take


def _help(fn: Callable[[Any], Any]) -> None:
    """Call other running batches' unstarted items of ``fn`` while no task waits to start."""
    waiting = _tasks_waiting()
    while not waiting():
        with _lock:
            open_ = [
                (shared.left(), shared)
                for shared in _running
                if shared.fn is fn and not (shared.stopped is not None and shared.stopped())
            ]
            most, victim = max(open_, default=(0, None), key=lambda pair: pair[0])
            if victim is None or most <= 0:
                return
            victim.helpers += 1
        spent = 0.0
        try:
            spent = victim.call(waiting)
        finally:
            with _lock:
                victim.elapsed += spent
                victim.helpers -= 1
                _helped.notify_all()


def _tasks_waiting() -> Callable[[], bool]:
    """Whether a task waits for a thread of this Dask worker (never, outside one)."""
    try:
        from distributed import get_worker

        state = get_worker().state
    except Exception:  # (not on a Dask worker)
        return lambda: False
    return lambda: bool(state.ready) or bool(state.constrained)


_lock = threading.Lock()  # guards _running and each _Shared's helpers and elapsed
_helped = threading.Condition(_lock)  # a helper left a batch
_running: list[_Shared] = []  # this process's shared batches with items maybe unstarted
_loaded: dict[str, Callable[[Any], Any]] = {}  # Shipped functions, by key (guarded by _lock)
_stopping: dict[str, None] = {}  # prefixes of the tasks told to stop (stop_tasks), oldest first
_stopped_since = [0]  # how many times stop_tasks changed _stopping (see _stopped_check)


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
