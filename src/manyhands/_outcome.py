"""What happened to one item: :class:`Outcome`, and when it failed, :class:`Failure`."""

from __future__ import annotations

import math
import traceback as _tb
from contextlib import suppress
from types import CodeType, FrameType, TracebackType
from typing import Any, Generic, TypeVar

__all__ = [
    "DUPLICATE",
    "SKIPPED_DONE",
    "SKIPPED_FAILED",
    "SUSPENDABLE",
    "Failure",
    "Outcome",
    "describe_exception",
    "duplicate_failure",
    "exception_traceback",
    "qualified_name",
    "retry_after_of",
    "safe_message",
    "safe_repr",
    "set_traceback",
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
    try:
        return f"{cls.__module__}.{cls.__qualname__}"
    except KeyboardInterrupt:  # Ctrl-C landing here: never swallowed
        raise
    except BaseException:  # a metaclass whose __module__ raises: the name alone
        return f"?.{type.__dict__['__qualname__'].__get__(cls)}"


#: Read and write an exception's own fields through BaseException's descriptors, so a
#: class that overrides them (a property, ``__getattr__``, a frozen dataclass's
#: ``__setattr__``) cannot break the run: the engine sees what the interpreter set.
_CAUSE = BaseException.__dict__["__cause__"].__get__
_CONTEXT = BaseException.__dict__["__context__"].__get__
_TRACEBACK = BaseException.__dict__["__traceback__"].__get__
set_traceback = BaseException.__dict__["__traceback__"].__set__
exception_traceback = _TRACEBACK
#: inspect's CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR:
#: a frame that may be suspended, which clearing would close (inspect is a heavy import).
SUSPENDABLE = 0x20 | 0x80 | 0x100 | 0x200


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

    A broken attribute counts as absent: one whose reading raises (a property,
    a ``__getattr__`` that raises KeyError), or a number that is no finite float
    (NaN, infinity, an int too large for a float: ``int("9" * 400)``).

    >>> class Broken(Exception):
    ...     def __getattr__(self, name): raise KeyError(name)
    >>> class Huge(Exception):
    ...     retry_after = int("9" * 400)
    >>> retry_after_of(Broken()), retry_after_of(Huge())
    (None, None)
    """
    try:
        value = getattr(error, "retry_after", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)  # (OverflowError: an int too large)
            if math.isfinite(seconds):
                return max(seconds, 0.0)
    except KeyboardInterrupt:  # Ctrl-C landing here: never swallowed
        raise
    except BaseException:  # a broken attribute counts as absent
        pass
    return None


def describe_exception(
    exc: BaseException, frames: TracebackType | bool | None = True
) -> tuple[str, str, str]:
    """(error_type, message, formatted traceback) of ``exc``, never raising.

    Used where the exception object cannot travel (another process), and
    lazily by :attr:`Failure.traceback` otherwise. ``frames``: the traceback
    to show, when it is not ``exc.__traceback__`` (True).
    """
    error_type = qualified_name(type(exc))
    message = _safe_message(exc)
    if frames is True:
        frames = _TRACEBACK(exc)
    tb = _past_wrappers(frames) if isinstance(frames, TracebackType) else None
    try:
        text = "".join(_tb.format_exception(type(exc), exc, tb))
    except KeyboardInterrupt:  # Ctrl-C landing here (formatting takes a while): never swallowed
        raise
    except BaseException:  # (e.g. a __notes__ or a chained exception that raises when read)
        try:
            lines = "".join(_tb.format_tb(tb)) if tb is not None else ""
        except KeyboardInterrupt:
            raise
        except BaseException:
            lines = ""
        text = f"Traceback (most recent call last):\n{lines}{error_type}: {message}\n"
    return error_type, message, text


def _past_wrappers(frames: TracebackType) -> TracebackType:
    """``frames`` without the leading frames of manyhands' own wrappers around fn.

    A wrapper (the command's, which fails an unreadable line as its item)
    marks itself with a local ``__tracebackhide__``, as pytest's helpers do:
    a traceback starts at the user's code. The mark is in the code object,
    so it holds for a wrapper pickled by value into a worker process. A
    wrapper's frame that raised (no frame after it) is kept.
    """
    while frames.tb_next is not None and "__tracebackhide__" in frames.tb_frame.f_code.co_varnames:
        frames = frames.tb_next
    return frames


def _linked(error: BaseException) -> list[BaseException]:
    """The exceptions ``error`` links to: its cause, its context, a group's members.

    Read through BaseException's own fields. ``exceptions`` (a group's members;
    any exception class may have an attribute by that name, e.g. None or a
    count) counts only when it is a tuple or list; one whose reading raises is
    absent.
    """
    linked = [e for e in (_CAUSE(error), _CONTEXT(error)) if e is not None]
    try:
        members = getattr(error, "exceptions", ())
        if isinstance(members, (tuple, list)):
            linked.extend(e for e in members if isinstance(e, BaseException))
    except KeyboardInterrupt:  # Ctrl-C landing here: never swallowed
        raise
    except BaseException:  # a broken attribute counts as absent
        pass
    return linked


def _drop_tracebacks(exc: BaseException) -> None:
    """Clear the tracebacks of ``exc``, its cause/context chain and group members."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        set_traceback(error, None)
        todo.extend(_linked(error))


class Failure:
    """Why one item failed: the error of its last attempt.

    Attributes:
        item: the input item.
        error_type: qualified class name of the exception, e.g. ``"builtins.ValueError"``.
        message: ``str()`` of the exception (a placeholder if ``__str__`` raised).
        attempts: how many times the item was tried.
        exception: the exception object itself when it was raised in this
            process, else ``None`` (e.g. it came back from a worker process).
            It is held without its traceback (one object raised by many
            calls, a module's constant or a failed Future's ``result()``,
            would otherwise hold a chain of every call's frames): this
            call's traceback is in :attr:`traceback`, as text. The Failures
            a Report keeps let go of the frames too (their text formatted
            then); those that waited for their turn (``ordered=True``), of
            the frames' local variables (their text formatted when read).
        history: the error types of the earlier attempts, oldest first
            (empty when the item was tried once).
    """

    __slots__ = (
        "_frames",
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
        self._frames: TracebackType | None = None  # this call's, until formatted

    @classmethod
    def from_exception(
        cls,
        item: Any,
        exc: BaseException,
        attempts: int = 1,
        frames: TracebackType | bool | None = True,
    ) -> Failure:
        """A Failure for ``exc``; its traceback text is formatted on first access.

        ``frames``: the traceback of this call, as the worker caught it (an
        exception object raised by several calls at once holds only one of
        theirs); by default, ``exc.__traceback__`` now.

        >>> f = Failure.from_exception(3, ValueError("bad item"))
        >>> f.error_type, f.message, f.attempts
        ('builtins.ValueError', 'bad item', 1)
        """
        failure = cls(item, qualified_name(type(exc)), _safe_message(exc), None, attempts, exc)
        if frames is True:
            frames = _TRACEBACK(exc)
        failure._frames = frames if isinstance(frames, TracebackType) else None
        return failure

    def leave_out_caller(self, code: CodeType) -> FrameType | None:
        """Leave the first frame out of the traceback if it runs ``code``; return it.

        For the frame of the worker's loop that caught the error (``code``):
        the user sees only their code. The caller clears it once that loop
        returned (see ``_settlement``): the user's frames link back to it.

        Frames after another frame running ``code`` are another call's: the
        same exception object raised in another thread in the instant before
        that call's loop took its traceback off it. They are left out too.
        """
        head = self._frames
        if head is None or head.tb_frame.f_code is not code:
            return None
        frames = head.tb_next
        last, entry = None, frames
        while entry is not None:
            if entry.tb_frame.f_code is code:
                if last is None:
                    frames = None
                else:
                    last.tb_next = None
                break
            last, entry = entry, entry.tb_next
        self._frames = frames
        return head.tb_frame

    @property
    def traceback(self) -> str:
        """The formatted traceback, as ``traceback.format_exception`` prints it."""
        if self._traceback is None:
            if self.exception is None:
                self._traceback = f"{self.error_type}: {self.message}\n"
            else:
                self._traceback = describe_exception(self.exception, self._frames)[2]
                self._frames = None  # (the text is all a Failure shows of them)
        return self._traceback

    def release_frames(self) -> None:
        """Keep the traceback as text and let go of the frames (for a Failure that is kept).

        A traceback holds every frame of the call, and each frame its local
        variables (and, through the callers, the worker's own frames): a
        Report that kept 1,000 failures of calls that each held a 4 MB buffer
        would pin 4 GB. The exception object stays, without its traceback
        (nor those of its ``__cause__``/``__context__`` chain).

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

    def clear_locals(self) -> None:
        """Let go of the local variables of the call's frames, and keep the frames.

        For a Failure that waits for its turn (``ordered=True``) and then goes
        to the consumer as any other: cheaper than :meth:`release_frames`, which
        formats the text (15-30 us a failure, which a run whose every item
        fails would pay for each); the text is formatted when it is first
        read. Left as they are: a frame still running, and a generator's or a
        coroutine's (clearing one that is suspended would close it). An error
        with a chain (``raise ... from``) is released as a kept one is: the
        chain's tracebacks are on other exception objects.

        >>> def fail():
        ...     big = bytearray(10)
        ...     raise ValueError("no")
        >>> try:
        ...     fail()
        ... except ValueError as exc:
        ...     failure = Failure.from_exception(1, exc)
        >>> failure.clear_locals()
        >>> failure._frames.tb_next.tb_frame.f_locals, "in fail" in failure.traceback
        ({}, True)
        """
        exception = self.exception
        frames = self._frames
        if exception is None or frames is None or self._traceback is not None:
            return
        if _linked(exception):
            self.release_frames()
            return
        entry: TracebackType | None = frames
        while entry is not None:
            frame = entry.tb_frame
            if not frame.f_code.co_flags & SUSPENDABLE:
                with suppress(RuntimeError):  # still running: left as it is
                    frame.clear()
            entry = entry.tb_next
        set_traceback(exception, None)

    def __getstate__(self) -> dict[str, Any]:
        """Its fields for pickle and copy: the traceback as text (frames do not pickle).

        >>> import pickle
        >>> try:
        ...     1 / 0
        ... except ZeroDivisionError as exc:
        ...     failure = Failure.from_exception(1, exc)
        >>> "1 / 0" in pickle.loads(pickle.dumps(failure)).traceback
        True
        """
        _ = self.traceback
        return {name: getattr(self, name) for name in self.__slots__ if name != "_frames"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._frames = None

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


def safe_message(exc: BaseException, limit: int = _REPR_LIMIT) -> str:
    """``str(exc)`` cut to ``limit`` characters, never raising (but for a Ctrl-C).

    >>> safe_message(ValueError("x" * 500), limit=12)
    'xxxxxxxxx...'
    """
    message = _safe_message(exc)
    return message if len(message) <= limit else message[: max(limit - 3, 0)] + "..."
