"""The Report a script prints: counts, time, rate, latency, errors with an example."""

from __future__ import annotations

import time

import manyhands
from manyhands._stats import LatencyHistogram


def flaky(x: int) -> int:
    time.sleep(0.002)
    if x % 10 == 0:
        raise ConnectionError(f"host {x} unreachable")
    if x % 25 == 1:
        raise TimeoutError("slow")
    return x


def test_summary_text(backend: str) -> None:
    report = manyhands.run(flaky, range(200), backend=backend, workers=20)
    text = str(report)
    assert report.total == 200
    assert report.failed == 20 + 8
    assert report.succeeded == 172
    assert "200 items in " in text and "172 succeeded, 28 failed" in text
    assert "/s)" in text
    assert "p50 " in text and "p95 " in text and "p99 " in text
    assert "builtins.ConnectionError  (e.g. item " in text
    assert "builtins.TimeoutError" in text
    assert list(report.errors_by_type) == ["builtins.ConnectionError", "builtins.TimeoutError"]
    assert 0.0015 < report.latency.p50 < 0.05
    assert report.elapsed > 0 and report.throughput > 0


def test_report_of_empty_input(backend: str) -> None:
    report = manyhands.run(abs, [], backend=backend)
    assert (report.total, report.succeeded, report.failed) == (0, 0, 0)
    assert report.ok
    assert "0 items in" in str(report)


def test_histogram_percentiles_are_within_bucket_precision() -> None:
    hist = LatencyHistogram()
    for ms in range(1, 1001):
        hist.record(ms / 1000)
    for q, expected in [(50, 0.5), (95, 0.95), (99, 0.99)]:
        assert abs(hist.percentile(q) - expected) / expected < 0.05
    assert abs(hist.mean - 0.5005) < 1e-9
    assert LatencyHistogram().percentile(50) == 0.0
