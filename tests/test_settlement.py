"""Settling a batch's errors: late batches, predicate notes, and what is built per failure."""

from __future__ import annotations

from typing import Any

import pytest

import manyhands
from manyhands import _retry, _settlement
from manyhands._batch import Batch, Task
from manyhands._exceptions import not_called
from manyhands._options import Options
from manyhands._outcome import Failure, safe_message
from manyhands._stats import RunStatistics
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


def test_a_retry_never_made_ends_with_its_last_failure_not_as_not_run() -> None:
    """The item was called (and failed): a retry no worker began (the run stopped) ends it
    with that failure, as a retry given up while it waited does; it is no item not run."""
    settlement = _settlement_of(retry=manyhands.Retry(retries=2, on=(OSError,)))
    stats = settlement._statistics
    first = Failure.from_exception("a", OSError("reset"))
    retry = Batch(-1, ["a"], Task(str, lambda batch: None), attempt=2)
    retry.last_failure = first
    stats.retried = stats.retrying = 1  # (as when the retry was scheduled)
    retry.values, retry.errors = [None], {0: not_called("the run stopped first")}
    retried, final, uncalled = settlement.settle(retry)
    assert (retried, final, uncalled) == (set(), [first], 1)
    assert retry.failures == {0: first} and first.attempts == 1
    assert retry.attempt == 1 and stats.retried == 0  # (never tried more than once after all)
    stats.add_batch(1, 0, 0.0, final)
    assert (stats.failed, stats.not_run, dict(stats.errors_by_type)) == (
        1, 0, {"builtins.OSError": 1}
    )  # fmt: skip
