"""The engine: one loop that admits items, dispatches batches and delivers them.

::

    items ──▶ admission ──────────────▶ backend ──▶ completions ──▶ delivery
              (window, batch size,       (threads)   (SimpleQueue)   (ordered or
               rate limit, pauses,           ▲              │         as completed)
               stop rules, input errors)     │              ▼
                                         retry timers ◀── settle (failures,
                                         (a heap: a waiting     retry policy,
                                          item holds no worker)  statistics)

The loop runs in the consuming thread (the caller of ``run``, or whoever
iterates ``map``). That keeps the user's iterable in the thread that created
it (a sqlite cursor or a thread-bound client works), makes Ctrl-C land here
rather than in a worker, and needs no lock: the only shared structure is the
completions queue. The price: while the iterable blocks (a slow stream), the
outcomes that finish meanwhile wait for it; outcomes already finished are
always delivered before the engine asks the iterable for more.

Batch size adapts to the measured time per item. Two costs pull it up:

- per-batch overhead against the work: a batch should take about
  ``TARGET_BATCH_SECONDS`` in a worker, so a 100 ns task travels in batches of
  thousands (at most ``MAX_BATCH``, and a share of the window per worker)
  while a 20 ms call travels alone;
- the engine's own share of the GIL: every batch costs ~``DISPATCH_SECONDS`` of
  serialized bookkeeping, and with many workers finishing short calls that
  adds up (50 workers on 1 ms calls: 18% of the GIL at batch size 1), so the
  size keeps that share near ``LOAD_SHARE``.

Three limits hold it down: it grows at most twofold per finished batch (slow
items after fast ones cost little); it never outgrows what the input delivers
in ``TARGET_BATCH_SECONDS`` (a trickling stream is not held back to fill a
batch); and it shrinks near the end so that the last batches do not straggle,
judged from the iterator's ``__length_hint__`` when it offers one (lists,
ranges) and otherwise by keeping a batch's duration a small part of the run
so far.
"""

from __future__ import annotations

import contextlib
import heapq
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Generator,
    Iterator,
)
from itertools import count, islice
from operator import length_hint
from queue import Empty, SimpleQueue
from time import monotonic
from typing import TYPE_CHECKING, Any

from ._backends import Backend
from ._batch import EXECUTE_CODE, Batch
from ._exceptions import InputError, JournalError, ManyhandsError, Timeout
from ._options import Options
from ._outcome import DUPLICATE, Failure
from ._progress import Progress, progress_wanted
from ._rate import RateLimit
from ._report import Report
from ._retry import matches, retry_after_of
from ._slowdown import Slowdown
from ._stats import RunStatistics

if TYPE_CHECKING:
    from ._aio import AsyncFeed, LoopQueue
    from ._journal import Journal

__all__ = ["Engine"]

TARGET_BATCH_SECONDS = 0.002
DISPATCH_SECONDS = 4e-6  # GIL time to dispatch and settle one batch, measured on CPython 3.11
LOAD_SHARE = 0.02
STRAGGLE_SHARE = 0.02  # of the run so far, when the input's length is unknown
MAX_BATCH = 4096  # (a worker process with 2 batches of 1,024 ahead starved between GIL switches)
BATCH_BYTES = 1 << 20  # a batch's items or results, pickled (processes): memory per batch sent
FIRST_WAVE_BATCHES = 512  # (asyncio) batches the first `workers` calls are split into


