"""The summary of a run: :class:`Report` (printed by ``_report_summary``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._exceptions import ItemsFailed
from ._outcome import Failure
from ._records import FACTORY, Record
from ._report_summary import summary
from ._stats import ALIKE_AFTER, RunStatistics, not_run_cause

__all__ = ["Latency", "Report"]


_set = object.__setattr__


@dataclass(frozen=True, init=False, repr=False, eq=False)  # (see _records)
class Latency(Record):
    """Per-item latency figures, in seconds (see ``LatencyHistogram``)."""

    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0

    def __init__(
        self, mean: float = 0.0, p50: float = 0.0, p95: float = 0.0, p99: float = 0.0
    ) -> None:
        _set(self, "mean", mean)
        _set(self, "p50", p50)
        _set(self, "p95", p95)
        _set(self, "p99", p99)


@dataclass(frozen=True, init=False, repr=False, eq=False)  # (see _records)
class Report(Record):
    """What a run did: the outcomes delivered (for ``map``/``amap``, the ones the
    loop got so far).

    ``failures`` keeps the full details of the first ``keep_failures`` failed
    items (an option of ``run``/``map``, 1,000 by default); ``failed`` and
    ``errors_by_type`` count all of them. Every failure, without limit, is
    in the stream of Outcomes that :func:`manyhands.map` yields.

    An item the run never called (``not_run``) is delivered with a Failure
    too, whose error says why (``WorkerCrashed`` or ``Timeout`` with ``ran``
    False), but it is not counted as failed: its function never ran.

    Attributes:
        total: items that got an outcome (skipped, duplicates and not run included).
        succeeded: items whose call returned.
        failed: items whose call raised (for good: after their retries).
        elapsed: wall time of the run, in seconds.
        failures: Failure details of the first ``keep_failures`` items that
            failed or were not run, in the order they were delivered (input
            order with ``ordered=True``).
        errors_by_type: failed items per error type, most frequent first (not
            the items not run).
        examples: one failed item per error type.
        latency: per-call latency; items run in a batch each count as the
            batch's mean. A batch mostly holds a few milliseconds of work, so
            a slow call travels alone, but on Dask a batch is one task of
            about half a second of work: a slow call among quick ones is
            averaged with them (5 calls of 3 s among 45 of 10 ms show a p95
            near 0.5 s, not 3 s), and the printed line says "batch means".
        attempts: calls made in all, retries included. (When a worker process
            dies, the other items of its batch run again, even those that had
            finished before it died: those calls are counted once.)
        retried: items delivered that were tried more than once.
        throttle_events: how many calls asked to slow down (``RetryAfter``,
            or an exception with a ``retry_after`` attribute).
        slowest_rate: the lowest start rate (calls/s) the adaptive slowdown
            cut to in answer, or ``None`` if it never cut below a level.
        rate_limited: seconds during which a call was ready to start but the
            rate limit (``rate=``, or the adaptive slowdown) held it back.
        settled_rate: the start rate (calls/s) the adaptive slowdown settled
            on, to pass as ``rate=`` next time; ``None`` if none was needed.
        settled_workers: the calls in flight it settled on (a server that
            slows down under load, or caps the calls in progress), to pass as
            ``workers=``; ``None`` if ``workers`` never had to be lowered, or
            the calls in flight never reached the limit it learned. Only a
            server's signal sets these two: refusals it obeyed, or (with none)
            a latency that rose with the calls in flight while the calls did
            not hold the CPU (calls taking turns on the GIL slow down too,
            and fewer of them would not go faster).
        stopped: why a stop rule ended the run early, else ``None``; the
            items already handed to workers then (quick calls go several to a
            batch, and a worker may finish a few batches before the run reads
            their outcomes) were let finish, so ``failed`` may be more than
            the rule's limit. An item that failed and had retries left (one
            waiting for its retry, or failing after the rule fired) is not
            retried: it counts in ``not_run`` (``"retry stopped"``), and a
            resume runs it, as after Ctrl-C. (On processes and Dask, the
            items handed out that no worker had begun are not called: they
            count in ``not_run`` too.)
        skipped: items not run because the journal has their final outcome.
        skipped_failed: of ``skipped``, those recorded as failed
            (``retry_failed=True`` runs them again).
        duplicates: items not run because their key came earlier in the input.
        abandoned: worker threads left to calls that ran past ``timeout=``, or
            that still ran at the end of a stopped run's grace period (Python
            cannot stop a thread; each was replaced by a new one). On asyncio:
            calls that had not ended on their cancellation (past ``timeout=``,
            or when the run ended: a coroutine that catches it and goes on),
            left running on the event loop. Worker processes are killed instead.
        backend: what ran the calls (``"threads"``, ``"processes"``, ``"async"``...);
            with ``backend="auto"``, what it chose and why, e.g.
            ``"processes (auto: calls used 97% CPU, 10.2ms each, 2 cores)"``.
        notes: one-line facts about how the run went that a user should know,
            e.g. that it ran on fewer workers than asked because the system's
            limit on threads was reached.
        not_run: items delivered without their call being made (their
            error's ``ran`` is False): not retried, no attempt counted, not
            recorded in a journal, so a resume runs them. Among them, items
            called before whose retry a stop rule did not make.
        not_run_causes: ``not_run`` by why: ``"run stopped"`` (a stop rule,
            Ctrl-C, an exception or ``break`` stopped the run before a worker
            process or a Dask task began them), ``"retry stopped"`` (a stop
            rule ended the run before their retry: the Failure says how they
            failed, its traceback is their last one's), ``"workers held"``
            (on threads, every worker was held by a call past ``timeout=``),
            or ``"backend stopped"`` (the process backend could not go on).
        reran_failed: items run by ``retry_failed=True`` because the journal
            had them as failed (counted in ``succeeded`` and ``failed`` too).
            Chosen for having failed, they do not count toward
            :attr:`failing_alike`.
    """

    total: int
    succeeded: int
    failed: int
    elapsed: float
    failures: list[Failure] = field(default_factory=list)
    errors_by_type: dict[str, int] = field(default_factory=dict)
    examples: dict[str, Any] = field(default_factory=dict)
    latency: Latency = field(default_factory=Latency)
    attempts: int = 0
    retried: int = 0
    throttle_events: int = 0
    slowest_rate: float | None = None
    rate_limited: float = 0.0
    settled_rate: float | None = None
    settled_workers: int | None = None
    stopped: str | None = None
    skipped: int = 0
    duplicates: int = 0
    abandoned: int = 0
    backend: str = "threads"
    notes: tuple[str, ...] = ()
    skipped_failed: int = 0
    not_run: int = 0
    not_run_causes: dict[str, int] = field(default_factory=dict)
    reran_failed: int = 0

    def __init__(
        self,
        total: int,
        succeeded: int,
        failed: int,
        elapsed: float,
        failures: list[Failure] = FACTORY,
        errors_by_type: dict[str, int] = FACTORY,
        examples: dict[str, Any] = FACTORY,
        latency: Latency = FACTORY,
        attempts: int = 0,
        retried: int = 0,
        throttle_events: int = 0,
        slowest_rate: float | None = None,
        rate_limited: float = 0.0,
        settled_rate: float | None = None,
        settled_workers: int | None = None,
        stopped: str | None = None,
        skipped: int = 0,
        duplicates: int = 0,
        abandoned: int = 0,
        backend: str = "threads",
        notes: tuple[str, ...] = (),
        skipped_failed: int = 0,
        not_run: int = 0,
        not_run_causes: dict[str, int] = FACTORY,
        reran_failed: int = 0,
    ) -> None:
        _set(self, "total", total)
        _set(self, "succeeded", succeeded)
        _set(self, "failed", failed)
        _set(self, "elapsed", elapsed)
        _set(self, "failures", [] if failures is FACTORY else failures)
        _set(self, "errors_by_type", {} if errors_by_type is FACTORY else errors_by_type)
        _set(self, "examples", {} if examples is FACTORY else examples)
        _set(self, "latency", Latency() if latency is FACTORY else latency)
        _set(self, "attempts", attempts)
        _set(self, "retried", retried)
        _set(self, "throttle_events", throttle_events)
        _set(self, "slowest_rate", slowest_rate)
        _set(self, "rate_limited", rate_limited)
        _set(self, "settled_rate", settled_rate)
        _set(self, "settled_workers", settled_workers)
        _set(self, "stopped", stopped)
        _set(self, "skipped", skipped)
        _set(self, "duplicates", duplicates)
        _set(self, "abandoned", abandoned)
        _set(self, "backend", backend)
        _set(self, "notes", notes)
        _set(self, "skipped_failed", skipped_failed)
        _set(self, "not_run", not_run)
        _set(self, "not_run_causes", {} if not_run_causes is FACTORY else not_run_causes)
        _set(self, "reran_failed", reran_failed)

    @classmethod
    def from_statistics(cls, stats: RunStatistics, elapsed: float) -> Report:
        """Freeze the engine's running statistics into a Report."""
        hist = stats.latency
        return cls(
            total=stats.total,
            succeeded=stats.succeeded,
            failed=stats.failed,
            elapsed=elapsed,
            failures=list(stats.failures),
            errors_by_type=dict(stats.errors_by_type.most_common()),
            examples=dict(stats.examples),
            latency=Latency(
                hist.mean, hist.percentile(50), hist.percentile(95), hist.percentile(99)
            ),
            attempts=stats.calls,
            retried=stats.retried,
            throttle_events=stats.throttle_events,
            slowest_rate=stats.slowest_rate,
            rate_limited=stats.rate_limited,
            settled_rate=stats.settled_rate,
            settled_workers=stats.settled_concurrency,
            stopped=stats.stop_reason,
            skipped=stats.skipped,
            duplicates=stats.duplicates,
            abandoned=stats.abandoned,
            backend=stats.backend,
            notes=tuple(stats.notes),
            skipped_failed=stats.skipped_failed,
            not_run=stats.not_run,
            not_run_causes=dict(stats.not_run_causes.most_common()),
            reran_failed=stats.reran_failed,
        )

    @property
    def ok(self) -> bool:
        """True when no item failed and none was left not run."""
        return self.failed == 0 and self.not_run == 0

    @property
    def ran(self) -> int:
        """Items called in this run: ``succeeded + failed`` (not the skipped nor the not run)."""
        return self.succeeded + self.failed

    @property
    def throughput(self) -> float:
        """Items run per second over the whole run (skipped items do not count)."""
        return self.ran / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def failing_alike(self) -> Failure | None:
        """The first failure, when every item failed with one error type (a bug in fn?).

        ``None`` unless at least 10 items ran, all failed, and with the same
        error type; with ``keep_failures=0`` there is no Failure to return.
        The items ``retry_failed=True`` ran again (``reran_failed``) do not
        count toward the 10: chosen for having failed, their failing again
        says nothing of fn.

        >>> Report(30, 0, 30, 1.0, errors_by_type={"builtins.OSError": 30},
        ...        failures=[Failure(1, "builtins.OSError", "reset")],
        ...        reran_failed=25).failing_alike is None
        True
        """
        fresh = self.failed - self.reran_failed  # (not chosen for having failed)
        if self.succeeded or fresh < ALIKE_AFTER or len(self.errors_by_type) != 1:
            return None
        return next((f for f in self.failures if not_run_cause(f) is None), None)

    def raise_for_failures(self) -> None:
        """Raise :class:`manyhands.ItemsFailed` if any item failed or was not run; else
        do nothing.

        >>> Report(total=2, succeeded=2, failed=0, elapsed=1.0).raise_for_failures()
        >>> Report(3, 2, 0, 1.0, not_run=1, not_run_causes={"run stopped": 1}).raise_for_failures()
        Traceback (most recent call last):
        ...
        manyhands.ItemsFailed: 1 of 3 items not run (the run stopped before calling it)
        """
        if self.failed or self.not_run:
            raise ItemsFailed(self)

    def __str__(self) -> str:
        return summary(self)
