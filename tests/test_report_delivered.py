"""The Report counts the outcomes the consumer got, and a run keeps nothing nobody will get.

``outcomes.report`` is "the Report of what was delivered so far": before and after the
consumer leaves, and with outcomes held back for their turn (``ordered=True``), still
waiting for a retry, or left in a batch the consumer did not finish.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import manyhands
from manyhands._delivery import FRAMES_HELD

from .conftest import Hands


def fails_on_sevens(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(x)
    return x


def expected(got: list[manyhands.Outcome]) -> tuple[int, int, int, list[Any], dict[str, int]]:
    """(total, succeeded, failed, the failed items in order, errors by type) of ``got``."""
    failed = [o.item for o in got if not o.ok]
    kinds = {"builtins.ValueError": len(failed)} if failed else {}
    return len(got), len(got) - len(failed), len(failed), failed, kinds


def counts(report: manyhands.Report) -> tuple[int, int, int, list[Any], dict[str, int]]:
    items = [failure.item for failure in report.failures]
    return report.total, report.succeeded, report.failed, items, report.errors_by_type


@pytest.mark.parametrize("ordered", [False, True])
def test_the_report_during_the_loop_counts_the_outcomes_received_so_far(
    hands: Hands, ordered: bool
) -> None:
    """Read at every outcome, and after leaving with an exception before the iterator is
    closed: the Report is what the loop got, never the rest of the batch it is in, nor the
    outcomes held for their turn."""
    got: list[manyhands.Outcome] = []
    outcomes = hands.map(fails_on_sevens, range(600), workers=2, ordered=ordered)
    try:
        with pytest.raises(KeyError):
            for outcome in outcomes:
                got.append(outcome)
                report = outcomes.report
                assert counts(report) == expected(got), len(got)
                assert set(report.examples.values()) <= {o.item for o in got if not o.ok}
                if len(got) == 451:
                    raise KeyError("the loop's own error")
        assert counts(outcomes.report) == expected(got)  # (not closed yet)
    finally:
        outcomes.close()
    assert counts(outcomes.report) == expected(got)


def test_amap_reports_what_it_delivered_so_far() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(0)
        return fails_on_sevens(x)

    async def main() -> None:
        got: list[manyhands.Outcome] = []
        outcomes = manyhands.amap(call, range(300), workers=4)
        try:
            async for outcome in outcomes:
                got.append(outcome)
                assert counts(outcomes.report) == expected(got), len(got)
                if len(got) == 200:
                    break
        finally:
            await outcomes.aclose()
        assert counts(outcomes.report) == expected(got)

    asyncio.run(main())


def test_retried_counts_only_the_items_delivered() -> None:
    """An item waiting for its retry when the loop leaves was never delivered: it is not
    among the items retried (the Report said "1 item, 1 retried" of a run that yielded one
    item tried once)."""
    first_try: set[int] = set()

    def flaky_first(x: int) -> int:
        if x == 0 and x not in first_try:
            first_try.add(x)
            raise ConnectionError("flaky")
        return x

    slow_retry = manyhands.Retry(1, backoff=600, max_backoff=600, random=lambda: 0.5)
    with manyhands.map(flaky_first, range(50), workers=2, batch_size=1, retry=slow_retry) as out:
        got = next(out)
        assert got.item != 0 and got.attempts == 1
        during = out.report
    after = out.report
    for report in (during, after):
        assert (report.total, report.retried) == (1, 0), str(report)
        assert report.attempts >= 2  # (the calls were made all the same)


def until(done: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait until ``done()`` (a counter read under the GIL), or ``limit`` seconds: the
    first item's call, holding its turn while the calls after it settle."""
    deadline = time.monotonic() + limit
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


class Buffer:
    """Stands for a large local (a response body, an image) of a call."""


def test_failures_held_for_their_turn_let_go_of_their_frames(no_thread_left: None) -> None:
    """ordered=True: while the first item runs, the failures after it wait for their turn
    keeping no more than FRAMES_HELD of their calls' frames, and the locals in them, alive
    (10,000 calls that each held 200 KB pinned 1.7 GB); their tracebacks are kept as text."""
    count = 200
    alive: weakref.WeakSet[Buffer] = weakref.WeakSet()
    lock = threading.Lock()
    failed = [0]
    left: list[int] = []

    def body(x: int) -> int:
        if x == 0:  # runs until the others failed and settled, or 10 s
            until(lambda: failed[0] == count - 1 and len(alive) <= FRAMES_HELD)
            left.append(len(alive))
            return 0
        buffer = Buffer()  # a local of the failing frame
        alive.add(buffer)
        with lock:
            failed[0] += 1
        raise ValueError(f"item {x} failed")

    options: dict[str, Any] = dict(workers=4, batch_size=1, ordered=True, keep_failures=0)
    with manyhands.map(body, range(count), **options) as outcomes:  # (none kept for the Report)
        first = next(outcomes)
        assert first.ok and left[0] <= FRAMES_HELD, f"{left} failed calls' locals were alive"
        rest = list(outcomes)
    assert [o.item for o in rest] == list(range(1, count))
    for outcome in rest:
        assert outcome.error is not None and "in body" in outcome.error.traceback
        assert isinstance(outcome.error.exception, ValueError)


