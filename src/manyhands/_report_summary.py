"""A Report as printed (``print(report)``): its headline, then a line per fact worth saying.

The words these lines share with other messages (durations, why items were not
run, a traceback as printed) are ``_report_text``'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._outcome import safe_repr
from ._report_text import (
    abandoned_text,
    alike_text,
    duration,
    latency_label,
    not_run_why,
    plural,
)

if TYPE_CHECKING:
    from ._report import Report

__all__ = ["headline", "settled_why", "summary"]


def summary(report: Report) -> str:
    """The text of ``str(report)``.

    >>> from manyhands._report import Report
    >>> print(summary(Report(2, 2, 0, 1.0)))
    2 items in 1.00s (2.0/s): 2 succeeded, 0 failed
    """
    lines = [headline(report)]
    if report.attempts:
        lines.append(
            f"{latency_label(report.backend)}: p50 {duration(report.latency.p50)}, "
            f"p95 {duration(report.latency.p95)}, p99 {duration(report.latency.p99)}"
        )
    if report.retried or report.throttle_events:
        lines.append(
            f"{report.attempts:,} {plural(report.attempts, 'attempt')} in all, "
            f"{report.retried:,} {plural(report.retried, 'item')} retried"
        )
    if report.throttle_events or report.rate_limited:
        parts = []
        if report.throttle_events:
            parts.append(f"asked to slow down {report.throttle_events:,} times")
        if report.slowest_rate is not None:
            parts.append(f"slowed to {report.slowest_rate:,.1f} calls/s at the lowest")
        parts.append(f"starts held back by the rate limit for {duration(report.rate_limited)}")
        lines.append("throttling: " + ", ".join(parts))
    if report.settled_rate is not None or report.settled_workers is not None:
        settled = []
        if report.settled_rate is not None:
            settled.append(f"rate={report.settled_rate:.4g}")
        if report.settled_workers is not None:
            settled.append(f"workers={report.settled_workers}")
        lines.append(f"settled on {', '.join(settled)} ({settled_why(report)})")
    if report.abandoned:
        lines.append(abandoned_text(report.abandoned, report.backend))
    if report.stopped:
        lines.append(
            f"stopped early: {report.stopped}; {report.failed:,} failed in all, counting "
            "the items already handed to workers then, whose calls were let finish (a "
            "worker takes quick calls several at a time)"
        )
    if report.reran_failed:
        items = plural(report.reran_failed, "item")
        lines.append(
            f"{report.reran_failed:,} {items} run again for having failed before "
            "(retry_failed=True)"
        )
    if "auto" in report.backend:
        lines.append(f"backend: {report.backend}")
    lines.extend(f"note: {note}" for note in report.notes)
    if report.errors_by_type:
        lines.append("errors by type:")
        for name, count in list(report.errors_by_type.items())[:10]:
            example = safe_repr(report.examples.get(name), limit=60)
            lines.append(f"  {count:>8,}  {name}  (e.g. item {example})")
        if len(report.errors_by_type) > 10:
            lines.append(f"  ... and {len(report.errors_by_type) - 10} more error types")
    alike = report.failing_alike
    if alike is not None:
        lines.append(alike_text(alike))
    return "\n".join(lines)


def settled_why(report: Report) -> str:
    """What the run met that the settled values answer, and the advice.

    >>> from manyhands._report import Report
    >>> settled_why(Report(9, 9, 0, 1.0, throttle_events=12, settled_rate=4.75))
    'after 12 refusals: pass it next time to start there'
    >>> settled_why(Report(9, 9, 0, 1.0, settled_workers=6))
    'latency rose with the calls in flight, as at a server with a queue: pass it next \
time to start there'
    """
    both = report.settled_rate is not None and report.settled_workers is not None
    advice = f"pass {'them' if both else 'it'} next time to start there"
    if report.throttle_events:  # (the first refusal ends the latency's limit)
        refusals = plural(report.throttle_events, "refusal")
        return f"after {report.throttle_events:,} {refusals}: {advice}"
    return f"latency rose with the calls in flight, as at a server with a queue: {advice}"


def headline(report: Report) -> str:
    """``2,000 items in 1.49s (1,339.3/s): 1,900 succeeded, 100 failed``, with what
    was not run first when the journal skipped items or the run did not call some.

    >>> from manyhands._report import Report
    >>> print(Report(1000, 900, 60, 2.0, not_run=40, not_run_causes={"run stopped": 40}))
    1,000 items in 2.00s: 40 not run (the run stopped before calling them; with \
journal=, a resume runs them), 960 run (480.0/s): 900 succeeded, 60 failed
    """
    head = f"{report.total:,} {plural(report.total, 'item')} in {duration(report.elapsed)}"
    ran = f"({report.throughput:,.1f}/s): {report.succeeded:,} succeeded, {report.failed:,} failed"
    if not (report.skipped or report.duplicates or report.not_run):
        return f"{head} {ran}"
    left = []
    done = report.skipped - report.skipped_failed
    if done:
        left.append(f"{done:,} skipped (done in the journal)")
    if report.skipped_failed:
        left.append(
            f"{report.skipped_failed:,} skipped (failed in the journal; "
            "retry_failed=True runs them again)"
        )
    if report.duplicates:
        left.append(f"{report.duplicates:,} skipped (duplicate keys)")
    if report.not_run:
        why = not_run_why(report.not_run_causes, report.not_run)
        them = "it" if report.not_run == 1 else "them"
        left.append(f"{report.not_run:,} not run ({why}; with journal=, a resume runs {them})")
    line = f"{head}: {', '.join(left)}, {report.ran:,} run"
    return f"{line} {ran}" if report.ran else line
