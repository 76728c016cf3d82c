"""Items come from any iterable, read lazily; a broken iterable is an InputError."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import manyhands

from .conftest import Hands


class NoLen:
    """An iterable that refuses len() and list()-style sizing."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        raise AssertionError("manyhands called len() on the items")

    def __length_hint__(self) -> int:
        raise AssertionError("manyhands asked the iterable for its length")


def test_never_sizes_the_iterable(hands: Hands) -> None:
    report = hands.run(abs, NoLen(1000))
    assert report.succeeded == 1000


def test_endless_generator_with_early_exit(hands: Hands, no_thread_left: None) -> None:
    seen = []
    for out in hands.map(lambda x: x * 2, itertools.count(), ordered=True):
        seen.append(out.value)
        if len(seen) == 50_000:
            break
    assert seen == [2 * i for i in range(50_000)]


def broken(k: int) -> Iterator[int]:
    yield from range(k)
    raise OSError("disk went away")


@pytest.mark.parametrize("k", [0, 1, 7, 5000])
@pytest.mark.parametrize("ordered", [False, True])
def test_map_yields_every_item_before_the_break_then_raises(
    hands: Hands, k: int, ordered: bool
) -> None:
    seen = []
    with pytest.raises(manyhands.InputError) as caught:
        for out in hands.map(lambda x: x, broken(k), ordered=ordered):
            seen.append(out.item)
    assert sorted(seen) == list(range(k))
    if ordered:
        assert seen == list(range(k))
    assert caught.value.position == k
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.report is None
    assert f"reading item {k} " in str(caught.value)


def test_run_raises_input_error_with_the_report_of_what_ran(hands: Hands) -> None:
    with pytest.raises(manyhands.InputError) as caught:
        hands.run(lambda x: 1 / (x % 5), broken(100))
    report = caught.value.report
    assert report is not None
    assert (report.total, report.succeeded, report.failed) == (100, 80, 20)
    assert caught.value.position == 100


def test_items_are_read_lazily(hands: Hands) -> None:
    read = 0

    def source() -> Iterator[int]:
        nonlocal read
        for i in range(1_000_000):
            read += 1
            yield i

    stream = hands.map(abs, source(), workers=4)
    assert read == 0  # nothing runs before iteration
    first = next(iter(stream))
    assert first.ok
    stream.close()
    assert read < 20_000  # bounded by the window, not the input


def test_ordered_yields_input_order_despite_uneven_latency(hands: Hands) -> None:
    rng = random.Random(7)
    delays = [rng.choice([0, 0, 0.001, 0.005]) for _ in range(400)]

    def slow(i: int) -> int:
        time.sleep(delays[i])
        return i

    values = [o.value for o in hands.map(slow, range(400), ordered=True)]
    assert values == list(range(400))


def test_unordered_delivers_each_item_exactly_once(hands: Hands) -> None:
    items = [f"item-{i}" for i in range(20_000)]
    got = [out.value for out in hands.map(str.upper, items, workers=16)]
    assert sorted(got) == sorted(i.upper() for i in items)


@pytest.mark.parametrize("how", ["ThreadFeed", "map(input_thread=True)", "pool.map(...)"])
def test_an_input_read_in_a_thread_never_holds_back_finished_outcomes(
    how: str, no_thread_left: None
) -> None:
    """A producer that blocks (a pipe, a queue, a socket): the outcomes of what it gave
    come out meanwhile. The command reads a pipe so (``ThreadFeed``); a program asks for
    it with ``input_thread=True``."""
    from manyhands._thread_feed import ThreadFeed

    delivered = threading.Event()

    def producer() -> Iterator[int]:
        yield 1
        yield 2
        # Blocks until the consumer got both outcomes: read in the consuming thread,
        # it would wait here for them forever (they wait for the read to return).
        assert delivered.wait(10), "the outcomes waited for the input"
        yield 3

    def outcomes(pool: manyhands.Pool) -> Iterator[manyhands.Outcome[int, int]]:
        if how == "ThreadFeed":
            return manyhands.map(abs, ThreadFeed(producer()), workers=2)
        open_map = pool.map if how == "pool.map(...)" else manyhands.map
        return open_map(abs, producer(), input_thread=True)

    got = []
    with manyhands.Pool(workers=2) as pool:
        for outcome in outcomes(pool):
            got.append(outcome.value)
            if len(got) == 2:
                delivered.set()
    assert sorted(got) == [1, 2, 3]


