"""The iterators :func:`manyhands.map` and :func:`manyhands.amap` return."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from itertools import repeat
from operator import length_hint
from threading import get_ident
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar
from weakref import ref

from ._batch import Batch
from ._exceptions import ended_early
from ._outcome import Outcome
from ._readers import Reader
from ._report import Report
from ._run import Run

__all__ = ["AsyncOutcomes", "Outcomes", "reader_of"]

T = TypeVar("T")
R = TypeVar("R")


class Outcomes(Generic[T, R]):
    """An iterator of :class:`Outcome`, one per item, that also reports on the run.

    Nothing runs until the first item is requested. Leaving the loop early
    (``break``, an exception) or calling :meth:`close` stops the run: queued
    items are dropped and running calls get the grace period to finish.
    Using it as a context manager closes it on exit. A journal records such a
    run as "left early" (with the exception's first line, when one left the
    ``with`` block), and a Ctrl-C as "interrupted".
    """

    def __init__(self, run: Run) -> None:
        self._run = run
        self._reader = Reader(on_loop=False)
        self._outcomes = _outcomes(run, self._reader)
        self._reader.generator = ref(self._outcomes)

    def __iter__(self) -> Iterator[Outcome[T, R]]:
        return self._outcomes  # the generator itself: no extra call per item

    def __next__(self) -> Outcome[T, R]:
        return next(self._outcomes)

    def close(self) -> None:
        """Stop the run now; idempotent."""
        self._outcomes.close()

    def __enter__(self) -> Outcomes[T, R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:  # how the journal's run ends: "interrupted", "left early: ..."
            self._run.exit_status = ended_early(exc, in_loop=True)
        self.close()

    @property
    def report(self) -> Report:
        """A Report of the outcomes delivered so far (final once exhausted)."""
        return self._run.report()


def reader_of(outcomes: Outcomes[Any, Any] | AsyncOutcomes[Any, Any]) -> Reader:
    """The Reader of ``outcomes``."""
    return outcomes._reader


class AsyncOutcomes(Generic[T, R]):
    """An async iterator of :class:`Outcome`, one per item, that also reports on the run.

    Nothing runs until the first item is requested. Leaving the loop early
    cancels the running calls: at once with :meth:`aclose` or at the end of an
    ``async with`` block; after a bare ``break``, as soon as the event loop
    finalizes the abandoned iterator (a moment later).
    """

    def __init__(self, run: Run) -> None:
        self._run = run
        self._reader = Reader(on_loop=True)
        self._outcomes = _aoutcomes(run, self._reader)
        self._reader.generator = ref(self._outcomes)

    def __aiter__(self) -> AsyncIterator[Outcome[T, R]]:
        return self._outcomes

    async def __anext__(self) -> Outcome[T, R]:
        return await self._outcomes.__anext__()

    async def aclose(self) -> None:
        """Stop the run now: cancel the running calls; idempotent."""
        await self._outcomes.aclose()

    async def __aenter__(self) -> AsyncOutcomes[T, R]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:  # how the journal's run ends: "interrupted", "left early: ..."
            self._run.exit_status = ended_early(exc, in_loop=True)
        await self.aclose()

    @property
    def report(self) -> Report:
        """A Report of the outcomes delivered so far (final once exhausted)."""
        return self._run.report()

    if not TYPE_CHECKING:  # (type checkers flag these mistakes already)

        def __iter__(self) -> NoReturn:
            raise TypeError(_ASYNC_ONLY.format(how="iterated with a plain for/list()"))

        def __await__(self) -> NoReturn:
            raise TypeError(_ASYNC_ONLY.format(how="awaited"))


_ASYNC_ONLY = (
    "manyhands.amap() returns an async iterator, which cannot be {how}: in a "
    "coroutine, use `async for outcome in manyhands.amap(fn, items)`, or "
    "`report = await manyhands.arun(fn, items)` for the Report; from sync code, "
    "use manyhands.map() or manyhands.run()"
)


def _outcomes(run: Run, reader: Reader) -> Generator[Outcome[Any, Any], None, None]:
    """The Outcomes of the run; a batch is recorded in the journal once you got it.

    Leaving during a batch records the outcomes you received, and no more:
    how many is read off the batch's item iterator, at no cost per item.
    """
    reader.read_here()
    reader.position = lambda: _position(run)
    batches = run.batches()
    delivered = run.delivered
    try:
        for batch in batches:
            items = iter(batch.items)
            run.receiving = batch, items  # (what is left in items is not delivered yet)
            try:
                yield from _unpack(batch, items)
            except BaseException:  # you left during this batch (break, close, an error)
                delivered(batch, len(batch.items) - length_hint(items))
                raise
            delivered(batch)
            reader.read_here()  # (this thread now waits for the next batch)
    finally:
        try:
            batches.close()
        finally:
            reader.thread = 0


async def _aoutcomes(run: Run, reader: Reader) -> AsyncGenerator[Outcome[Any, Any], None]:
    reader.thread = get_ident()  # (the event loop's thread)
    reader.task = _current_task()
    batches = run.abatches()
    delivered = run.delivered
    try:
        async for batch in batches:
            items = iter(batch.items)
            run.receiving = batch, items
            try:
                for outcome in _unpack(batch, items):
                    yield outcome
            except BaseException:  # you left during this batch
                delivered(batch, len(batch.items) - length_hint(items))
                raise
            delivered(batch)
            reader.task = _current_task()
    finally:
        try:
            await batches.aclose()
        finally:
            reader.thread = 0
            reader.task = None


def _position(run: Run) -> object:
    """How far a map was read: changes with each Outcome taken (read at no cost per item)."""
    receiving = run.receiving
    if receiving is None:
        return None
    batch, items = receiving
    return id(batch), length_hint(items)


def _current_task() -> object:
    """The asyncio task running, if any (else the run says what loop it needs)."""
    import asyncio

    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _unpack(batch: Batch, items: Iterator[Any]) -> Iterator[Outcome[Any, Any]]:
    """The Outcomes of a delivered batch, in its order, pulling from ``items``.

    ``items`` iterates ``batch.items``: an item is pulled when its Outcome is
    made, so what is left in it tells how many Outcomes were taken. A batch
    with nothing to report but values (the common case) is a plain ``map``,
    not a generator: one layer less between each Outcome and you.
    """
    if batch.skipped is not None:
        return _skipped(batch, items)
    if batch.failures is None and batch.attempts is None:
        return map(Outcome, items, batch.values, repeat(None), repeat(batch.attempt))
    return _settled(batch, items)


def _settled(batch: Batch, items: Iterator[Any]) -> Iterator[Outcome[Any, Any]]:
    """:func:`_unpack` for a batch with failures or per-item attempt counts."""
    failures = batch.failures or {}
    attempts = batch.attempts or {}
    for index, item in enumerate(items):
        failure = failures.get(index)
        if failure is None:
            tries = attempts.get(index, batch.attempt)
            yield Outcome(item, batch.values[index], None, tries)
        else:
            yield Outcome(item, None, failure, failure.attempts)


def _skipped(batch: Batch, items: Iterator[Any]) -> Iterator[Outcome[Any, Any]]:
    assert batch.skipped is not None
    failures = batch.failures or {}
    for index, item in enumerate(items):
        value = batch.values[index] if batch.values else None
        yield Outcome(item, value, failures.get(index), 0, batch.skipped[index])
