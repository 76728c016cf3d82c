"""Stop rules: end a run that is clearly broken (``stop_after_failures``, ``..._rate``).

Stopping reads no more items and lets running calls finish; an item that
failed with retries left is not retried, and ends not run (a resume runs it:
see ``_settlement.retry_stopped``). Nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque

from ._batch import Batch
from ._options import Options
from ._stats import not_run_cause

__all__ = ["StopRules"]


class StopRules:
    """Watches final outcomes; :meth:`reason` says why the run must stop, if it must.

    >>> from manyhands._options import Options
    >>> rules = StopRules(Options(stop_after_failures=3))
    >>> rules.reason(failed=2) is None, rules.reason(failed=3)
    (True, 'stop_after_failures=3: 3 items had failed')
    """

    def __init__(self, options: Options) -> None:
        self._max_failures = options.stop_after_failures
        self._share = options.stop_rate_share
        self._recent: deque[bool] | None = None  # last final outcomes: failed?
        self._recent_failed = 0
        if self._share is not None:
            self._recent = deque(maxlen=options.failure_rate_window)

    @property
    def watching(self) -> bool:
        """Whether any rule is on (else nothing needs to be noted)."""
        return self._max_failures is not None or self._recent is not None

    def note(self, batch: Batch, retried: set[int]) -> None:
        """Count the final outcomes of a settled batch (not the items tried again, nor
        the items never called: their function did not fail)."""
        recent = self._recent
        if recent is None:
            return
        failures = batch.failures or {}
        for index in range(len(batch.items)):
            if index in retried:
                continue
            failure = failures.get(index)
            if failure is not None and not_run_cause(failure) is not None:
                continue
            if len(recent) == recent.maxlen and recent[0]:
                self._recent_failed -= 1
            failed = failure is not None
            recent.append(failed)
            self._recent_failed += failed

    def reason(self, failed: int) -> str | None:
        """Why the run must stop now (``failed``: items whose call failed for good so
        far, not those never called), or None."""
        if self._max_failures is not None and failed >= self._max_failures:
            items = "item had" if failed == 1 else "items had"
            return f"stop_after_failures={self._max_failures}: {failed:,} {items} failed"
        recent = self._recent
        if recent is not None and len(recent) == recent.maxlen:
            assert self._share is not None
            if self._recent_failed / len(recent) > self._share:
                return (
                    f"stop_after_failure_rate={self._share:g}: "
                    f"{self._recent_failed} of the last {len(recent)} items failed"
                )
        return None
