"""Running statistics of a run, kept in memory independent of the input's length."""

from __future__ import annotations

import math
from collections import Counter
from copy import copy as shallow_copy
from typing import Any

from ._exceptions import Timeout, WorkerCrashed
from ._outcome import DUPLICATE, SKIPPED_FAILED, Failure

__all__ = [
    "ALIKE_AFTER",
    "BACKEND_STOPPED",
    "RETRY_STOPPED",
    "RUN_STOPPED",
    "WORKERS_HELD",
    "LatencyHistogram",
    "RunStatistics",
    "not_run_cause",
]

#: Failed items, none succeeded, all with one error type: from then on the
#: progress line and the Report say "every item failed alike" (a bug in fn?).
ALIKE_AFTER = 10

# Why an item was delivered without its call (``Report.not_run_causes``).
RUN_STOPPED = "run stopped"  # a stop rule, Ctrl-C, an exception or break: not begun
RETRY_STOPPED = "retry stopped"  # a stop rule: an item called before, its retry not made
WORKERS_HELD = "workers held"  # threads: every worker held by a call past its timeout
BACKEND_STOPPED = "backend stopped"  # processes: the backend could not go on

# Log-scale buckets: 16 per power of two (about 4.4% apart), from ~1 ns up.
_STEPS_PER_OCTAVE = 16
_OFFSET = 30 * _STEPS_PER_OCTAVE  # bucket 0 is 2**-30 s, about 1 ns
_log2 = math.log2


def not_run_cause(failure: Failure) -> str | None:
    """Why ``failure``'s item was delivered without its call being made; None if it was made.

    Told by manyhands' own errors with ``ran`` False only (a user's exception
    may have any attribute named ``ran``). An item the run stopped before its
    retry was called before: its Failure's ``history`` names the earlier errors.

    >>> from manyhands._exceptions import WorkerCrashed, not_called
    >>> stopped = Failure.from_exception(1, not_called("the run stopped first"))
    >>> not_run_cause(stopped)
    'run stopped'
    >>> stopped.history = ("builtins.ConnectionError",)
    >>> not_run_cause(stopped)
    'retry stopped'
    >>> not_run_cause(Failure.from_exception(1, WorkerCrashed("killed by signal 9"))) is None
    True
    """
    error = failure.exception
    if not isinstance(error, (WorkerCrashed, Timeout)) or error.ran:
        return None
    if isinstance(error, Timeout):
        return WORKERS_HELD
    if not error.stopped:
        return BACKEND_STOPPED
    return RETRY_STOPPED if failure.history else RUN_STOPPED


class LatencyHistogram:
    """Per-item latencies in log-spaced buckets: O(1) to record, bounded memory.

    Percentiles are accurate to the bucket width, about 4.4%.

    >>> h = LatencyHistogram()
    >>> h.record(0.010, 99)
    >>> h.record(1.0)
    >>> round(h.percentile(50), 3), round(h.percentile(100), 2)
    (0.01, 1.0)
    """

    __slots__ = ("_buckets", "count", "total")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0

    def record(self, seconds: float, count: int = 1) -> None:
        """Add ``count`` items that each took ``seconds``."""
        index = max(round(_log2(seconds) * _STEPS_PER_OCTAVE) + _OFFSET, 0) if seconds > 0 else 0
        buckets = self._buckets
        buckets[index] = buckets.get(index, 0) + count
        self.count += count
        self.total += seconds * count

    def percentile(self, q: float) -> float:
        """The latency at percentile ``q`` (0-100); 0.0 when nothing was recorded."""
        if self.count == 0:
            return 0.0
        rank = max(math.ceil(self.count * q / 100.0), 1)
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                return float(2.0 ** ((index - _OFFSET) / _STEPS_PER_OCTAVE)) if index else 0.0
        return 0.0  # pragma: no cover - rank <= count always reaches a bucket

    @property
    def mean(self) -> float:
        """The mean latency; 0.0 when nothing was recorded."""
        return self.total / self.count if self.count else 0.0


