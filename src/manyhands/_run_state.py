"""A run's construction: what it is given, and the state its parts share.

:class:`~._run.Run` is made of parts that read and write the same state:
admission and dispatch (:mod:`._run_dispatch`), the completion of each
batch (:mod:`._run_completion`), and its two drivers, lifecycle, delivery
and results (:mod:`._run`). They are mixins of one object, not objects that
call each other, so that the path of each batch costs no more than one
class's methods would. :class:`RunState` builds that state, complete in its
constructor (with what each part holds), and answers what the parts and
the run's functions in modules of their own (``_run_slowdown``,
``_run_outrank``, ``_run_timeouts``) read of it: the backend a batch went
to, the items the input still holds, the time since the run started.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, Callable, Iterator
from operator import length_hint
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

from ._backends import Backend
from ._batch import Batch, Task
from ._delivery import Delivery
from ._options import Options
from ._outcome import Outcome
from ._parking import Parking
from ._rate import RateLimit
from ._reader import Reader
from ._settlement import Settlement
from ._sizing import Sizer
from ._slowdown import Slowdown
from ._stats import RunStatistics
from ._stoprules import StopRules
from ._timers import Deadlines, RetryTimers

try:  # (what `queue` re-exports; importing `queue` itself costs 0.3 ms of `import manyhands`)
    from _queue import SimpleQueue
except ImportError:  # pragma: no cover (Pythons without the C module)
    from queue import SimpleQueue

if TYPE_CHECKING:
    from ._aio import LoopQueue
    from ._autopilot import Autopilot
    from ._journal import Journal

__all__ = ["Completions", "RunHooks", "RunState"]


class Completions(Protocol):
    """The queue a run's finished batches come back through (a ``queue.SimpleQueue``)."""

    def put(self, batch: Batch | None) -> None: ...  # (None: a wake-up, see ThreadFeed)

    def get(self, block: bool = True, timeout: float | None = None) -> Batch | None: ...

    def get_nowait(self) -> Batch | None: ...

    def empty(self) -> bool: ...


class RunHooks(Protocol):
    """Told when a run begins and when it has ended (a Pool counts its runs)."""

    def run_begins(self) -> None: ...

    def run_ends(self) -> None: ...

    def processes_for_auto(self) -> tuple[Backend, int] | None:
        """A Pool(backend="auto")'s worker processes (started on first use), and their number."""


