"""The Report a script prints: counts, time, rate, latency, errors with an example."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

import manyhands
from manyhands._exceptions import not_called
from manyhands._outcome import Failure
from manyhands._report import Latency
from manyhands._stats import LatencyHistogram, RunStatistics


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


def test_a_run_where_everything_was_skipped_says_so(tmp_path: Path) -> None:
    def fn(x: int) -> float:
        return 1 / (x % 100)

    journal = tmp_path / "run.db"
    manyhands.run(fn, range(2000), journal=journal)
    again = manyhands.run(fn, range(2000), journal=journal)
    text = str(again)
    assert text.startswith("2,000 items in ")
    assert "1,980 skipped (done in the journal), 20 skipped (failed in the journal" in text
    assert "retry_failed=True" in text and text.splitlines()[0].endswith(", 0 run")
    assert "succeeded" not in text and "latency" not in text  # nothing ran: no such figures
    assert (again.ran, again.throughput, again.skipped, again.skipped_failed) == (0, 0.0, 2000, 20)


def test_throughput_counts_the_items_that_ran(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(str, range(1000), journal=journal)
    report = manyhands.run(str, range(1500), journal=journal)
    assert (report.total, report.ran, report.skipped) == (1500, 500, 1000)
    assert report.throughput == report.ran / report.elapsed
    assert "1,000 skipped (done in the journal), 500 run (" in str(report)
    assert "500 succeeded, 0 failed" in str(report)


def test_a_stop_rule_says_why_it_stopped_and_how_many_failed_in_all() -> None:
    all_running = threading.Barrier(8, timeout=10)

    def fn(x: int) -> int:
        if x < 8:
            all_running.wait()  # the first 8 calls all run before any fails
        raise ConnectionError(f"down {x}")

    report = manyhands.run(fn, range(1000), workers=8, batch_size=1, stop_after_failures=3)
    # The 8 calls that ran together, and any started while the first 2 failures came back.
    assert 8 <= report.failed == report.total < 1000
    text = str(report)
    assert "stop_after_failures=3: 3 items had failed" in text  # why it stopped
    assert f"{report.failed} failed in all" in text and "already handed to" in text  # the cost


def test_a_stop_rule_counts_every_call_made_and_says_they_were_handed_out() -> None:
    # Quick failing calls on 2 workers: a worker takes several at a time, and
    # finishes a few batches before the run reads the third failure (10 calls
    # were made). The summary must not call them "running" (2 workers cannot run
    # 10 calls at once): it counts every item handed out, each called once.
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        raise ValueError(x)

    report = manyhands.run(fn, range(100_000), workers=2, stop_after_failures=3)
    assert report.failed == report.total == len(calls) == len(set(calls)) < 100_000
    text = str(report)
    assert f"{report.failed} failed in all, counting the items already handed to workers" in text
    assert "calls already running" not in text


def bug(x: int) -> int:
    return x.upper()  # type: ignore[attr-defined,no-any-return]


def test_every_item_failing_alike_looks_like_a_bug_with_one_traceback(backend: str) -> None:
    report = manyhands.run(bug, range(50), backend=backend, retry=3)
    assert report.attempts == 50  # a programming error is not retried by default
    first = report.failing_alike
    assert first is not None and first.error_type == "builtins.AttributeError"
    text = str(report)
    assert "every item failed with builtins.AttributeError: this looks like a bug in fn" in text
    assert text.count("Traceback (most recent call last)") == 1
    assert "return x.upper()" in text  # the user's own line


def test_failing_alike_needs_enough_items_all_failed_with_one_error() -> None:
    assert manyhands.run(bug, range(5)).failing_alike is None  # too few to tell
    assert manyhands.run(lambda x: bug(x) if x else 0, range(50)).failing_alike is None
    mixed = manyhands.run(lambda x: bug(x) if x % 2 else 1 / 0, range(50))
    assert mixed.failing_alike is None and "every item failed" not in str(mixed)

    def down(x: int) -> int:
        raise ConnectionRefusedError("connection refused")

    report = manyhands.run(down, range(50))
    text = str(report)
    assert "every item failed with builtins.ConnectionRefusedError" in text
    assert "not with the items" in text and "bug" not in text


def fails_on_sevens(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(x)
    return x


@pytest.mark.parametrize("ordered", [False, True])
def test_the_report_after_leaving_counts_what_was_delivered(tmp_path: Path, ordered: bool) -> None:
    """Outcomes settled but not delivered (held for their turn, or the rest of a batch) are
    not counted: nobody got them, and the journal has no record of them either."""
    journal = tmp_path / "run.db"
    got: list[manyhands.Outcome] = []
    retry = manyhands.Retry(1, backoff=0.0, on=ValueError)  # (items wait for retries too)
    with manyhands.map(
        fails_on_sevens, range(1000), workers=8, ordered=ordered, journal=journal, retry=retry
    ) as outcomes:
        for outcome in outcomes:
            got.append(outcome)
            if len(got) == 151:
                break
    report = outcomes.report
    failed = [o for o in got if o.error is not None]
    assert (report.total, report.succeeded, report.failed) == (151, 151 - len(failed), len(failed))
    assert report.errors_by_type == ({"builtins.ValueError": len(failed)} if failed else {})
    assert sorted(f.item for f in report.failures) == sorted(o.item for o in failed)
    assert set(report.examples.values()) <= {o.item for o in failed}  # (examples it got)
    with sqlite3.connect(journal) as db:
        row = db.execute("SELECT succeeded, failed FROM runs").fetchone()
        records = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    db.close()
    assert row == (report.succeeded, report.failed) and records == 151


def test_a_report_prints_a_huge_or_hostile_traceback_escaped_and_cut() -> None:
    """A 1 MB error message, or one with terminal escapes, every item failing alike."""

    def fail(x: int) -> None:
        raise ValueError("\x1b]0;owned\x07" + "m" * 1_000_000)

    text = str(manyhands.run(fail, range(20), workers=2))
    assert "every item failed with builtins.ValueError" in text
    assert len(text) < 10_000
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;owned\\x07" in text
    assert "characters not shown" in text


def test_the_settled_advice_names_the_signal_it_answers() -> None:
    refused = manyhands.Report(100, 100, 0, 1.0, throttle_events=12, settled_rate=4.75)
    (line,) = (line for line in str(refused).splitlines() if line.startswith("settled on"))
    assert line == "settled on rate=4.75 (after 12 refusals: pass it next time to start there)"
    queue = manyhands.Report(100, 100, 0, 1.0, settled_workers=6)
    (line,) = (line for line in str(queue).splitlines() if line.startswith("settled on"))
    assert line.startswith("settled on workers=6 (latency rose with the calls in flight")
    both = manyhands.Report(100, 100, 0, 1.0, throttle_events=1, settled_rate=9.5,
                            settled_workers=20)  # fmt: skip
    assert "settled on rate=9.5, workers=20 (after 1 refusal: pass them next time" in str(both)
    assert "settled" not in str(manyhands.Report(100, 100, 0, 1.0))


def _never_called(item: int, error: manyhands.WorkerCrashed | manyhands.Timeout) -> Failure:
    error.ran = False
    failure = Failure.from_exception(item, error)
    failure.attempts = 0  # (as the run settles it: that attempt made no call)
    return failure


def test_items_never_called_are_not_run_not_failed_in_the_report_and_its_text() -> None:
    """A user reading the Report must not think fn failed once per item the run never called."""
    stats = RunStatistics(keep_failures=100)
    stopped = [_never_called(x, not_called("the run stopped first")) for x in range(10, 13)]
    held = _never_called(13, manyhands.Timeout("not started: every worker is held"))
    crashed = Failure.from_exception(9, manyhands.WorkerCrashed("killed by signal 9"))
    failures = [*stopped[:1], Failure.from_exception(1, ValueError("bad")), crashed]
    stats.add_batch(finished=5, calls=3, elapsed=0.3, failures=failures)  # 2 succeeded
    stats.add_batch(finished=3, calls=0, elapsed=0.0, failures=[*stopped[1:], held])
    stats.delivered([*failures, stopped[1], held])
    stats.take_back(0, [stopped[2]], [])  # (one the consumer did not get)
    report = manyhands.Report.from_statistics(stats, elapsed=2.0)

    assert (report.total, report.succeeded, report.failed, report.not_run) == (7, 2, 2, 3)
    assert report.not_run_causes == {"run stopped": 2, "workers held": 1}
    assert report.errors_by_type == {"builtins.ValueError": 1, "manyhands.WorkerCrashed": 1}
    assert report.examples == {"builtins.ValueError": 1, "manyhands.WorkerCrashed": 9}
    assert report.ran == 4 and report.attempts == 3 and not report.ok
    assert stopped[0] in report.failures and held in report.failures  # (nothing is lost)
    assert str(report).splitlines()[0] == (
        "7 items in 2.00s: 3 not run (2: the run stopped before calling them, 1: every worker "
        "was held by a call past its timeout; with journal=, a resume runs them), 4 run "
        "(2.0/s): 2 succeeded, 2 failed"
    )
    with pytest.raises(manyhands.ItemsFailed) as raised:
        report.raise_for_failures()
    assert str(raised.value) == (
        "2 of 7 items failed: builtins.ValueError x1, manyhands.WorkerCrashed x1; 3 not run "
        "(2: the run stopped before calling them, 1: every worker was held by a call past "
        "its timeout)"
    )

    only = manyhands.Report(4, 3, 0, 1.0, not_run=1, not_run_causes={"run stopped": 1})
    assert not only.ok and str(only).startswith(
        "4 items in 1.00s: 1 not run (the run stopped before calling it; with journal=, a "
        "resume runs it), 3 run (3.0/s): 3 succeeded, 0 failed"
    )
    with pytest.raises(manyhands.ItemsFailed, match=r"^1 of 4 items not run \(the run stopped"):
        only.raise_for_failures()


def test_failing_alike_is_about_calls_made_not_items_never_called() -> None:
    stats = RunStatistics(keep_failures=100)
    first = _never_called(0, not_called("the run stopped first"))
    calls = [Failure.from_exception(x, KeyError(x)) for x in range(1, 11)]
    stats.add_batch(finished=11, calls=10, elapsed=1.0, failures=[first, *calls])
    stats.delivered([first, *calls])
    assert stats.failing_alike() is calls[0]
    report = manyhands.Report.from_statistics(stats, elapsed=1.0)
    assert report.failing_alike is calls[0] and report.failures[0] is first
    assert "every item failed with builtins.KeyError" in str(report)


def test_the_latency_line_says_on_dask_that_it_reads_batch_means() -> None:
    """A Dask task times its batch (about 0.5 s of work), not each call: a 3 s call among
    quick ones is averaged away, so the line must not read as each call's own latency."""
    latency = Latency(0.3, 0.26, 0.5, 0.5)
    lines = {
        backend: str(
            manyhands.Report(50, 50, 0, 9.9, latency=latency, attempts=50, backend=backend)
        )
        for backend in ("threads", "dask")
    }
    assert "\nlatency per call: p50 260.0ms, p95 500.0ms, p99 500.0ms" in lines["threads"]
    assert (
        "\nlatency per call (batch means: a Dask task times its batch, not each call): "
        "p50 260.0ms, p95 500.0ms" in lines["dask"]
    )


