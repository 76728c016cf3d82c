"""Coroutine functions: run/map on a private loop, amap on the caller's loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import textwrap
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import manyhands

from .conftest import finish, start_python


class Peak:
    """Counts how many calls of a coroutine function are in flight at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def wrap(self, delay: float) -> Any:
        async def call(item: int) -> int:
            self.now += 1
            self.peak = max(self.peak, self.now)
            try:
                await asyncio.sleep(delay)
            finally:
                self.now -= 1
            return item

        return call

    def wait_for(self, level: int, patience: float) -> Any:
        """Calls that stay in flight until ``level`` calls were in flight at once.

        A run that never gets there ends anyway, ``patience`` seconds after its first call, so
        a shortfall fails the test's assertion instead of hanging it; no sleep length decides
        the outcome on a loaded machine.
        """
        reached = asyncio.Event()
        first: list[float] = []

        async def call(item: int) -> int:
            loop = asyncio.get_running_loop()
            if not first:
                first.append(loop.time())
            self.now += 1
            self.peak = max(self.peak, self.now)
            if self.peak >= level:
                reached.set()
            try:
                left = first[0] + patience - loop.time()
                if left > 0 and not reached.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(reached.wait(), left)
                await asyncio.sleep(0)
            finally:
                self.now -= 1
            return item

        return call


