"""One run: everything about one loop over one input, driven from the consuming thread.

::

    items ──▶ Reader ──▶ admission ───────────▶ backend ──▶ completions ──▶ Delivery ──▶ you
              (lazy;     (window, Sizer,         (a pool's   (the run's    (ordered or    (run, map,
               journal    RateLimit/Slowdown,      workers)   own queue)    as completed)  amap)
               segments)  StopRules)                 ▲            │
                                                     │            ▼
                                 RetryTimers ◀────── settle (Failures, Retry policy,
                                 Deadlines           RunStatistics, journal on delivery)

A run owns its input, window, batch sizing, retry timers and deadlines, rate
limit and slowdown, stop rules, ordered delivery, statistics, journal and
Report; the workers belong to a pool (a private one for ``manyhands.run``,
``map`` and ``amap``, or a shared :class:`~manyhands.Pool`), which only runs
batches and hands each back through the run's :class:`~._batch.Task`.

The loop runs in the consuming thread (the caller of ``run``, whoever
iterates ``map``, or the event loop of ``amap``). That keeps the user's
iterable in the thread that created it (a sqlite cursor or a thread-bound
client works), makes Ctrl-C land here rather than in a worker, and needs no
lock: the only structure shared with the workers is the completions queue.
The price: while the iterable blocks (a slow stream), outcomes that finish
meanwhile wait for it; outcomes already finished are always delivered before
the run asks the iterable for more.

Everything that depends on time reads ``clock`` (``time.monotonic`` unless a
test passes a fake one), so rate, retry and timeout behaviour is exact in tests.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Generator, Iterator
from itertools import islice
from operator import length_hint
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol, cast

from ._backends import Backend
from ._batch import Batch, Task
from ._checks import check_first_value, discard_coroutines
from ._delivery import Delivery
from ._exceptions import InputError, JournalError, ManyhandsError, Timeout, ended_by, ended_early
from ._options import Options
from ._outcome import Failure, Outcome
from ._parking import Parking
from ._progress import Progress, progress_wanted
from ._rate import RateLimit
from ._reader import Reader
from ._report import Report
from ._settlement import Settlement
from ._settlement import timed_out as timed_out_in
from ._signal_waits import LOOK_EVERY
from ._sizing import Sizer
from ._slowdown import OPENING_SHARE, Slowdown
from ._stats import RunStatistics
from ._stoprules import StopRules
from ._thread_feed import ThreadFeed
from ._timers import Deadlines, RetryTimers

try:  # (what `queue` re-exports; importing `queue` itself costs 0.3 ms of `import manyhands`)
    from _queue import Empty, SimpleQueue
except ImportError:  # pragma: no cover (Pythons without the C module)
    from queue import Empty, SimpleQueue

if TYPE_CHECKING:
    from ._aio import LoopQueue
    from ._autopilot import Autopilot
    from ._journal import Journal

__all__ = ["Completions", "Run", "RunHooks"]

_NEVER = object()  # (a sentinel no completion is)


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


class Run:
    """Runs ``fn`` over ``items`` on ``backend``; iterate :meth:`batches` to drive it.

    ``owns_backend``: the backend is this run's private pool (started and
    shut down with the run), else a shared pool's. ``workers``: how many calls
    the backend runs at once. ``consumer``: outcomes go to a consumer (``map``,
    ``amap``), and are recorded in the journal once it got them.
    """

    # The slowdown's opening (asyncio): batches at most this big, and room for
    # more of them out, as they are small (see _obey_slowdown).
    _opening_batch = _opening_room = _batches_sent = 0
    # (A Pool's run) whether it looks out for lower-priority work that workers take while
    # its input has more, and whether it found some and queues ahead of it (see _outrank).
    _claiming = _outranking = False
    _passes_seen = 0  # of task.passed_over, already queued for
    #: Given the final outcomes (successes, and failures that would not have
    #: been retried) of calls that finished in the grace period of a stopped
    #: run, before they are recorded (the command writes their lines there, so
    #: that what a call did is kept, not run again). If it raises, these and
    #: the later ones are not recorded: they run again.
    on_late: Callable[[list[Outcome[Any, Any]]], None] | None = None
    #: The batch the consumer is taking Outcomes from, and its iterator of items
    #: (what is left in it did not reach the consumer): set by ``map``/``amap``
    #: for each batch, cleared by :meth:`delivered`.
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
        self._watching, self._queueing = True, False  # (see _obey_slowdown)
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

    # -- the two drivers -------------------------------------------------

    def batches(self) -> Generator[Batch, None, None]:
        """Run, yielding finished batches with ``failures`` filled in.

        Raises InputError after the last batch if the iterable raised. Closing
        the generator early (or an exception in it, Ctrl-C included) stops
        admission and stops the run's calls within the grace period.
        """
        progress = self._begin()
        completed = False
        feed = self._reader.items
        if isinstance(feed, ThreadFeed):  # (woken through the completions, as by a batch)
            feed.attach(functools.partial(cast("Completions", self._completions).put, None))
        try:
            self._start_backend()
            yield from self._drive()
            completed = True
        finally:
            self._mark_finished(completed)
            try:
                if self._backend_started:
                    self._stop_backend()
                if self._returned_coroutines:  # none is recorded, none warns
                    discard_coroutines(self._completions)
            finally:
                if isinstance(feed, ThreadFeed):
                    feed.stop()
                self._end(completed, progress)
        self._raise_input_error()

    async def abatches(self) -> AsyncGenerator[Batch, None]:
        """:meth:`batches` on the running event loop (``amap``)."""
        import asyncio

        from ._aio import LoopQueue, open_feed

        queue: LoopQueue[Batch] = LoopQueue()
        self._completions = queue
        if getattr(self._backend, "runs_on_caller_loop", False):
            self.task.done = queue.put
        else:  # workers in other threads: hand each batch to this loop
            loop = asyncio.get_running_loop()
            put = queue.put

            def hand_over(batch: Batch) -> None:
                loop.call_soon_threadsafe(put, batch)

            self.task.done = hand_over
        progress = self._begin()
        # An async input is read by a task, a slow sync one by a thread (see _aio).
        limit = max(self._window // 4, 1)  # (read ahead of the window, a share of it)
        feed = open_feed(self._reader.items, self._async_source, limit, lambda: queue.put(None))
        self._reader.items = feed or self._reader.items
        completed = False
        try:
            self._start_backend()
            # The driving loop is inline, not a nested async generator: every
            # layer of `async for` costs each batch a microsecond or so.
            while True:
                wait = self._dispatch()
                if self._ready:
                    for done in self._deliver_skipped():
                        yield done
                    continue
                if self._reader.exhausted and not self._pending_items:
                    break
                batch = await queue.get(wait)
                if batch is None:  # more input, or the wait is over
                    continue
                for ready in self._complete(batch):
                    self._pending_items -= len(ready.items)
                    yield ready
            completed = True
        finally:
            self._mark_finished(completed)
            try:
                if self._backend_started:
                    await self._astop_backend(queue)
                if self._returned_coroutines:  # none is recorded, none warns
                    discard_coroutines(self._completions)
                if feed is not None:
                    await feed.aclose()
            finally:
                self._end(completed, progress)
        self._raise_input_error()

    def _drive(self) -> Iterator[Batch]:
        completions = cast("Completions", self._completions)  # (the sync driver's)
        get = completions.get
        look = functools.partial(get, True, LOOK_EVERY)
        caught = self._caught
        skipped = self._ready
        reader = self._reader
        while True:
            wait = self._dispatch()
            if skipped:
                yield from self._deliver_skipped()
                continue
            if reader.exhausted and not self._pending_items:
                return
            # The wait moves the batch into `caught` in C, with no Python between
            # (SimpleQueue.get under deque.extend): a Ctrl-C that came while the
            # thread waited, handled as soon as it wakes, finds the batch there,
            # where the run's end takes it (_late_batches); raised as `get()`
            # returned, it lost the batch, whose calls had run.
            # The wait is a slice at most (_signal_waits: a signal another thread
            # took is seen as the slice ends), then the loop looks again.
            if wait is None and not (self._in_backend or self._in_previous or reader.waiting):
                raise RuntimeError("nothing in flight and nothing due")  # pragma: no cover
            try:
                if wait is None or wait >= LOOK_EVERY:
                    caught.extend(islice(iter(look, _NEVER), 1))
                else:
                    caught.extend(islice(iter(functools.partial(get, True, wait), _NEVER), 1))
            except Empty:
                continue
            batch = caught.popleft()
            if batch is None:  # (an input read in a thread has more)
                continue
            for ready in self._complete(batch):
                self._pending_items -= len(ready.items)
                yield ready

    # -- lifecycle -------------------------------------------------------

    def _begin(self) -> Progress | None:
        """Open the journal, start the clock and the progress display (if shown)."""
        if self._hooks is not None:
            self._hooks.run_begins()
        try:
            return self._open()
        except BaseException:
            if self._hooks is not None:
                self._hooks.run_ends()
            raise

    def _open(self) -> Progress | None:
        if self._open_journal is not None:
            self._journal = self._open_journal()
        self._started = self._clock()
        self._slowdown.start(self._started)
        self._sizer.hold(True)  # (while the slowdown watches: see _obey_slowdown)
        self._claiming = self.task.expecting = self._may_outrank()
        if self.task.measure:
            from ._autopilot import Autopilot

            self._pilot = Autopilot(self, auto=self._auto, workers=self._workers)
            self._pilot.begin(self._started)
        if not progress_wanted(self._options.progress):
            return None
        try:
            return Progress(self, self._total)
        except BaseException:
            if self._journal is not None:
                self._journal.abandon()
            raise

    def _start_backend(self) -> None:
        if self._owns_backend:
            self._backend.start()
        self._backend_started = True
        self._backend.attach(self.task)

    def _mark_finished(self, completed: bool) -> None:
        """The run's end: its figures as of now (``completed``: every outcome was delivered)."""
        self.task.expecting = False
        if not completed:
            self._take_back_undelivered(self.statistics)
            self.statistics.retrying = 0
            self._let_go()
        self._finished = self._clock()
        if self._pilot is not None:
            self._pilot.ended()
        self.statistics.settled_rate = self._slowdown.settled_rate
        self.statistics.settled_concurrency = self._slowdown.settled_concurrency
        if self._held_since is not None:
            self.statistics.rate_limited += self._finished - self._held_since
        self._reader.stop()

    def _stop_backend(self) -> None:
        """Stop this run's calls: queued ones dropped, running ones get the grace period."""
        backend = self._backend
        if self._owns_backend:  # a private pool: it goes with the run
            try:
                counted = self.task.abandoned
                busy = backend.shutdown(self._options.grace)
                if backend.name == "threads":  # (still in a call after the grace: left to it)
                    self.task.abandoned += max(busy - (self.task.abandoned - counted), 0)
            finally:
                for previous in self._previous:  # (auto: what it moved from)
                    previous.shutdown(self._options.grace)
                if self._pilot is not None:
                    self._pilot.stop()
            return
        self._drop_queued()
        deadline = self._clock() + (0.0 if backend.concurrent_items else self._options.grace)
        completions = cast("Completions", self._completions)  # (the sync driver's)
        try:
            while (self._in_backend or self._in_previous) and (
                wait := deadline - self._clock()
            ) > 0:
                with contextlib.suppress(Empty):
                    batch = completions.get(timeout=min(wait, LOOK_EVERY))
                    if batch is not None:
                        self._came_back(batch)
        finally:  # (a second Ctrl-C ends the wait at once)
            self._give_up_calls()

    async def _astop_backend(self, queue: LoopQueue[Batch]) -> None:
        backend = self._backend
        if self._owns_backend:
            if getattr(backend, "runs_on_caller_loop", False):
                await backend.ashutdown(self._options.grace)  # type: ignore[attr-defined]
            else:
                backend.shutdown(self._options.grace)
            return
        self._drop_queued()
        deadline = self._clock() + (0.0 if backend.concurrent_items else self._options.grace)
        try:
            while (self._in_backend or self._in_previous) and (
                wait := deadline - self._clock()
            ) > 0:
                batch = await queue.get(wait)
                if batch is not None:
                    self._came_back(batch)
        finally:
            self._give_up_calls()

    def _drop_queued(self) -> None:
        """The batches no worker began are dropped (a shared pool's lanes).

        Those sent ahead to a worker are not begun either, where the backend can
        tell its workers so (``cancel_sent``): they come back as never called.
        """
        for backend in (self._backend, *self._previous):
            for batch in backend.cancel(self.task):
                self._sent.pop(id(batch), None)
                self._count_back(batch)
            cancel_sent = getattr(backend, "cancel_sent", None)  # (processes)
            if cancel_sent is not None:
                cancel_sent(self.task)

    def _count_back(self, batch: Batch) -> None:
        if batch.piece:  # (its batch's other items still run: the batch is still out)
            return
        if batch.via == self._via:
            self._in_backend -= 1
        else:  # (it went out before the run moved to another backend)
            self._in_previous -= 1

    def _came_back(self, batch: Batch) -> None:
        """A batch came back while the run was stopping (kept for the journal)."""
        self._count_back(batch)
        self._sent.pop(id(batch), None)
        self._late.append(batch)

    def _give_up_calls(self) -> None:
        """The calls still running after the grace period: the pool frees their workers."""
        for batch in list(self._sent.values()):
            self._backend_of(batch).expire(batch)
        self._sent.clear()
        for backend in (self._backend, *self._previous):
            backend.detach(self.task)
        self.statistics.abandoned = self.task.abandoned

    def _end(self, completed: bool, progress: Progress | None) -> None:
        # The run ends once its calls stopped: a Report after Ctrl-C or `break`
        # includes the grace period the caller waited through.
        self._finished = self._clock()
        self.statistics.abandoned = self.task.abandoned  # (asyncio counts them as it stops)
        if self._pilot is not None:
            self._pilot.end_short_turns()
        try:
            if self._journal is not None:
                self._close_journal(self._journal, completed)
            elif not completed and self.on_late is not None:
                for _ in self._handed_late():  # (no journal: the lines are all that is kept)
                    pass
        finally:
            if not completed:  # (what came back after the run stopped delivering: not kept)
                self._late = []
                self._caught.clear()
                for _ in self._late_batches():
                    pass
            try:
                if progress is not None:
                    progress.close()
            finally:
                if self._hooks is not None:
                    self._hooks.run_ends()

    def _raise_input_error(self) -> None:
        error = self._reader.error
        if isinstance(error, ManyhandsError):  # from the journal: raised as it is
            raise error
        if error is not None:
            hint = self._reader.hint(error)
            raise InputError(self._reader.pulled, error, hint=hint) from error

    def _close_journal(self, journal: Journal, completed: bool) -> None:
        stats = self.statistics
        if completed:
            ended = f"stopped: {stats.stop_reason}" if stats.stop_reason else "finished"
            if self._reader.error is not None:
                ended = ended_by("input error", self._reader.error)
            journal.close(ended, stats.counts())
            return
        # Interrupted: keep what finished during the grace period, then close
        # without masking the exception on its way out. A consumer never saw
        # those outcomes: they are kept if their values are (store_results), or
        # once a consumer that writes what it gets (before_record) wrote them
        # (on_late); otherwise an outcome it never got has no line, so its item
        # must run again.
        # (A `break`, or an exception in a bare `for` loop's body, reaches the run as
        # GeneratorExit: "left early". Only a `with` block sees the body's exception.)
        status = self.exit_status or ended_early(sys.exc_info()[1])
        try:
            # What cannot be written runs again next time.
            with contextlib.suppress(JournalError):
                handed = not (
                    not self._consumer
                    or (self._options.store_results and self.before_record is None)
                )
                late = self._handed_late() if handed else self._settled_late()
                for finished, not_final in late:
                    # (counted: the Report and the journal's run row say the same)
                    succeeded, failures = journal.record_late(finished, not_final, handed=handed)
                    self._count_late(succeeded, failures)
                journal.close(status, stats.counts())
        finally:
            journal.abandon()  # no-op once closed: the lock is released whatever happened

    def _count_late(self, succeeded: int, failures: list[Failure]) -> None:
        """Count final outcomes of the grace period (the Report keeps the failures too)."""
        self.statistics.add_batch(succeeded + len(failures), 0, 0.0, failures or None)
        if failures:
            self.statistics.delivered(failures)

    def _settled_late(self) -> Iterator[tuple[Batch, set[int]]]:
        """The late batches, their errors settled: each with its items whose outcome
        is not final (a failure that would have been retried, a call never made)."""
        for finished in self._late_batches():
            not_final = self._settlement.judge_late(finished) if finished.errors else set()
            if not finished.values:  # (no value came back: nothing is known of its items)
                failures = finished.failures or {}
                not_final.update(i for i in range(len(finished.items)) if i not in failures)
            yield finished, not_final

    def _handed_late(self) -> Iterator[tuple[Batch, set[int]]]:
        """The late batches whose final outcomes ``on_late`` took (none without it).

        Without a journal they are counted here; with one, once recorded.
        """
        if self.on_late is None:
            return
        for finished, not_final in self._settled_late():
            failures = finished.failures or {}
            attempts = finished.attempts or {}
            outcomes = [
                Outcome(
                    item,
                    None if index in failures else finished.values[index],
                    failures.get(index),
                    attempts.get(index, finished.attempt),
                )
                for index, item in enumerate(finished.items)
                if index not in not_final
            ]
            if not outcomes:
                continue
            try:
                self.on_late(outcomes)
            except Exception:  # (a full disk: these run again; the run's error is on its way)
                return
            if self._journal is None:
                final = [outcome.error for outcome in outcomes if outcome.error is not None]
                self._count_late(len(outcomes) - len(final), final)
            yield finished, not_final

    def _late_batches(self) -> Iterator[Batch]:
        """Batches that came back after the run stopped delivering."""
        caught = self._caught
        while caught:  # (taken off the completions just as the run was stopped)
            finished = caught.popleft()
            if finished is not None:
                yield finished
        yield from self._late
        completions = self._completions
        while not completions.empty():
            finished = completions.get_nowait()
            if finished is not None:
                yield finished

    # -- dispatch --------------------------------------------------------

    def _dispatch(self) -> float | None:
        """Submit what may start now; return seconds until more may (None: on a completion).

        With a timeout, also the time until the next running batch may expire,
        counted after admission: what was just sent may be the only one running.
        """
        deadlines = self._deadlines
        if not (
            self._retries
            or self._limiter
            or deadlines is not None
            or self._watching
            or self._claiming
            or (self._pilot is not None and self._pilot.choose_at is not None)
        ):
            self._admit()  # the common case: no clock read
            return None
        if self._claiming:
            self._outrank()
        now = self._clock()
        due = self._pilot.look(now) if self._pilot is not None else None
        if deadlines and now >= deadlines.next_check:
            self._expire_overdue(deadlines, now)
        if self._watching:
            due = _sooner(due, self._follow_slowdown(now))
            if now < self._slowdown.paused_until:  # everyone waits out a Retry-After
                return _sooner(due, deadlines.wait(now)) if deadlines else due
        timers = self._timers
        while (
            timers
            and self._in_backend < self._sizer.max_batches
            and (self._in_flight if self._items_are_calls else self._in_backend)
            < self._most_in_flight
        ):
            wait = timers.wait(now)
            if wait:
                due = _sooner(due, wait)
                break
            if self._limiter is not None and (slot := self._slot(self._limiter, now)):
                return _sooner(due, slot)
            self._send(timers.pop())
        if self._limiter is None:
            self._admit()
        else:
            due = _sooner(due, self._admit_limited(self._limiter))
        if deadlines:
            due = _sooner(due, deadlines.wait(self._clock()))
        return due

    def _admit(self) -> None:
        """Read and submit batches while the window has room.

        Stops early to deliver whatever already finished, so a slow iterable
        never holds back finished outcomes. While batches are out, waits for
        room for a whole batch rather than sending the window's last few items
        as a batch of their own.
        """
        completions = self._completions
        sizer = self._sizer
        reader = self._reader
        while (
            not reader.exhausted
            and self._in_backend < sizer.max_batches + self._opening_room
            and (self._in_flight if self._items_are_calls else self._in_backend)
            < self._most_in_flight
        ):
            room = self._window - self._pending_items  # (a whole batch may pass the limit)
            size = sizer.size
            if self._opening_batch and size > self._opening_batch:
                size = self._opening_batch
            if room <= 0 or (self._in_backend and (room < size or not completions.empty())):
                return
            size = min(size, room)
            timed = sizer.timed_reads  # else the input's pace cannot matter
            began = self._clock() if timed else 0.0
            chunk = self._read(size)
            if len(chunk) < size and not reader.exhausted:
                return  # an async input has nothing more for now
            if timed and len(chunk) == size:
                sizer.read(size, self._clock() - began)

    def _admit_limited(self, limiter: RateLimit) -> float | None:
        """Admission one item at a time, each when the rate limit allows it to start."""
        reader = self._reader
        while (
            not reader.exhausted
            and self._in_backend < self._sizer.max_batches
            and (self._in_flight if self._items_are_calls else self._in_backend)
            < self._most_in_flight
            and self._pending_items < self._window
        ):
            if self._in_backend and not self._completions.empty():
                return None
            wait = self._slot(limiter, self._clock())
            if wait:
                return wait
            if not self._read(1):
                # the slot was taken but nothing started: give it back
                limiter.release()
                if not reader.exhausted:
                    return None  # an async input has nothing more for now
        return None

    def _read(self, size: int) -> list[Any]:
        """Read up to ``size`` items and submit them as one batch."""
        if self._journal is not None:
            return self._read_journaled(self._journal, size)
        chunk = self._reader.read(size)
        if chunk:
            batch = Batch(self._next_seq, chunk, self.task)
            self._next_seq += 1
            self._pending_items += len(chunk)
            self._send(batch)
        if self._reader.exhausted and not self._retries:
            self._wind_down()
        return chunk

    def _read_journaled(self, journal: Journal, size: int) -> list[Any]:
        """Submit the next items to run; items the journal skips go to delivery."""
        stats = self.statistics
        reader = self._reader
        while not reader.exhausted and self._pending_items < self._window:
            room = self._window - self._pending_items
            segment = reader.segment(journal, min(size, room), room)
            if segment is None:
                break
            if not segment.items:  # an async input has nothing more for now
                return []
            batch = Batch(self._next_seq, segment.items, self.task)
            batch.keys = segment.keys
            self._next_seq += 1
            self._pending_items += len(segment.items)
            if segment.reasons is None:
                self._send(batch)
                return segment.items
            batch.skipped = segment.reasons
            batch.values = segment.values or []
            batch.failures = segment.failures
            stats.add_skipped(segment.reasons)
            if segment.waiting:
                self._parked.park(batch, segment.waiting)
            else:
                self._ready.append(batch)
        if reader.exhausted and not self._retries:
            self._wind_down()
        return []

    def _wind_down(self) -> None:
        self.task.expecting = False  # (its input is read: what is left is queued or out)
        if self._owns_backend:  # (a shared pool's workers wait for other runs)
            self._backend.wind_down()

    def _slot(self, limiter: RateLimit, now: float) -> float:
        """Take a start slot (0.0) or say how long until one; time spent held back."""
        wait = limiter.wait(now)
        if wait:
            if self._held_since is None:
                self._held_since = now
        elif self._held_since is not None:
            self.statistics.rate_limited += now - self._held_since
            self._held_since = None
        return wait

    def _expire_overdue(self, deadlines: Deadlines, now: float) -> None:
        """Time out the batches running past ``timeout``."""
        timeout = deadlines.timeout
        for batch in deadlines.overdue(now):
            started = batch.started
            if not self._backend_of(batch).expire(batch):
                # It finished meanwhile (it is in the completions queue), or it began
                # later than the run knew (the backend's own clock): not over yet.
                if batch.started is not None and started is not None and batch.started > started:
                    deadlines.next_check = min(deadlines.next_check, batch.started + timeout)
                continue
            deadlines.back(batch)
            started = batch.started
            assert started is not None
            batch.values = [None] * len(batch.items)
            batch.errors = {
                0: Timeout(
                    f"the call ran past timeout={timeout:g}s; "
                    f"{self._backend_of(batch).timeout_action}"  # (read after expire)
                )
            }
            batch.elapsed = now - started
            self._completions.put(batch)  # settled like any completion
        self.statistics.abandoned = self.task.abandoned

    def _send(self, batch: Batch) -> None:
        if self._deadlines is not None:
            self._deadlines.sent(batch, self._clock())
        if not self._owns_backend:
            self._sent[id(batch)] = batch
        if self._watching:
            batch.sent = self._clock()
        batch.via = self._via
        pilot = self._pilot
        if pilot is not None and pilot.sample is None:  # (auto: items that must pickle)
            pilot.sample = batch.items[:8]
        self._in_backend += 1
        self._batches_sent += 1
        self._in_flight += len(batch.items)
        self._backend.submit(batch)

    # -- completion ------------------------------------------------------

    def _deliver_skipped(self) -> Iterator[Batch]:
        """Deliver the batches the journal skipped (they never went to the backend)."""
        skipped = self._ready
        while skipped:
            for done in self._delivery.settled(skipped.popleft(), set()):
                self._pending_items -= len(done.items)
                yield done

    def _complete(self, batch: Batch) -> Iterator[Batch]:
        """Settle a batch back from the backend; yield what is ready for delivery."""
        if not batch.piece:  # (a piece: its batch's other items still run, it is still out)
            if batch.via == self._via:  # (_count_back inline: the hot path)
                self._in_backend -= 1
            else:  # (it went out before the run moved to another backend)
                self._in_previous -= 1
        self._in_flight -= len(batch.items)
        if self._values_unchecked:
            self._check_first_value(batch)
        if self._deadlines is not None:
            self._deadlines.back(batch)
        if self._sent:
            self._sent.pop(id(batch), None)
            self.task.cost = self.statistics.latency.mean  # (a shared pool's fairness)
        pilot = self._pilot
        if pilot is not None and (batch.errors or pilot.rerouted):
            # (auto: its items that could not go to a worker process run on threads first)
            settled = pilot.came_back(batch)
            if settled is None:
                return
            batch = settled
        size = len(batch.items)
        retried: set[int] = set()
        final: list[Failure] | None = None
        timed_out = False
        uncalled = 0
        if batch.errors:
            timed_out = timed_out_in(batch.errors)
            retried, final, uncalled = self._settlement.settle(batch)
        if self._watching or self._settlement.throttled:
            self._tell_slowdown(batch, timed_out)
        stats = self.statistics
        stats.add_batch(size - len(retried), size - uncalled, batch.elapsed, final)
        if self._stop_rules_on:
            self._rules.note(batch, retried)
        self._sizer.completed(size, batch.elapsed, batch.nbytes)
        if batch.parent is not None and not retried:
            stats.retrying -= 1
        yield from self._delivery.settled(batch, retried)
        if pilot is not None:
            # (once the batch reached delivery: measuring reads files and clocks, each
            # a wait for the GIL behind CPU-bound calls, and a Ctrl-C there lost it)
            pilot.completed(batch)
            if pilot.idle:
                self._pilot = None
        if stats.stop_reason is None and self._stop_rules_on:
            reason = self._rules.reason(stats.failed)
            if reason is not None:
                self._stop(reason)
        if stats.stop_reason is not None and self._retries:
            for given_up in self._settlement.give_up():
                yield from self._delivery.settled(given_up, set())

    # -- backend="auto" (see _autopilot) ------------------------------------

    @property
    def _calls_running(self) -> int:
        """Calls started and not finished, about (on threads, a batch out is a call)."""
        return min(self._in_backend, self._workers)

    def _switch_to(self, backend: Backend, workers: int) -> None:
        """New batches go to ``backend`` (``workers``); those out finish where they are."""
        self._previous.append(self._backend)
        self._backend = backend
        self._items_are_calls = backend.concurrent_items
        self._via += 1
        self._in_previous += self._in_backend
        self._in_backend = 0
        self._resize(workers)

    def _send_back_to(self, via: int, batch: Batch) -> None:
        """Send ``batch`` to a backend the run moved from (``via``: which; its threads
        run the items a worker process could not be sent)."""
        batch.via = via
        if self._deadlines is not None:
            self._deadlines.sent(batch, self._clock())
        if not self._owns_backend:
            self._sent[id(batch)] = batch
        self._in_previous += 1
        self._in_flight += len(batch.items)
        self._previous[via].submit(batch)

    def _resize(self, workers: int) -> None:
        """The run's batches now go to ``workers`` workers."""
        self._workers = workers
        self._sizer = self._new_sizer(workers)
        self._sizer.hold(not self._queueing)
        if self._outranking:
            self._sizer.queue_ahead()
        self._claiming = self.task.expecting and self._may_outrank()

    def _may_outrank(self) -> bool:
        """Whether the run shares its workers with runs it may outrank (a Pool's threads or
        processes; on asyncio a batch's items are handed out one by one, each at once)."""
        return (
            not self._owns_backend
            and not self._items_are_calls
            and hasattr(self._backend, "waiting_below")
        )

    def _outrank(self) -> None:
        """(A Pool's run, while its input has more) queue ahead of lower-priority work.

        A free worker takes the head of the highest-priority lane with work.
        Until its first round came back (the sizer) and its round trips
        proved no server limits it (the slowdown), a run keeps no batch
        queued ahead of the workers; and once it does, a batch per worker
        covers this thread's turnaround of a batch only if the calls last
        longer than that (a thread that waits for the GIL behind CPU-bound
        calls, or for a core, falls behind short ones). Either way a worker
        that ends one of its calls finds its lane empty and takes the
        lower-priority work waiting there, before this thread sends the
        next. So the run queues ahead at once when it finds such work
        waiting as it warms up, and a batch more for each time the lanes
        saw a worker take it while its lane was empty (``Task.passed_over``;
        the window bounds the queue, and a refusal or a rate limit still
        ends it).
        """
        task = self.task
        missed = task.passed_over - self._passes_seen
        if missed:
            self._passes_seen += missed
            self._outranking = True
            self._sizer.queue_ahead()
            self._sizer.deepen(missed)
            self._obey_slowdown()
        elif (
            not self._outranking
            and (self._sizer.warming or not self._queueing)
            and self._backend.waiting_below(task.priority)  # type: ignore[attr-defined]
        ):
            self._outranking = True
            self._sizer.queue_ahead()
            self._obey_slowdown()
        if not task.expecting:
            self._claiming = False

    def _backend_of(self, batch: Batch) -> Backend:
        """The backend ``batch`` went to (a run on auto may have moved since)."""
        if batch.via == self._via:
            return self._backend
        return self._previous[batch.via]

    def _check_first_value(self, batch: Batch) -> None:
        """Stop the run if fn returned a coroutine rather than a value (see _checks)."""
        try:
            self._values_unchecked = check_first_value(self.task.fn, batch)
        except TypeError:
            self._returned_coroutines = True
            raise

    def _remaining(self) -> int:
        """Items the input still holds, if it says (lists, ranges); else -1."""
        try:
            left = length_hint(self._reader.items, -1)
        except Exception:  # a broken __length_hint__ only costs the hint
            return -1
        if left >= 0 and self._journal is not None:
            left += self._journal.read_ahead  # (its block: read, not run yet)
        return left

    # -- policies --------------------------------------------------------

    def _tell_slowdown(self, batch: Batch, timed_out: bool = False) -> None:
        """Report a batch's answers to the slowdown; what it says is obeyed before more start."""
        now = self._clock()
        throttled, asked = self._settlement.take_throttled()
        # A call cut off at timeout= (a hung one) is no sample of the server's
        # latency, and its batch's time is the timeout's: not a sample either.
        # (Taken for one, 1% of calls hanging cut 200 calls in flight to 1.)
        calls = throttled if timed_out else len(batch.items)
        stats = self.statistics
        stats.throttle_events += throttled
        self._slowdown.completed(
            now,
            started=batch.sent or now - batch.elapsed,
            calls=calls,
            throttled=throttled,
            latency=batch.elapsed / calls if calls else 0.0,
            retry_after=asked,
            in_flight=self._in_flight if self._items_are_calls else self._in_backend,
        )
        stats.slowest_rate = self._slowdown.lowest
        if not self._watching:  # (watching: the next _dispatch obeys, before it admits)
            self._obey_slowdown()

    def _follow_slowdown(self, now: float) -> float | None:
        """The slowdown's timed changes; seconds until the next one or the pause's end."""
        slowdown = self._slowdown
        if self._reader.exhausted:
            slowdown.ending()
        due = slowdown.due(now, self._not_started() if slowdown.opening else 0)
        self._obey_slowdown()
        if now < slowdown.paused_until:
            return _sooner(due, slowdown.paused_until - now)
        return due

    def _not_started(self) -> int:
        """Batches sent whose calls a private event loop has not all started (its backlog)."""
        taken = getattr(self._backend, "taken", None)
        return 0 if taken is None or not self._owns_backend else self._batches_sent - taken

    def _obey_slowdown(self) -> None:
        slowdown = self._slowdown
        if slowdown.limiter is not self._limiter:  # the first limit on the rate
            self._limiter = slowdown.limiter
            self._sizer.one_by_one()  # starts paced: no queue, batches of one
        watching = slowdown.watching  # (else quiet: it hears only of throttled calls)
        if not watching:
            self._most_in_flight = self._window
        elif slowdown.unlimited and (
            self._items_are_calls
            or self._backend.name in ("processes", "dask")
            or slowdown.proven
            or self._outranking
        ):
            # asyncio, while nothing has limited the run: items queued ahead of the
            # tasks, as many as run, so a task that finishes a call starts the next
            # at once instead of waiting a round trip through this loop for its
            # batch (10-15% slower at 10,000 x 0.1 s). The first refusal ends it.
            # Processes too: a batch per worker is sent ahead and one more waits in
            # the backend (its lanes, for a Pool), so a worker that finishes one starts
            # the next at once and the dispatcher sends it another without a round
            # trip through this thread (which cost a 2-worker run of 40 x 10 ms calls
            # 5-10%); CPU-bound calls rarely meet a server.
            # Dask too: a cluster's thread that waits for its next task through the
            # driver and the scheduler idles (20,000 x 10 ms on 100 threads: 10-15 of
            # ~235 thread-seconds between batches; ~1 with a second batch queued).
            # Threads once PROVEN round trips came back without a refusal (a server
            # limit is met in the first few: 100 threads spend 200 a second in two).
            # A Pool's run that outranks work waiting for the workers, at once (_outrank).
            sizer = self._sizer
            self._most_in_flight = min(
                sizer.ahead * slowdown.concurrency + sizer.deeper, self._window
            )
        else:
            self._most_in_flight = slowdown.concurrency
        if slowdown.opening and self._items_are_calls:
            # The opening (asyncio): a batch is at most an eighth of the calls allowed,
            # so the first answers come back, and are heard, before the next doubling.
            self._opening_batch = max(1, slowdown.concurrency // OPENING_SHARE)
            self._opening_room = 8 * OPENING_SHARE
        else:
            self._opening_batch = 0
        pilot = self._pilot
        if pilot is not None and pilot.cap is not None:  # (auto, while it measures)
            self._most_in_flight = min(self._most_in_flight, pilot.cap)
        queueing = not watching or self._most_in_flight > slowdown.concurrency
        if queueing != self._queueing:
            self._queueing = queueing
            self._sizer.hold(not queueing)
        self._watching = watching

    def _stop(self, reason: str) -> None:
        self.statistics.stop_reason = reason
        self._reader.stop()  # nothing more is read; what is in flight finishes
        halt = getattr(self._backend, "halt", None)  # (Dask: its tasks' unstarted items)
        if halt is not None:
            halt(self.task)
        self._wind_down()

    # -- the journal -----------------------------------------------------

    def delivered(self, batch: Batch, count: int | None = None) -> None:
        """The consumer got the outcomes of ``batch``: count them for the Report, and
        record them in the journal.

        ``count``: only the first ``count`` of them reached it (the consumer left
        during the batch). Called by the consumer's side (or at once by
        ``run``), in the consuming thread, once per delivered batch.
        """
        self.receiving = None
        cut = count is not None and count < len(batch.items)  # (the consumer left in it)
        if cut:
            self._take_back(batch, count or 0, self.statistics)
        if batch.failures and batch.skipped is None:
            self._got_failures(batch, len(batch.items) if count is None else count, self.statistics)
        journal = self._journal
        if journal is None or batch.skipped is not None:
            return  # (skipped items are final in the journal already)
        if cut:
            if not count:
                return
            batch = batch.prefix(count)
        if self._parked:
            self._ready.extend(self._parked.release(batch))
        if journal.closed:
            return
        if self.before_record is not None:
            try:
                self.before_record()
            except BaseException:  # (the command's lines did not reach its file: not recorded,
                # nor counted, so the run's row says what it recorded)
                self._take_back(batch, 0, self.statistics)
                self.statistics.forget(list((batch.failures or {}).values()))
                raise
        journal.record(batch, set())

    @staticmethod
    def _got_failures(batch: Batch, count: int, stats: RunStatistics) -> None:
        """The failures among the first ``count`` outcomes of ``batch`` reached the consumer."""
        assert batch.failures is not None
        failures = sorted(batch.failures.items())  # (a retried item's may come last)
        stats.delivered([failure for index, failure in failures if index < count])

    @staticmethod
    def _take_back(batch: Batch, start: int, stats: RunStatistics) -> None:
        """Uncount the outcomes of ``batch`` from ``start`` on: nobody got them.

        A batch held for its turn (ordered) has its items still waiting for a
        retry uncounted already: they are among ``stats.retrying``.
        """
        if batch.skipped is not None:
            stats.take_back(0, [], batch.skipped[start:])
            return
        failures = [f for index, f in (batch.failures or {}).items() if index >= start]
        counted = len(batch.items) - start - batch.pending
        if batch.attempts:  # (in order: the items that were retried)
            retried = sum(tries > 1 for index, tries in batch.attempts.items() if index >= start)
        else:  # (as completed: a retried item is a batch of its own)
            retried = counted if batch.attempt > 1 else 0
        stats.take_back(counted - len(failures), failures, [], retried)

    def _take_back_undelivered(self, stats: RunStatistics) -> None:
        """Uncount what settled but was not delivered (yet: or ever, once the consumer left)."""
        receiving = self.receiving  # (the consumer is in this batch, or left it)
        if receiving is not None:
            batch, items = receiving
            got = len(batch.items) - length_hint(items)
            self._take_back(batch, got, stats)
            if batch.failures and batch.skipped is None:
                self._got_failures(batch, got, stats)
        for batch in (*self._delivery.held(), *self._ready, *self._parked.batches()):
            self._take_back(batch, 0, stats)
        stats.take_back_retrying()

    def _let_go(self) -> None:
        """The consumer left: drop the outcomes it will never get (values, Failures)."""
        self.receiving = None
        self._delivery.drop()
        self._ready.clear()
        self._parked = Parking()
        self._timers.heap.clear()  # (retries that will not run)

    # -- results ---------------------------------------------------------

    @property
    def elapsed(self) -> float:
        """Seconds since the run started (until it finished, once it has)."""
        if self._started is None:
            return 0.0
        end = self._finished if self._finished is not None else self._clock()
        return end - self._started

    @property
    def live(self) -> dict[str, Any]:
        """Figures for a live display; read from any thread, one batch behind at worst."""
        stats = self.statistics
        latency = stats.latency
        return {
            "done": stats.total,
            "skipped": stats.skipped + stats.duplicates,  # (done, not run: no part of a rate)
            "failed": stats.failed,
            "not_run": stats.not_run,
            "retrying": stats.retrying,
            "in_flight": self._in_flight,
            "failing_alike": stats.failing_alike(),
            "p50": latency.percentile(50),
            "p95": latency.percentile(95),
            "slowdown": self._slowdown.summary(),
        }

    @property
    def journal_run(self) -> int:
        """The journal's id of this run (0: no journal, or not opened)."""
        return self._journal.run_id if self._journal is not None else 0

    @property
    def journal_closed_as(self) -> str | None:
        """How the journal recorded this run's end (None: no journal, or it could not)."""
        return self._journal.closed_as if self._journal is not None else None

    def report(self) -> Report:
        """A Report of everything delivered so far."""
        stats = self.statistics
        if self._started is not None and self._finished is None:  # (still going)
            stats = stats.copy()
            self._take_back_undelivered(stats)
        return Report.from_statistics(stats, self.elapsed)


def _sooner(a: float | None, b: float | None) -> float | None:
    """The nearer of two waits, None meaning "no wait due"."""
    if a is None:
        return b
    return a if b is None else min(a, b)
