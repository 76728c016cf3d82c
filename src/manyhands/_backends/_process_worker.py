"""What runs inside a worker process: receive batches, call ``fn``, send results back.

Kept small and free of the engine: it is imported by every worker process.
Errors travel as plain tuples (type name, message, traceback text, the
type's class hierarchy by name, a ``retry_after`` if it had one), so an
exception whose class cannot be pickled, or whose ``__str__`` raises, still
comes back intact.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
from multiprocessing.connection import Connection
from time import perf_counter
from typing import Any

from .._outcome import describe_exception, qualified_name, safe_repr
from .._retry import retry_after_of

__all__ = ["RemoteError", "describe_remote", "serve"]

#: (error_type, message, traceback, class hierarchy names, retry_after)
RemoteError = tuple[str, str, str, tuple[str, ...], "float | None"]


def describe_remote(exc: BaseException) -> RemoteError:
    """An exception as plain data that any process can unpickle."""
    error_type, message, text = describe_exception(exc)
    lineage = tuple(qualified_name(cls) for cls in type(exc).__mro__)
    return error_type, message, text, lineage, retry_after_of(exc)


def serve(
    conn: Connection,
    payload: bytes,
    progress: Any,
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
    try:
        import cloudpickle  # type: ignore[import-untyped]

        fn, initializer, initargs = cloudpickle.loads(payload)
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:
        conn.send(("init_failed", describe_remote(exc)))
        return
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        batch_id, items = pickle.loads(message)
        conn.send_bytes(_run(fn, batch_id, items, progress))


def _run(fn: Any, batch_id: int, items: list[Any], progress: Any) -> bytes:
    values: list[Any] = []
    errors: dict[int, RemoteError] = {}
    start = perf_counter()
    for index, item in enumerate(items):
        progress.value = index
        try:
            values.append(fn(item))
        except BaseException as exc:
            if exc.__traceback__ is not None:  # the user's frames only, not this loop
                exc.__traceback__ = exc.__traceback__.tb_next
            errors[index] = describe_remote(exc)
            values.append(None)
    elapsed = perf_counter() - start
    try:
        return pickle.dumps(("done", batch_id, values, errors, elapsed), pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    # Some value cannot be pickled: that item fails, the others come back.
    for index, value in enumerate(values):
        try:
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            values[index] = None
            error_type, message, text, lineage, _ = describe_remote(exc)
            message = (
                f"the result {safe_repr(value, 80)} could not be sent back from the worker "
                f"process: {message}"
            )
            errors[index] = (error_type, message, text, lineage, None)
    return pickle.dumps(("done", batch_id, values, errors, elapsed), pickle.HIGHEST_PROTOCOL)


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
