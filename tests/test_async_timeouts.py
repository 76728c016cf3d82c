"""timeout= on asyncio: a call past its deadline fails then, even if it ignores its cancellation.

The coroutines here catch ``CancelledError`` and go on awaiting until the
test releases them. Each run is bounded (:func:`bounded`), so a run that
waits for such a call fails its test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import manyhands

from .conftest import finish, start_python

PATIENCE = 10.0  # seconds a run may take here before it is deemed hung


class Stubborn:
    """A coroutine function whose item 0 ignores every cancellation until :meth:`release`."""

    def __init__(self, latency: float = 0.01) -> None:
        self.latency = latency
        self._released = threading.Event()
        self.cancellations = 0
        self.running = threading.Event()  # item 0 is in its call

    async def __call__(self, item: int) -> int:
        if item == 0:
            self.running.set()
            while not self._released.is_set():
                try:
                    await asyncio.sleep(0.02)
                except asyncio.CancelledError:
                    self.cancellations += 1  # ...and go on
        else:
            await asyncio.sleep(self.latency)
        return item

    @property
    def still_running(self) -> bool:
        return not self._released.is_set()

    def release(self) -> None:
        self._released.set()


def bounded(body: Callable[[], Any]) -> Any:
    """``body()`` in a thread of its own; fails (instead of hanging) past ``PATIENCE``."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(body())
        except BaseException as exc:  # (re-raised in the test's thread)
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(PATIENCE)
    assert not thread.is_alive(), "the run waited for a call that ignores its cancellation"
    if errors:
        raise errors[0]
    return result[0]


@pytest.fixture
def stubborn() -> Iterator[Stubborn]:
    fn = Stubborn()
    yield fn
    fn.release()  # (the call left running ends; so does a private loop's thread)


def by_item(outcomes: Any) -> dict[int, Any]:
    return {out.item: out for out in outcomes}


def assert_timed_out_alone(outs: dict[int, Any], count: int) -> None:
    assert sorted(outs) == list(range(count))
    error = outs[0].error
    assert error is not None and error.error_type == "manyhands.Timeout"
    assert "timeout=0.2s" in error.message
    assert all(outs[n].ok and outs[n].value == n for n in range(1, count))


def test_run_and_map_end_with_the_call_failed_as_timeout_while_it_still_runs(
    stubborn: Stubborn,
) -> None:
    # One worker: the items after item 0 run only if its place is taken by a new task.
    report = bounded(lambda: manyhands.run(stubborn, range(5), workers=1, timeout=0.2))
    assert stubborn.still_running and stubborn.cancellations >= 2  # (at its deadline, at the end)
    assert (report.succeeded, report.failed) == (4, 1)
    assert report.errors_by_type == {"manyhands.Timeout": 1}
    assert report.abandoned == 1
    assert "abandoned: 1 call past timeout= or the grace period did not end" in str(report)

    outs = bounded(lambda: by_item(manyhands.map(stubborn, range(5), workers=1, timeout=0.2)))
    assert_timed_out_alone(outs, 5)


def test_a_private_loops_thread_ends_once_the_call_left_running_ends(
    no_thread_left: None,
) -> None:
    fn = Stubborn()
    try:
        report = bounded(lambda: manyhands.run(fn, range(3), timeout=0.2))
        assert report.abandoned == 1
        assert "manyhands-asyncio" in {t.name for t in threading.enumerate()}
    finally:
        fn.release()  # then no_thread_left: the loop's thread stops and closes its loop


def test_amap_ends_and_leaves_the_call_on_the_callers_loop(stubborn: Stubborn) -> None:
    async def main() -> dict[int, Any]:
        outs = by_item([o async for o in manyhands.amap(stubborn, range(5), timeout=0.2)])
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert len(others) == 1  # the call left running: cancelled once more, not awaited
        stubborn.release()
        await asyncio.wait(others, timeout=PATIENCE)
        assert all(task.done() for task in others)
        return outs

    outs = bounded(lambda: asyncio.run(main()))
    assert_timed_out_alone(outs, 5)