def down(x: int) -> int:
    raise ConnectionRefusedError(f"connection refused: {x}")


def test_a_retry_failed_rerun_of_failures_that_fail_again_claims_nothing_of_fn(
    tmp_path: Path,
) -> None:
    """Items chosen for having failed that fail again say nothing of fn: the Report said
    "this looks like a problem with fn ..., not with the items" of them."""
    journal = tmp_path / "j.db"
    first = manyhands.run(down, range(30), journal=journal)
    assert first.failing_alike is not None
    report = manyhands.run(down, range(30), journal=journal, retry_failed=True)
    text = str(report)
    assert "every item failed" not in text and "not with the items" not in text
    assert report.failing_alike is None
    assert (report.failed, report.reran_failed, first.reran_failed) == (30, 30, 0)
    assert "30 items run again for having failed before (retry_failed=True)" in text
    with manyhands.map(down, range(30), journal=journal, retry_failed=True) as outcomes:
        assert sum(1 for _ in outcomes) == 30
        # The progress line's "all failed: ..." reads the same rule, live.
        assert outcomes._run.live["failing_alike"] is None
    assert outcomes.report.reran_failed == 30 and outcomes.report.failing_alike is None
    # 20 new items failing alike beside them are enough to tell again.
    more = manyhands.run(down, range(50), journal=journal, retry_failed=True)
    assert (more.failed, more.reran_failed) == (50, 30)
    assert more.failing_alike is not None and "every item failed with" in str(more)
