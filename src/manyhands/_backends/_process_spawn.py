"""Worker processes of the process backend: starting one, what can refuse it, how one ended.

Each worker costs the parent three file descriptors for as long as it lives
(its socket, the lifeline it watches, the process's sentinel) and a few more
for a moment while it starts. When the system refuses (``ulimit -n``, out of
processes), the message says which limit and what to change.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection, wait
from time import monotonic
from typing import Any

from .._batch import Batch
from .._exceptions import WorkerInitError
from ._not_loaded import not_loaded
from ._process_channel import Channel
from ._process_worker import STAMP_SIZE, serve

__all__ = [
    "FORKSERVER_PRELOAD",
    "START_SECONDS",
    "Worker",
    "await_ready",
    "default_start_method",
    "died_starting",
    "ensure_forkserver",
    "how_it_ended",
    "hung_starting",
    "kill",
    "limit_hint",
    "refuse_while_importing_main",
    "spawn_worker",
    "stop_workers",
]

#: A worker that does not report ready this long after it was started (its initializer
#: hangs) failed to start: it is killed. The default of ``start_timeout=``.
START_SECONDS = 60.0
# Starting a process opens a few fds for a moment (pipes, a socket to the forkserver).
# Failing there is worse than failing earlier: the forkserver dies when a client that
# connected to it goes away (CPython 3.11), so a new worker first checks they are free.
SPARE_FDS = 6
UNGUARDED_MAIN = 87  # exit status of a worker whose import of the main script started a run


def default_start_method() -> str:
    """forkserver where it exists (fork is unsafe once threads run), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


class Worker:
    """One worker process, as the parent sees it."""

    __slots__ = (
        "answered",
        "channel",
        "doomed",
        "functions",
        "lifeline",
        "process",
        "progress",
        "ready",
        "retries",
        "sent",
        "stamp",
        "start_by",
    )

    def __init__(
        self,
        process: Any,
        channel: Channel,
        progress: Any,
        stamp: Any,
        lifeline: Connection,
        start_timeout: float | None = None,
    ) -> None:
        self.process = process
        self.channel = channel
        self.lifeline = lifeline  # never written: the worker exits when it closes
        self.progress = progress  # index of the item it is running, in shared memory
        self.stamp = stamp  # the batch it runs (its number) and since when: see serve()
        # What it was sent and has not answered: (batch, which of its items), oldest
        # first. Up to two, so that it never waits for the next batch (one with a
        # timeout: no item waits behind a call that may hang).
        self.sent: deque[tuple[Batch, list[int]]] = deque()
        self.answered = 0  # batches it answered: sent[0] is its batch number answered + 1
        self.ready = False  # it said "ready": its initializer ran
        seconds = START_SECONDS if start_timeout is None else start_timeout
        self.start_by = monotonic() + seconds  # not ready by then: it failed to start
        self.retries = 0  # replacements in its place that failed to start before it
        self.doomed = False  # about to be killed (a timeout): it is sent nothing more
        self.functions: dict[int, None] = {}  # the runs' functions it has loaded, oldest first


def spawn_worker(
    context: Any, payload: bytes, backend_fds: list[int], start_timeout: float | None = None
) -> Worker:
    """Start a worker process; everything opened for it is closed again if that fails.

    ``start_timeout``: seconds it has to report ready (default ``START_SECONDS``).

    ``backend_fds``: with the fork start method, the fds of the backend that a
    forked child inherits and must close. While a child holds a worker's
    socket, that worker sees no EOF, so it outlives a killed parent and is not
    done at shutdown. (Forkserver and spawn children never have them.)
    """
    opened: list[Any] = []
    try:
        parent, child = socket.socketpair()
        opened += [parent, child]
        life_r, life_w = context.Pipe(duplex=False)
        opened += [life_r, life_w]
        progress = context.Value("i", 0, lock=False)
        stamp = context.Array("d", STAMP_SIZE, lock=False)
        child_conn = Connection(child.detach())
        opened.append(child_conn)
        inherited: tuple[int, ...] = ()
        if context.get_start_method() == "fork":
            inherited = (parent.fileno(), life_w.fileno(), *backend_fds)
        _check_spare_fds(parent.fileno())
        process = context.Process(
            target=serve,
            args=(child_conn, payload, progress, stamp, life_r, inherited),
            daemon=True,
        )
        process.start()
    except BaseException:
        for resource in opened:
            with contextlib.suppress(OSError):
                resource.close()
        raise
    child_conn.close()
    life_r.close()
    return Worker(process, Channel(parent), progress, stamp, life_w, start_timeout)


