"""What happened to one item: :class:`Outcome`, and when it failed, :class:`Failure`."""

from __future__ import annotations

import math
import traceback as _tb
from typing import Any, Generic, TypeVar

__all__ = [
    "DUPLICATE",
    "SKIPPED_DONE",
    "SKIPPED_FAILED",
    "Failure",
    "Outcome",
    "describe_exception",
    "duplicate_failure",
    "qualified_name",
    "retry_after_of",
    "safe_repr",
]

# Why an item was not run (Outcome.skipped).
SKIPPED_DONE = "done in the journal"
SKIPPED_FAILED = "failed in the journal"
DUPLICATE = "duplicate key"

T = TypeVar("T")
R = TypeVar("R")

_REPR_LIMIT = 200


def qualified_name(cls: type) -> str:
    """The importable name of a class, as recorded in ``Failure.error_type``.

    >>> qualified_name(ValueError)
    'builtins.ValueError'
    """
    return f"{cls.__module__}.{cls.__qualname__}"


def safe_repr(obj: object, limit: int = _REPR_LIMIT) -> str:
    """``repr(obj)`` cut to ``limit`` characters, never raising.

    >>> safe_repr("x" * 500, limit=12)
    "'xxxxxxxx..."
    >>> class Bad:
    ...     def __repr__(self): raise RuntimeError
    >>> safe_repr(Bad())
    '<unrepresentable Bad object>'
    """
    try:
        text = repr(obj)
    except KeyboardInterrupt:  # Ctrl-C landing here: never swallowed
        raise
    except BaseException:  # a broken __repr__ must not break a report
        return f"<unrepresentable {type(obj).__qualname__} object>"
    if len(text) > limit:
        return text[: max(limit - 3, 0)] + "..."
    return text


def _safe_message(exc: BaseException) -> str:
    try:
        return str(exc)
    except KeyboardInterrupt:  # Ctrl-C landing here: never swallowed
        raise
    except BaseException:  # an exception whose __str__ raises
        return f"<unprintable {type(exc).__qualname__} message>"


