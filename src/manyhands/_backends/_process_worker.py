"""What runs inside a worker process: receive batches, call ``fn``, send results back.

Kept small and free of the engine: it is imported by every worker process.
Errors travel as plain tuples (type name, message, traceback text, the
type's class hierarchy by name, a ``retry_after`` if it had one), so an
exception whose class cannot be pickled, or whose ``__str__`` raises, still
comes back intact.

The worker tells the parent what it is doing through shared memory, without
a message: ``progress`` holds the index (in its batch) of the item it runs,
so that a crash fails that item only; ``stamp`` holds the number of the batch
it runs (0 between batches) and when it began (``time.monotonic``, the same
clock in every process), so that a timeout is judged by when the call really
started, not by when the parent sent it. The parent writes there too: the
number of a batch sent ahead that the worker must not begin (its run
stopped), in the slot ``SKIP + number % SKIP_SLOTS``; the worker answers
``("not_begun",)`` for it, calling nothing (one read of shared memory per
batch, no message).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from time import monotonic, perf_counter, process_time
from typing import Any, ClassVar, NoReturn

from .._checks import NOT_A_VALUE, not_a_value
from .._outcome import (
    describe_exception,
    qualified_name,
    retry_after_of,
    safe_repr,
    set_traceback,
)

__all__ = [
    "BATCH",
    "HEADER",
    "SKIP",
    "SKIP_SLOTS",
    "STAMP_SIZE",
    "STARTED",
    "FnFollows",
    "RemoteError",
    "describe_remote",
    "serve",
]

#: (error_type, message, traceback, class hierarchy names, retry_after)
RemoteError = tuple[str, str, str, tuple[str, ...], "float | None"]

BATCH, STARTED = 0, 1  # the fields of ``stamp``
#: Then the batches not to begin, one slot per batch a worker may hold (the
#: parent sends at most ``SKIP_SLOTS`` ahead): ``stamp[SKIP + n % SKIP_SLOTS] == n``.
SKIP, SKIP_SLOTS = 2, 2
STAMP_SIZE = SKIP + SKIP_SLOTS

#: A batch's frame: this header, the run's pickled function if the worker does not
#: have it yet (its length in the header), then the pickled items. The header holds
#: the function's number (``Task.key``), one the worker may drop (0: none), and the
#: length of the function's pickle (0: the worker has it).
HEADER = struct.Struct("<QQI")


def describe_remote(exc: BaseException, frames: Any = True) -> RemoteError:
    """An exception as plain data that any process can unpickle, never raising.

    ``frames``: the traceback to show, when it is not ``exc.__traceback__``.
    Whatever the exception's class does (a ``__getattr__`` that raises, a
    ``retry_after`` that is no number), it is described, and the worker goes on.
    """
    error_type, message, text = describe_exception(exc, frames)
    lineage = tuple(qualified_name(cls) for cls in type(exc).__mro__)
    return error_type, message, text, lineage, retry_after_of(exc)


class _Forked:
    """Set in a child that ``fn`` forked: it must not go on as a second worker.

    The items being run are cleared in the child, so its loop ends at the
    next item; it then leaves (``os._exit``) instead of sending results on
    the worker's pipe. No per-item check: the fork handler does the work.
    """

    happened = False
    items: ClassVar[list[Any]] = []  # the batch being run


def _after_fork_in_child() -> None:
    _Forked.happened = True
    _Forked.items.clear()


def _leave(exc: BaseException | None = None) -> NoReturn:
    """End a forked child at once, as ``sys.exit`` in it would have (with its code)."""
    status = 0
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None or isinstance(code, int):
            status = code or 0
        else:  # sys.exit("message"): printed, status 1
            with contextlib.suppress(Exception):
                print(code, file=sys.stderr)
            status = 1
    elif exc is not None:  # reported as an uncaught exception would have been
        with contextlib.suppress(Exception):
            traceback.print_exception(exc)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def serve(
    conn: Connection,
    payload: bytes,
    progress: Any,
    stamp: Any,
    lifeline: Connection,
    inherited: tuple[int, ...] = (),
) -> None:
    """The worker process's main loop (the target of the Process).

    ``inherited``: with the fork start method, the parent's ends of the
    backend's pipes, which this process must not hold.
    """
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if hasattr(os, "setsid"):
        os.setsid()  # its own process group: a timeout kills its children too
    _watch_parent(lifeline)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    try:
        import cloudpickle  # type: ignore[import-untyped]

        initializer, initargs, _, first_key, first_fn = cloudpickle.loads(payload)
    except BaseException as exc:  # (no initializer ran: what could not be loaded, and why)
        if _Forked.happened:
            _leave(exc)
        _tell(conn, pickle.dumps(("load_failed", describe_remote(exc), _loading[0])))
        return
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:
        if _Forked.happened:
            _leave(exc)
        _tell(conn, pickle.dumps(("init_failed", describe_remote(exc))))
        return
    if _Forked.happened:  # the initializer forked, and this is the child
        _leave()
    if not _tell(conn, pickle.dumps(("ready",))):
        return
    # The runs' functions, by number; a run's own workers get its function with the
    # initializer (one pickle: a function of __main__ shares its globals).
    functions: dict[int, Any] = {first_key: first_fn} if first_key else {}
    number = 0
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        number += 1
        answer = _answer(message, number, functions, progress, stamp)
        if not _tell(conn, answer):
            return


def _answer(
    message: bytes, number: int, functions: dict[int, Any], progress: Any, stamp: Any
) -> bytes:
    """Run the batch ``message`` (the ``number``-th this worker got); the answer to send back."""
    progress.value = 0  # (a crash from here on is the first item's, until the next)
    key, forget, size = HEADER.unpack_from(message)
    functions.pop(forget, None)
    if size:
        functions[key] = _load(memoryview(message)[HEADER.size : HEADER.size + size])
    if stamp[SKIP + number % SKIP_SLOTS] == number:  # its run stopped: not begun
        return _NOT_BEGUN
    fn = functions.get(key)
    if isinstance(fn, _Unloadable) or fn is None:
        error = fn.error if fn is not None else KeyError(f"no function number {key}")
        return pickle.dumps(("no_fn", describe_remote(error)))
    try:
        items = pickle.loads(memoryview(message)[HEADER.size + size :])
    except Exception as exc:  # an item that cannot be rebuilt here: the batch fails
        return pickle.dumps(("unloadable", describe_remote(exc)))
    stamp[STARTED] = monotonic()
    stamp[BATCH] = number
    outcome = _run(fn, items, progress)
    stamp[BATCH] = 0
    return _pack(*outcome)


_NOT_BEGUN = pickle.dumps(("not_begun",))


def _tell(conn: Connection, message: bytes) -> bool:
    """Send ``message`` to the parent; False if it is gone (closed its end, or died).

    A worker can outlive its run's interest in it (the run ended while this
    worker started, or while it ran its last batch): it then ends quietly, as
    it does when a read finds the parent gone, not with a traceback on the
    program's stderr.
    """
    try:
        conn.send_bytes(message)
    except OSError:  # (BrokenPipeError, ConnectionResetError: the other end is closed)
        return False
    return True


class FnFollows:
    """Put between the initializer and fn in a worker's start payload (see ``serve``).

    Unpickled in the worker, it notes that what is loaded from there on is fn:
    a payload that cannot be loaded then says whether fn or the initializer
    could not (a module that fails to import there, a ``__reduce__`` that
    raises), instead of passing for an initializer that raised.
    """

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _loading_fn, ()


_loading = ["initializer"]  # what the start payload's unpickling is rebuilding now


def _loading_fn() -> None:
    _loading[0] = "fn"


class _Unloadable:
    """A function that could not be unpickled here: each of its batches fails with why."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _load(code: memoryview) -> Any:
    import cloudpickle

    try:
        return cloudpickle.loads(code)
    except BaseException as exc:
        if _Forked.happened:  # (unpickling ran code that forked)
            _leave(exc)
        return _Unloadable(exc)


