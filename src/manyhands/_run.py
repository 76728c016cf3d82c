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

This module holds the run's state, its two drivers, admission, dispatch and
completion: the hot path. Its other parts are functions that take the run, in
modules of their own, and keep their state in its attributes (read on the hot
path with no indirection): how it obeys the adaptive slowdown
(:mod:`._run_slowdown`), how a Pool's run queues ahead of lower-priority work
(:mod:`._run_outrank`), how a run on auto moves (:mod:`._run_moves`), how it
times out calls (:mod:`._run_timeouts`), what settled and did not reach the
consumer (:mod:`._run_undelivered`), and how it stops and ends (:mod:`._run_end`).
"""

from __future__ import annotations

import functools
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
from ._exceptions import InputError, ManyhandsError
from ._options import Options
from ._outcome import Failure, Outcome
from ._parking import Parking
from ._progress import Progress, progress_wanted
from ._rate import RateLimit
from ._reader import Reader
from ._report import Report
from ._run_end import astop_backend, end_run, mark_finished, stop_backend
from ._run_outrank import may_outrank, outrank
from ._run_slowdown import follow_slowdown, tell_slowdown
from ._run_timeouts import expire_overdue
from ._run_undelivered import delivered_failures, take_back, take_back_undelivered
from ._settlement import Settlement
from ._settlement import timed_out as timed_out_in
from ._signal_waits import WAIT_SLICE
from ._sizing import Sizer
from ._slowdown import Slowdown, sooner
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
            mark_finished(self, completed)
            try:
                if self._backend_started:
                    stop_backend(self)
                if self._returned_coroutines:  # none is recorded, none warns
                    discard_coroutines(self._completions)
            finally:
                if isinstance(feed, ThreadFeed):
                    feed.stop()
                end_run(self, completed, progress)
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
        feed = open_feed(
            self._reader.items,
            self._async_source,
            limit,
            lambda: queue.put(None),
            self._options.input_thread,
        )
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
            mark_finished(self, completed)
            try:
                if self._backend_started:
                    await astop_backend(self, queue)
                if self._returned_coroutines:  # none is recorded, none warns
                    discard_coroutines(self._completions)
                if feed is not None:
                    await feed.aclose()
            finally:
                end_run(self, completed, progress)
        self._raise_input_error()

    def _drive(self) -> Iterator[Batch]:
        completions = cast("Completions", self._completions)  # (the sync driver's)
        get = completions.get
        look = functools.partial(get, True, WAIT_SLICE)
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
            # where the run's end takes it (_run_end); raised as `get()`
            # returned, it lost the batch, whose calls had run.
            # The wait is a slice at most (_signal_waits: a signal another thread
            # took is seen as the slice ends), then the loop looks again.
            if wait is None and not (self._in_backend or self._in_previous or reader.waiting):
                raise RuntimeError("nothing in flight and nothing due")  # pragma: no cover
            try:
                if wait is None or wait >= WAIT_SLICE:
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

    # -- lifecycle (its end: see _run_end) -------------------------------

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
        self._sizer.hold(True)  # (while the slowdown watches: see _run_slowdown)
        self._claiming = self.task.expecting = may_outrank(self)
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

    def _raise_input_error(self) -> None:
        error = self._reader.error
        if isinstance(error, ManyhandsError):  # from the journal: raised as it is
            raise error
        if error is not None:
            hint = self._reader.hint(error)
            raise InputError(self._reader.pulled, error, hint=hint) from error

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
            outrank(self)
        now = self._clock()
        due = self._pilot.look(now) if self._pilot is not None else None
        if deadlines and now >= deadlines.next_check:
            expire_overdue(self, deadlines, now)
        if self._watching:
            due = sooner(due, follow_slowdown(self, now))
            if now < self._slowdown.paused_until:  # everyone waits out a Retry-After
                return sooner(due, deadlines.wait(now)) if deadlines else due
        timers = self._timers
        while (
            timers
            and self._in_backend < self._sizer.max_batches
            and (self._in_flight if self._items_are_calls else self._in_backend)
            < self._most_in_flight
        ):
            wait = timers.wait(now)
            if wait:
                due = sooner(due, wait)
                break
            if self._limiter is not None and (slot := self._slot(self._limiter, now)):
                return sooner(due, slot)
            self._send(timers.pop())
        if self._limiter is None:
            self._admit()
        else:
            due = sooner(due, self._admit_limited(self._limiter))
        if deadlines:
            due = sooner(due, deadlines.wait(self._clock()))
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
            if batch.via == self._via:  # (_run_end's _count_back inline: the hot path)
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
            tell_slowdown(self, batch, timed_out)
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

    # -- a stop rule (the slowdown: see _run_slowdown) --------------------

    def _stop(self, reason: str) -> None:
        """A stop rule fired: nothing more is read or started; the calls out finish."""
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
            take_back(batch, count or 0, self.statistics)
        if batch.failures and batch.skipped is None:
            delivered_failures(batch, len(batch.items) if count is None else count, self.statistics)
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
                take_back(batch, 0, self.statistics)
                self.statistics.forget(list((batch.failures or {}).values()))
                raise
        journal.record(batch, set())
        self.statistics.reran_failed = journal.reran_failed  # (retry_failed: failed before)

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
            take_back_undelivered(self, stats)
        return Report.from_statistics(stats, self.elapsed)
