"""A Dask Pool's cancelled calls: never made, and a call a worker began is not cancelled.

On a real LocalCluster (2 worker processes of 1 thread: each holds a running
call and one queued, the scheduler the rest). Each call marks a file when it
begins, so the calls made are counted across processes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import manyhands

distributed = pytest.importorskip(
    "distributed", reason="the Dask tests need distributed: pip install 'manyhands[dask]'"
)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A Client on a LocalCluster of 2 worker processes, 1 thread each."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        scheduler_kwargs={"dashboard": False},
        silence_logs=logging.CRITICAL,
    )
    dask_client = distributed.Client(cluster, set_as_default=False)
    yield dask_client
    dask_client.close()
    cluster.close()


def _marks_its_call(folder: str, index: int, go: str | None = None) -> int:
    """Mark ``made-index`` in ``folder``; with ``go``, wait for that file (30 s at most)."""
    Path(folder, f"made-{index}").touch()
    for _ in range(3000):
        if go is None or os.path.exists(go):
            break
        time.sleep(0.01)
    time.sleep(0.002)  # (the next call begins as the cancel travels)
    return index


def _made(folder: Path) -> set[int]:
    return {int(name.split("-")[1]) for name in os.listdir(folder)}


def _begun(folder: Path, count: int) -> Any:
    return lambda: len(_made(folder)) >= count


def _until(condition: Any, what: str) -> None:
    """Wait for ``condition()`` (an event of the cluster's), 30 s at most."""
    for _ in range(3000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"waited 30 s for {what}")


def _workers_are_idle(client: Any) -> bool:
    """No worker runs a task, nor has one to begin (those it holds are done)."""
    states = client.run(
        lambda dask_worker: {task.state for task in dask_worker.state.tasks.values()}
    )
    return all(held <= {"memory"} for held in states.values())


def test_cancelled_calls_the_cluster_holds_are_never_made(client: Any, tmp_path: Path) -> None:
    # Dask cancels a task asynchronously: a call queued on a worker began before the
    # scheduler's word came, and a call running or done (its Future pending until its
    # answer came back) was cancelled all the same. The old code made a cancelled
    # call in every round here; each round cancels after more calls began.
    with manyhands.Pool(backend=client) as pool:
        for round_ in range(6):
            folder = tmp_path / str(round_)
            folder.mkdir()
            executor = pool.executor()
            futures = [executor.submit(_marks_its_call, str(folder), i) for i in range(30)]
            _until(_begun(folder, round_), f"{round_} calls to begin")
            executor.shutdown(wait=True, cancel_futures=True)
            cancelled = {i for i, future in enumerate(futures) if future.cancelled()}
            assert cancelled, round_  # (30 calls of 2 ms on 2 threads: most are queued)
            for i, future in enumerate(futures):
                if i not in cancelled:
                    assert future.result(timeout=0) == i
            _until(lambda: _workers_are_idle(client), "the workers to be idle")
            assert _made(folder) == set(range(30)) - cancelled, round_


def test_a_call_a_worker_began_is_not_cancelled_and_one_it_did_not_is(
    client: Any, tmp_path: Path
) -> None:
    # cancel() returned True for a call running on a worker (its Future was pending
    # until its answer came back), and the call went on: stdlib semantics say False.
    go = str(tmp_path / "go")
    folder = tmp_path / "calls"
    folder.mkdir()
    with manyhands.Pool(backend=client) as pool:
        executor = pool.executor()
        running = [executor.submit(_marks_its_call, str(folder), i, go) for i in range(2)]
        _until(lambda: _made(folder) == {0, 1}, "a call to begin on each worker")
        queued = [executor.submit(_marks_its_call, str(folder), i) for i in range(2, 6)]
        assert [future.cancel() for future in running] == [False, False]
        assert all(future.running() for future in running)
        assert [future.cancel() for future in queued] == [True] * 4
        assert all(future.cancelled() for future in queued)
        Path(go).touch()
        assert [future.result(timeout=30) for future in running] == [0, 1]
        executor.shutdown()
    _until(lambda: _workers_are_idle(client), "the workers to be idle")
    assert _made(folder) == {0, 1}


class _FakeWorker:
    """A Dask worker as the gate sees it: the tasks it holds."""

    def __init__(self) -> None:
        self.state = type("State", (), {"tasks": {}})()


def test_a_task_begins_or_is_withdrawn_never_both(monkeypatch: pytest.MonkeyPatch) -> None:
    from manyhands._backends._dask_withdraw import begin, withdraw_here

    worker = _FakeWorker()
    monkeypatch.setattr(distributed, "get_worker", lambda: worker)
    worker.state.tasks.update({"t-begun": "executing", "t-queued": "ready"})
    assert begin("t-begun")
    # the workers are asked: the one begun is named (its cancel fails), the other never begins
    assert withdraw_here(["t-begun", "t-queued", "t-elsewhere"], dask_worker=worker) == ["t-begun"]
    assert not begin("t-queued")
    assert not begin("t-elsewhere")  # (given to this worker before the scheduler's cancel)
    # a task begun is remembered while the worker holds it (its answer not fetched yet)...
    worker.state.tasks["t-begun"] = "memory"
    assert withdraw_here(["t-begun"], dask_worker=worker) == ["t-begun"]
    # ...and forgotten once it let go of it (the driver has its answer then)
    del worker.state.tasks["t-begun"]
    assert withdraw_here(["t-begun"], dask_worker=worker) == []
