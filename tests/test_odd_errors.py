"""A user's odd exception fails only its own item: never the run, never a worker.

Two kinds of odd: exception classes whose attributes break when the engine
reads them (``retry_after``, ``lineage``, ``exceptions``, ``__notes__``,
``__cause__``...), and one exception object raised by many calls at once (a
module's constant, a failed setup Future's ``result()`` in every call).
"""

from __future__ import annotations

import gc
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import manyhands

from .conftest import Hands, os_thread_count, wait_for_threads


class PayloadError(Exception):
    """Delegates attributes to a payload: ``__getattr__`` raises KeyError for the rest."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload["message"])
        self.payload = payload

    def __getattr__(self, name: str) -> Any:
        return self.payload[name]


class BrokenRetryAfter(Exception):
    @property
    def retry_after(self) -> float:
        raise RuntimeError("retry_after broke")


class HugeRetryAfter(Exception):
    """A Retry-After header parsed with int(): too large for a float."""

    retry_after = int("9" * 400)


class WithLineage(Exception):
    lineage = None


class WithExceptions(Exception):
    exceptions = None


class WithExceptionCount(Exception):
    exceptions = 3


class WithRan(Exception):
    """An attribute named as one manyhands' own errors have (a call that never ran)."""

    ran = False


class BrokenNotes(Exception):
    @property
    def __notes__(self) -> list[str]:
        raise RuntimeError("__notes__ broke")


class BrokenCause(Exception):
    @property
    def __cause__(self) -> BaseException:  # type: ignore[override]
        raise RuntimeError("__cause__ broke")


@dataclass(frozen=True)
class FrozenError(Exception):
    """A frozen dataclass: setting any attribute on it raises."""

    code: int


HOSTILE: list[BaseException] = [
    PayloadError({"message": "quota", "code": 403}),
    BrokenRetryAfter("retry_after"),
    HugeRetryAfter("huge"),
    WithLineage("lineage"),
    WithExceptions("exceptions"),
    WithExceptionCount("a count"),
    WithRan("ran"),
    BrokenNotes("notes"),
    BrokenCause("cause"),
    FrozenError(7),
]
HOSTILE_TYPES = [f"{__name__}.{type(error).__qualname__}" for error in HOSTILE]


def raise_hostile(x: int) -> int:
    if x < len(HOSTILE):  # (the first items: the run's check of the first value sees them)
        raise HOSTILE[x]
    return x


def test_hostile_exceptions_fail_only_their_items_and_are_journaled(
    hands: Hands, tmp_path: Path
) -> None:
    journal = tmp_path / "run.db"
    items = range(len(HOSTILE) + 20)
    retry = manyhands.Retry(retries=1, backoff=0.0)
    report = hands.run(raise_hostile, items, retry=retry, journal=journal, progress=False)
    assert (report.succeeded, report.failed) == (20, len(HOSTILE))
    failures = {failure.item: failure for failure in report.failures}
    for index, error_type in enumerate(HOSTILE_TYPES):
        failure = failures[index]
        assert failure.error_type == error_type  # its own exception, not the engine's
        assert failure.attempts == 2  # a broken retry_after counts as absent: retried as usual
        assert error_type.rsplit(".", 1)[1] in failure.traceback
    # The journal recorded every failure: a resume skips them all, and crashes at none.
    again = hands.run(raise_hostile, items, retry=retry, journal=journal, progress=False)
    assert (again.skipped, again.skipped_failed, again.failed) == (len(items), len(HOSTILE), 0)


LOGIN: Future[str] = Future()
LOGIN.set_exception(ConnectionError("login failed"))


def raise_shared(x: int) -> tuple[str, int]:
    if x % 2:
        return ("token", x)
    return (LOGIN.result(), x)  # the one stored ConnectionError, raised again by every call


def test_one_exception_object_raised_by_every_call_fails_only_their_items(hands: Hands) -> None:
    n = 20_000
    report = hands.run(raise_shared, range(n), workers=4, progress=False)
    assert (report.succeeded, report.failed) == (n // 2, n // 2)
    assert report.errors_by_type == {"builtins.ConnectionError": n // 2}
    for failure in report.failures:
        assert failure.message == "login failed"
        # This call's traceback, once: not another call's, nor every call's chained.
        # (Its innermost frames may be missing: ``Future.result`` re-raises through a
        # ``finally``, which sets the shared object's traceback, and another thread's
        # raise of it meanwhile resets it; 1 run in the suite on a loaded machine.)
        assert failure.traceback.count("in raise_shared") == 1, failure.traceback
        assert failure.traceback.count("raise self._exception") <= 1, failure.traceback


class Value:
    """A call's result, watched through a weak reference."""


alive: weakref.WeakSet[Value] = weakref.WeakSet()


def value_or_shared_error(x: int) -> Value:
    if x % 2:
        LOGIN.result()
    value = Value()
    alive.add(value)
    return value


def test_failures_kept_by_the_caller_keep_no_batch_alive(backend: str) -> None:
    # The caller keeps every failed Outcome (with its traceback's frames): the
    # values of the batches they came in are let go all the same.
    threads = os_thread_count()
    failed = [
        out
        for out in manyhands.map(value_or_shared_error, range(20_000), backend=backend, workers=4)
        if not out.ok
    ]
    assert len(failed) == 10_000
    assert all("in value_or_shared_error" in out.error.traceback for out in failed[:10])
    wait_for_threads(threads)  # (a worker lets go of its last batch as it leaves)
    gc.collect()
    assert len(alive) == 0, f"{len(alive)} values of finished batches are still alive"


def test_hostile_exceptions_on_an_executor_fail_only_their_items() -> None:
    with ThreadPoolExecutor(2) as pool:
        report = manyhands.run(raise_hostile, range(len(HOSTILE) + 5), backend=pool)
    assert report.succeeded == 5
    assert sorted(failure.error_type for failure in report.failures) == sorted(HOSTILE_TYPES)
