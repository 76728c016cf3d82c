"""What settled and did not reach the consumer: the Report takes it back.

Outcomes are counted in the run's statistics as they settle (the progress
line and the stop rules read those counts); a Report counts what was
delivered. So it takes back the rest of the batch the consumer is reading,
the batches held for their turn (``ordered``), those the journal skipped or
parked and not yet delivered, and the items waiting for a retry; and it keeps
the failures the consumer got, in the order it got them.
"""

from __future__ import annotations

from operator import length_hint
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._batch import Batch
    from ._run import Run
    from ._stats import RunStatistics

__all__ = ["delivered_failures", "take_back", "take_back_undelivered"]


def delivered_failures(batch: Batch, count: int, stats: RunStatistics) -> None:
    """The failures among the first ``count`` outcomes of ``batch`` reached the consumer."""
    assert batch.failures is not None
    failures = sorted(batch.failures.items())  # (a retried item's may come last)
    stats.delivered([failure for index, failure in failures if index < count])


def take_back(batch: Batch, start: int, stats: RunStatistics) -> None:
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


def take_back_undelivered(run: Run, stats: RunStatistics) -> None:
    """Uncount what settled but was not delivered (yet: or ever, once the consumer left)."""
    receiving = run.receiving  # (the consumer is in this batch, or left it)
    if receiving is not None:
        batch, items = receiving
        got = len(batch.items) - length_hint(items)
        take_back(batch, got, stats)
        if batch.failures and batch.skipped is None:
            delivered_failures(batch, got, stats)
    for batch in (*run._delivery.held(), *run._ready, *run._parked.batches()):
        take_back(batch, 0, stats)
    stats.take_back_retrying()
