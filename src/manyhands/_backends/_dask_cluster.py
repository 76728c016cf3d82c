"""The Dask backend's cluster: connecting to one, starting a LocalCluster, checking its policy.

Imported only by the Dask backend, which imports distributed.
"""

from __future__ import annotations

import logging
from typing import Any

from .._exceptions import WorkerInitError

__all__ = ["connect", "retries_note", "start_local_cluster"]


def connect(address: str) -> Any:
    """A Client of the scheduler at ``address``; WorkerInitError if none answers."""
    from distributed import Client

    try:
        return Client(address, set_as_default=False, timeout="10s")  # type: ignore[no-untyped-call]
    except OSError as exc:
        raise WorkerInitError(f"no Dask scheduler answered at {address}: {exc}") from exc


def start_local_cluster(workers: int) -> tuple[Any, Any]:
    """A LocalCluster of ``workers`` processes (a thread each, loopback, no dashboard), a Client."""
    import dask
    from distributed import Client, LocalCluster

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
        )
    try:
        return cluster, Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
    except BaseException:
        cluster.close()
        raise


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