def collect_loop_errors(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Messages the loop would log ("Task was destroyed but it is pending!", ...)."""
    errors: list[str] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["message"]))
    return errors


def test_run_with_thousands_in_flight_from_sync_code(no_thread_left: None) -> None:
    peak = Peak()
    report = manyhands.run(peak.wait_for(4500, patience=20), range(10_000), workers=5000)
    assert report.succeeded == 10_000
    assert 4500 <= peak.peak <= 5000  # thousands at once, never more than workers


def test_a_retry_that_comes_back_as_the_workers_retire_is_run() -> None:
    """The input ended, idle workers were leaving, and then a call failed and was retried."""

    async def afn(x: int) -> int:
        time.sleep(0.002)  # (blocking: the others finish and retire meanwhile)
        if x == 3:
            raise ConnectionError(x)
        return x

    def one(done: list[list[manyhands.Outcome]]) -> None:
        retry = manyhands.Retry(1, backoff=0.0)
        done.append(list(manyhands.map(afn, range(6), workers=4, retry=retry)))

    for attempt in range(5):  # (it hung 9 runs in 10)
        done: list[list[manyhands.Outcome]] = []
        runner = threading.Thread(target=one, args=(done,), daemon=True)
        runner.start()
        runner.join(30)
        assert done, f"run {attempt} never returned"
        failed = [o for o in done[0] if o.error is not None]
        assert len(done[0]) == 6 and [(o.item, o.attempts) for o in failed] == [(3, 2)]


def test_small_runs_with_retries_all_end() -> None:
    """Workers that retire as the input ends and come back for a retry are woken again."""
    rng = random.Random(1)

    async def afn(item: tuple[int, bool]) -> int:
        await asyncio.sleep(rng.choice([0, 0.001, 0.003]))
        if item[1]:
            raise ConnectionError(item[0])
        return item[0]

    def many(ended: list[int]) -> None:
        for _ in range(400):
            items = [(i, rng.random() < 0.3) for i in range(rng.randint(2, 12))]
            report = manyhands.run(
                afn, items, workers=rng.randint(1, 6), retry=manyhands.Retry(1, backoff=0.0)
            )
            assert report.total == len(items)
            ended.append(1)

    ended: list[int] = []
    runner = threading.Thread(target=many, args=(ended,), daemon=True)
    runner.start()
    runner.join(60)
    assert len(ended) == 400, f"run {len(ended)} never returned (it hung 1 run in ~100)"


def test_map_with_a_coroutine_function_keeps_order_and_failures() -> None:
    async def fn(x: int) -> int:
        await asyncio.sleep(0.001 * (x % 3))
        if x == 4:
            raise KeyError(x)
        return -x

    outs = list(manyhands.map(fn, range(10), ordered=True, workers=4))
    assert [o.item for o in outs] == list(range(10))
    assert outs[4].error is not None and outs[4].error.error_type == "builtins.KeyError"
    assert [o.value for o in outs if o.ok] == [-x for x in range(10) if x != 4]


def test_run_from_a_running_loop_points_at_amap() -> None:
    async def fn(x: int) -> int:
        return x

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"running event loop.*manyhands\.amap"):
            manyhands.run(fn, [1])
        with pytest.raises(RuntimeError, match="amap"):
            manyhands.map(fn, [1])

    asyncio.run(main())


def test_backend_and_function_must_agree() -> None:
    async def coro(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="coroutine function, which backend='threads' cannot"):
        manyhands.run(coro, [1], backend="threads")
    with pytest.raises(TypeError, match="backend='async' needs a coroutine function"):
        manyhands.run(abs, [1], backend="async")

    async def main() -> None:
        with pytest.raises(TypeError, match=r"amap\(\) needs a coroutine function") as caught:
            manyhands.amap(abs, [1])
        assert "pool.amap(fn, items)" in str(caught.value)  # which takes a regular function
        async with manyhands.Pool(workers=2) as pool:
            assert [out.value async for out in pool.amap(abs, [-1])] == [1]
        with pytest.raises(TypeError, match=r"arun\(\) needs a coroutine function") as caught:
            await manyhands.arun(abs, [1])
        assert "await asyncio.to_thread(manyhands.run, fn, items)" in str(caught.value)
        report = await asyncio.to_thread(manyhands.run, abs, [-1])
        assert report.succeeded == 1

    asyncio.run(main())


def test_amap_runs_on_the_callers_loop_with_sync_and_async_inputs() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen_loops: set[int] = set()

        async def fn(x: int) -> int:
            seen_loops.add(id(asyncio.get_running_loop()))
            await asyncio.sleep(0)
            return x * 3

        async def numbers() -> AsyncIterator[int]:
            for n in range(300):
                if n % 50 == 0:
                    await asyncio.sleep(0.005)  # a slow stream: the run waits for it
                yield n

        from_sync = [o.value async for o in manyhands.amap(fn, range(300), ordered=True)]
        from_async = [o.value async for o in manyhands.amap(fn, numbers(), ordered=True)]
        assert from_sync == from_async == [n * 3 for n in range(300)]
        assert seen_loops == {id(loop)}

    asyncio.run(main())


def test_break_cancels_in_flight_calls_and_leaves_no_task() -> None:
    async def main() -> None:
        errors = collect_loop_errors(asyncio.get_running_loop())
        started: list[int] = []
        cancelled: list[int] = []

        async def fn(x: int) -> int:
            started.append(x)
            try:
                await asyncio.sleep(0.01 if x < 5 else 10)
            except asyncio.CancelledError:
                cancelled.append(x)
                raise
            return x

        async for out in manyhands.amap(fn, range(1000), workers=20):
            if out.ok:
                break
        for _ in range(5):  # the abandoned iterator is finalized by the loop
            await asyncio.sleep(0.01)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert cancelled and len(started) <= 40
        assert errors == []

        # The same, at once, with `async with`:
        async with manyhands.amap(fn, range(1000), workers=20) as outcomes:
            async for _out in outcomes:
                break
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_in_flight_never_exceeds_workers_and_memory_is_bounded_for_async_inputs() -> None:
    async def run_over(count: int) -> int:
        peak = Peak()

        async def numbers() -> AsyncIterator[int]:
            for n in range(count):
                yield n

        done = 0
        async for _out in manyhands.amap(peak.wrap(0), numbers(), workers=50):
            done += 1
        assert peak.peak <= 50
        return done

    def traced_peak(count: int) -> int:
        tracemalloc.start()
        try:
            assert asyncio.run(run_over(count)) == count
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = traced_peak(20_000), traced_peak(200_000)
    assert large < small * 1.5 + 2**20, (small, large)  # not ten times the input


def test_timeout_cancels_the_coroutine() -> None:
    cleaned: list[int] = []

    async def fn(x: int) -> int:
        try:
            await asyncio.sleep(10 if x == 2 else 0)
        finally:
            cleaned.append(x)
        return x

    started = time.monotonic()
    outs = {o.item: o for o in manyhands.map(fn, range(5), timeout=0.1)}
    assert time.monotonic() - started < 5
    assert outs[2].error is not None and outs[2].error.error_type == "manyhands.Timeout"
    assert "timeout=0.1s" in outs[2].error.message
    assert sorted(cleaned) == [0, 1, 2, 3, 4]  # the timed-out call ran its finally
    assert all(outs[n].ok for n in (0, 1, 3, 4))


def test_a_users_own_timeout_error_is_not_a_timeout() -> None:
    async def fn(x: int) -> int:
        raise TimeoutError("the upstream said so")

    outs = list(manyhands.map(fn, [1], timeout=5))
    assert outs[0].error is not None and outs[0].error.error_type == "builtins.TimeoutError"


def test_user_cancelled_error_fails_the_item_but_run_cancellation_propagates() -> None:
    async def fn(x: int) -> int:
        if x == 1:
            raise asyncio.CancelledError("the user's own")
        await asyncio.sleep(0.001)
        return x

    outs = {o.item: o for o in manyhands.map(fn, range(4))}
    assert outs[1].error is not None
    assert outs[1].error.error_type == "asyncio.exceptions.CancelledError"
    assert all(outs[n].ok for n in (0, 2, 3))

    async def slow(x: int) -> int:
        await asyncio.sleep(10)
        return x

    async def consume() -> None:
        async for _ in manyhands.amap(slow, range(100), workers=10):
            pass

    async def main() -> None:
        errors = collect_loop_errors(asyncio.get_running_loop())
        task = asyncio.get_running_loop().create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert errors == []

    asyncio.run(main())


def test_ctrl_c_in_run_with_a_coroutine_function_is_prompt_and_clean() -> None:
    code = textwrap.dedent(
        """
        import asyncio, manyhands
        async def fn(x):
            await asyncio.sleep(1000)
        manyhands.run(fn, range(10_000), workers=100)
        """
    )
    proc = start_python(code)
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc, 30)
    assert time.monotonic() - sent < 5
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert "Task was destroyed" not in err and "never awaited" not in err


def test_async_input_that_breaks_is_an_input_error() -> None:
    async def fn(x: int) -> int:
        return x

    async def numbers() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise OSError("stream cut")

    async def main() -> list[Any]:
        got = []
        with pytest.raises(manyhands.InputError) as info:
            async for out in manyhands.amap(fn, numbers(), ordered=True):
                got.append(out.value)
        assert info.value.position == 2
        assert isinstance(info.value.__cause__, OSError)
        return got

    assert asyncio.run(main()) == [1, 2]


@pytest.mark.parametrize("journal", [False, True])
@pytest.mark.parametrize("source", ["async", "sync"])
def test_an_input_that_raises_cancelled_error_itself_is_an_input_error(
    tmp_path: Any, journal: bool, source: str
) -> None:
    # Nobody cancelled the run: the input's own CancelledError must not read as
    # the end of the input (50 items silently never run) or a bare cancellation.
    async def fn(x: int) -> int:
        return x

    async def arows() -> AsyncIterator[int]:
        for n in range(100):
            if n == 50:
                raise asyncio.CancelledError("the input's stream was cancelled")
            await asyncio.sleep(0)
            yield n

    def rows() -> Iterator[int]:
        for n in range(100):
            if n == 50:
                raise asyncio.CancelledError("the input's stream was cancelled")
            yield n

    options: dict[str, Any] = {"journal": str(tmp_path / "run.db")} if journal else {}

    async def main() -> None:
        with pytest.raises(manyhands.InputError) as info:
            await manyhands.arun(fn, arows() if source == "async" else rows(), **options)
        assert info.value.position == 50
        assert isinstance(info.value.__cause__, asyncio.CancelledError)
        report = info.value.report
        assert report is not None and report.succeeded == 50

    asyncio.run(main())


@pytest.mark.parametrize("window", [4, 64])
def test_window_bounds_how_far_an_async_input_is_read_ahead(window: int) -> None:
    read = 0

    async def rows() -> AsyncIterator[int]:
        nonlocal read
        for n in range(100_000):
            read += 1
            yield n

    async def fn(x: int) -> int:
        return x

    async def main() -> None:
        taken = 0
        async for _ in manyhands.amap(fn, rows(), workers=2, window=window):
            taken += 1
            await asyncio.sleep(0.001)  # a slow consumer: the input must wait for it
            if taken == 3 * window:
                break
        # The window, and at most a quarter of it more read ahead (it was 1,024 more).
        assert read <= taken + window + window // 4 + 1

    asyncio.run(main())


def test_amap_with_a_journal_resumes(tmp_path: Any) -> None:
    journal = tmp_path / "run.db"
    calls: list[int] = []

    async def fn(x: int) -> int:
        calls.append(x)
        return x

    async def numbers(count: int) -> AsyncIterator[int]:
        for n in range(count):
            await asyncio.sleep(0)
            yield n

    async def run_over(count: int) -> list[Any]:
        return [o async for o in manyhands.amap(fn, numbers(count), journal=journal)]

    assert len(asyncio.run(run_over(600))) == 600
    again = asyncio.run(run_over(700))
    assert len(again) == 700 and sum(o.skipped is not None for o in again) == 600
    assert sorted(calls) == list(range(700))


def test_sync_iterable_items_work_with_amap() -> None:
    def numbers() -> Iterator[int]:
        yield from range(10)

    async def fn(x: int) -> int:
        return x + 1

    async def main() -> list[int]:
        return sorted([o.value async for o in manyhands.amap(fn, numbers())])

    assert asyncio.run(main()) == list(range(1, 11))


def test_concurrency_is_counted_in_items_even_within_one_batch() -> None:
    peak = Peak()
    report = manyhands.run(peak.wrap(0.05), range(10), workers=10, batch_size=10)
    assert report.succeeded == 10
    assert peak.peak == 10  # one batch of ten: all ten at once, not one after another
    peak = Peak()
    manyhands.run(peak.wrap(0.01), range(100), workers=3, batch_size=50)
    assert peak.peak == 3  # and never more than workers


def test_an_async_input_raising_keyboard_interrupt_reaches_the_caller_and_nothing_else() -> None:
    # As a Ctrl-C landing in the input's own code would: it reaches the caller as
    # it is, and no "Task exception was never retrieved" is printed at exit.
    code = textwrap.dedent(
        """
        import asyncio, manyhands
        async def rows():
            for n in range(100):
                if n == 50:
                    raise KeyboardInterrupt
                await asyncio.sleep(0)
                yield n
        async def fn(x):
            return x
        try:
            asyncio.run(manyhands.arun(fn, rows(), workers=8))
        except KeyboardInterrupt:
            print("reached the caller")
        """
    )
    proc = start_python(code)
    out, err = finish(proc, 60)
    assert "reached the caller" in out, err
    assert "never retrieved" not in err and "Traceback" not in err, err