def test_a_closed_map_lets_go_of_the_outcomes_it_held(no_thread_left: None) -> None:
    """Left after the first outcome, with the rest held for their turn: once closed, the
    Outcomes (kept for its Report) holds none of their values."""
    count = 100
    alive: weakref.WeakSet[Buffer] = weakref.WeakSet()
    lock = threading.Lock()
    returned = [0]

    def body(x: int) -> Buffer | None:
        if x == 0:  # runs until the others returned, or 10 s
            until(lambda: returned[0] == count - 1)
            return None
        value = Buffer()
        alive.add(value)
        with lock:
            returned[0] += 1
        return value

    outcomes = manyhands.map(body, range(count), workers=4, batch_size=1, ordered=True)
    first = next(outcomes)
    assert first.item == 0 and returned[0] == count - 1
    outcomes.close()
    gc.collect()
    assert len(alive) == 0, f"a closed map holds {len(alive)} values nobody will get"
    assert outcomes.report.total == 1


def test_the_report_keeps_the_first_failures_delivered_in_order() -> None:
    """ordered=True, retries, keep_failures=1: the Report keeps the first failure the loop
    got (item 0, retried, failed for good after item 1's failure), not the first to settle;
    after leaving, the one it got is still kept."""
    later_failed = threading.Event()
    tries: dict[int, int] = {}

    def body(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        if x == 0:
            if tries[x] == 1:  # its first try ends after item 5 failed
                later_failed.wait(10)
            raise ConnectionError("item 0 for good")
        if x == 5:
            later_failed.set()
        raise ValueError(x)

    retry = manyhands.Retry(1, backoff=0.0, on=ConnectionError)
    options: dict[str, Any] = dict(workers=2, batch_size=1, ordered=True, retry=retry)
    with manyhands.map(body, range(20), keep_failures=2, **options) as outcomes:
        assert len(list(outcomes)) == 20
    assert [f.item for f in outcomes.report.failures] == [0, 1]  # (in the order delivered)
    tries.clear()
    later_failed.clear()
    with manyhands.map(body, range(20), keep_failures=1, **options) as outcomes:
        got = next(outcomes)
        assert got.item == 0 and got.attempts == 2 and not got.ok
        assert [f.item for f in outcomes.report.failures] == [0]
    report = outcomes.report
    assert [f.item for f in report.failures] == [0] and report.failed == 1
    assert report.retried == 1 and report.examples == {"builtins.ConnectionError": 0}


def test_failures_taken_back_after_delivery_are_neither_kept_nor_examples() -> None:
    """The command could not write a delivered batch's lines: its outcomes are uncounted,
    and the Report neither keeps its failures nor names their items as examples."""
    from manyhands._outcome import Failure
    from manyhands._stats import RunStatistics

    stats = RunStatistics(keep_failures=10)
    first, second = Failure("a", "builtins.ValueError", "x"), Failure("b", "builtins.KeyError", "y")
    stats.add_batch(2, 2, 0.1, [first])
    stats.delivered([first])
    stats.add_batch(2, 2, 0.1, [second])
    stats.delivered([second])
    stats.take_back(1, [second], [])
    stats.forget([second])
    assert stats.failures == [first] and stats.examples == {"builtins.ValueError": "a"}
    counts = (stats.succeeded, stats.failed, dict(stats.errors_by_type))
    assert counts == (1, 1, {"builtins.ValueError": 1})


def test_failures_held_for_their_turn_leave_the_users_generators_running(
    no_thread_left: None,
) -> None:
    """The errors of a generator the calls share (a connection's last error, yielded) hold
    its suspended frame: a failure that waits for its turn lets go of its calls' locals,
    never of that frame (clearing it would close the generator under the user's code)."""
    count = FRAMES_HELD + 40  # (past the failures that keep their frames whole)
    lock = threading.Lock()
    failed = [0]

    def last_errors() -> Iterator[ConnectionError]:
        n = 0
        while True:
            n += 1
            try:
                raise ConnectionError(f"down #{n}")
            except ConnectionError as error:
                yield error  # suspended here: the error's traceback holds this frame

    errors = last_errors()

    def body(x: int) -> int:
        if x == 0:  # runs until the others failed, or 10 s
            until(lambda: failed[0] == count - 1)
            return 0
        with lock:
            error = next(errors)
            failed[0] += 1
        raise error

    options: dict[str, Any] = dict(workers=4, batch_size=1, ordered=True, keep_failures=0)
    outcomes = list(manyhands.map(body, range(count), **options))
    assert [o.ok for o in outcomes] == [True] + [False] * (count - 1)
    assert all("ConnectionError: down #" in o.error.traceback for o in outcomes[1:] if o.error)
    with lock:
        assert str(next(errors)) == f"down #{count}"  # (closed, it would raise StopIteration)
