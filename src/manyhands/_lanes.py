"""Which run a free worker serves next, when several runs share a :class:`~manyhands.Pool`.

Each run (a :class:`~._batch.Task`) queues its batches in a lane of its own; a
worker that comes free takes the head of one lane:

- the highest ``priority`` first;
- between runs of equal priority, the one that has had the least of the
  workers' time so far (``Task.served``, in worker-seconds estimated from each
  run's measured cost per item), so a run of 1 s calls and a run of 1 ms calls
  each get half of the workers, not the same number of items; a run that
  arrives starts level with the least-served run of its priority, so it gets
  its share from then on and no catch-up burst;
- a run that ``expects`` more work (its input has more) and whose lane was
  empty when a worker took lower-priority work is told so
  (``Task.passed_over``): it queues that much more ahead of its running
  calls, so that its lane stops running dry (see ``_run_outrank``);
- a lane that has waited ``STARVATION`` seconds with work queued goes next,
  whatever its priority: a low-priority run is slowed down by busier lanes,
  never stopped (it gets at least one batch every ``STARVATION`` seconds).

A lane holds whatever its backend queues (batches for threads and processes;
partly taken batches for asyncio, which hands out items one by one), so the
rules above live once. A private pool (``manyhands.run``) serves one run and
needs none of this: its backend queues batches first come, first served.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Generic, TypeVar

from ._batch import Task

__all__ = ["DEFAULT_COST", "STARVATION", "Lanes"]

STARVATION = 1.0  # seconds a lane with work may go unserved
DEFAULT_COST = 1e-3  # seconds per item assumed before a run has measured its own

T = TypeVar("T")


class Lanes(Generic[T]):
    """A lane of queued work per task, and the choice of the next one; thread-safe.

    >>> fast, slow = Task(abs, print), Task(abs, print, priority=5)
    >>> lanes: Lanes[str] = Lanes(clock=lambda: 0.0)
    >>> lanes.put("bulk 1", fast), lanes.put("bulk 2", fast), lanes.put("urgent", slow)
    (True, False, False)
    >>> [lanes.take() for _ in range(4)]
    ['urgent', 'bulk 1', 'bulk 2', None]
    """

    def __init__(
        self,
        size: Callable[[T], int] = lambda work: 1,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._queues: dict[Task, deque[T]] = {}  # only lanes with work queued
        self._expecting: set[Task] = set()  # tasks that had work queued, and expect more
        self._size = size  # items in a piece of work, charged when it is taken
        self._clock = clock

    def __len__(self) -> int:
        """How many tasks have work queued."""
        return len(self._queues)

    def waiting_below(self, priority: int) -> bool:
        """Whether a lane of lower priority than ``priority`` has work queued.

        >>> lanes: Lanes[str] = Lanes()
        >>> lanes.put("bulk", Task(abs, print))
        True
        >>> lanes.waiting_below(5), lanes.waiting_below(0)
        (True, False)
        """
        with self._lock:
            return any(task.priority < priority for task in self._queues)

    def put(self, work: T, task: Task, *, front: bool = False) -> bool:
        """Queue ``work`` in ``task``'s lane (at its head with ``front``: work given back).

        Returns whether nothing was queued before (a backend may have to wake a worker).
        """
        with self._lock:
            empty = not self._queues
            queue = self._queues.get(task)
            if queue is None:
                peers = [t.served for t in self._queues if t.priority == task.priority]
                if peers and task.served < min(peers):
                    task.served = min(peers)  # level with its peers: no catch-up burst
                task.waiting = None  # (set when a choice between lanes first sees it)
                queue = self._queues[task] = deque()
            if front:
                queue.appendleft(work)
            else:
                queue.append(work)
            if task.expecting:
                self._expecting.add(task)
            return empty

    def take(self, above: int | None = None) -> T | None:
        """The head of the lane served next, removed; None when nothing is queued.

        ``above``: only from a lane whose priority is higher than that (a spare
        worker, kept for work more urgent than the pool's base priority).
        Work its task's ``leaving`` refuses is dropped, and the next is taken.
        """
        with self._lock:
            while True:
                task = self._choose(above)
                if task is None:
                    return None
                queue = self._queues[task]
                work = queue.popleft()
                if not queue:
                    del self._queues[task]
                if self._expecting:
                    self._pass_over(task)
                if task.leaving is None or task.leaving(work):  # (else: dropped)
                    task.served += self._size(work) * (task.cost or DEFAULT_COST)
                    return work

    def _pass_over(self, taken: Task) -> None:
        """Tell the runs that expect more work and have none queued that ``taken``'s went first."""
        for task in list(self._expecting):
            if not task.expecting:
                self._expecting.discard(task)
            elif task.priority > taken.priority and task not in self._queues:
                task.passed_over += 1

    def peek(self) -> tuple[Task, T] | None:
        """The task served next and the head of its lane, left in place."""
        with self._lock:
            task = self._choose()
            return None if task is None else (task, self._queues[task][0])

    def pop(self, task: Task) -> None:
        """Remove the head of ``task``'s lane (after :meth:`peek`)."""
        with self._lock:
            queue = self._queues.get(task)
            if queue:
                queue.popleft()
                if not queue:
                    del self._queues[task]

    def charge(self, task: Task, items: int) -> None:
        """Count ``items`` more items served to ``task`` (for fairness)."""
        task.served += items * (task.cost or DEFAULT_COST)

    def cancel(self, task: Task) -> list[T]:
        """Remove and return everything ``task`` has queued."""
        with self._lock:
            return list(self._queues.pop(task, ()))

    def clear(self) -> list[T]:
        """Remove and return everything queued."""
        with self._lock:
            queued = [work for queue in self._queues.values() for work in queue]
            self._queues.clear()
            return queued

    def _choose(self, above: int | None = None) -> Task | None:
        queues = self._queues
        if above is not None:
            queues = {task: queue for task, queue in queues.items() if task.priority > above}
        if len(queues) <= 1:  # the common case: nothing to choose
            for task in queues:
                task.waiting = None
                return task
            return None
        now = self._clock()
        best: Task | None = None
        starved: Task | None = None
        for task in queues:
            waiting = task.waiting
            if waiting is None:
                task.waiting = waiting = now
            if now - waiting >= STARVATION and (
                starved is None or waiting < (starved.waiting or now)
            ):
                starved = task
            if best is None or (task.priority, -task.served) > (best.priority, -best.served):
                best = task
        chosen = starved or best
        assert chosen is not None
        chosen.waiting = now  # if it has more queued, it waits again from now
        return chosen
