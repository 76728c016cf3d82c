"""The engine obeys the slowdown: end to end against the loopback API, and the Report."""

from __future__ import annotations

import manyhands
from manyhands._demo_api import fetch, serve
from manyhands._servers import SlidingWindow


def test_a_window_that_counts_refusals_is_spent_once_not_hammered() -> None:
    """100 requests in any second, refusals counted: a client that keeps asking gets nothing."""
    with serve(SlidingWindow(100, count_rejected=True)) as (base, counters):
        urls = [f"{base}/items/{n}" for n in range(300)]
        report = manyhands.run(
            fetch, urls, workers=20, retry=manyhands.Retry(8, backoff=0.05), progress=False
        )
    assert report.succeeded == 300, report
    assert report.attempts == counters.requests
    # The opening's 20 calls in flight spend the window; then everyone waits
    # it out and the rest is paced under it. Hammering would refuse most calls.
    assert counters.throttled < 0.25 * counters.requests, counters
    assert report.throttle_events == counters.throttled
    assert report.settled_rate is not None and 1 <= report.settled_rate <= 100
    assert "settled on rate=" in str(report)


def test_a_run_nobody_throttles_settles_on_nothing() -> None:
    report = manyhands.run(lambda x: x, range(1000), workers=8, progress=False)
    assert report.settled_rate is None and report.settled_workers is None
    assert report.throttle_events == 0 and "settled" not in str(report)


def test_retry_after_slows_every_worker_down_and_the_report_says_where_it_settled() -> None:
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        if len(calls) <= 3:
            raise manyhands.RetryAfter(0.05)
        return x

    report = manyhands.run(
        fn, range(200), workers=4, retry=manyhands.Retry(3, backoff=0), progress=False
    )
    assert report.succeeded == 200 and report.throttle_events == 3
    assert report.settled_rate is not None  # a rate limit was set, and reported