def _run(
    fn: Any, items: list[Any], progress: Any
) -> tuple[list[Any], dict[int, RemoteError], float, float]:
    """Call ``fn`` on each item: (values, errors by index, wall seconds, CPU seconds)."""
    values: list[Any] = []
    errors: dict[int, RemoteError] = {}
    _Forked.items = items
    cpu = process_time()
    start = perf_counter()
    for index, item in enumerate(items):
        progress.value = index
        try:
            values.append(fn(item))
        except BaseException as exc:
            if _Forked.happened:  # e.g. sys.exit() in a child that fn forked
                _leave(exc)
            frames = sys.exc_info()[2]
            # Taken off the object: raised again (a module's constant, a failed Future's
            # result()), it would chain every call's frames, and each description
            # would format them all.
            set_traceback(exc, None)
            # (the user's frames only, not this loop's)
            errors[index] = describe_remote(exc, frames.tb_next if frames else None)
            values.append(None)
    if _Forked.happened:  # a child that fn forked returned here: it is not a worker
        _leave()
    return values, errors, perf_counter() - start, process_time() - cpu


def _pack(values: list[Any], errors: dict[int, RemoteError], elapsed: float, *cpu: float) -> bytes:
    """The "done" message (``cpu``: the batch's CPU seconds, where the sender measures it)."""
    try:
        return pickle.dumps(("done", values, errors, elapsed, *cpu), pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    # Some value cannot be pickled: that item fails, the others come back.
    for index, value in enumerate(values):
        try:
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            values[index] = None
            errors[index] = _unsendable(value, exc)
    return pickle.dumps(("done", values, errors, elapsed, *cpu), pickle.HIGHEST_PROTOCOL)


def _unsendable(value: Any, exc: Exception) -> RemoteError:
    """The error of an item whose result ``value`` could not be pickled (``exc``).

    A generator or a coroutine is fn's mistake, not the item's: its lineage
    starts with NOT_A_VALUE and its kind, and the run stops for it, as on
    threads (see ``_checks.check_first_value``).
    """
    mistake = not_a_value(value)
    if mistake is None:
        error_type, message, text, lineage, _ = describe_remote(exc)
        message = (
            f"the result {safe_repr(value, 80)} could not be sent back from the worker "
            f"process: {message}"
        )
        return error_type, message, text, lineage, None
    kind, what = mistake
    with contextlib.suppress(Exception):
        value.close()  # (a coroutine never awaited would warn on this worker's stderr)
    message = (
        f"fn returned {what} ({safe_repr(value, 80)}) instead of a value: its body runs "
        "only when something iterates or awaits it, so no work was done"
    )
    error_type, _, text, lineage, _ = describe_remote(TypeError(message))
    return error_type, message, text, (NOT_A_VALUE, kind, *lineage), None


def _watch_parent(lifeline: Connection) -> None:
    """Exit when the parent goes away (killed, even with SIGKILL): no orphan workers.

    The parent holds the other end of ``lifeline`` and never writes to it; the
    OS closes it when the parent dies, however it dies, and ``poll`` then
    returns. (Watching ``getppid()`` would not do: under the forkserver the
    parent is the forkserver, which outlives the run while any worker holds
    its fds, and a killed parent that is not yet reaped still has a pid.)
    """

    def watch() -> None:
        try:
            lifeline.poll(None)
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="manyhands-parent-watch", daemon=True).start()


if __name__ == "__main__":  # pragma: no cover - never run as a script
    sys.exit("manyhands worker processes are started by manyhands")
