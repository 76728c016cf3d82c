"""The engine: one loop that admits items, dispatches batches and delivers them.

::

    items ──▶ admission ─────────────▶ backend ──▶ completions ──▶ delivery
              (window, batch size,      (threads)   (SimpleQueue)   (ordered or
               input errors)                                         as completed)

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
  ~1,000 while a 20 ms call travels alone;
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

from collections.abc import Callable, Generator, Iterator
from itertools import islice
from operator import length_hint
from queue import SimpleQueue
from time import monotonic
from typing import Any

from ._backends import Backend
from ._batch import EXECUTE_CODE, Batch
from ._exceptions import InputError
from ._options import Options
from ._outcome import Failure
from ._report import Report
from ._stats import RunStatistics

__all__ = ["Engine"]

TARGET_BATCH_SECONDS = 0.002
DISPATCH_SECONDS = 4e-6  # GIL time to dispatch and settle one batch, measured on CPython 3.11
LOAD_SHARE = 0.02
STRAGGLE_SHARE = 0.02  # of the run so far, when the input's length is unknown
MAX_BATCH = 1024


class Engine:
    """Runs ``fn`` over ``items`` on ``backend``; iterate :meth:`batches` to drive it."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        items: Iterator[Any],
        options: Options,
        backend: Backend,
    ) -> None:
        self._fn = fn
        self._items = items
        self._options = options
        self._backend = backend
        self.statistics = RunStatistics(options.keep_failures)
        self._completions: SimpleQueue[Batch] = SimpleQueue()
        self._window = options.item_window
        self._max_batches = 2 * options.workers
        self._cap = max(1, min(MAX_BATCH, self._window // self._max_batches))
        self._adaptive = options.batch_size is None
        self._batch_size = options.batch_size or 1
        self._work_fit = 1  # batch size the measured time per item calls for
        self._input_fit = self._cap  # batch size the input delivers in time
        self._outstanding = 0  # batches admitted and not yet delivered
        self._outstanding_items = 0
        self._pulled = 0  # items read from the iterable
        self._next_seq = 0
        self._exhausted = False
        self._input_error: BaseException | None = None
        self._started: float | None = None
        self._finished: float | None = None
        self.abandoned_workers = 0

    # -- driving ---------------------------------------------------------

    def batches(self) -> Generator[Batch, None, None]:
        """Run, yielding finished batches with ``failures`` filled in.

        Raises InputError after the last batch if the iterable raised. Closing
        the generator early (or an exception in it, Ctrl-C included) stops
        admission and shuts the backend down within the grace period.
        """
        self._started = monotonic()
        self._backend.start(self._fn, self._completions.put)
        try:
            if self._options.ordered:
                yield from self._deliver_in_order()
            else:
                yield from self._deliver_as_completed()
        finally:
            self._finished = monotonic()
            self._exhausted = True
            self.abandoned_workers = self._backend.shutdown(self._options.grace)
        if self._input_error is not None:
            raise InputError(self._pulled, self._input_error) from self._input_error

    def _deliver_as_completed(self) -> Iterator[Batch]:
        get = self._completions.get
        while True:
            self._admit()
            if not self._outstanding:
                return
            batch = get()
            self._settle(batch)
            self._outstanding -= 1
            self._outstanding_items -= len(batch.items)
            yield batch

    def _deliver_in_order(self) -> Iterator[Batch]:
        get = self._completions.get
        waiting: dict[int, Batch] = {}  # finished ahead of their turn; bounded by the window
        turn = 0
        while True:
            self._admit()
            if not self._outstanding:
                return
            batch = get()
            self._settle(batch)
            waiting[batch.seq] = batch
            while turn in waiting:
                batch = waiting.pop(turn)
                turn += 1
                self._outstanding -= 1
                self._outstanding_items -= len(batch.items)
                yield batch

    # -- admission -------------------------------------------------------

    def _admit(self) -> None:
        """Read and submit batches while the window has room.

        Stops early to deliver whatever already finished, so a slow iterable
        never holds back finished outcomes.
        """
        completions = self._completions
        while (
            not self._exhausted
            and self._outstanding < self._max_batches
            and self._outstanding_items < self._window
        ):
            if self._outstanding and not completions.empty():
                return
            size = min(self._batch_size, self._window - self._outstanding_items)
            timed = self._adaptive and self._work_fit > 1  # else the rate cannot matter
            chunk: list[Any] = []
            began = monotonic() if timed else 0.0
            try:
                # list.extend keeps the items read before an exception
                chunk.extend(islice(self._items, size))
            except Exception as exc:  # the user's iterable broke: InputError at the end
                self._input_error = exc
                self._exhausted = True
            self._pulled += len(chunk)
            if len(chunk) < size:
                self._exhausted = True
            elif timed:
                self._limit_to_input_rate(size, monotonic() - began)
            if chunk:
                self._submit(chunk)
            if self._exhausted:
                self._backend.wind_down()

    def _submit(self, chunk: list[Any]) -> None:
        batch = Batch(self._next_seq, chunk)
        self._next_seq += 1
        self._outstanding += 1
        self._outstanding_items += len(chunk)
        self._backend.submit(batch)

    def _limit_to_input_rate(self, size: int, seconds: float) -> None:
        if seconds > TARGET_BATCH_SECONDS:
            self._input_fit = max(1, int(size * TARGET_BATCH_SECONDS / seconds))
        elif size >= self._input_fit:
            self._input_fit = min(2 * self._input_fit, self._cap)
        self._batch_size = min(self._work_fit, self._input_fit)

    # -- completion ------------------------------------------------------

    def _settle(self, batch: Batch) -> None:
        """Turn a finished batch's errors into Failures and account for it."""
        size = len(batch.items)
        failures: list[Failure] | None = None
        if batch.errors:
            batch.failures = {
                index: _as_failure(batch.items[index], error, batch.attempt)
                for index, error in batch.errors.items()
            }
            batch.errors = None
            failures = list(batch.failures.values())
        self.statistics.add_batch(size, batch.elapsed, failures)
        if self._adaptive and size:
            self._work_fit = max(1, min(self._fit(batch.elapsed / size), 2 * size, self._cap))
            self._batch_size = min(self._work_fit, self._input_fit)

    def _fit(self, per_item: float) -> int:
        """The batch size that items taking ``per_item`` seconds call for."""
        if per_item <= 0:
            return self._cap
        wanted = max(
            TARGET_BATCH_SECONDS / per_item,
            self._options.workers * DISPATCH_SECONDS / (LOAD_SHARE * per_item),
        )
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

    def report(self) -> Report:
        """A Report of everything delivered so far."""
        return Report.from_statistics(self.statistics, self.elapsed)


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
