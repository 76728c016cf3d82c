"""Keys from ``key=``: what it returned, as key text, and the error naming an item with no key.

The journal reads them as it reads the input (:mod:`._journal_read`); the
command uses :func:`as_key` to find the lines an interrupted run wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._exceptions import JournalError
from ._keys import KeyTypeError, default_key
from ._outcome import safe_repr

__all__ = ["as_key", "key_error"]


def as_key(value: Any) -> str:
    """What ``key=`` returned, as key text: a str as is, anything else as JSON.

    So ``key=`` returning ``"1"`` and returning ``1`` name the same item.
    """
    if isinstance(value, str):
        return value
    if value is None:  # (every item would share it: all but the first would be skipped)
        raise NoKey
    try:
        return default_key(value)
    except KeyTypeError as exc:  # (not raised by key=: it returned what has no key)
        raise BadKeyType(value, str(exc)) from None


class NoKey(ValueError):
    """``key=`` returned None."""


class BadKeyType(TypeError):
    """``key=`` returned a value that is no key (a UUID, a date, a set, an object)."""

    def __init__(self, value: Any, kind: str) -> None:
        super().__init__(kind)
        self.value = value
        self.kind = kind  # (the type that has no key: the value's, or one inside it)


def key_error(
    item: Any, position: int, exc: Exception, keyfn: Callable[[Any], Any] | None
) -> JournalError:
    """The error that ends the input at item ``position``, which has no key (``exc`` says why).

    The run stops there: the items before it ran (and are recorded), it and the
    items after it did not, and the message says so. Without a key the item
    could be neither recorded nor found again, so it is refused rather than run.
    """
    if type(exc).__name__ == "UsageProblem":  # (the command's --key FIELD: it names the item)
        error = JournalError(str(exc))
    else:
        why = _why(item, position, exc, keyfn)
        error = JournalError(
            f"{why}. Items before {position} ran; it and the items after it did not"
        )
    error.__cause__ = exc
    return error


def _why(item: Any, position: int, exc: Exception, keyfn: Callable[[Any], Any] | None) -> str:
    """Why item ``position`` has no key, and the fix."""
    if keyfn is None:
        why = (
            "keys are made for str, bytes, numbers, bool, None and lists, tuples and dicts of those"
            if isinstance(exc, KeyTypeError)
            else f"{type(exc).__qualname__}: {exc}"
        )
        return (
            f"item {position} ({safe_repr(item, 60)}, a {type(item).__qualname__}) has no "
            f"default journal key: {why}. Pass key=, e.g. key=lambda item: item.id"
        )
    if isinstance(exc, NoKey):
        return (
            f"key= returned None for item {position} ({safe_repr(item, 60)}): return a "
            "value that tells the items apart (an id, a URL), or the items sharing it "
            "would all be skipped as duplicates but the first"
        )
    if isinstance(exc, BadKeyType):
        kind = type(exc.value).__qualname__
        inside = f", holding a value of type {exc.kind}" if exc.kind != kind else ""
        fix = (
            f"a sorted list of the {exc.kind}'s elements (a {exc.kind}'s order changes)"
            if exc.kind in ("set", "frozenset")
            else f"str() of the {exc.kind}, e.g. key=lambda item: str(item.id)"
        )
        return (
            f"key= returned {safe_repr(exc.value, 60)} (type {kind}{inside}) for item "
            f"{position} ({safe_repr(item, 60)}): a key is a str or an int (or a float, "
            f"bool, bytes, or a list, tuple or dict of those). Return one instead: {fix}"
        )
    return (
        f"key= raised {type(exc).__qualname__} for item {position} ({safe_repr(item, 60)}): "
        f"{exc}. Return a key for every item (catch the error in key=), or leave the item "
        "out of the input"
    )
