"""amap over a sync input that is slow: the caller's loop and the first calls never wait for it.

Each test is bounded: an input that waits for something the loop must do
gives up after ``PATIENCE`` seconds, so a loop blocked by the input fails
its test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

import manyhands

PATIENCE = 5.0  # seconds an input waits for the loop before the test fails


def test_amap_starts_each_call_as_its_item_comes_from_a_slow_sync_input(
    no_thread_left: None,
) -> None:
    """Read on the loop, the input blocked it: no call started before a first wave was read."""
    started = threading.Event()
    waited: list[bool] = []

    def lines() -> Iterator[int]:
        yield 0
        waited.append(started.wait(PATIENCE))  # until the first call runs on the loop
        yield from range(1, 5)

    async def call(item: int) -> int:
        started.set()
        await asyncio.sleep(0)
        return item

    async def main() -> list[int]:
        return sorted([out.value async for out in manyhands.amap(call, lines(), workers=50)])

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert waited == [True], "the first call waited for the input's next item"


def test_the_callers_other_tasks_run_while_a_sync_input_waits(no_thread_left: None) -> None:
    ticked = threading.Event()
    waited: list[bool] = []

    def lines() -> Iterator[int]:
        waited.append(ticked.wait(PATIENCE))  # until a task of the caller's ran
        yield from range(3)

    async def double(item: int) -> int:
        return 2 * item

    async def tick() -> None:
        await asyncio.sleep(0.05)
        ticked.set()

    async def main() -> int:
        ticker = asyncio.create_task(tick())
        report = await manyhands.arun(double, lines(), workers=4)
        await ticker
        return report.succeeded

    assert asyncio.run(main()) == 3
    assert waited == [True], "the caller's loop was blocked by the input"


def test_a_sync_input_read_in_a_thread_that_breaks_is_an_input_error_after_the_rest() -> None:
    def lines() -> Iterator[int]:
        yield from range(5)
        raise OSError("the pipe broke")

    async def double(item: int) -> int:
        return 2 * item

    with pytest.raises(manyhands.InputError) as info:
        asyncio.run(manyhands.arun(double, lines(), workers=2))
    assert info.value.position == 5
    assert info.value.report is not None and info.value.report.succeeded == 5
    assert isinstance(info.value.__cause__, OSError)


def test_a_sync_input_sees_the_context_variables_of_the_caller() -> None:
    import contextvars

    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")
    seen: list[str] = []

    def lines() -> Iterator[int]:
        seen.append(tenant.get())
        yield 1

    async def double(item: int) -> int:
        return 2 * item

    async def main() -> int:
        tenant.set("acme")
        return (await manyhands.arun(double, lines())).succeeded

    assert asyncio.run(main()) == 1
    assert seen == ["acme"]


def test_leaving_amap_early_stops_reading_an_endless_sync_input(no_thread_left: None) -> None:
    import itertools

    async def double(item: int) -> int:
        return 2 * item

    async def main() -> int:
        seen = 0
        async with manyhands.amap(double, itertools.count(), workers=4) as outcomes:
            async for _ in outcomes:
                seen += 1
                if seen == 100:
                    break
        return seen

    assert asyncio.run(main()) == 100  # (no_thread_left: the reading thread left too)


def test_an_item_that_comes_alone_after_a_burst_is_taken_at_once(no_thread_left: None) -> None:
    """Read in growing chunks while it is fast, the input's chunk after a burst waits for
    more items than come: the one that came is taken all the same (the loop looks again),
    with nothing in flight to wake the run."""
    burst = 1000
    out = [threading.Event(), threading.Event()]  # the burst's outcomes, then the lone item's
    waited: list[bool] = []

    def lines() -> Iterator[int]:
        yield from range(burst)
        waited.append(out[0].wait(PATIENCE))
        yield burst  # alone: its chunk waits for more
        waited.append(out[1].wait(PATIENCE))
        yield burst + 1

    async def double(item: int) -> int:
        return 2 * item

    async def main() -> int:
        seen = 0
        async for outcome in manyhands.amap(double, lines(), workers=8):
            seen += 1
            if seen == burst:
                out[0].set()
            if outcome.item == burst:
                out[1].set()
        return seen

    assert asyncio.run(main()) == burst + 2
    assert waited == [True, True], "an item that came waited for the input's next one"


def test_a_thread_bound_iterable_is_refused_with_the_way_out_which_works() -> None:
    """A sqlite cursor made on the loop: read in a thread it raises, and the error says
    what to do; an async generator over it, as told, runs every item."""
    import sqlite3

    async def main() -> tuple[str, list[int]]:
        db = sqlite3.connect(":memory:")
        db.execute("create table t(x)")
        db.executemany("insert into t values (?)", [(i,) for i in range(20)])

        async def same(x: int) -> int:
            return x

        told = ""
        try:
            async for _ in manyhands.amap(same, (row[0] for row in db.execute("select x from t"))):
                pass
        except manyhands.InputError as error:
            told = str(error)

        async def rows() -> AsyncIterator[int]:
            for row in db.execute("select x from t"):
                yield row[0]

        got = [out.value async for out in manyhands.amap(same, rows())]
        return told, sorted(got)

    told, got = asyncio.run(main())
    assert "pass an async generator over it" in told
    assert got == list(range(20))


def test_closing_amap_leaves_the_input_to_its_owner() -> None:
    """After `aclose()`, no thread of the run is inside the generator: it reads on, and
    closes, from the caller's thread."""
    import time

    def slow() -> Iterator[int]:
        for i in range(1000):
            time.sleep(0.01)
            yield i

    async def same(x: int) -> int:
        return x

    async def main() -> tuple[int, int]:
        source = slow()
        outs = manyhands.amap(same, source, workers=4)
        async for _ in outs:
            break
        await outs.aclose()
        readers = [t for t in threading.enumerate() if t.name == "manyhands-input"]
        assert not readers, readers
        following = next(source)  # (raised "generator already executing" while read)
        source.close()
        return following, len(readers)

    following, _ = asyncio.run(main())
    assert following >= 1
