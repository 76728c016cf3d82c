"""How a Pool and its Executor face stop: never waiting for what cannot end, every Future settled.

Each scenario that used to hang runs in a thread of its own, bounded: a hang
fails the test instead of stopping the suite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import manyhands

from .conftest import within


def same(x: int) -> int:
    return x


def nap(x: int) -> int:
    time.sleep(0.5)
    return x


# -- a pool.map the leaving thread did not read to its end -----------------------


def _break(pool: manyhands.Pool, outs: Any) -> None:
    for out in outs:
        if out.item == 5:
            break


def _raise(pool: manyhands.Pool, outs: Any) -> None:
    for out in outs:
        if out.item == 5:
            raise ValueError("from the loop's body")


def _interrupt(pool: manyhands.Pool, outs: Any) -> None:
    for out in outs:
        if out.item == 5:
            raise KeyboardInterrupt  # (the block then does not wait for other threads' runs)


def _one(pool: manyhands.Pool, outs: Any) -> None:
    next(outs)


def _shutdown_in_the_loop(pool: manyhands.Pool, outs: Any) -> None:
    for out in outs:
        if out.item == 5:
            pool.shutdown(cancel_futures=True)  # (the loop then ends: the run was stopped)


@pytest.mark.parametrize(
    ("backend", "leave"),
    [
        ("threads", _break),
        ("threads", _raise),
        ("threads", _interrupt),
        ("threads", _one),
        ("threads", _shutdown_in_the_loop),
        ("processes", _break),
        ("processes", _shutdown_in_the_loop),
    ],
)
def test_leaving_the_pool_stops_a_map_its_own_thread_did_not_read_to_the_end(
    backend: str, leave: Callable[[manyhands.Pool, Any], None]
) -> None:
    """The old code waited forever for a run that only the waiting thread could read."""
    held: list[Any] = []

    def scenario() -> None:
        with manyhands.Pool(workers=2, backend=backend) as pool:
            outs = pool.map(same, range(100_000), ordered=True)
            held.append(outs)  # (still referenced when the block ends)
            leave(pool, outs)

    if leave is _raise:
        with pytest.raises(ValueError, match="loop's body"):
            within(scenario)
    elif leave is _interrupt:
        with pytest.raises(KeyboardInterrupt):
            within(scenario)
    else:
        within(scenario)
    outs = held[0]
    report = outs.report
    assert 1 <= report.total < 100_000  # stopped early, as a break stops it
    assert list(outs) == []  # and it is over


def test_a_map_read_by_another_thread_is_waited_for_to_its_end() -> None:
    first = threading.Event()
    go_on = threading.Event()
    values: list[int] = []

    def reader(outs: Any) -> None:
        for out in outs:
            values.append(out.value)
            first.set()
            go_on.wait(10)  # (the main thread is leaving the block meanwhile)

    def scenario() -> None:
        with manyhands.Pool(workers=2) as pool:
            outs = pool.map(same, range(50), ordered=True, batch_size=1)
            thread = threading.Thread(target=reader, args=(outs,))
            thread.start()
            assert first.wait(10)
            threading.Timer(0.3, go_on.set).start()
        thread.join(10)

    within(scenario)
    assert values == list(range(50))  # not stopped: its reader was not the leaving thread


def test_shutdown_from_a_maps_own_input_is_refused_not_a_hang() -> None:
    def scenario() -> list[Any]:
        pool = manyhands.Pool(workers=2)

        def items() -> Any:
            yield 1
            pool.shutdown()  # (waiting here would wait for this very run)
            yield 2

        try:
            return list(pool.map(same, items()))
        finally:
            pool.shutdown(wait=False)

    with pytest.raises(manyhands.InputError) as caught:
        within(scenario)
    assert "reading its input" in str(caught.value.__cause__)


# -- a pool.amap, read on the event loop that leaves the pool ------------------------


@pytest.mark.parametrize("held", [True, False], ids=["held", "temporary"])
def test_leaving_async_with_stops_an_amap_this_task_did_not_read_to_the_end(held: bool) -> None:
    kept: list[Any] = []

    async def main() -> None:
        async with manyhands.Pool(workers=2) as pool:
            outs = pool.amap(same, range(100_000))
            if held:
                kept.append(outs)
            async for out in outs:
                if out.item == 5:
                    break
            del outs
        assert "shut down" in repr(pool)

    within(lambda: asyncio.run(main()))
    if held:
        assert 1 <= kept[0].report.total < 100_000


def test_async_with_waits_for_the_amap_of_another_task() -> None:
    async def main() -> list[int]:
        values: list[int] = []
        first = asyncio.Event()

        async def reader(outs: Any) -> None:
            async for out in outs:
                values.append(out.value)
                first.set()
                await asyncio.sleep(0.002)  # (the other task leaves the pool meanwhile)

        async with manyhands.Pool(workers=2) as pool:
            task = asyncio.create_task(reader(pool.amap(same, range(50), ordered=True)))
            await first.wait()
        await task
        return values

    assert within(lambda: asyncio.run(main())) == list(range(50))


def test_a_plain_with_on_the_event_loop_does_not_wait_for_that_loops_amap() -> None:
    """Waiting there would block the loop the amap needs: the old code hung."""

    async def main() -> str:
        with manyhands.Pool(workers=2) as pool:
            async for out in pool.amap(same, range(100_000)):
                if out.item == 5:
                    break
            outs = pool.amap(same, range(100_000))
            async for _ in outs:
                break
            with pytest.raises(RuntimeError, match="would block the loop"):
                pool.shutdown()  # (asked to wait: it says why it cannot)
        await outs.aclose()
        await asyncio.to_thread(pool._stop_when_idle)  # (the pool stops once they end)
        return repr(pool)

    assert "shut down" in within(lambda: asyncio.run(main()))


# -- shutdown from inside the pool ----------------------------------------------


def test_shutdown_from_one_of_the_pools_calls_raises_at_once() -> None:
    def scenario() -> tuple[manyhands.Report, Any, int]:
        with manyhands.Pool(workers=2) as pool:

            def stop_pool(x: int) -> int:
                if x == 3:
                    pool.shutdown()
                return x

            face = pool.executor()

            def stop_face(x: int) -> int:
                if x == 3:
                    face.shutdown()
                return x

            report = pool.run(stop_pool, range(6))
            futures = [face.submit(stop_face, x) for x in range(6)]
            errors = [f.exception(10) for f in futures]
            return report, errors, pool.run(same, range(4)).succeeded  # (still open)

    report, errors, later = within(scenario)
    assert (report.succeeded, report.failed) == (5, 1)
    assert report.failures[0].error_type == "builtins.RuntimeError"
    assert "one of the pool's own calls" in report.failures[0].message
    assert "wait=False" in report.failures[0].message
    assert [type(e).__name__ for e in errors] == ["NoneType"] * 3 + ["RuntimeError"] + [
        "NoneType"
    ] * 2
    assert "from one of its own calls" in str(errors[3])
    assert later == 4


def test_an_async_pools_face_refuses_to_wait_on_its_own_loop() -> None:
    def scenario() -> BaseException | None:
        with manyhands.Pool(workers=2, backend="async") as pool:
            face = pool.executor()

            async def stop() -> None:
                face.shutdown()

            return face.submit(stop).exception(10)

    error = within(scenario)
    assert isinstance(error, RuntimeError) and "event loop" in str(error)


# -- the Executor face ---------------------------------------------------------------


def test_pool_submit_works_after_a_face_was_shut_down() -> None:
    def scenario() -> tuple[int, int, int]:
        with manyhands.Pool(workers=2) as pool:
            with pool.executor() as face:
                first = face.submit(same, 1).result(10)
            with pytest.raises(RuntimeError, match="after shutdown"):
                face.submit(same, 2)
            assert pool.executor() is not face  # a shut-down face is not handed out again
            second = pool.submit(same, 2).result(10)
            return first, second, pool.executor().submit(same, 3).result(10)

    assert within(scenario) == (1, 2, 3)


def test_a_call_that_cannot_travel_to_a_process_is_refused_and_the_pool_still_stops() -> None:
    def scenario() -> int:
        with manyhands.Pool(workers=1, backend="processes") as pool:
            with pytest.raises(TypeError, match=r"argument 2 \(lock\) cannot be sent"):
                pool.submit(max, 1, threading.Lock())
            with pytest.raises(TypeError, match=r"keyword argument key= \(lock\)"):
                pool.submit(max, 1, key=threading.Lock())
            return pool.submit(same, 7).result(10)

    assert within(scenario) == 7  # (the old code never left the with block)


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_futures_are_cancelled_until_their_call_is_sent_and_every_one_settles(
    backend: str,
) -> None:
    def scenario() -> list[concurrent.futures.Future[int]]:
        pool = manyhands.Pool(workers=1, backend=backend)
        futures = [pool.submit(nap, x) for x in range(8)]
        assert futures[-1].cancel()  # seven calls of 0.5 s before it: it has not started
        assert futures[-1].cancelled()
        deadline = time.monotonic() + 10
        while not futures[0].running() and time.monotonic() < deadline:
            time.sleep(0.005)  # (the first has left for the worker)
        pool.shutdown(cancel_futures=True)
        return futures

    futures = within(scenario)
    _, not_done = concurrent.futures.wait(futures, timeout=10)
    assert not not_done
    assert futures[0].result() == 0  # it ran
    assert all(f.cancelled() for f in futures[2:])  # at most one more had left for a worker
    assert all(f.cancelled() or f.result() == n for n, f in enumerate(futures))


def test_a_process_future_runs_once_its_call_is_sent() -> None:
    def scenario() -> tuple[bool, bool, bool, int]:
        with manyhands.Pool(workers=1, backend="processes") as pool:
            first = pool.submit(nap, 1)
            second = pool.submit(nap, 2)
            deadline = time.monotonic() + 10
            while not first.running() and not first.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            started = first.running() or first.done()
            return started, second.running(), first.cancel(), second.result(10)

    started, second_running, cancelled_first, second = within(scenario)
    assert started and not second_running  # one call at a time: the second waits, pending
    assert not cancelled_first and second == 2


def _exit(code: int) -> None:
    raise SystemExit(code)


def _quiet() -> None:
    raise ValueError()


def _lock() -> threading.Lock:
    return threading.Lock()


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("not this one")


def _unpicklable_error() -> None:
    raise Unpicklable("kept as text")


class TwoArguments(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)


def _two_arguments() -> None:
    raise TwoArguments(1, 2)


def test_a_process_pools_futures_carry_the_calls_own_errors() -> None:
    def scenario() -> list[BaseException | None]:
        with manyhands.Pool(workers=1, backend="processes") as pool:
            calls: list[Callable[[], Any]] = [
                lambda: _exit(3),
                _quiet,
                _lock,
                _unpicklable_error,
                _two_arguments,
            ]
            return [pool.submit(call).exception(10) for call in calls]

    exit_, quiet, lock, unpicklable, rebuilt = within(scenario)
    assert isinstance(exit_, SystemExit) and exit_.code == 3  # (was a RuntimeError)
    assert isinstance(quiet, ValueError) and str(quiet) == ""  # (was an internal repr)
    assert isinstance(lock, TypeError)
    assert "value (a lock) could not be sent back" in str(lock)  # (was an internal tuple)
    assert isinstance(unpicklable, RuntimeError)
    assert "Unpicklable" in str(unpicklable) and "kept as text" in str(unpicklable)
    for error, where in ((quiet, "_quiet"), (unpicklable, "_unpicklable_error")):
        assert f"in {where}" in str(error.__cause__)  # its traceback in the worker
    assert isinstance(rebuilt, RuntimeError)  # (it pickles, but cannot be made again)
    assert "TwoArguments: 1" in str(rebuilt)


# -- the options of the pool's runs ----------------------------------------------------


def test_an_unknown_option_of_a_pool_run_lists_only_what_it_accepts() -> None:
    with manyhands.Pool(workers=1) as pool:
        with pytest.raises(TypeError, match="accepted") as caught:
            pool.run(same, [1], foo=1)  # type: ignore[call-arg]
        listed = str(caught.value)
        for refused in ("'workers'", "'backend'", "'initializer'", "'ordered'"):
            assert refused not in listed
        assert "'retry'" in listed
        with pytest.raises(TypeError, match="accepted") as caught:
            pool.map(same, [1], foo=1)  # type: ignore[call-arg]
        assert "'ordered'" in str(caught.value) and "'workers'" not in str(caught.value)
        with pytest.raises(ValueError, match=r"use pool\.map\(fn, items, ordered=True\)"):
            pool.run(same, [1], ordered=True)