class RunState:
    """A run's state, set by its constructor (the arguments: see :class:`~._run.Run`)."""

    # The slowdown's opening (asyncio): batches at most this big, and room for
    # more of them out, as they are small (see _run_slowdown).
    _opening_batch = _opening_room = _batches_sent = 0
    # (A Pool's run) whether it looks out for lower-priority work that workers take while
    # its input has more, and whether it found some and queues ahead of it (see _run_outrank).
    _claiming = _outranking = False
    _passes_seen = 0  # of task.passed_over, already queued for
    #: Given the final outcomes (successes, and failures that would not have
    #: been retried) of calls that finished in the grace period of a stopped
    #: run, before they are recorded (the command writes their lines there, so
    #: that what a call did is kept, not run again). If it raises, these and
    #: the later ones are not recorded: they run again.
    on_late: Callable[[list[Outcome[Any, Any]]], None] | None = None
    #: Ends the calls still running once the grace period of a stopped run is
    #: over, so that their threads return instead of being left to them (the
    #: command kills its commands' process groups). Its own backend only. A
    #: call it stopped raises an error whose ``stopped_by_run`` is true: its
    #: item is not recorded, and runs again next time.
    end_calls: Callable[[], None] | None = None
    #: The batch the consumer is taking Outcomes from, and its iterator of items
    #: (what is left in it did not reach the consumer): set by ``map``/``amap``
    #: for each batch, cleared by :meth:`~._run.Run.delivered`.
    receiving: tuple[Batch, Iterator[Any]] | None = None
    _late: list[Batch]
    _caught: deque[Batch | None]

    def __init__(
        self,
        fn: Callable[[Any], Any],
        items: Iterator[Any],
        options: Options,
        backend: Backend,
        *,
        workers: int,
        owns_backend: bool = True,
        total: int | None = None,
        open_journal: Callable[[], Journal] | None = None,
        consumer: bool = False,
        priority: int = 0,
        async_source: AsyncIterable[Any] | None = None,
        auto: bool = False,
        hooks: RunHooks | None = None,
        clock: Callable[[], float] = monotonic,
        completions: Completions | None = None,
    ) -> None:
        self._options = options
        self._hooks = hooks  # told when the run begins and ends (a Pool counts its runs)
        self._async_source = async_source  # amap over an async iterable: read by a feed
        self._backend = backend
        self._owns_backend = owns_backend
        self._clock = clock
        self._total = total  # for the progress display's ETA
        self._open_journal = open_journal  # opened when the run starts, closed when it ends
        self._journal: Journal | None = None
        self._consumer = consumer
        #: Called in the consuming thread right before the rows of delivered
        #: outcomes go to the journal (the command flushes its output file there).
        self.before_record: Callable[[], None] | None = None
        #: How the journal's run ends when the consumer stopped it early (set by the
        #: consumer's ``with`` block from the exception that left it: ``ended_early``).
        self.exit_status: str | None = None
        self.statistics = RunStatistics(options.keep_failures)
        self.statistics.notes = backend.notes  # (the same list: read at report time)
        # Where workers put finished batches: a SimpleQueue (a test may pass a queue
        # that advances a fake clock while it waits); the async driver's LoopQueue.
        self._completions: Completions | LoopQueue[Batch] = completions or SimpleQueue()
        timeout = options.timeout
        engine_timeout = None if backend.handles_timeouts else timeout
        self.task = Task(
            fn,
            self._completions.put,
            priority=priority,
            timeout=timeout if backend.handles_timeouts else None,
            timed=engine_timeout is not None or not owns_backend,
            bounded=timeout is not None,
            # Delivered as completed, a batch's finished items may come back before
            # its last (asyncio: a few slow calls must not hold the rest in the window).
            early=not options.ordered,
        )
        rules = (options.stop_after_failures, options.stop_after_failure_rate)
        self.task.stops = any(rule is not None for rule in rules)
        self._init_auto(auto, workers)
        self._reader = Reader(items)
        self._ready: deque[Batch] = deque()  # skipped by the journal: delivered without running
        self._parked = Parking()  # duplicates held for their first copy's outcome
        # The adaptive slowdown sets the start rate, the calls in flight and
        # pauses; while it watches, every answer goes to it (see _slowdown).
        self._slowdown = Slowdown(
            self._batches_at_once(backend, workers),
            options.rate_per_second,
            now=clock(),
            slow_start=self._items_are_calls or backend.name == "threads",
            ramp_loads=self._items_are_calls,  # (thousands of tasks on one event loop)
        )
        if backend.name == "processes":
            self._slowdown.ignore_latency()
        self._limiter: RateLimit | None = self._slowdown.limiter
        # (the slowdown watches the answers; items may queue ahead of the workers)
        self._watching, self._queueing = True, False  # (see _run_slowdown)
        self._most_in_flight = self._slowdown.concurrency
        self._deadlines = Deadlines(engine_timeout) if engine_timeout is not None else None
        self._window = self._item_window(options, backend, workers)
        self._sizer = self._new_sizer(workers)
        self._timers = RetryTimers()
        self._retries = self._timers.heap  # (its emptiness is tested on the hot path)
        self._settlement = Settlement(options, self.statistics, self._timers, self.task, clock)
        self._delivery = Delivery(options.ordered)
        self._rules = StopRules(options)
        self._stop_rules_on = self._rules.watching  # (tested per batch)
        self._held_since: float | None = None  # since when the rate limit holds a start back
        self._in_backend = self._in_flight = 0  # batches submitted and not yet back, their items
        self._pending_items = 0  # items admitted and not yet delivered
        self._next_seq = 0
        self._sent: dict[int, Batch] = {}  # shared pool: batches out, to give up at the end
        # Came back while the run was stopping; taken off the completions (see _drive).
        self._late, self._caught = [], deque()
        self._backend_started = False
        self._started: float | None = None
        self._finished: float | None = None
        # Until fn's first value is known not to be a coroutine (see _checks).
        self._values_unchecked = True
        self._returned_coroutines = False

    @staticmethod
    def _batches_at_once(backend: Backend, workers: int) -> int:
        """The slowdown's most calls in flight: a backend that queues a batch per worker
        from the start (a cluster's) counts those too."""
        return 2 * workers if getattr(backend, "sizing", {}).get("queue_at_once") else workers

    @staticmethod
    def _item_window(options: Options, backend: Backend, workers: int) -> int:
        """The window; a backend with costly batches (Dask) holds more items by default."""
        if options.window is not None:
            return options.window
        return max(options.item_window, getattr(backend, "window_per_worker", 0) * workers)

    def _init_auto(self, auto: bool, workers: int) -> None:
        """backend="auto": on threads until the calls are measured (see _autopilot)."""
        self._workers = workers
        self.task.measure = self._backend.name == "threads"  # (a plain threads run: a hint)
        # Made when the run begins, if its calls are measured; dropped once idle.
        self._pilot: Autopilot | None = None
        self._auto = auto
        self._via = 0  # the backend's generation: a run on auto may move once
        self._previous: list[Backend] = []  # backends it moved from (their calls finish)
        self._in_previous = 0  # batches still out on them
        # What the slowdown's limit on calls in flight counts: on threads and processes
        # a batch's items run one after another, so the calls at once are the batches
        # out (the items waiting in a batch are not at the server yet); on asyncio
        # every item of a batch is a call of its own.
        self._items_are_calls = self._backend.concurrent_items
        self.statistics.backend = self._backend.name

    def _new_sizer(self, workers: int) -> Sizer:
        return Sizer(
            workers,
            self._window,
            self._options.batch_size,
            one_by_one=self._limiter is not None or self._deadlines is not None,
            concurrent_items=self._backend.concurrent_items,
            remaining=self._remaining,
            elapsed=lambda: self.elapsed,
            # (a backend whose batches cost more, e.g. a task on a Dask cluster, says so)
            **getattr(self._backend, "sizing", {}),
        )

    def _backend_of(self, batch: Batch) -> Backend:
        """The backend ``batch`` went to (a run on auto may have moved since)."""
        if batch.via == self._via:
            return self._backend
        return self._previous[batch.via]

    def _remaining(self) -> int:
        """Items the input still holds, if it says (lists, ranges); else -1."""
        try:
            left = length_hint(self._reader.items, -1)
        except Exception:  # a broken __length_hint__ only costs the hint
            return -1
        if left >= 0 and self._journal is not None:
            left += self._journal.read_ahead  # (its block: read, not run yet)
        return left

    @property
    def elapsed(self) -> float:
        """Seconds since the run started (until it finished, once it has)."""
        if self._started is None:
            return 0.0
        end = self._finished if self._finished is not None else self._clock()
        return end - self._started
