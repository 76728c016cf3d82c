"""Mistakes caught at the call, before anything runs, with the fix in the message.

The front doors (``run``, ``map``, ``amap``, ``arun``, and a pool's methods)
call these once per call; nothing here runs per item. The one check that
needs a result, whether ``fn`` returned coroutines, looks at the first value
only (:func:`check_first_value`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Iterator
from typing import TYPE_CHECKING, Any

from ._outcome import Failure, safe_repr

if TYPE_CHECKING:
    import inspect

    from ._aio import LoopQueue
    from ._batch import Batch
    from ._options import Options
    from ._run import Completions

__all__ = [
    "NOT_A_VALUE",
    "check_first_value",
    "check_fn",
    "check_items",
    "check_report_only",
    "discard_coroutines",
    "is_coroutine_function",
    "not_a_value",
]

#: The first name of the lineage of a worker process's error for a result that
#: ``fn`` must not return (see :func:`not_a_value`): it cannot be sent back, and
#: the run stops for it as on threads (:func:`check_first_value`).
NOT_A_VALUE = "manyhands:not-a-value"
_NOT_VALUES = (Coroutine, Generator, AsyncGenerator)
_IN_WORDS = {
    "Coroutine": "a coroutine",
    "Generator": "a generator",
    "AsyncGenerator": "an async generator",
}


def is_coroutine_function(fn: Any) -> bool:
    """Whether ``fn`` (a function, a partial, or an object with ``async def __call__``) is async."""
    import inspect  # not at import time: it is a heavy module

    if inspect.iscoroutinefunction(fn):
        return True
    return inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def check_fn(caller: str, fn: object) -> None:
    """Refuse a ``fn`` that is not callable, or that cannot be called with one item.

    The signature is read when it can be: a builtin without one, or any
    callable whose signature cannot be read, is trusted. Decorators are not
    followed (``functools.wraps`` may hide a wrapper that takes one item).

    >>> check_fn("map", lambda a, b: a)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: fn <lambda>(a, b) needs 2 arguments, ... unpack them: map(lambda args: ...
    >>> check_fn("run", print)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (a function taking one item), got {safe_repr(fn)}")
    refusing = _refusing_signature(fn)
    if refusing is not None:
        raise TypeError(_why_not_one_argument(caller, fn, refusing))


def _refusing_signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``fn``'s signature if it cannot take one positional argument; None if it can,
    or if it cannot be read."""
    import inspect  # (not at import time: it is a heavy module)

    try:
        signature = inspect.signature(fn, follow_wrapped=False)
    except Exception:  # no signature to read (a builtin, an odd callable): trust fn
        return None
    try:
        signature.bind(None)
    except TypeError:
        params = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
        return signature.replace(parameters=params, return_annotation=signature.empty)
    return None


def _why_not_one_argument(caller: str, fn: object, signature: inspect.Signature) -> str:
    name = _name(fn)
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) >= 2:
        if is_coroutine_function(fn):
            unpack = f"async def call(args): return await {name}(*args), then {caller}(call, items)"
        else:
            unpack = f"{caller}(lambda args: {name}(*args), items)"
        return (
            f"fn {name}{signature} needs {len(required)} arguments, but {caller}() calls "
            "fn(item) with each item. If each item holds the arguments (a pair, a tuple), "
            f"unpack them: {unpack}, or zip(xs, ys) two lists into such pairs"
        )
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in params):
        return (
            f"fn {name}{signature} takes no argument, but {caller}() calls fn(item) with each "
            "item: give it a parameter for the item"
        )
    keywords = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    bound = ", ".join(f"{keyword}=..." for keyword in keywords)
    return (
        f"fn {name}{signature} needs the keyword argument(s) {', '.join(keywords)}, which "
        f"fn(item) does not pass: bind them first, e.g. functools.partial(fn, {bound})"
    )


def _name(fn: object) -> str:
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else safe_repr(fn, 60)


def check_items(
    caller: str, items: object, more: tuple[Any, ...], on_loop: bool
) -> tuple[Any, Iterator[Any]]:
    """``(async_source, iterator)`` for ``items``; a clear TypeError for what cannot work.

    ``more``: positional arguments after ``items`` (``map(fn, xs, ys)``).
    """
    if more:
        raise TypeError(_several_iterables(caller, more))
    if on_loop and hasattr(items, "__aiter__"):
        return items, iter(())
    try:
        return None, iter(items)  # type: ignore[call-overload]
    except TypeError:
        if hasattr(items, "__aiter__"):
            raise TypeError(
                f"items is an async iterable ({type(items).__qualname__}), which {caller}() "
                "cannot read from sync code. In async code use `async for outcome in "
                "manyhands.amap(fn, items)`, or `await manyhands.arun(fn, items)` for the "
                "Report (fn must be a coroutine function there)"
            ) from None
        accepted = "an iterable or an async iterable" if on_loop else "an iterable"
        raise TypeError(
            f"items must be {accepted} (a list, a generator, an open file...), "
            f"got {type(items).__qualname__}"
        ) from None


def _several_iterables(caller: str, more: tuple[Any, ...]) -> str:
    if all(hasattr(extra, "__iter__") for extra in more):
        count = 1 + len(more)
        return (
            f"{caller}() takes one iterable of items, and got {count}. To call fn on items "
            f"taken from each in turn, zip them: {caller}(lambda args: fn(*args), "
            "zip(xs, ys))"
        )
    return (
        f"{caller}() takes fn and items; its options are keyword-only: "
        f"{caller}(fn, items, workers=8), got {safe_repr(more[0], 60)} as a third argument"
    )


def check_report_only(caller: str, options: Options) -> None:
    """Refuse what has no effect on a front door that yields nothing (``run``, ``arun``)."""
    if options.ordered:
        streams = {"arun": "async for outcome in manyhands.amap", "pool.run": "pool.map"}
        stream = streams.get(caller, "manyhands.map")
        raise ValueError(
            f"ordered=True has no effect on {caller}(), which returns only a Report; to "
            f"get outcomes in input order, use {stream}(fn, items, ordered=True)"
        )


def check_first_value(fn: object, batch: Batch) -> bool:
    """Whether ``fn``'s values are still to be checked after ``batch`` came back.

    Looks at the first value of the batch (False: it is a plain value, no
    need to look again), or the error a worker process sent instead of it
    (see :func:`not_a_value`). Raises TypeError if it is a coroutine: ``fn``
    returned one instead of a value (``lambda x: afn(x)``, or an ``async def``
    that forgot an ``await``); or a generator: ``fn`` is a generator function,
    whose body never ran. The batch's coroutines are closed first, so
    none warns that it was never awaited.
    """
    errors = batch.errors
    for index, value in enumerate(batch.values):
        kind = type(value)
        if errors is not None and index in errors:
            # (from a worker process, such a value comes back as an error: see
            # not_a_value; a user's exception may have a ``lineage`` of its own)
            error = errors[index]
            lineage = error.lineage if isinstance(error, Failure) else ()
            if lineage[:1] != (NOT_A_VALUE,):
                continue
            kind = next(k for k in _NOT_VALUES if lineage[1] == k.__name__)
        if issubclass(kind, (Generator, AsyncGenerator)):
            raise TypeError(_why_not_a_generator(fn, kind))
        if not issubclass(kind, Coroutine):
            return False
        _close(batch)
        name = _name(fn)
        if is_coroutine_function(fn):
            fix = "did you forget an await (return await afn(item))?"
        else:
            fix = (
                f"{name} is a regular function that calls an async one (e.g. "
                "lambda x: afn(x)). Pass the coroutine function itself (run(afn, items)), "
                "or define fn with async def and return await afn(x)"
            )
        raise TypeError(
            f"fn {name} returned a coroutine, which nothing would await, instead of a "
            f"value: {fix}. The run was stopped"
        )
    return True  # every item of the batch failed: no value to look at yet


def not_a_value(value: object) -> tuple[str, str] | None:
    """What ``value`` is (its kind, in words), if it does its work only once awaited or
    iterated (then ``fn`` returned it by mistake); else None.

    >>> async def later(): pass
    >>> not_a_value(x for x in ()), not_a_value(later), not_a_value([1])
    (('Generator', 'a generator'), None, None)
    """
    kind = type(value)
    name = next((k.__name__ for k in _NOT_VALUES if issubclass(kind, k)), None)
    return None if name is None else (name, _IN_WORDS[name])


def _why_not_a_generator(fn: object, kind: type) -> str:
    name = _name(fn)
    what = "an async generator" if issubclass(kind, AsyncGenerator) else "a generator"
    short = getattr(fn, "__name__", None) or "fn"  # (what the fix's code would call)
    fix = f"lambda x: list({short}(x))" if what == "a generator" else "an async def collecting it"
    return (
        f"fn {name} returned {what} instead of a value: its body runs only when something "
        f"iterates it, so no work was done in the workers. Return the values (e.g. a list: "
        f"pass {fix}). The run was stopped"
    )


def discard_coroutines(completions: Completions | LoopQueue[Batch]) -> None:
    """Close the coroutines in batches that came back after the run stopped for them."""
    while not completions.empty():
        batch = completions.get_nowait()
        if batch is not None:
            _close(batch)


def _close(batch: Batch) -> None:
    for value in batch.values:
        if issubclass(type(value), Coroutine):
            value.close()