def test_input_thread_journals_what_ran_before_a_loop_left_while_the_input_blocked(
    tmp_path: Path, no_thread_left: None
) -> None:
    journal = tmp_path / "run.db"
    release = threading.Event()

    def producer() -> Iterator[int]:
        yield from range(5)
        release.wait(10)  # (a stream with nothing more for now)
        yield from range(5, 8)

    for got, _ in enumerate(manyhands.map(abs, producer(), journal=journal, input_thread=True)):
        if got == 4:
            break  # (read in the consuming thread, the 5th outcome never came)
    release.set()
    again = manyhands.run(abs, range(8), journal=journal)
    assert (again.skipped, again.succeeded) == (5, 3)


class _Here:
    """A sync iterable that notes the threads that read it (a thread-bound cursor)."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.readers: set[int] = set()

    def __iter__(self) -> _Here:
        return self

    def __next__(self) -> int:
        self.readers.add(threading.get_ident())
        if not self.left:
            raise StopIteration
        self.left -= 1
        return self.left


@pytest.mark.parametrize("input_thread", [None, False])
def test_amap_reads_a_sync_iterable_on_the_loop_with_input_thread_false(
    input_thread: bool | None,
) -> None:
    import asyncio

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def main() -> tuple[list[int], _Here]:
        items = _Here(20)
        outs = manyhands.amap(double, items, input_thread=input_thread)
        return sorted([out.value async for out in outs]), items

    values, items = asyncio.run(main())
    assert values == [2 * x for x in range(20)]
    on_loop = items.readers == {threading.get_ident()}  # (asyncio.run's loop: this thread)
    assert on_loop == (input_thread is False)


def test_input_thread_is_refused_where_it_means_nothing() -> None:
    import asyncio

    async def numbers() -> Any:
        yield 1

    async def one(x: int) -> int:
        return x

    async def main() -> None:
        with pytest.raises(ValueError, match="input_thread= applies to a sync iterable"):
            manyhands.amap(one, numbers(), input_thread=True)

    asyncio.run(main())
    with pytest.raises(TypeError, match="input_thread must be True"):
        manyhands.run(abs, [1], input_thread="yes")  # type: ignore[typeddict-item]


def test_an_input_read_in_a_thread_that_breaks_raises_input_error_after_the_rest() -> None:
    from manyhands._thread_feed import ThreadFeed

    def producer() -> Iterator[int]:
        yield from range(5)
        raise OSError("the pipe broke")

    with pytest.raises(manyhands.InputError) as info:
        manyhands.run(abs, ThreadFeed(producer()), workers=2)
    assert info.value.report is not None and info.value.report.succeeded == 5
    assert isinstance(info.value.__cause__, OSError)


def test_leaving_a_run_whose_input_is_read_in_a_thread_stops_the_reading(
    no_thread_left: None,
) -> None:
    from manyhands._thread_feed import ThreadFeed

    feed = ThreadFeed(itertools.count())
    for seen, _ in enumerate(manyhands.map(abs, feed, workers=2)):
        if seen == 100:
            break
    deadline = time.monotonic() + 5  # (the reader notices within its wait for room)
    while not feed.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert feed.finished, "the thread reading an endless input went on after the run"


def test_an_input_read_in_a_thread_that_ends_as_the_run_asks_loses_nothing() -> None:
    """The last item arrives, and the input ends, just as the run asks whether more may come."""
    from collections import deque

    from manyhands._thread_feed import ThreadFeed

    feed = ThreadFeed(iter(()))
    feed._threaded = True  # (as attached, its thread between two steps)

    class LastArrives(deque):  # type: ignore[type-arg]
        def __len__(self) -> int:
            empty = super().__len__() == 0
            if empty and not feed.finished:  # the thread: one more item, then the end
                self.append(3)
                feed.finished = True
                return 0
            return super().__len__()

    feed._buffer = LastArrives()
    assert feed.waiting, "the input was taken as ended with an item still in the buffer"
    if not feed.finished:  # (the thread's step, if asking did not happen to meet it)
        len(feed._buffer)
    assert list(feed) == [3] and not feed.waiting


class Taking:
    """A user's iterator that happens to have a ``take`` and a ``waiting`` of its own."""

    waiting = True

    def __init__(self, count: int) -> None:
        self._items = iter(range(count))

    def __iter__(self) -> Taking:
        return self

    def __next__(self) -> int:
        return next(self._items)

    def take(self, n: int) -> list[int]:  # (not manyhands' business)
        return list(itertools.islice(self._items, n))


def test_an_input_with_take_and_waiting_attributes_is_read_as_any_iterator(
    hands: Hands,
) -> None:
    report = hands.run(lambda x: x, Taking(500))
    assert report.succeeded == 500
    assert sorted(out.value for out in hands.map(lambda x: x, Taking(300))) == list(range(300))