class Engine:
    """Runs ``fn`` over ``items`` on ``backend``; iterate :meth:`batches` to drive it."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        items: Iterator[Any],
        options: Options,
        backend: Backend,
        total: int | None = None,
        open_journal: Callable[[], Journal] | None = None,
    ) -> None:
        self._fn = fn
        self._total = total  # for the progress display's ETA
        self._open_journal = open_journal  # opened when the run starts, closed when it ends
        self._journal: Journal | None = None
        self._ready: deque[Batch] = deque()  # skipped by the journal: delivered without running
        self._items = items
        self._options = options
        self._backend = backend
        self.statistics = RunStatistics(options.keep_failures)
        self._completions: SimpleQueue[Batch] | LoopQueue[Batch] = SimpleQueue()
        self.async_source: AsyncIterable[Any] | None = None  # amap over an async iterable
        self._feed: AsyncFeed | None = None
        self._window = options.item_window
        self._retry = options.retry_policy
        self._limiter = RateLimit(options.rate_per_second) if options.rate_per_second else None
        # With a timeout, the engine times batches out itself unless the backend
        # applies the timeout to each call (asyncio).
        self._timeout = None if backend.handles_timeouts else options.timeout
        self._running: dict[int, Batch] = {}  # with a timeout: batches sent, by id
        self._next_check = 0.0  # with a timeout: when a running batch may expire next
        # A backend that runs a batch's items at the same time (asyncio) needs no
        # batch per worker, and its last batches cannot straggle.
        self._concurrent_items = backend.concurrent_items
        self._work_fit = 1  # batch size the measured time per item calls for
        self._size_batches(options)
        self._input_fit = self._cap  # batch size the input delivers in time
        self._in_backend = 0  # batches submitted and not yet back
        self._in_flight = 0  # items in those batches
        self._pending_items = 0  # items admitted and not yet delivered
        self._pulled = 0  # items read from the iterable
        self._next_seq = 0
        self._exhausted = False  # no more items will be read (end, input error or stop)
        self._input_error: BaseException | None = None
        self._timers: list[tuple[float, int, Batch]] = []  # retries by due time
        self._tiebreak = count()
        self._held: dict[int, Batch] = {}  # ordered: waiting for their turn or a retry
        self._turn = 0
        self._slowdown = Slowdown(options.rate_per_second, self._limiter, self._median_call)
        self._epoch = 0  # the slowdown's epoch, copied at each change
        self._held_since: float | None = None  # since when the rate limit holds a start back
        self._recent: deque[bool] | None = None  # last outcomes, for a failure-rate stop rule
        self._recent_failed = 0
        if options.stop_after_failure_rate is not None:
            self._recent = deque(maxlen=options.failure_rate_window)
        self._started: float | None = None
        self._finished: float | None = None

    def _size_batches(self, options: Options) -> None:
        """How many batches may be out, and how big they may grow."""
        per_batch = 4 if self._concurrent_items else 2 * options.workers
        self._cap = max(1, min(MAX_BATCH, self._window // per_batch))
        # No queue in front of the workers until the first round of calls is back:
        # if the first answers say "slow down", no queued burst follows them.
        self._max_batches = options.workers
        self._warm_up = options.workers  # completions to wait for before queueing
        # A rate limits starts, so an item must start when admitted: batches of
        # one, and no queue in front of the workers that could release a burst
        # later. A timeout is per item: one item per batch too.
        if self._limiter is not None or self._timeout is not None:
            self._cap = 1
        self._adaptive = (
            options.batch_size is None and self._limiter is None and self._timeout is None
        )
        self._batch_size = 1 if self._cap == 1 else (options.batch_size or 1)
        if self._adaptive and self._concurrent_items:
            # Nothing is measured yet, but the first wave is `workers` calls
            # however they are grouped: keep it to FIRST_WAVE_BATCHES batches
            # (10,000 calls in flight: batches of 20, not 10,000 batches of one).
            # The warm-up then counts in those batches: still no queue.
            first = min(self._cap, -(-options.workers // FIRST_WAVE_BATCHES))
            self._batch_size = self._work_fit = first
            self._max_batches = self._warm_up = -(-options.workers // first)

    # -- driving ---------------------------------------------------------

    def batches(self) -> Generator[Batch, None, None]:
        """Run, yielding finished batches with ``failures`` filled in.

        Raises InputError after the last batch if the iterable raised. Closing
        the generator early (or an exception in it, Ctrl-C included) stops
        admission and shuts the backend down within the grace period.
        """
        progress = self._begin()
        completed = False
        try:
            self._backend.start(self._fn, self._completions.put)
            try:
                yield from self._drive()
                completed = True
            finally:
                self._mark_finished()
                self._backend.shutdown(self._options.grace)
                if self._journal is not None:
                    self._close_journal(self._journal, completed)
        finally:
            if progress is not None:
                progress.close()
        self._raise_input_error()

    def _begin(self) -> Progress | None:
        """Open the journal, start the clock and the progress display (if shown)."""
        if self._open_journal is not None:
            self._journal = self._open_journal()
        self._started = monotonic()
        return Progress(self, self._total) if progress_wanted(self._options.progress) else None

    def _mark_finished(self) -> None:
        self._finished = monotonic()
        if self._held_since is not None:
            self.statistics.rate_limited += self._finished - self._held_since
        self._exhausted = True

    def _deliver_skipped(self) -> Iterator[Batch]:
        """Deliver the batches the journal skipped (they never went to the backend)."""
        skipped = self._ready
        while skipped:
            for done in self._deliver(skipped.popleft(), set()):
                self._pending_items -= len(done.items)
                yield done

    def _raise_input_error(self) -> None:
        error = self._input_error
        if isinstance(error, ManyhandsError):  # from the journal: raised as it is
            raise error
        if error is not None:
            raise InputError(self._pulled, error) from error

    def _close_journal(self, journal: Journal, completed: bool) -> None:
        stats = self.statistics
        if completed:
            status = "stopped" if stats.stop_reason else "finished"
            if self._input_error is not None:
                status = "input error"
            journal.close(status, stats.counts())
            return
        # Interrupted: keep what finished during the grace period, then close
        # without masking the exception on its way out.
        try:
            # What cannot be written runs again next time.
            with contextlib.suppress(JournalError):
                while not self._completions.empty():
                    finished = self._completions.get_nowait()
                    if finished is not None:
                        journal.record_successes(finished)
                journal.close("interrupted", stats.counts())
        finally:
            journal.abandon()  # no-op once closed: the lock is released whatever happened

    async def abatches(self) -> AsyncGenerator[Batch, None]:
        """:meth:`batches` for an async backend on the running loop (``amap``)."""
        from ._aio import AsyncFeed, LoopQueue

        queue: LoopQueue[Batch] = LoopQueue()
        self._completions = queue
        progress = self._begin()
        if self.async_source is not None:
            limit = max(self._window // 4, 1024)
            self._feed = AsyncFeed(self.async_source, limit, lambda: queue.put(None))
            self._items = self._feed
        completed = False
        try:
            self._backend.start(self._fn, queue.put)
            try:
                # The driving loop is inline, not a nested async generator: every
                # layer of `async for` costs each batch a microsecond or so.
                while True:
                    wait = self._dispatch()
                    if self._ready:
                        for done in self._deliver_skipped():
                            yield done
                        continue
                    if self._exhausted and not self._pending_items:
                        break
                    batch = await queue.get(wait)
                    if batch is None:  # more input, or the wait is over
                        continue
                    for ready in self._complete(batch):
                        self._pending_items -= len(ready.items)
                        yield ready
                completed = True
            finally:
                self._mark_finished()
                await self._backend.ashutdown(self._options.grace)  # type: ignore[attr-defined]
                if self._feed is not None:
                    await self._feed.aclose()
                if self._journal is not None:
                    self._close_journal(self._journal, completed)
        finally:
            if progress is not None:
                progress.close()
        self._raise_input_error()

    def _drive(self) -> Iterator[Batch]:
        completions = self._completions
        assert isinstance(completions, SimpleQueue)
        get = completions.get
        skipped = self._ready
        while True:
            wait = self._dispatch()
            if skipped:
                yield from self._deliver_skipped()
                continue
            if self._exhausted and not self._pending_items:
                return
            if wait is None:
                if not self._in_backend:  # pragma: no cover - would wait forever
                    raise RuntimeError("manyhands engine: nothing in flight and nothing due")
                batch = get()
            else:
                try:
                    batch = get(timeout=wait)
                except Empty:
                    continue
            for ready in self._complete(batch):
                self._pending_items -= len(ready.items)
                yield ready

    # -- dispatch --------------------------------------------------------

    def _dispatch(self) -> float | None:
        """Submit what may start now; return seconds until more may (None: on a completion).

        With a timeout, also the time until the next running batch may expire,
        counted after admission: what was just sent may be the only one running.
        """
        wait = self._start_due()
        if self._running:
            wait = _sooner(wait, max(self._next_check - monotonic(), 0.0))
        return wait

    def _start_due(self) -> float | None:
        if not (self._timers or self._limiter or self._running):
            self._admit()  # the common case: no clock read
            return None
        now = monotonic()
        due: float | None = None
        if self._running and now >= self._next_check:
            self._expire_overdue(now)
        if self.statistics.throttle_events:
            due = self._slowdown.recover(now)
            self._epoch = self._slowdown.epoch
        timers = self._timers
        while timers and self._in_backend < self._max_batches:
            if timers[0][0] > now:
                due = _sooner(due, timers[0][0] - now)
                break
            if self._limiter is not None and (slot := self._slot(self._limiter, now)):
                return _sooner(due, slot)
            self._send(heapq.heappop(timers)[2])
        if self._limiter is None:
            self._admit()
            return due
        return _sooner(due, self._admit_limited(self._limiter))

    def _admit(self) -> None:
        """Read and submit batches while the window has room.

        Stops early to deliver whatever already finished, so a slow iterable
        never holds back finished outcomes. While batches are out, waits for
        room for a whole batch rather than sending the window's last few items
        as a batch of their own.
        """
        completions = self._completions
        while not self._exhausted and self._in_backend < self._max_batches:
            room = self._window - self._pending_items
            if room <= 0 or (
                self._in_backend and (room < self._batch_size or not completions.empty())
            ):
                return
            size = min(self._batch_size, room)
            timed = self._adaptive and self._work_fit > 1  # else the rate cannot matter
            began = monotonic() if timed else 0.0
            chunk = self._read(size)
            if len(chunk) < size and not self._exhausted:
                return  # an async input has nothing more for now
            if timed and len(chunk) == size:
                self._limit_to_input_rate(size, monotonic() - began)

    def _admit_limited(self, limiter: RateLimit) -> float | None:
        """Admission one item at a time, each when the rate limit allows it to start."""
        while (
            not self._exhausted
            and self._in_backend < self._max_batches
            and self._pending_items < self._window
        ):
            if self._in_backend and not self._completions.empty():
                return None
            wait = self._slot(limiter, monotonic())
            if wait:
                return wait
            if not self._read(1):
                # the slot was taken but nothing started: give it back
                limiter.release()
                if not self._exhausted:
                    return None  # an async input has nothing more for now
        return None

    def _read_journaled(self, journal: Journal, size: int) -> list[Any]:
        """Submit the next items to run; items the journal skips go to delivery."""
        stats = self.statistics
        while not self._exhausted and self._pending_items < self._window:
            room = self._window - self._pending_items
            segment = journal.take(self._items, min(size, room), room)
            self._pulled = journal.pulled
            if segment is None:
                self._exhausted = True
                self._input_error = journal.error
                break
            if not segment.items:  # an async input has nothing more for now
                return []
            batch = Batch(self._next_seq, segment.items)
            batch.keys = segment.keys
            self._next_seq += 1
            self._pending_items += len(segment.items)
            if segment.reasons is None:
                self._send(batch)
                return segment.items
            batch.skipped = segment.reasons
            batch.values = segment.values or []
            batch.failures = segment.failures
            duplicates = segment.reasons.count(DUPLICATE)
            stats.duplicates += duplicates
            stats.skipped += len(segment.items) - duplicates
            self._ready.append(batch)
        if self._exhausted and not self._timers:
            self._backend.wind_down()
        return []

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

    def _read(self, size: int) -> list[Any]:
        """Read up to ``size`` items and submit them as one batch."""
        if self._journal is not None:
            return self._read_journaled(self._journal, size)
        chunk: list[Any] = []
        try:
            chunk.extend(islice(self._items, size))  # keeps the items read before an exception
        except Exception as exc:  # the user's iterable broke: InputError at the end
            self._input_error = exc
            self._exhausted = True
        self._pulled += len(chunk)
        if len(chunk) < size and not (self._feed is not None and self._feed.waiting):
            self._exhausted = True
        if chunk:
            batch = Batch(self._next_seq, chunk)
            self._next_seq += 1
            self._pending_items += len(chunk)
            self._send(batch)
        if self._exhausted and not self._timers:
            self._backend.wind_down()
        return chunk

    def _expire_overdue(self, now: float) -> None:
        """Time out the batches running past ``timeout``; note when the next may be due."""
        timeout = self._timeout
        assert timeout is not None
        soonest = now + timeout  # a batch not started yet expires no sooner
        for batch in list(self._running.values()):
            started = batch.started
            if started is None:
                continue
            deadline = started + timeout
            if deadline > now:
                soonest = min(soonest, deadline)
            elif self._backend.expire(batch):
                batch.values = [None] * len(batch.items)
                batch.errors = {
                    0: Timeout(
                        f"the call ran past timeout={timeout:g}s; {self._backend.timeout_action}"
                    )
                }
                batch.elapsed = now - (batch.started or started)
                self._completions.put(batch)  # settled like any completion
            elif batch.started is not None and batch.started > started:
                # It began later than the engine knew (the backend's clock): not over yet.
                soonest = min(soonest, batch.started + timeout)
        self.statistics.abandoned = self._backend.abandoned
        self._next_check = max(soonest, now + 0.001)

    def _send(self, batch: Batch) -> None:
        if self._timeout is not None:
            self._running[id(batch)] = batch
            if len(self._running) == 1:
                self._next_check = monotonic() + self._timeout
        batch.epoch = self._epoch
        self._in_backend += 1
        self._in_flight += len(batch.items)
        self._backend.submit(batch)

    def _limit_to_input_rate(self, size: int, seconds: float) -> None:
        if seconds > TARGET_BATCH_SECONDS:
            self._input_fit = max(1, int(size * TARGET_BATCH_SECONDS / seconds))
        elif size >= self._input_fit:
            self._input_fit = min(2 * self._input_fit, self._cap)
        self._batch_size = min(self._work_fit, self._input_fit)

    # -- completion ------------------------------------------------------

    def _complete(self, batch: Batch) -> Iterator[Batch]:
        """Settle a batch back from the backend; yield what is ready for delivery."""
        self._in_backend -= 1
        self._in_flight -= len(batch.items)
        if self._running:
            self._running.pop(id(batch), None)
        if self._warm_up:
            self._warm_up -= 1
            if not self._warm_up and self._limiter is None:
                self._max_batches = 2 * self._options.workers
        size = len(batch.items)
        retried: set[int] = set()
        final: list[Failure] | None = None
        if batch.errors:
            retried, final = self._settle_errors(batch)
        self.statistics.add_batch(size - len(retried), size, batch.elapsed, final)
        if self._recent is not None:
            self._note_recent(batch, retried)
        if self._journal is not None:
            self._journal.record(batch, retried)
        if self._adaptive and size:
            fit = min(self._fit(batch.elapsed / size), 2 * size, self._cap)
            if batch.nbytes:  # large items or results: bounded by bytes too
                fit = min(fit, BATCH_BYTES * size // batch.nbytes)
            self._work_fit = max(1, fit)
            self._batch_size = min(self._work_fit, self._input_fit)
        yield from self._deliver(batch, retried)
        if self.statistics.stop_reason is None:
            self._check_stop_rules()
        if self.statistics.stop_reason is not None and self._timers:
            yield from self._give_up_retries()

    def _settle_errors(self, batch: Batch) -> tuple[set[int], list[Failure]]:
        """Turn errors into Failures; schedule the retryable ones; return (retried, final)."""
        assert batch.errors is not None
        retry = self._retry if self.statistics.stop_reason is None else None
        throttle_on = self._options.throttle_on
        retried: set[int] = set()
        final: dict[int, Failure] = {}
        for index, error in batch.errors.items():
            failure = _as_failure(batch.items[index], error, batch.attempt)
            failure.history = batch.history
            exception = failure.exception
            if exception is None:  # from another process: described, not an object
                if failure.retry_after is not None:
                    self._throttle(batch.epoch)
                retryable = retry is not None and retry.retries_failure(failure)
            else:
                if retry_after_of(exception) is not None or (
                    throttle_on is not None and matches(throttle_on, exception)
                ):
                    self._throttle(batch.epoch)
                retryable = retry is not None and retry.retries_error(exception)
            if retryable and retry is not None and batch.attempt <= retry.retries:
                delay = retry.delay(batch.attempt, exception, failure.retry_after)
                self._schedule_retry(batch, index, failure, delay)
                retried.add(index)
            else:
                final[index] = failure
        batch.errors = None
        batch.failures = final or None
        return retried, list(final.values())

    def _schedule_retry(self, batch: Batch, index: int, failure: Failure, delay: float) -> None:
        again = Batch(-1, [batch.items[index]], batch.attempt + 1)
        again.parent = batch.parent or (batch, index)
        again.history = (*batch.history, failure.error_type)
        again.last_failure = failure
        if batch.keys is not None:
            again.keys = [batch.keys[index]]
        if batch.attempt == 1:
            self.statistics.retried += 1
        self.statistics.retrying += 1
        heapq.heappush(self._timers, (monotonic() + delay, next(self._tiebreak), again))

    def _deliver(self, batch: Batch, retried: set[int]) -> Iterator[Batch]:
        if batch.parent is not None:  # a retried item
            if retried:
                return  # tried again later
            self.statistics.retrying -= 1
            if not self._options.ordered:
                yield batch
                return
            parent, index = batch.parent
            parent.values[index] = batch.values[0] if batch.values else None
            if batch.failures:
                parent.failures = parent.failures or {}
                parent.failures[index] = batch.failures[0]
            elif parent.failures:
                parent.failures.pop(index, None)
            parent.attempts = parent.attempts or {}
            parent.attempts[index] = batch.attempt
            parent.pending -= 1
            yield from self._release_in_order()
        elif self._options.ordered:
            batch.pending = len(retried)
            self._held[batch.seq] = batch
            yield from self._release_in_order()
        else:
            yield batch.without(retried) if retried else batch

    def _release_in_order(self) -> Iterator[Batch]:
        held = self._held
        while (batch := held.get(self._turn)) is not None and not batch.pending:
            del held[self._turn]
            self._turn += 1
            yield batch

    def _give_up_retries(self) -> Iterator[Batch]:
        """A stop rule fired: items waiting to be retried end with their last failure."""
        while self._timers:
            batch = heapq.heappop(self._timers)[2]
            assert batch.last_failure is not None
            final = batch.last_failure
            batch.failures = {0: final}
            batch.attempt -= 1  # the planned attempt never ran
            batch.values = [None]
            self.statistics.add_batch(1, 0, 0.0, [final])
            if self._journal is not None:
                self._journal.record(batch, set())
            yield from self._deliver(batch, set())

    # -- policies --------------------------------------------------------

    def _throttle(self, epoch: int) -> None:
        """A call started at ``epoch`` asked to slow down: see :mod:`._slowdown`."""
        stats = self.statistics
        stats.throttle_events += 1
        slowdown = self._slowdown
        succeeded = stats.calls - stats.throttle_events
        if slowdown.signal(epoch, monotonic(), succeeded, self.elapsed):
            self._limiter = slowdown.limiter
            self._max_batches = self._options.workers  # rate-limited: no queue, batches of one
            self._cap = self._batch_size = self._input_fit = 1
            self._adaptive = False
        self._epoch = slowdown.epoch
        stats.slowest_rate = slowdown.lowest

    def _median_call(self) -> float:
        return self.statistics.latency.percentile(50)

    def _note_recent(self, batch: Batch, retried: set[int]) -> None:
        recent = self._recent
        assert recent is not None
        failures = batch.failures or {}
        for index in range(len(batch.items)):
            if index in retried:
                continue
            if len(recent) == recent.maxlen and recent[0]:
                self._recent_failed -= 1
            failed = index in failures
            recent.append(failed)
            self._recent_failed += failed

    def _check_stop_rules(self) -> None:
        options = self._options
        stats = self.statistics
        if options.stop_after_failures is not None and stats.failed >= options.stop_after_failures:
            self._stop(f"stop_after_failures={options.stop_after_failures}: {stats.failed} failed")
        recent = self._recent
        if recent is not None and len(recent) == recent.maxlen:
            limit = options.stop_rate_share
            assert limit is not None
            if self._recent_failed / len(recent) > limit:
                self._stop(
                    f"stop_after_failure_rate={limit:g}: "
                    f"{self._recent_failed} of the last {len(recent)} items failed"
                )

    def _stop(self, reason: str) -> None:
        self.statistics.stop_reason = reason
        self._exhausted = True  # nothing more is read; what is in flight finishes
        self._backend.wind_down()

    def _fit(self, per_item: float) -> int:
        """The batch size that items taking ``per_item`` seconds call for."""
        if per_item <= 0:
            return self._cap
        wanted = max(
            TARGET_BATCH_SECONDS / per_item,
            self._options.workers * DISPATCH_SECONDS / (LOAD_SHARE * per_item),
        )
        if self._concurrent_items:
            return int(wanted)
        try:
            remaining = length_hint(self._items, -1)
        except Exception:  # a broken __length_hint__ only costs the hint
            remaining = -1
        if remaining >= 0:  # leave every worker several batches of what is left
            return int(min(wanted, remaining / (4 * self._options.workers)))
        return int(min(wanted, STRAGGLE_SHARE * self.elapsed / per_item))

    # -- results ---------------------------------------------------------

    @property
    def elapsed(self) -> float:
        """Seconds since the run started (until it finished, once it has)."""
        if self._started is None:
            return 0.0
        end = self._finished if self._finished is not None else monotonic()
        return end - self._started

    @property
    def live(self) -> dict[str, Any]:
        """Figures for a live display; read from any thread, one batch behind at worst."""
        stats = self.statistics
        latency = stats.latency
        return {
            "done": stats.total,
            "failed": stats.failed,
            "retrying": stats.retrying,
            "in_flight": self._in_flight,
            "p50": latency.percentile(50),
            "p95": latency.percentile(95),
        }

    def report(self) -> Report:
        """A Report of everything delivered so far."""
        return Report.from_statistics(self.statistics, self.elapsed)


def _sooner(a: float | None, b: float | None) -> float | None:
    """The nearer of two waits, None meaning "no wait due"."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def _as_failure(item: Any, error: BaseException | Failure, attempt: int) -> Failure:
    if isinstance(error, Failure):
        return error
    tb = error.__traceback__
    if tb is not None and tb.tb_frame.f_code is EXECUTE_CODE:
        # Drop the worker's own frame: the user sees only their code, and the
        # finished frame no longer keeps the whole batch alive through the
        # traceback of a kept Failure.
        tb.tb_frame.clear()
        error.__traceback__ = tb.tb_next
    return Failure.from_exception(item, error, attempt)
