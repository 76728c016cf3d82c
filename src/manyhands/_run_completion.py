"""A batch back from the workers: settled, counted, and handed on to delivery.

:meth:`RunCompletion._complete` takes each batch off the completions: its
items' errors settled (retries, final Failures: :mod:`._settlement`), its
answers told to the slowdown while it watches, the statistics and the batch
sizer told, the stop rules consulted (one that fires stops the run:
:meth:`~RunCompletion._stop`), and the batches now ready for the consumer
(in order, if ordered) yielded. Batches the journal skipped are delivered
without running. A mixin of :class:`~._run.Run`, after its dispatch: the
path of each batch, with no call in between.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._checks import check_first_value
from ._run_dispatch import RunDispatch
from ._run_slowdown import tell_slowdown
from ._settlement import timed_out as timed_out_in

if TYPE_CHECKING:
    from ._batch import Batch
    from ._outcome import Failure

__all__ = ["RunCompletion"]


class RunCompletion(RunDispatch):
    """A batch's completion, and a stop rule that fires (see ``Run``)."""

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

    def _check_first_value(self, batch: Batch) -> None:
        """Stop the run if fn returned a coroutine rather than a value (see _checks)."""
        try:
            self._values_unchecked = check_first_value(self.task.fn, batch)
        except TypeError:
            self._returned_coroutines = True
            raise

    # -- a stop rule (the slowdown: see _run_slowdown) --------------------

    def _stop(self, reason: str) -> None:
        """A stop rule fired: nothing more is read or started; the calls out finish."""
        self.statistics.stop_reason = reason
        self._reader.stop()  # nothing more is read; what is in flight finishes
        halt = getattr(self._backend, "halt", None)  # (Dask: its tasks' unstarted items)
        if halt is not None:
            halt(self.task)
        self._wind_down()
