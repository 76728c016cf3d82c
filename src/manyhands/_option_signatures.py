"""The front doors' signatures: every option listed, keyword-only, with its default.

``help()``, ``inspect.signature`` and notebooks show ``run``, ``map``,
``amap``, ``arun`` and a Pool's methods with the options of
:class:`~._options.Options`, built from its fields, so no list of options is
copied by hand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._options import Options

if TYPE_CHECKING:
    import inspect

__all__ = ["lists_options"]

F = TypeVar("F", bound=Callable[..., Any])


def lists_options(*, leave_out: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give a front door a signature listing every option, keyword-only, with its default.

    ``run(fn, items, **options)`` is shown by ``help()`` and
    ``inspect.signature`` as ``run(fn, items, *, workers: int = 32, ...)``,
    built from :class:`Options`, so no list of options is copied by hand.
    Its own ``*args`` and ``**options`` are left out of what is shown, and so
    are the options named in ``leave_out``.
    """

    def decorate(fn: F) -> F:
        import inspect  # (dataclasses imported it already; nothing runs per call)

        own = inspect.signature(fn)
        shown = [
            p
            for p in own.parameters.values()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        shown += [p for p in _option_parameters() if p.name not in leave_out]
        cast(Any, fn).__signature__ = own.replace(parameters=shown)
        return fn

    return decorate


@functools.cache
def _option_parameters() -> tuple[inspect.Parameter, ...]:
    """Every option as a keyword-only parameter with its type and default."""
    import inspect

    keyword = inspect.Parameter.KEYWORD_ONLY
    return tuple(
        inspect.Parameter(f.name, keyword, default=f.default, annotation=f.type)
        for f in fields(Options)
    )