class RunStatistics:
    """Counters the engine updates once per completed batch.

    Outcomes count as they settle (the progress line and the stop rules read
    them); a Report counts what was delivered, so the run takes back what
    its consumer did not get (:meth:`take_back`). Keeps full :class:`Failure`
    details for the first ``keep_failures`` failures delivered (:meth:`delivered`)
    and counts all of them.
    """

    def __init__(self, keep_failures: int) -> None:
        self.keep_failures = keep_failures
        self.succeeded = 0
        self.failed = 0  # items whose call failed (for good)
        self.not_run = 0  # items delivered without their call (Report.not_run)
        self.not_run_causes: Counter[str] = Counter()
        self.calls = 0  # attempts, retries included
        self.retried = 0  # items tried more than once
        self.retrying = 0  # items that failed and wait for (or run) a retry now
        self.throttle_events = 0
        self.slowest_rate: float | None = None  # lowest adaptive start rate, calls/s
        self.settled_rate: float | None = None  # the adaptive start rate at the end, calls/s
        self.settled_concurrency: int | None = None  # the calls in flight it allowed at the end
        self.rate_limited = 0.0  # seconds a ready start waited for the rate limit
        self.skipped = 0  # items not run: final in the journal already
        self.skipped_failed = 0  # of those, the ones recorded as failed
        self.duplicates = 0  # items not run: their key came earlier in this input
        self.reran_failed = 0  # items run that the journal had as failed (retry_failed)
        self.abandoned = 0  # threads left to calls past their timeout
        self.stop_reason: str | None = None
        self.backend = "threads"  # what ran the calls, and for auto why (Report.backend)
        self.notes: list[str] = []  # one-line facts for the Report (e.g. fewer workers)
        self._too_long: tuple[int, float, int] | None = None  # (calls, longest asked, note's index)
        self._broken: dict[str, tuple[int, str, int]] = {}  # option: (errors, note, note's index)
        self.failures: list[Failure] = []
        self.first_failure: Failure | None = None  # kept even with keep_failures=0
        self.errors_by_type: Counter[str] = Counter()
        self.examples: dict[str, Any] = {}
        self.latency = LatencyHistogram()

    @property
    def total(self) -> int:
        """Items with an outcome so far, skipped ones included."""
        return self.succeeded + self.failed + self.not_run + self.skipped + self.duplicates

    def counts(self) -> dict[str, int]:
        """The outcome counts by kind."""
        return {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "not_run": self.not_run,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
        }

    def asked_too_long(self, asked: float, longest: float) -> None:
        """A call asked to wait ``asked`` seconds, over ``max_retry_after``: say so once.

        >>> stats = RunStatistics(keep_failures=10)
        >>> stats.asked_too_long(86400.0, 300.0); stats.asked_too_long(3600.0, 300.0)
        >>> print(stats.notes[0])
        2 calls asked to wait longer than max_retry_after=300s (up to 86,400s): their items \
failed without waiting (pass manyhands.Retry(max_retry_after=...) to wait that long, or \
rerun later with retry_failed=True)
        """
        calls, most, index = self._too_long or (0, 0.0, len(self.notes))
        calls, most = calls + 1, max(most, asked)
        note = (
            f"{calls:,} call{'s' if calls > 1 else ''} asked to wait longer than "
            f"max_retry_after={longest:g}s (up to {_seconds(most)}): their items failed without "
            "waiting (pass manyhands.Retry(max_retry_after=...) to wait that long, or rerun "
            "later with retry_failed=True)"
        )
        if index == len(self.notes):
            self.notes.append(note)
        else:
            self.notes[index] = note
        self._too_long = (calls, most, index)

    def predicate_raised(
        self, option: str, predicate: object, failure: Failure, raised: Exception
    ) -> None:
        """``option``'s predicate raised ``raised`` on ``failure``'s error: taken as no.

        Said once per option, its first occurrence in full, with a count.

        >>> stats = RunStatistics(keep_failures=10)
        >>> def on(e): return e.response.status_code >= 500
        >>> for item in range(3):
        ...     stats.predicate_raised("retry", on, Failure.from_exception(
        ...         item, ConnectionError("reset")), AttributeError(
        ...         "'ConnectionError' object has no attribute 'response'"))
        >>> print(stats.notes[0])
        Retry(on=on) raised AttributeError: 'ConnectionError' object has no attribute \
'response', on the ConnectionError of item 0 ('reset'), and on 2 more errors: each taken as \
"no" (not retried); make it return False for errors it does not expect
        """
        self._predicate_note(option, predicate, failure, raised)

    def predicate_unapplied(self, option: str, predicate: object, failure: Failure) -> None:
        """``option``'s predicate could not be applied to ``failure``'s error: taken as no.

        An error from a worker process comes back described, not as an object.
        Said once per option, its first occurrence in full, with a count.

        >>> stats = RunStatistics(keep_failures=10)
        >>> def on(e): return e.response.status_code >= 500
        >>> stats.predicate_unapplied("throttle_on", on, Failure(7, "builtins.OSError", "x", 1))
        >>> print(stats.notes[0])
        throttle_on=on could not be applied to the OSError of item 7 ('x'): an error from a \
worker process comes back described, not as an object: taken as "no" (no slowdown); pass \
exception classes instead (matched by name)
        """
        self._predicate_note(option, predicate, failure, None)

    def _predicate_note(
        self, option: str, predicate: object, failure: Failure, raised: Exception | None
    ) -> None:
        from ._outcome import safe_repr
        from ._retry import predicate_name

        key = option if raised is not None else f"{option} unapplied"
        count, first, index = self._broken.get(key, (0, "", len(self.notes)))
        count += 1
        if not first:
            name = predicate_name(predicate)
            named = f"Retry(on={name})" if option == "retry" else f"throttle_on={name}"
            error = (
                f"the {failure.error_type.rsplit('.', 1)[-1]} of item "
                f"{safe_repr(failure.item, limit=60)} ({safe_repr(failure.message, limit=60)})"
            )
            if raised is None:
                first = f"{named} could not be applied to {error}"
            else:
                message = " ".join(str(raised).split())  # (one line)
                message = message if len(message) <= 120 else message[:117] + "..."
                first = f"{named} raised {type(raised).__qualname__}: {message}, on {error}"
        more = ""
        if count > 1:
            more = f", and {'on' if raised else 'to'} {count - 1:,} more error{'s' * (count > 2)}"
        effect = "not retried" if option == "retry" else "no slowdown"
        if raised is None:
            note = (
                f"{first}{more}: an error from a worker process comes back described, not as "
                f'an object: taken as "no" ({effect}); pass exception classes instead (matched '
                "by name)"
            )
        else:
            note = (
                f'{first}{more}: each taken as "no" ({effect}); make it return False for errors '
                "it does not expect"
            )
        notes = list(self.notes)  # (a Pool's runs: the backend's list is not this run's)
        if key not in self._broken or index >= len(notes):
            index = len(notes)
            notes.append(note)
        else:
            notes[index] = note
        self.notes = notes
        self._broken[key] = (count, first, index)

    def add_skipped(self, reasons: list[str]) -> None:
        """Account for items the journal skipped, by why (``Outcome.skipped``)."""
        duplicates = reasons.count(DUPLICATE)
        self.duplicates += duplicates
        self.skipped += len(reasons) - duplicates
        self.skipped_failed += reasons.count(SKIPPED_FAILED)

    def take_back(
        self, succeeded: int, failures: list[Failure], skipped: list[str], retried: int = 0
    ) -> None:
        """Uncount outcomes the consumer did not get (yet, or ever: it left without them).

        ``retried``: how many of those items were tried more than once. The
        calls stay counted: they were made.
        """
        self.succeeded -= succeeded
        self.retried -= retried
        duplicates = skipped.count(DUPLICATE)
        self.duplicates -= duplicates
        self.skipped -= len(skipped) - duplicates
        self.skipped_failed -= skipped.count(SKIPPED_FAILED)
        for failure in failures:
            cause = not_run_cause(failure)
            if cause is None:
                self.failed -= 1
                _uncount(self.errors_by_type, failure.error_type)
            else:
                self.not_run -= 1
                _uncount(self.not_run_causes, cause)

    def take_back_retrying(self) -> None:
        """Uncount the items waiting for a retry (or in one) from ``retried``: nobody
        got their outcome yet."""
        self.retried -= self.retrying

    def delivered(self, failures: list[Failure]) -> None:
        """The consumer got ``failures`` (in this order): the Report keeps the first
        ``keep_failures`` failures delivered (items not run among them: nothing is lost),
        and one item per error type as an example (of a call that failed)."""
        examples = self.examples
        for failure in failures:
            if failure.error_type not in examples and not_run_cause(failure) is None:
                examples[failure.error_type] = failure.item
        room = self.keep_failures - len(self.failures)
        if room > 0:
            kept = failures[:room]
            for failure in kept:  # kept for the Report: as text, not as frames
                failure.release_frames()
            self.failures.extend(kept)

    def forget(self, failures: list[Failure]) -> None:
        """Delivered ``failures`` taken back after all (the command could not write them):
        neither kept nor examples (call after :meth:`take_back`)."""
        gone = {id(failure) for failure in failures}
        self.failures = [failure for failure in self.failures if id(failure) not in gone]
        items = {id(failure.item) for failure in failures}
        for kind, item in list(self.examples.items()):
            if id(item) not in items:
                continue
            kept = next((f.item for f in self.failures if f.error_type == kind), None)
            if kept is None or kind not in self.errors_by_type:
                del self.examples[kind]
            else:
                self.examples[kind] = kept

    def copy(self) -> RunStatistics:
        """A copy to take back from, leaving these counts as they are."""
        copied = shallow_copy(self)
        copied.failures = list(self.failures)
        copied.errors_by_type = Counter(self.errors_by_type)
        copied.not_run_causes = Counter(self.not_run_causes)
        copied.examples = dict(self.examples)
        return copied

    def failing_alike(self) -> Failure | None:
        """The first failure, while every item so far failed with its error type.

        Only once ``ALIKE_AFTER`` items failed and none succeeded, not counting
        those ``retry_failed=True`` ran again for having failed (as the
        Report's). Safe to call from another thread: it reads counters and a
        reference.
        """
        fresh = self.failed - self.reran_failed
        if self.succeeded or fresh < ALIKE_AFTER or len(self.errors_by_type) != 1:
            return None
        return self.first_failure

    def add_batch(
        self, finished: int, calls: int, elapsed: float, failures: list[Failure] | None
    ) -> None:
        """Account for a batch: ``finished`` final outcomes (``failures`` among them)
        from ``calls`` calls that took ``elapsed`` seconds in all.

        A failure whose call was never made (:func:`not_run_cause`) counts in
        ``not_run``, by why, not in ``failed`` nor ``errors_by_type``.
        """
        self.succeeded += finished - (len(failures) if failures else 0)
        if calls:
            self.calls += calls
            self.latency.record(elapsed / calls, calls)
        if failures:
            for failure in failures:
                cause = not_run_cause(failure)
                if cause is not None:
                    self.not_run += 1
                    self.not_run_causes[cause] += 1
                    continue
                self.failed += 1
                self.errors_by_type[failure.error_type] += 1
                if self.first_failure is None:
                    self.first_failure = failure


def _uncount(counts: Counter[str], kind: str) -> None:
    counts[kind] -= 1
    if counts[kind] <= 0:
        del counts[kind]


def _seconds(value: float) -> str:
    """Seconds as a user reads them: ``86,400s``, ``2.5s``.

    >>> _seconds(86400.0), _seconds(2.5), _seconds(0.05)
    ('86,400s', '2.5s', '0.05s')
    """
    return f"{value:,.0f}s" if value >= 100 else f"{value:.3g}s"