def retry_after_of(error: BaseException) -> float | None:
    """The delay an exception asks for through a ``retry_after`` attribute, if any.

    (Here, not in ``_retry``, for the worker processes: they import this module
    and not the retry policy's.)

    >>> class Throttled(Exception):
    ...     retry_after = 3
    >>> retry_after_of(Throttled()), retry_after_of(ValueError())
    (3.0, None)
    """
    value = getattr(error, "retry_after", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(float(value), 0.0)
    return None


def describe_exception(exc: BaseException) -> tuple[str, str, str]:
    """(error_type, message, formatted traceback) of ``exc``, never raising.

    Used where the exception object cannot travel (another process), and
    lazily by :attr:`Failure.traceback` otherwise.
    """
    error_type = qualified_name(type(exc))
    message = _safe_message(exc)
    try:
        text = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
    except KeyboardInterrupt:  # Ctrl-C landing here (formatting takes a while): never swallowed
        raise
    except BaseException:
        frames = "".join(_tb.format_tb(exc.__traceback__)) if exc.__traceback__ else ""
        text = f"Traceback (most recent call last):\n{frames}{error_type}: {message}\n"
    return error_type, message, text


def _drop_tracebacks(exc: BaseException) -> None:
    """Clear the tracebacks of ``exc``, its cause/context chain and group members."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        error.__traceback__ = None
        todo.extend(e for e in (error.__cause__, error.__context__) if e is not None)
        todo.extend(e for e in getattr(error, "exceptions", ()) if isinstance(e, BaseException))


class Failure:
    """Why one item failed: the error of its last attempt.

    Attributes:
        item: the input item.
        error_type: qualified class name of the exception, e.g. ``"builtins.ValueError"``.
        message: ``str()`` of the exception (a placeholder if ``__str__`` raised).
        attempts: how many times the item was tried.
        exception: the exception object itself when it was raised in this
            process, else ``None`` (e.g. it came back from a worker process).
            The Failures a Report keeps, and those that waited for their turn
            (``ordered=True``), hold it without its traceback (the frames, and
            every local variable in them): the text is in :attr:`traceback`.
        history: the error types of the earlier attempts, oldest first
            (empty when the item was tried once).
    """

    __slots__ = (
        "_traceback",
        "attempts",
        "error_type",
        "exception",
        "history",
        "item",
        "lineage",
        "message",
        "retry_after",
    )

    def __init__(
        self,
        item: Any,
        error_type: str,
        message: str,
        traceback: str | None = None,
        attempts: int = 1,
        exception: BaseException | None = None,
    ) -> None:
        self.item = item
        self.error_type = error_type
        self.message = message
        self._traceback = traceback
        self.attempts = attempts
        self.exception = exception
        self.history: tuple[str, ...] = ()
        # From another process (no exception object): the error's class hierarchy
        # by name, for retry matching, and the delay it asked for, if any.
        self.lineage: tuple[str, ...] = ()
        self.retry_after: float | None = None

    @classmethod
    def from_exception(cls, item: Any, exc: BaseException, attempts: int = 1) -> Failure:
        """A Failure for ``exc``; its traceback text is formatted on first access.

        >>> f = Failure.from_exception(3, ValueError("bad item"))
        >>> f.error_type, f.message, f.attempts
        ('builtins.ValueError', 'bad item', 1)
        """
        return cls(item, qualified_name(type(exc)), _safe_message(exc), None, attempts, exc)

    @property
    def traceback(self) -> str:
        """The formatted traceback, as ``traceback.format_exception`` prints it."""
        if self._traceback is None:
            if self.exception is None:
                self._traceback = f"{self.error_type}: {self.message}\n"
            else:
                self._traceback = describe_exception(self.exception)[2]
        return self._traceback

    def release_frames(self) -> None:
        """Keep the traceback as text and let go of the frames (for a Failure that is kept).

        A traceback holds every frame of the call, and each frame its local
        variables: a Report that kept 1,000 failures of calls that each held a
        4 MB buffer would pin 4 GB. The exception object stays, without its
        traceback (nor those of its ``__cause__``/``__context__`` chain).

        >>> def fail():
        ...     big = bytearray(10)
        ...     raise ValueError("no")
        >>> try:
        ...     fail()
        ... except ValueError as exc:
        ...     failure = Failure.from_exception(1, exc)
        >>> failure.release_frames()
        >>> failure.exception.__traceback__ is None, "in fail" in failure.traceback
        (True, True)
        """
        if self.exception is None:
            return
        _ = self.traceback  # formatted while the frames are still there
        _drop_tracebacks(self.exception)

    def __repr__(self) -> str:
        return (
            f"Failure(item={safe_repr(self.item)}, error_type={self.error_type!r}, "
            f"message={safe_repr(self.message)}, attempts={self.attempts})"
        )


def duplicate_failure(item: Any, first: Failure) -> Failure:
    """The Failure given to a later copy of a key: its first copy's, under its own item.

    >>> first = Failure("a", "builtins.ValueError", "bad", "Traceback ...", attempts=3)
    >>> duplicate_failure("a", first)
    Failure(item='a', error_type='builtins.ValueError', message='bad', attempts=3)
    """
    copy = Failure(item, first.error_type, first.message, first.traceback, first.attempts)
    copy.history = first.history
    return copy


class Outcome(Generic[T, R]):
    """The result of one item: its value, or the :class:`Failure` that stopped it.

    Attributes:
        item: the input item.
        value: what ``fn(item)`` returned; ``None`` when it failed.
        error: the Failure, or ``None`` when it succeeded.
        attempts: how many times the item was tried in this run.
        skipped: why the item did not run in this run, or ``None`` if it ran:
            ``"done in the journal"`` (``value`` is the stored result with
            ``store_results=True``), ``"failed in the journal"`` (``error`` is
            the recorded Failure) or ``"duplicate key"`` (a later copy of a
            key in this input: it has the first copy's ``ok`` and Failure,
            not its value).

    >>> out = Outcome(2, 4, None, 1)
    >>> out.ok, out.value
    (True, 4)
    """

    __slots__ = ("attempts", "error", "item", "skipped", "value")

    def __init__(
        self,
        item: T,
        value: R | None,
        error: Failure | None,
        attempts: int,
        skipped: str | None = None,
    ) -> None:
        self.item = item
        self.value = value
        self.error = error
        self.attempts = attempts
        self.skipped = skipped

    @property
    def ok(self) -> bool:
        """True when the item succeeded."""
        return self.error is None

    def __repr__(self) -> str:
        skipped = f", skipped={self.skipped!r}" if self.skipped else ""
        if self.error is None:
            return f"Outcome(item={safe_repr(self.item)}, value={safe_repr(self.value)}{skipped})"
        return f"Outcome(item={safe_repr(self.item)}, error={self.error!r}{skipped})"
