"""What a new user trips over in the first hour: found at the call, said plainly.

Discoverability (every option in ``help()``, public names in tracebacks,
``arun``), and mistakes caught before anything runs, with the fix in the
message. Messages are checked by their key words, not verbatim.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import operator
import pickle
import pydoc
import traceback
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands._options import Options
from manyhands._outcome import qualified_name

FRONT_DOORS = [manyhands.run, manyhands.map, manyhands.amap, manyhands.arun]
REPORT_ONLY = {manyhands.run, manyhands.arun}  # they yield nothing: no `ordered`


# -- discoverability -----------------------------------------------------------


@pytest.mark.parametrize("front", FRONT_DOORS, ids=lambda f: f.__name__)
def test_help_lists_every_option_with_its_default(front: Callable[..., Any]) -> None:
    expected = [f for f in fields(Options) if not (front in REPORT_ONLY and f.name == "ordered")]
    params = list(inspect.signature(front).parameters.values())
    assert [p.name for p in params[:2]] == ["fn", "items"]
    assert [(p.name, p.kind, p.default) for p in params[2:]] == [
        (f.name, inspect.Parameter.KEYWORD_ONLY, f.default) for f in expected
    ]
    text = pydoc.render_doc(front)
    assert "workers: 'int' = 32" in text and "grace: 'float' = 2.0" in text
    shown = str(inspect.signature(front))
    assert "**options" not in shown and "more_items" not in shown
    for option in expected:
        assert f"{option.name}: " in text


def test_the_typed_options_are_the_options_and_each_is_documented() -> None:
    typed = {
        name: getattr(hint, "__forward_arg__", hint)
        for name, hint in manyhands.RunOptions.__annotations__.items()
    }
    assert typed == {f.name: f.type for f in fields(Options)}  # names and types agree
    doc = manyhands.RunOptions.__doc__ or ""
    for name in typed:
        assert name in doc


def test_public_exceptions_print_as_public_names() -> None:
    exceptions = [
        getattr(manyhands, name)
        for name in manyhands.__all__
        if isinstance(getattr(manyhands, name), type)
        and issubclass(getattr(manyhands, name), BaseException)
    ]
    assert len(exceptions) == 9
    for cls in exceptions:
        assert qualified_name(cls) == f"manyhands.{cls.__name__}"
        assert pickle.loads(pickle.dumps(cls)) is cls  # the public name resolves
    error = manyhands.InputError(3, ValueError("bad line"))
    assert traceback.format_exception_only(error)[-1].startswith("manyhands.InputError: ")

    def throttled(x: int) -> int:
        raise manyhands.RetryAfter(1)

    report = manyhands.run(throttled, [1])
    assert report.errors_by_type == {"manyhands.RetryAfter": 1}


async def half(x: int) -> float:
    await asyncio.sleep(0)
    return 1 / x


def test_arun_returns_the_report_and_runs_on_the_callers_loop() -> None:
    loops: set[int] = set()

    async def fn(x: int) -> float:
        loops.add(id(asyncio.get_running_loop()))
        return await half(x)

    async def numbers() -> AsyncIterator[int]:
        for n in range(100):
            yield n

    async def main() -> tuple[manyhands.Report, manyhands.Report, int]:
        from_list = await manyhands.arun(fn, range(100), workers=10)
        from_async = await manyhands.arun(fn, numbers(), workers=10)
        return from_list, from_async, id(asyncio.get_running_loop())

    from_list, from_async, loop = asyncio.run(main())
    for report in (from_list, from_async):
        assert (report.total, report.succeeded, report.failed) == (100, 99, 1)
        assert report.errors_by_type == {"builtins.ZeroDivisionError": 1}
    assert loops == {loop}


def test_arun_input_error_carries_the_report_and_sync_fn_is_refused() -> None:
    def broken() -> Any:
        yield from (1, 2, 3)
        raise OSError("disk gone")

    async def main() -> None:
        with pytest.raises(manyhands.InputError) as caught:
            await manyhands.arun(half, broken())
        assert caught.value.position == 3
        assert caught.value.report is not None and caught.value.report.succeeded == 3
        with pytest.raises(TypeError, match="coroutine function"):
            await manyhands.arun(abs, [1])

    asyncio.run(main())


def test_arun_records_every_outcome_in_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    first = asyncio.run(manyhands.arun(half, range(200), journal=journal))
    again = asyncio.run(manyhands.arun(half, range(200), journal=journal))
    assert (first.succeeded, first.failed) == (199, 1)
    assert (again.ran, again.skipped, again.skipped_failed) == (0, 200, 1)


def test_cancelling_arun_cancels_its_calls() -> None:
    started = 0
    cancelled = 0

    async def slow(x: int) -> int:
        nonlocal started, cancelled
        started += 1
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return x

    async def main() -> None:
        task = asyncio.ensure_future(manyhands.arun(slow, range(1000), workers=20))
        while started < 20:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())
    assert started == cancelled == 20


# -- mistakes caught at the call -----------------------------------------------


def pair_sum(a: int, b: int) -> int:
    return a + b


async def apair_sum(a: int, b: int) -> int:
    return a + b


@pytest.mark.parametrize("front", [manyhands.run, manyhands.map], ids=["run", "map"])
def test_fn_of_two_arguments_is_refused_with_the_unpacking_fix(
    front: Callable[..., Any],
) -> None:
    with pytest.raises(TypeError) as caught:
        front(pair_sum, [(1, 2), (3, 4)])
    message = str(caught.value)
    assert "pair_sum(a, b) needs 2 arguments" in message
    assert "lambda args: pair_sum(*args)" in message and "zip" in message


def test_async_fn_of_two_arguments_gets_an_async_fix() -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match=r"async def call\(args\): return await apair_sum"):
            await manyhands.arun(apair_sum, [(1, 2)])

    asyncio.run(main())
    with pytest.raises(TypeError, match="async def call"):
        manyhands.run(apair_sum, [(1, 2)])


def test_fn_without_a_parameter_or_with_a_required_keyword_is_refused() -> None:
    with pytest.raises(TypeError, match=r"takes no argument.*give it a parameter"):
        manyhands.run(lambda: 1, [1])

    def keyed(item: int, *, scale: int) -> int:
        return item * scale

    with pytest.raises(TypeError, match=r"keyword argument\(s\) scale.*functools\.partial"):
        manyhands.run(keyed, [1])


class TakesOne:
    def __init__(self, item: Any) -> None:
        self.item = item

    def method(self, item: Any) -> Any:
        return item

    def __call__(self, item: Any, scale: int = 1) -> Any:
        return item


def session_injected(fn: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(fn)
    def wrapper(item: Any) -> Any:  # shows fn's two parameters, takes one
        return fn("session", item)

    return wrapper


def star(*args: Any) -> Any:
    return args


@pytest.mark.parametrize(
    "fn",
    [
        print,
        str,
        int,
        abs,
        len,
        str.upper,
        [].append,
        dict.fromkeys,
        operator.itemgetter(0),
        functools.partial(pair_sum, 1),
        TakesOne,
        TakesOne(1),
        TakesOne(1).method,
        session_injected(pair_sum),
        star,
        lambda x, y=2: x,
        functools.lru_cache(maxsize=None)(abs),
        type("Weird", (), {"__call__": lambda self, x: x, "__signature__": "not one"})(),
    ],
)
def test_a_valid_fn_is_never_refused(fn: Any) -> None:
    report = manyhands.run(fn, [])  # the check is at the call: no item is needed
    assert report.total == 0


@pytest.mark.parametrize("front", [manyhands.run, manyhands.map], ids=["run", "map"])
def test_two_iterables_say_to_zip_them(front: Callable[..., Any]) -> None:
    calls: list[Any] = []
    with pytest.raises(TypeError) as caught:
        front(calls.append, [1, 2], [3, 4])
    assert "one iterable of items" in str(caught.value) and "zip(xs, ys)" in str(caught.value)
    with pytest.raises(TypeError, match=r"options are keyword-only.*workers=8"):
        front(calls.append, [1, 2], 8)
    assert calls == []


async def afn(x: int) -> int:
    return x


def unawaited(caught: list[warnings.WarningMessage]) -> list[str]:
    gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_sync_fn_returning_coroutines_stops_the_run_and_nothing_warns() -> None:
    calls: list[int] = []

    def calls_afn(x: int) -> Any:
        calls.append(x)
        return afn(x)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError) as error:
            manyhands.run(calls_afn, range(100_000), workers=4)
        with pytest.raises(TypeError, match="returned a coroutine"):
            list(manyhands.map(lambda x: afn(x), range(1000), workers=4))
        assert unawaited(caught) == []
    message = str(error.value)
    assert "calls_afn returned a coroutine" in message
    assert "async def" in message and "run(afn, items)" in message
    assert 1 <= len(calls) <= 4  # the first wave only: nothing started after it


def test_async_fn_that_forgets_await_is_caught() -> None:
    async def forgets(x: int) -> Any:
        return afn(x)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match="forget an await"):
            manyhands.run(forgets, range(1000), workers=8)
        assert unawaited(caught) == []


def test_coroutines_are_not_recorded_as_done_in_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match="returned a coroutine"):
            manyhands.run(lambda x: afn(x), range(50), workers=4, journal=journal)
        assert unawaited(caught) == []
    report = manyhands.run(afn, range(50), journal=journal)
    assert (report.succeeded, report.skipped) == (50, 0)


def test_a_generator_function_as_fn_stops_the_run_and_records_nothing(tmp_path: Path) -> None:
    ran: list[int] = []

    def lines(x: int) -> Any:
        ran.append(x)  # (never: nothing iterates the generator)
        yield x

    async def alines(x: int) -> Any:
        yield x

    journal = tmp_path / "run.db"
    with pytest.raises(TypeError, match="returned a generator") as error:
        manyhands.run(lines, range(50), workers=4, journal=journal)
    assert "lambda x: list(lines(x))" in str(error.value) and ran == []
    with pytest.raises(TypeError, match="returned an async generator"):
        list(manyhands.map(alines, range(50), workers=4, backend="threads"))
    report = manyhands.run(abs, range(50), journal=journal)
    assert (report.succeeded, report.skipped) == (50, 0)  # nothing was recorded as done


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_generator_or_a_coroutine_returned_stops_the_run_on_every_backend(
    tmp_path: Path, backend: str
) -> None:
    """On processes too, the run stops with the TypeError that says what to change,
    and records nothing (a generator cannot leave a worker process: each item
    used to fail with a pickle error, recorded, and blamed on a bug in fn)."""

    def lines(x: int) -> Any:
        yield x

    async def alines(x: int) -> Any:
        yield x

    async def fetch(x: int) -> int:
        return x

    journal = tmp_path / "run.db"
    with pytest.raises(TypeError, match="returned a generator") as error:
        manyhands.run(lines, range(50), workers=2, backend=backend, journal=journal)
    assert "lambda x: list(lines(x))" in str(error.value)
    with pytest.raises(TypeError, match="returned an async generator"):
        list(manyhands.map(alines, range(50), workers=2, backend=backend))
    with pytest.raises(TypeError, match="returned a coroutine"):
        manyhands.run(lambda x: fetch(x), range(50), workers=2, backend=backend)
    report = manyhands.run(abs, range(50), journal=journal)
    assert (report.succeeded, report.skipped) == (50, 0)  # nothing was recorded as done


def test_a_value_after_failures_is_checked_and_plain_values_pass() -> None:
    def fn(x: int) -> int:
        if x < 3:
            raise ValueError(x)
        return x

    outs = list(manyhands.map(fn, range(10), workers=1, batch_size=1, ordered=True))
    assert [o.ok for o in outs] == [False] * 3 + [True] * 7


async def numbers() -> AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize("front", [manyhands.run, manyhands.map], ids=["run", "map"])
def test_an_async_iterable_in_sync_code_points_at_amap(front: Callable[..., Any]) -> None:
    with pytest.raises(TypeError) as caught:
        front(abs, numbers())
    message = str(caught.value)
    assert "async iterable" in message and "manyhands.amap" in message
    assert "async for" in message and "arun" in message


def test_amap_used_as_a_sync_iterator_or_awaited_says_how_to_use_it() -> None:
    with pytest.raises(TypeError, match=r"async iterator.*async for outcome in"):
        list(manyhands.amap(afn, [1]))

    async def main() -> None:
        with pytest.raises(TypeError, match=r"cannot be awaited.*await manyhands\.arun"):
            await manyhands.amap(afn, [1])  # type: ignore[misc]

    asyncio.run(main())


def test_a_journal_in_a_missing_directory_says_so(tmp_path: Path) -> None:
    calls: list[int] = []
    with pytest.raises(manyhands.JournalError) as caught:
        manyhands.run(calls.append, [1, 2], journal=tmp_path / "nowhere" / "run.db")
    assert "nowhere does not exist" in str(caught.value) and "writable" not in str(caught.value)
    with pytest.raises(manyhands.JournalError, match="is a directory"):
        manyhands.map(calls.append, [1, 2], journal=tmp_path)
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_ordered_is_refused_where_nothing_is_yielded() -> None:
    calls: list[int] = []
    with pytest.raises(ValueError, match=r"ordered=True has no effect on run\(\).*manyhands\.map"):
        manyhands.run(calls.append, [1], ordered=True)

    async def main() -> None:
        with pytest.raises(ValueError, match=r"no effect on arun\(\).*amap"):
            await manyhands.arun(afn, [1], ordered=True)

    asyncio.run(main())
    assert calls == []
    assert manyhands.run(calls.append, [1], ordered=False).succeeded == 1
