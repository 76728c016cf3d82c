"""asyncio: a batch's finished items are delivered while its slow calls still run."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import manyhands

WORKERS = 640  # batches of 10 calls at least: the slow calls share them with fast ones
ITEMS = 2000


def is_slow(item: int) -> bool:
    return item % 50 == 7  # (7 is in the first batch)


class Gate:
    """The slow calls wait for it; it opens once every fast item was delivered."""

    opened: asyncio.Event
    failing = False  # every third item raises
    calls = 0


async def call(item: int) -> int:
    Gate.calls += 1
    if is_slow(item):
        await Gate.opened.wait()
    else:
        await asyncio.sleep(0.001)
    if Gate.failing and item % 3 == 0:
        raise ValueError(item)
    return item


async def deliver(journal: Path | None = None, *, failing: bool = False) -> list[int]:
    """Items in delivery order, once every call ended.

    Were a batch's fast items held until its slow one ended, this would
    never end: the time bound in :func:`bounded` turns that into a failure.
    """
    Gate.opened, Gate.failing = asyncio.Event(), failing
    fast_left = sum(not is_slow(i) for i in range(ITEMS))
    order: list[int] = []
    async with manyhands.amap(call, range(ITEMS), workers=WORKERS, journal=journal) as outcomes:
        async for outcome in outcomes:
            order.append(outcome.item)
            assert outcome.ok != (failing and outcome.item % 3 == 0)
            if not is_slow(outcome.item):
                fast_left -= 1
                if not fast_left:
                    Gate.opened.set()
    return order


def bounded(main: Coroutine[Any, Any, list[int]]) -> list[int]:
    async def within() -> list[int]:
        return await asyncio.wait_for(main, timeout=60)

    return asyncio.run(within())


def test_fast_items_are_not_held_by_a_slow_call_in_their_batch() -> None:
    order = bounded(deliver())
    assert sorted(order) == list(range(ITEMS))  # each once
    slow = ITEMS // 50
    assert not any(is_slow(item) for item in order[:-slow])


def test_failures_in_pieces_stay_with_their_items() -> None:
    order = bounded(deliver(failing=True))
    assert sorted(order) == list(range(ITEMS))


def test_pieces_are_recorded_in_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    bounded(deliver(journal))
    calls = Gate.calls
    again = asyncio.run(manyhands.arun(call, range(ITEMS), journal=journal))
    assert (again.skipped, Gate.calls) == (ITEMS, calls)


def test_ordered_runs_still_deliver_in_order() -> None:
    async def main() -> list[int]:
        Gate.opened, Gate.failing = asyncio.Event(), False
        asyncio.get_running_loop().call_later(0.05, Gate.opened.set)
        amap = manyhands.amap(call, range(ITEMS), workers=WORKERS, ordered=True)
        return [out.item async for out in amap]

    assert asyncio.run(main()) == list(range(ITEMS))
