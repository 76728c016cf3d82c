"""A call of a Pool's Executor face on processes: pickled to go, made there, and back.

The call travels pickled (refused at ``submit``, naming what does not pickle);
its value or exception is pickled in the worker, so that one that cannot come
back says so, and an exception comes back with its traceback in the worker as
its ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

__all__ = ["RemoteTraceback", "call_pickled", "pickled_call", "unpickled_outcome"]


def pickled_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> bytes:
    """``(fn, args, kwargs)`` pickled to go to a worker process; TypeError names what does not."""
    import cloudpickle  # type: ignore[import-untyped]

    try:
        return cast("bytes", cloudpickle.dumps((fn, args, kwargs)))
    except Exception as exc:
        parts = [("fn", fn)] + [(f"argument {n}", arg) for n, arg in enumerate(args, 1)]
        parts += [(f"keyword argument {name}=", arg) for name, arg in kwargs.items()]
        what = "the call"
        for name, part in parts:
            try:
                cloudpickle.dumps(part)
            except Exception:
                what = f"{name} ({type(part).__qualname__})"
                break
        raise TypeError(
            f"{what} cannot be sent to a worker process: {exc}. The pool's workers are "
            "processes: what a call takes must pickle (or use a pool of threads)"
        ) from exc


def call_pickled(item: tuple[int, bytes]) -> Any:
    """In a worker process: unpack the call, make it, and pickle what it gave.

    The outcome is pickled here, so that one that cannot be sent back is told
    as such: a value that does not pickle fails the call with a TypeError; an
    exception that does not pickle comes back as a RuntimeError with its type
    and message. An exception comes with its traceback here, as text.
    """
    import cloudpickle

    fn, args, kwargs = cloudpickle.loads(item[1])
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # sent back as the Future's exception
        return False, _pickled_exception(exc)
    try:
        return True, cloudpickle.dumps(value)
    except Exception as exc:
        error = TypeError(
            f"the call's value (a {type(value).__qualname__}) could not be sent back from "
            f"the worker process: {exc}"
        )
        return False, (cloudpickle.dumps(error), "")


def _pickled_exception(exc: BaseException) -> tuple[bytes, str]:
    """``exc`` pickled (or a RuntimeError naming it, if it cannot travel), and its traceback."""
    import traceback

    import cloudpickle

    text = "".join(traceback.format_exception(exc))
    try:
        data: bytes = cloudpickle.dumps(exc)
        cloudpickle.loads(data)  # (e.g. an __init__ of its own: it pickles, and fails here)
    except Exception:
        kind = type(exc)
        error = RuntimeError(
            f"{kind.__module__}.{kind.__qualname__}: {_safe_str(exc)} (it could not be sent "
            "back from the worker process as it is)"
        )
        data = cloudpickle.dumps(error)
    return data, text


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<str() of the exception failed>"


def unpickled_outcome(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    """What ``call_pickled`` sent back; an exception's cause is its traceback in the worker."""
    import cloudpickle

    ok, data = outcome
    if ok:
        return True, cloudpickle.loads(data)
    pickled, text = data
    error = cloudpickle.loads(pickled)
    if text:
        error.__cause__ = RemoteTraceback(text)
    return False, error


class RemoteTraceback(Exception):
    """The traceback of a call's exception in its worker process (set as its ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text
