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

This module holds the run's two drivers, its lifecycle, what the consumer
got and what the run reports. The run is one object made of parts, mixins
of it in modules of their own that read and write its state with no call in
between (the hot path): its state, built by its constructor
(:mod:`._run_state`), admission and dispatch (:mod:`._run_dispatch`), and
the completion of each batch (:mod:`._run_completion`). Its other parts are
functions that take the run, in modules of their own, and keep their state
in its attributes: how it obeys the adaptive slowdown
(:mod:`._run_slowdown`), how a Pool's run queues ahead of lower-priority work
(:mod:`._run_outrank`), how a run on auto moves (:mod:`._run_moves`), how it
times out calls (:mod:`._run_timeouts`), what settled and did not reach the
consumer (:mod:`._run_undelivered`), and how it stops and ends (:mod:`._run_end`).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Generator, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any, cast

from ._batch import Batch
from ._checks import discard_coroutines
from ._exceptions import InputError, ManyhandsError
from ._parking import Parking
from ._progress import Progress, progress_wanted
from ._report import Report
from ._run_completion import RunCompletion
from ._run_end import astop_backend, end_run, mark_finished, stop_backend
from ._run_outrank import may_outrank
from ._run_state import Completions, RunHooks
from ._run_undelivered import delivered_failures, take_back, take_back_undelivered
from ._signal_waits import WAIT_SLICE
from ._thread_feed import ThreadFeed

try:  # (what `queue` re-exports; importing `queue` itself costs 0.3 ms of `import manyhands`)
    from _queue import Empty
except ImportError:  # pragma: no cover (Pythons without the C module)
    from queue import Empty

if TYPE_CHECKING:
    from ._aio import LoopQueue

__all__ = ["Completions", "Run", "RunHooks"]

_NEVER = object()  # (a sentinel no completion is)


class Run(RunCompletion):
    """Runs ``fn`` over ``items`` on ``backend``; iterate :meth:`batches` to drive it.

    ``owns_backend``: the backend is this run's private pool (started and
    shut down with the run), else a shared pool's. ``workers``: how many calls
    the backend runs at once. ``consumer``: outcomes go to a consumer (``map``,
    ``amap``), and are recorded in the journal once it got them.
    """

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
