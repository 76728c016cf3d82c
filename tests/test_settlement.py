"""Settling a batch's errors: late batches, predicate notes, and what is built per failure."""

from __future__ import annotations

from typing import Any

import pytest

import manyhands
from manyhands import _retry, _settlement
from manyhands._batch import Batch, Task
from manyhands._exceptions import WorkerCrashed, not_called
from manyhands._options import Options
from manyhands._outcome import Failure, safe_message
from manyhands._stats import RunStatistics, not_run_cause
from manyhands._timers import RetryTimers


def _settlement_of(**options: Any) -> _settlement.Settlement:
    opts = Options.from_kwargs("run", options)
    stats = RunStatistics(keep_failures=10)
    task = Task(str, lambda batch: None)
    return _settlement.Settlement(opts, stats, RetryTimers(), task, lambda: 0.0)


def test_a_late_batch_is_judged_by_what_is_not_final() -> None:
    # settle(late=True) returned a set documented as "retried" that meant "not final".
    settlement = _settlement_of(retry=manyhands.Retry(retries=2, on=(OSError,)))
    batch = Batch(0, ["a", "b"], Task(str, lambda batch: None))
    batch.values = [None, None]
    batch.errors = {0: OSError("reset"), 1: ValueError("bad")}
    not_final = settlement.judge_late(batch)
    assert not_final == {0}  # would have been retried: it runs again on a resume
    assert batch.failures is not None and list(batch.failures) == [1]
    assert batch.errors is None


def test_no_predicate_note_is_built_without_a_predicate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two closures were built for every failure, even with exception classes only.
    given: list[object] = []

    def recording(on: Any, error: BaseException, broken: Any = None) -> bool:
        given.append(broken)
        return isinstance(error, on) if isinstance(on, (type, tuple)) else bool(on(error))

    monkeypatch.setattr(_retry, "matches", recording)
    monkeypatch.setattr(_settlement, "matches", recording)
    report = manyhands.run(
        _fail, range(3), retry=manyhands.Retry(retries=1, on=(OSError,), backoff=0),
        throttle_on=(KeyError,),
    )  # fmt: skip
    assert report.failed == 3
    assert len(given) == 12 and set(given) == {None}  # (3 items, 2 tries, 2 options)
    given.clear()
    report = manyhands.run(_fail, range(3), retry=manyhands.Retry(retries=1, on=_no, backoff=0))
    assert report.failed == 3 and given and all(callable(broken) for broken in given)


def _fail(item: int) -> None:
    raise OSError(f"no {item}")


def _no(error: BaseException) -> bool:
    return False


def test_a_predicate_that_cannot_be_applied_has_its_own_note() -> None:
    stats = RunStatistics(keep_failures=10)
    failure = Failure(7, "builtins.OSError", "x", 1)
    stats.predicate_unapplied("retry", _no, failure)
    stats.predicate_unapplied("retry", _no, failure)
    stats.predicate_raised("retry", _no, failure, KeyError("k"))
    assert len(stats.notes) == 2
    assert stats.notes[0].startswith("Retry(on=_no) could not be applied to the OSError of item 7")
    assert "and to 1 more error" in stats.notes[0]
    assert stats.notes[1].startswith("Retry(on=_no) raised KeyError")


def test_safe_message_never_raises_and_is_cut() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert safe_message(Unprintable()).startswith("<unprintable ")
    assert safe_message(ValueError("x" * 300), 100) == "x" * 97 + "..."
    assert safe_message(ValueError("short"), 100) == "short"


def _retry_of_a(error: BaseException) -> tuple[_settlement.Settlement, Batch, Failure]:
    """A settlement, and the retry of item "a" (which failed once) that came back with ``error``."""
    settlement = _settlement_of(retry=manyhands.Retry(retries=2, on=(OSError,)))
    first = Failure.from_exception("a", OSError("reset"))
    retry = Batch(-1, ["a"], Task(str, lambda batch: None), attempt=2)
    retry.last_failure, retry.history = first, (first.error_type,)
    settlement._statistics.retried = settlement._statistics.retrying = 1  # (as when scheduled)
    retry.values, retry.errors = [None], {0: error}
    return settlement, retry, first


def test_a_retry_no_worker_could_begin_ends_with_its_last_failure_not_as_not_run() -> None:
    """The item was called (and failed): a retry the process backend could not begin
    (it stopped) ends it with that failure, as failed; it is no item not run."""
    crashed = WorkerCrashed("the process backend stopped")
    crashed.ran = False
    settlement, retry, first = _retry_of_a(crashed)
    stats = settlement._statistics
    retried, final, uncalled = settlement.settle(retry)
    assert (retried, final, uncalled) == (set(), [first], 1)
    assert retry.failures == {0: first} and first.attempts == 1
    assert retry.attempt == 1 and stats.retried == 0  # (never tried more than once after all)
    stats.add_batch(1, 0, 0.0, final)
    assert (stats.failed, stats.not_run, dict(stats.errors_by_type)) == (
        1, 0, {"builtins.OSError": 1}
    )  # fmt: skip


def test_a_retry_a_stop_rule_halted_ends_not_run_with_its_last_failure_told() -> None:
    """A retry that a stop rule kept a worker process from beginning (``halt``) is not
    final: not run ("retry stopped"), so the journal leaves it for a resume."""
    settlement, retry, _ = _retry_of_a(not_called("the run stopped first"))
    stats = settlement._statistics
    stats.stop_reason = "stop_after_failures=1: 1 item had failed"
    retried, final, uncalled = settlement.settle(retry)
    assert (retried, uncalled, len(final)) == (set(), 1, 1)
    stopped = final[0]
    assert retry.failures == {0: stopped} and stopped.attempts == 1
    assert stopped.error_type == "manyhands.WorkerCrashed"
    assert "before retrying it (it failed once, with builtins.OSError: 'reset')" in stopped.message
    assert "OSError: reset" in stopped.traceback  # (its last failure's, then why it ended)
    assert not_run_cause(stopped) == "retry stopped"
    stats.add_batch(1, 0, 0.0, final)
    assert (stats.failed, stats.not_run, dict(stats.not_run_causes)) == (
        0, 1, {"retry stopped": 1}
    )  # fmt: skip


def test_after_a_stop_rule_a_failure_with_retries_left_is_not_final() -> None:
    """Once a stop rule fired, a call that fails with retries left is not retried, nor
    final: its item ends not run, as one waiting for its retry does."""
    settlement = _settlement_of(retry=manyhands.Retry(retries=2, on=(OSError,)))
    settlement._statistics.stop_reason = "stop_after_failures=1: 1 item had failed"
    batch = Batch(0, ["a", "b"], Task(str, lambda batch: None))
    batch.values, batch.errors = [None, None], {0: OSError("reset"), 1: ValueError("bad")}
    retried, final, uncalled = settlement.settle(batch)
    assert (retried, uncalled) == (set(), 0)
    assert [f.error_type for f in final] == ["manyhands.WorkerCrashed", "builtins.ValueError"]
    assert [not_run_cause(f) for f in final] == ["retry stopped", None]
    assert not settlement._timers.heap  # nothing waits for a retry