def test_an_async_pool_gives_the_calls_place_to_other_runs_and_closes(
    stubborn: Stubborn,
) -> None:
    def body() -> tuple[Any, Any, Any]:
        # One worker, shared: the other runs get it back once the stuck call is past its deadline.
        with manyhands.Pool(workers=1, backend="async") as pool:
            stuck = pool.run(stubborn, range(3), timeout=0.2)
            assert stubborn.still_running
            other = pool.run(stubborn, range(1, 20))
            # (Not item 0 again: the stuck call is the one given-up call the pool's one
            # worker allows, so a second one past its deadline would keep the worker.)
            later = by_item(pool.map(stubborn, range(1, 5), timeout=0.2))
        return stuck, other, later

    stuck, other, later = bounded(body)
    assert stubborn.still_running  # the pool closed without waiting for it
    assert (stuck.succeeded, stuck.failed, stuck.abandoned) == (2, 1, 1)
    assert stuck.errors_by_type == {"manyhands.Timeout": 1}
    assert (other.succeeded, other.failed) == (19, 0)
    assert sorted(later) == [1, 2, 3, 4] and all(out.ok for out in later.values())


def test_a_call_that_ends_when_cancelled_is_not_counted_as_abandoned() -> None:
    async def fn(item: int) -> int:
        await asyncio.sleep(10 if item == 0 else 0.01)
        return item

    report = bounded(lambda: manyhands.run(fn, range(4), workers=1, timeout=0.2))
    assert (report.succeeded, report.failed, report.abandoned) == (3, 1, 0)
    assert "did not end" not in str(report)


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["no-timeout", "before-its-deadline"])
def test_break_during_a_call_that_ignores_its_cancellation_ends_after_the_grace_period(
    stubborn: Stubborn, timeout: float | None
) -> None:
    def body() -> int:
        seen = 0
        for _out in manyhands.map(stubborn, range(50), workers=4, timeout=timeout, grace=0.2):
            seen += 1
            if stubborn.running.is_set():
                break
        return seen

    assert bounded(body) >= 1
    assert stubborn.still_running and stubborn.cancellations >= 1

    def in_a_pool() -> int:
        with manyhands.Pool(workers=4, backend="async") as pool:
            for _out in pool.map(stubborn, range(50), timeout=timeout):
                if stubborn.running.is_set():
                    break
            return pool.run(stubborn, range(1, 9)).succeeded

    assert bounded(in_a_pool) == 8


def test_ctrl_c_during_a_call_that_ignores_its_cancellation_ends_the_program() -> None:
    code = textwrap.dedent(
        """
        import asyncio, sys, manyhands
        async def fn(x):
            if x == 0:
                print("running", flush=True)
                while True:
                    try:
                        await asyncio.sleep(10)
                    except asyncio.CancelledError:
                        pass
            await asyncio.sleep(0.01)
        manyhands.run(fn, range(100), workers=4, grace=0.2)
        """
    )
    proc = start_python(code)
    assert proc.stdout is not None and proc.stdout.readline() == "running\n"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc, 30)
    assert time.monotonic() - sent < 20  # (not killed by finish: it ended by itself)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert "Task was destroyed" not in err and "never awaited" not in err


def _run_private(fn: Callable[[int], Any], items: range, workers: int) -> manyhands.Report:
    return manyhands.run(fn, items, workers=workers, timeout=0.05)


def _run_in_a_pool(fn: Callable[[int], Any], items: range, workers: int) -> manyhands.Report:
    with manyhands.Pool(workers=workers, backend="async") as pool:
        return pool.run(fn, items, timeout=0.05)


@pytest.mark.parametrize("run", [_run_private, _run_in_a_pool], ids=["run", "pool"])
def test_calls_left_running_past_their_deadline_are_capped_at_workers(
    run: Callable[[Callable[[int], Any], range, int], manyhands.Report],
) -> None:
    """At most `workers` given-up calls run on, as at most `workers` threads are abandoned.

    Past that, a call past its deadline keeps its task (not replaced): the
    item fails at the deadline all the same, and the task takes the next
    item once the call ends. Without the cap every stubborn call is replaced
    at its deadline, and the ten pile up on the loop at once.
    """
    workers, stubborn = 2, 10
    alive = most = 0

    async def fn(item: int) -> int:
        nonlocal alive, most
        if item >= stubborn:
            return item
        alive += 1
        most = max(most, alive)
        try:
            loop = asyncio.get_running_loop()
            ends = loop.time() + 0.5
            while loop.time() < ends:  # ignores its cancellation for half a second
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.02)
        finally:
            alive -= 1
        return item

    report = bounded(lambda: run(fn, range(2 * stubborn), workers))
    assert most <= 2 * workers, f"{most} calls ignoring their cancellation ran at once"
    assert report.errors_by_type == {"manyhands.Timeout": stubborn}
    assert report.succeeded == stubborn  # (the kept tasks went on with the next items)
    assert report.abandoned <= 2 * workers
