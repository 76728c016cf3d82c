"""A Pool's priority is strict from an urgent run's first batch, on threads and processes.

Every call here waits for a file of its own (or ``go-all``) before it returns, so the
test decides which call ends when, and reads the order in which calls began from a
log the calls append to: no timing is asserted, and worker processes are gated too.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands._batch import Task
from manyhands._lanes import Lanes
from manyhands._sizing import Sizer

BOUND = 10.0  # seconds any one step may take before the test fails
URGENT = 8


def gated(folder: Path, kind: str, x: int) -> int:
    """A call that logs its beginning, then returns once the test lets it."""
    name = f"{kind}{x}"
    with open(folder / "log", "a") as log:
        log.write(name + "\n")
    while not (folder / f"go-{name}").exists() and not (folder / "go-all").exists():
        time.sleep(0.002)
    return x


def began(folder: Path) -> list[str]:
    """The calls begun, in order."""
    log = folder / "log"
    return log.read_text().split() if log.exists() else []


def urgent_began(folder: Path) -> int:
    return sum(name.startswith("urgent") for name in began(folder))


def let_end(folder: Path, *names: str) -> None:
    for name in names:
        (folder / f"go-{name}").touch()


def until(condition: Callable[[], bool], failure: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        time.sleep(0.001)


def queued(lanes: Lanes[Any], priority: int) -> bool:
    """Whether a run of ``priority`` has work queued in the pool's lanes."""
    with lanes._lock:
        return any(task.priority == priority for task in lanes._queues)


# -- the parts: lanes that tell a run it was passed over, a sizer that queues ahead ---


def test_the_lanes_count_each_time_a_worker_passes_over_a_run_that_expects_work() -> None:
    lanes: Lanes[str] = Lanes(clock=lambda: 0.0)
    bulk, urgent, peer = (
        Task(abs, print),
        Task(abs, print, priority=5),
        Task(abs, print, priority=5),
    )
    urgent.expecting = True  # (its run has more to queue)
    lanes.put("urgent0", urgent)
    for n in range(3):
        lanes.put(f"bulk{n}", bulk)
    assert lanes.take() == "urgent0" and urgent.passed_over == 0
    assert lanes.take() == "bulk0"  # its lane ran dry: a worker took bulk work instead
    assert urgent.passed_over == 1
    lanes.put("peer0", peer)
    assert lanes.take() == "peer0" and urgent.passed_over == 1  # (not lower: not counted)
    lanes.put("urgent1", urgent)
    assert lanes.take() == "urgent1" and urgent.passed_over == 1
    urgent.expecting = False  # its input is read: what is left of it is queued or out
    assert lanes.take() == "bulk1" and urgent.passed_over == 1


def test_a_sizer_queues_ahead_before_its_first_round_is_back_and_deeper_when_told() -> None:
    sizer = Sizer(4, window=16384, batch_size=None, one_by_one=False)
    assert (sizer.max_batches, sizer.warming) == (4, True)  # a batch per worker, none queued
    sizer.queue_ahead()
    assert (sizer.max_batches, sizer.warming) == (8, False)
    sizer.deepen(3)
    assert sizer.max_batches == 11
    sizer.hold(True)  # (the slowdown watches the answers: no queue)
    assert sizer.max_batches == 4
    sizer.hold(False)
    assert sizer.max_batches == 11
    paced = Sizer(4, window=16384, batch_size=None, one_by_one=True)  # a rate limit: no queue
    paced.queue_ahead()
    paced.deepen(3)
    assert paced.max_batches == 4


# -- runs on a pool ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_worker_never_takes_bulk_work_while_the_urgent_run_has_items(
    backend: str, tmp_path: Path
) -> None:
    """Bulk work waits in the lanes when an urgent run starts. The urgent run used to
    keep a batch per worker out, none queued, until its first round came back: each
    worker that finished one of its calls found its lane empty and took a bulk batch.
    From its first batch it keeps work queued ahead of its running calls now."""
    with manyhands.Pool(workers=2, backend=backend) as pool:
        workers = pool._backend
        lanes: Lanes[Any] = workers._lanes if backend == "threads" else workers._inbox  # type: ignore[attr-defined]
        lanes._clock = lambda: 0.0  # (no lane is ever starved: the bulk waits all along)
        urgent_ok: list[bool] = []
        bulk = threading.Thread(
            target=pool.run,
            args=(functools.partial(gated, tmp_path, "bulk"), range(40)),
            kwargs={"batch_size": 1, "progress": False},
        )
        urgent = threading.Thread(
            target=lambda: urgent_ok.extend(
                out.ok
                for out in pool.map(
                    functools.partial(gated, tmp_path, "urgent"),
                    range(URGENT),
                    priority=5,
                    batch_size=1,  # (a batch's second item would begin without a queue)
                )
            )
        )
        try:
            let_end(tmp_path, "bulk0", "bulk1")  # its first round ends at once: it queues
            bulk.start()
            until(  # (two bulk calls hold the workers: its lane only grows from here)
                lambda: len(began(tmp_path)) == 4 and queued(lanes, 0),
                "the bulk run queued nothing: the test shows nothing",
            )
            urgent.start()
            until(lambda: queued(lanes, 5), "the urgent run queued nothing")
            let_end(tmp_path, *began(tmp_path))  # the bulk calls end: urgent ones begin
            until(lambda: urgent_began(tmp_path) == 2, "the urgent run did not begin")
            ended: list[str] = []
            while (count := urgent_began(tmp_path)) < URGENT:
                # Every worker runs an urgent call: the urgent run's next waits in line.
                until(
                    lambda: queued(lanes, 5),
                    f"after {count} urgent calls began, the urgent run had nothing queued "
                    "ahead of its running calls: a worker ending one would take bulk work",
                )
                total = len(began(tmp_path))
                ended.append(
                    next(n for n in began(tmp_path) if n.startswith("urgent") and n not in ended)
                )
                let_end(tmp_path, ended[-1])
                until(lambda n=total: len(began(tmp_path)) > n, "no call began after one ended")
        finally:
            let_end(tmp_path, "all")
            for thread in (urgent, bulk):
                if thread.ident is not None:
                    thread.join(BOUND)
    order = began(tmp_path)
    first = next(i for i, name in enumerate(order) if name.startswith("urgent"))
    assert sorted(order[first : first + URGENT]) == [f"urgent{x}" for x in range(URGENT)], order
    assert urgent_ok == [True] * URGENT
