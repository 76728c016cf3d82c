"""The Dask backend's cluster: connecting to one, starting a LocalCluster, checking its policy.

Imported only by the Dask backend, which imports distributed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import tempfile
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._exceptions import WorkerInitError

__all__ = [
    "close_local_cluster",
    "connect",
    "dask_setup",
    "retries_note",
    "start_local_cluster",
]

T = TypeVar("T")


def connect(address: str) -> Any:
    """A Client of the scheduler at ``address``; WorkerInitError if none answers."""
    from distributed import Client

    try:
        return Client(address, set_as_default=False, timeout="10s")  # type: ignore[no-untyped-call]
    except OSError as exc:
        error = WorkerInitError(f"no Dask scheduler answered at {address}: {exc}")
        error.usage = True  # type: ignore[attr-defined]  # (the CLI: one line, exit 2)
        raise error from exc


def start_local_cluster(workers: int) -> tuple[Any, Any]:
    """A LocalCluster of ``workers`` processes (a thread each, loopback, no dashboard), a Client.

    A Ctrl-C while it starts waits for the start to end, closes the cluster, and
    is raised then: a cluster half started would otherwise be left running (its
    worker processes and its event loop thread), unreachable.
    """
    (cluster, client), interrupted = _uninterrupted(lambda: _new_cluster(workers))
    if interrupted is not None:
        client.close()
        close_local_cluster(cluster, busy=False)
        raise interrupted
    return cluster, client


def _new_cluster(workers: int) -> tuple[Any, Any]:
    _refuse_unguarded_main()
    import dask
    from distributed import Client, LocalCluster

    # The mark reaches the worker processes only through the environment they are
    # spawned with (they import the main script before any env= of Dask's applies):
    # one start at a time, so a start's cleanup never takes another's mark away.
    mark = os.path.join(tempfile.gettempdir(), f"manyhands-unguarded-{secrets.token_hex(8)}")
    with _START_LOCK:
        os.environ[UNGUARDED_MARK] = mark
        try:
            # Dask must not run a task again when its worker dies: that is the engine's call.
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                cluster = LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=":0",  # (its small HTTP server, on any free port)
                    scheduler_kwargs={"dashboard": False},
                    silence_logs=logging.CRITICAL,  # a dead worker is in the Report
                    preload=[__name__],  # (dask_setup: a Ctrl-C is the run's, not its workers')
                )
        except Exception:
            if os.path.exists(mark):  # a worker's import of the script started a run
                from ._process_spawn import UNGUARDED_MAIN, died_starting

                raise WorkerInitError(
                    died_starting(UNGUARDED_MAIN).replace(
                        "worker process", "Dask worker process", 1
                    )
                ) from None
            raise
        finally:
            os.environ.pop(UNGUARDED_MARK, None)
            with contextlib.suppress(OSError):
                os.remove(mark)
    try:
        return cluster, Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
    except BaseException:
        cluster.close()
        raise


#: Where a LocalCluster's worker process marks that its import of the main script
#: started a run (a script without ``if __name__ == "__main__":``).
UNGUARDED_MARK = "MANYHANDS_DASK_UNGUARDED"
_START_LOCK = threading.Lock()  # (the mark is process-wide: one LocalCluster starts at a time)


def _refuse_unguarded_main() -> None:
    """In a worker process of a LocalCluster started here, importing the main script (its
    top level starts a run): mark it for the parent, then end this process quietly.

    Dask starts its worker processes as multiprocessing does, and each imports the
    main script; a run started there would try a cluster of its own, which
    multiprocessing refuses mid-start, with pages of tracebacks from every worker
    and a parent told only that a Nanny failed to start.
    """
    import multiprocessing

    if not getattr(multiprocessing.current_process(), "_inheriting", False):
        return
    mark = os.environ.get(UNGUARDED_MARK)
    if mark:
        with contextlib.suppress(OSError), open(mark, "a"):
            pass
    from ._process_spawn import refuse_while_importing_main

    refuse_while_importing_main()


def close_local_cluster(cluster: Any, busy: bool) -> None:
    """Close a LocalCluster started here; a Ctrl-C meanwhile is raised once it is closed.

    ``busy``: calls still run on its workers past the run's grace period, and
    their results are not wanted: its worker processes are killed first (Dask
    would give each 4 s to end its calls, then kill it).
    """

    def close() -> None:
        if busy:
            with contextlib.suppress(Exception):  # (then closed the usual way)
                cluster.sync(_kill_workers, cluster)
        cluster.close()

    _, interrupted = _uninterrupted(close)
    if interrupted is not None:
        raise interrupted


async def _kill_workers(cluster: Any) -> None:
    """Kill the worker processes of ``cluster``'s nannies (each given 0.1 s to end)."""
    nannies = [worker for worker in cluster.workers.values() if hasattr(worker, "kill")]
    await asyncio.gather(*(nanny.kill(timeout=_KILL_SECONDS) for nanny in nannies))


_KILL_SECONDS = 0.2  # Nanny.kill: 0.8 of it for the process to end, then SIGKILL


def _uninterrupted(fn: Callable[[], T]) -> tuple[T, KeyboardInterrupt | None]:
    """``fn()`` in a thread of its own, waited for even through Ctrl-C (returned, not raised).

    Only a start or a close of a cluster, each bounded by Dask's own timeouts.
    """
    box: dict[str, Any] = {}
    done = threading.Event()  # (not Thread.join: one interrupted may say a live thread ended)

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=call, name="manyhands-dask-cluster", daemon=True).start()
    interrupted: KeyboardInterrupt | None = None
    while not done.is_set():
        try:
            done.wait()
        except KeyboardInterrupt as exc:  # (what it does must end first: it is raised after)
            interrupted = interrupted or exc
    if "error" in box:
        if interrupted is not None:  # (the user's Ctrl-C first; what failed meanwhile, its cause)
            raise interrupted from box["error"]
        raise box["error"]
    return box["value"], interrupted


def dask_setup(worker: Any) -> None:
    """(a Dask preload, in each worker process of a LocalCluster started here) Ignore SIGINT.

    A Ctrl-C in a terminal reaches every process of its group: the workers
    died of it, each printing a KeyboardInterrupt traceback, and their running
    calls could not finish in the run's grace period. The run stops them.
    """
    with contextlib.suppress(ValueError):  # (not the process's main thread: left as it is)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def retries_note(client: Any) -> str | None:
    """A note for the Report if the scheduler re-runs the task of a dead worker on its own."""
    try:
        allowed = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    except Exception:  # (a scheduler that will not say: nothing to note)
        return None
    if not allowed:
        return None
    return (
        f"the Dask scheduler runs a task again after its worker died (allowed-failures "
        f"{allowed}): a batch whose worker died may have run twice; start it with "
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0"
    )