def await_ready(
    workers: list[Worker],
    start_timeout: float | None = None,
    again: Callable[[Worker], Worker | None] | None = None,
    modules: Mapping[str, str | None] | None = None,
) -> None:
    """Wait for every worker's "ready"; WorkerInitError if one cannot start (or initialize).

    ``again``: called with a worker that died before it was ready; the worker
    started in its place (waited for in turn), or None: the start fails.
    ``modules``: the modules of ``"fn"`` and ``"initializer"``, for the words
    when one of them cannot be loaded in a worker (see ``_not_loaded``).
    """
    starting = list(workers)
    while starting:
        remaining = min(worker.start_by for worker in starting) - monotonic()
        if remaining <= 0:
            raise WorkerInitError(hung_starting(start_timeout))
        watched: list[Any] = [w.channel.sock for w in starting]
        watched += [w.process.sentinel for w in starting]
        wait(watched, timeout=remaining)
        for worker in list(starting):
            for frame in worker.channel.receive():
                message = pickle.loads(frame)
                if message[0] != "ready":
                    raise _start_error(message, modules or {})
                worker.ready = True
            if worker.ready:
                starting.remove(worker)
            elif worker.channel.closed or not worker.process.is_alive():
                worker.process.join(5)
                replacement = again(worker) if again is not None else None
                if replacement is None:
                    raise WorkerInitError(died_starting(worker.process.exitcode))
                starting[starting.index(worker)] = replacement


def _start_error(message: tuple[Any, ...], modules: Mapping[str, str | None]) -> WorkerInitError:
    """A worker's answer to its start that is not "ready", as the error that ends the start."""
    remote = message[1]
    if message[0] == "load_failed":  # (fn or the initializer could not be unpickled there)
        what = message[2]
        why = not_loaded(what, remote, modules.get(what))
    else:  # "init_failed"
        why = f"the worker initializer raised {remote[0]}: {remote[1]}"
    return WorkerInitError(f"{why}; no item was run", remote[2])


def stop_workers(workers: list[Worker]) -> None:
    """End every worker: idle ones exit on EOF, the others are killed; the list is emptied."""
    for worker in workers:
        with contextlib.suppress(OSError):
            worker.channel.close()  # an idle worker exits on EOF
        with contextlib.suppress(OSError):
            worker.lifeline.close()  # and any worker, once this is gone
    for worker in workers:
        worker.process.join(0.2)
        if worker.process.is_alive():
            kill(worker)
            worker.process.join(5)
    workers.clear()


def _check_spare_fds(fd: int) -> None:
    """Raise OSError (EMFILE) unless :data:`SPARE_FDS` more file descriptors can be opened."""
    probes: list[int] = []
    try:
        for _ in range(SPARE_FDS):
            probes.append(os.dup(fd))
    finally:
        for probe in probes:
            os.close(probe)


