"""A run on simulated time: a fake clock, and workers whose calls take fake seconds.

Tests of rates, retries, backoff and timeouts drive a real :class:`~manyhands._run.Run`
(the same dispatch, settle and delivery code as every run) on a backend that runs each
call at once in the test's thread but *finishes* it when the fake clock says so. Waiting
for a completion advances the clock to the next one (or by the timeout the run asked
for), so a test of a one-second backoff takes microseconds and can never be late: the
figures it asserts are exact.

    sim = Simulation(workers=10)
    report = sim.run(fn, items, rate="100/s", duration=lambda item: 0.01)
    sim.starts  # [(time, item), ...] in fake seconds
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from queue import Empty
from typing import Any

from manyhands._batch import RUNNING, TIMED_OUT, Batch, Task, execute
from manyhands._options import Options
from manyhands._report import Report
from manyhands._run import Run


class FakeClock:
    """Seconds that pass only when the simulation says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SimulatedWorkers:
    """A backend of ``workers`` slots: a batch starts when a slot is free, and finishes
    ``duration(item)`` fake seconds later per item (``completions`` hands it back then)."""

    name = "simulated"
    handles_timeouts = False
    timeout_action = "its worker was given up"
    concurrent_items = False

    def __init__(
        self,
        clock: FakeClock,
        workers: int,
        duration: Callable[[Any], float],
        name: str = "simulated",
    ) -> None:
        self.name = name  # (a run treats calls on "processes" as CPU-bound)
        self.most_out = 0  # the most batches submitted and not yet finished at once
        self.clock = clock
        self.free = [0.0] * workers  # when each slot is free again
        self.duration = duration
        self.events: list[tuple[float, int, Batch]] = []  # (finishes at, tiebreak, batch)
        self.tiebreak = itertools.count()
        self.starts: list[tuple[float, Any]] = []  # (fake time, item) of every call
        self.abandoned = 0
        self.notes: list[str] = []

    def start(self) -> None:
        pass

    def attach(self, task: Task) -> None:
        pass

    def detach(self, task: Task) -> None:
        pass

    def inside(self) -> bool:
        return False

    def submit(self, batch: Batch) -> None:
        slot = min(range(len(self.free)), key=self.free.__getitem__)
        begin = max(self.clock.now, self.free[slot])
        batch.started = begin
        moment = begin
        for item in batch.items:
            self.starts.append((moment, item))
            moment += self.duration(item)
        execute(batch.task.fn, batch)  # now, in this thread: only the timing is simulated
        batch.elapsed = moment - begin
        batch.owner = slot
        self.free[slot] = moment
        heapq.heappush(self.events, (moment, next(self.tiebreak), batch))
        out = sum(1 for finish, _, _ in self.events if finish > self.clock.now)
        self.most_out = max(self.most_out, out)

    def cancel(self, task: Task) -> list[Batch]:
        return []

    def wind_down(self) -> None:
        pass

    def expire(self, batch: Batch) -> bool:
        if batch.state != RUNNING:
            return False
        batch.state = TIMED_OUT
        self.abandoned += 1
        batch.task.abandoned += 1
        self.free[batch.owner] = self.clock.now  # a new worker takes the slot now
        return True

    def shutdown(self, grace: float) -> int:
        return 0


class SimulatedCompletions:
    """The run's completions queue on fake time: waiting moves the clock forward."""

    def __init__(self, clock: FakeClock, workers: SimulatedWorkers) -> None:
        self.clock = clock
        self.workers = workers
        self.ready: list[Batch] = []  # put() directly (a timed-out batch)

    def put(self, batch: Batch) -> None:
        self.ready.append(batch)

    def empty(self) -> bool:
        self._release(self.clock.now)
        return not self.ready

    def get_nowait(self) -> Batch:
        if self.empty():
            raise Empty
        return self.ready.pop(0)

    def get(self, block: bool = True, timeout: float | None = None) -> Batch:
        if self.empty():
            events = self.workers.events
            if not events and timeout is None:
                raise AssertionError("the run waits for a completion that will never come")
            next_event = events[0][0] if events else float("inf")
            limit = self.clock.now + timeout if timeout is not None else float("inf")
            self.clock.now = max(self.clock.now, min(next_event, limit))
            self._release(self.clock.now)
            if not self.ready:
                raise Empty
        return self.ready.pop(0)

    def _release(self, now: float) -> None:
        events = self.workers.events
        while events and events[0][0] <= now:
            batch = heapq.heappop(events)[2]
            if batch.state == RUNNING:  # (an expired batch is never handed back)
                self.ready.append(batch)


class Simulation:
    """Runs ``fn`` over ``items`` on ``workers`` simulated workers; see the module docstring."""

    def __init__(self, workers: int = 4, name: str = "simulated") -> None:
        self.clock = FakeClock()
        self.workers = workers
        self.name = name  # the backend's name
        self.starts: list[tuple[float, Any]] = []
        self.most_out = 0  # the most batches out at once (running or queued ahead)

    def run(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        duration: Callable[[Any], float] = lambda item: 0.0,
        **options: Any,
    ) -> Report:
        backend = SimulatedWorkers(self.clock, self.workers, duration, self.name)
        completions = SimulatedCompletions(self.clock, backend)
        run = Run(
            fn,
            iter(items),
            Options.from_kwargs("run", {"workers": self.workers, **options}),
            backend,
            workers=self.workers,
            clock=self.clock,
            completions=completions,
        )
        run.task.done = completions.put
        for batch in run.batches():
            run.delivered(batch)  # (as run() does: the Report keeps the failures delivered)
        self.starts = backend.starts
        self.most_out = backend.most_out
        return run.report()