def kill(worker: Worker) -> None:
    """SIGKILL the worker and its process group (what a call started goes too)."""
    pid = worker.process.pid
    if pid is None:
        return
    with contextlib.suppress(OSError):
        if hasattr(os, "killpg"):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:  # not its own group yet (it has just started)
                os.kill(pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            worker.process.kill()


_forkserver_lock = threading.Lock()

#: What the forkserver imports once, so that each worker forked from it (a
#: replacement after a crash, too) starts in a few milliseconds instead of
#: importing them itself (~20 ms each). sharedctypes brings ctypes, which the
#: worker's progress value needs; _forkserver_main imports ``__main__``.
FORKSERVER_PRELOAD = [
    "__main__",
    "manyhands._backends._forkserver_main",
    "manyhands._backends._process_worker",
    "cloudpickle",
    "multiprocessing.sharedctypes",
]


def ensure_forkserver() -> None:
    """Start the forkserver (if it is not running) so that it imports ``__main__`` once.

    It preloads :data:`FORKSERVER_PRELOAD` whoever starts it (a process
    backend, or auto's early boot). See ``_forkserver_main``: what it needs
    travels in an environment variable that is set only while it starts.
    """
    from multiprocessing import forkserver

    from ._forkserver_main import ENV, main_spec

    with _forkserver_lock:
        forkserver.set_forkserver_preload(FORKSERVER_PRELOAD)  # (kept if it runs already)
        spec = main_spec()
        if spec is None or ENV in os.environ:
            forkserver.ensure_running()
            return
        os.environ[ENV] = spec
        try:
            forkserver.ensure_running()
        finally:
            os.environ.pop(ENV, None)


def refuse_while_importing_main() -> None:
    """Stop a run that a worker's import of the main script started (no ``__main__`` guard).

    A worker process imports the main script to find the functions it is
    sent; a script that starts a run at its top level would start one in
    every worker. multiprocessing refuses that with a RuntimeError mid-start;
    this ends the worker with :data:`UNGUARDED_MAIN` instead, which the
    parent turns into a message that says what to change. In the forkserver
    (which imports the script once for all workers) it only raises: the
    forkserver must live on.
    """
    process = multiprocessing.current_process()
    if not getattr(process, "_inheriting", False):  # (multiprocessing's own flag for this)
        return
    # Not imported here: in the forkserver that module is still being imported (it
    # imports the script), and a thread the script started would wait for it forever.
    forkserver = sys.modules.get(f"{__package__}._forkserver_main")
    if forkserver is not None and forkserver.importing_main():
        raise RuntimeError("the main script started a run while the forkserver imported it")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(UNGUARDED_MAIN)


def died_starting(code: int | None) -> str:
    """Why a worker that died before it was ready did, in words."""
    if code == UNGUARDED_MAIN:
        return (
            "a worker process could not start: your main script starts a run when it is "
            "imported. Each worker process imports the main script to find the functions "
            "it is sent (under the name __mp_main__), so whatever the script does at its "
            "top level runs again in every worker, and a run cannot start there. Put the "
            'script\'s work under `if __name__ == "__main__":` (that block runs only when '
            "the script is run, not when a worker imports it)"
        )
    return f"a worker process died while starting ({how_it_ended(code)})"


def hung_starting(start_timeout: float | None = None) -> str:
    """Why a worker that never reported ready failed, in words.

    >>> hung_starting(2.5).split(":")[0]
    'a worker process did not start in 2.5s'
    """
    seconds = START_SECONDS if start_timeout is None else start_timeout
    return (
        f"a worker process did not start in {seconds:g}s: its initializer did not "
        "return (it was killed; start_timeout= gives it longer)"
    )


def limit_hint(exc: BaseException) -> str:
    """What refused a new worker, and what to change.

    >>> limit_hint(OSError(errno.ENOMEM, "Cannot allocate memory")).split("; ")[1]
    'the system refused another process (ulimit -u, memory): lower workers'
    """
    text = f"{type(exc).__name__}: {exc}"
    number = getattr(exc, "errno", None)
    if number in (errno.EMFILE, errno.ENFILE):
        try:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
            return f"{text}; raise the open-file limit (ulimit -n) or lower workers"
        return (
            f"{text}; the open-file limit (ulimit -n) is {limit} and each worker "
            "process needs 3 to 4 of it: raise it or lower workers"
        )
    if number in (errno.EAGAIN, errno.ENOMEM):
        return f"{text}; the system refused another process (ulimit -u, memory): lower workers"
    return text


def how_it_ended(code: int | None) -> str:
    """
    >>> how_it_ended(-9), how_it_ended(3), how_it_ended(None)
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
