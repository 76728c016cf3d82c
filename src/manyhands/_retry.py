"""Retry policy: which failures are tried again, and how long an item waits first."""

from __future__ import annotations

import math
from _thread import TIMEOUT_MAX
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._exceptions import ManyhandsError
from ._outcome import Failure, qualified_name, retry_after_of
from ._records import Record

__all__ = [
    "MAX_RETRY_AFTER",
    "PROGRAMMING_ERRORS",
    "ErrorMatcher",
    "Retry",
    "RetryAfter",
    "check_matcher",
    "is_programming_error",
    "matches",
    "matches_described",
    "predicate_name",
    "retry_after_of",
]

#: Errors that say "the code is wrong", not "try again later": the default
#: retry policy never retries them, since every attempt fails the same way.
#: (AssertionError, KeyError, IndexError and ValueError are retried: scripts
#: assert on a response, and an error page parsed as data raises them.)
PROGRAMMING_ERRORS: tuple[type[Exception], ...] = (
    TypeError,
    AttributeError,
    NameError,
    SyntaxError,
    ImportError,
    NotImplementedError,
)
# The same by qualified name, for errors that come back from another process.
_PROGRAMMING_ERROR_NAMES = frozenset(qualified_name(cls) for cls in PROGRAMMING_ERRORS)

#: The longest wait a call may ask for (``retry_after``, a Retry-After header)
#: that the run obeys unless told otherwise (``Retry(max_retry_after=...)``).
#: A server asking for more (a daily quota spent: ``Retry-After: 86400``)
#: gets its item failed at once, not a run that sleeps silently for a day.
MAX_RETRY_AFTER = 300.0

#: Which errors a rule applies to: a class, a tuple of classes, or a predicate.
ErrorMatcher = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)
RetryOn = ErrorMatcher


def check_matcher(name: str, on: object) -> None:
    """Refuse anything but an exception class, a tuple of them, or a callable."""
    if not callable(on) and not isinstance(on, tuple):
        raise TypeError(
            f"{name} must be an exception class, a tuple of them or a predicate, got {on!r}"
        )
    if isinstance(on, (tuple, type)):
        for cls in on if isinstance(on, tuple) else (on,):
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise TypeError(f"{name} must name exception classes, got {cls!r}")


def matches(
    on: ErrorMatcher,
    error: BaseException,
    broken: Callable[[Exception], None] | None = None,
) -> bool:
    """Whether ``error`` is one ``on`` names; a predicate that raises says no.

    ``broken`` hears what such a predicate raised (the run says so in its Report).

    >>> matches((KeyError, IndexError), KeyError("k"))
    True
    >>> matches(lambda e: "429" in str(e), OSError("HTTP 503"))
    False
    >>> matches(lambda e: e.response.status_code == 429, OSError("reset"), print)
    'OSError' object has no attribute 'response'
    False
    """
    if isinstance(on, (type, tuple)):
        return isinstance(error, on)
    try:
        return bool(on(error))
    except Exception as exc:  # a broken predicate must not break the run
        if broken is not None:
            broken(exc)
        return False


def matches_described(on: ErrorMatcher, failure: Any) -> bool:
    """Whether a failure described in another process is one ``on`` names.

    Classes are matched by name against its error's class hierarchy (so
    subclasses match, as with isinstance); a predicate cannot be applied to a
    description and says no.

    >>> failure = Failure(1, "builtins.ConnectionError", "reset", attempts=1)
    >>> failure.lineage = ("builtins.ConnectionError", "builtins.OSError", "builtins.Exception")
    >>> matches_described(OSError, failure), matches_described(lambda e: True, failure)
    (True, False)
    """
    if not isinstance(on, (type, tuple)):
        return False
    lineage = failure.lineage or (failure.error_type,)
    classes = on if isinstance(on, tuple) else (on,)
    return any(f"{cls.__module__}.{cls.__qualname__}" in lineage for cls in classes)


def predicate_name(on: object) -> str:
    """A predicate as a note names it: its name, and where a lambda was written.

    >>> predicate_name(lambda e: True)  # doctest: +ELLIPSIS
    '<lambda> (<doctest ...>:1)'
    >>> predicate_name(str.isdigit)
    'str.isdigit'
    """
    name = getattr(on, "__qualname__", None) or type(on).__qualname__
    code = getattr(on, "__code__", None)
    if name.endswith("<lambda>") and code is not None:
        import os

        return f"<lambda> ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"
    return str(name)


def is_programming_error(failure: Failure) -> bool:
    """Whether a failure's error is one of :data:`PROGRAMMING_ERRORS` (subclasses included).

    >>> is_programming_error(Failure.from_exception(1, NameError("nme")))
    True
    >>> is_programming_error(Failure(1, "builtins.ModuleNotFoundError", "no", attempts=1))
    False
    >>> is_programming_error(Failure(1, "builtins.TypeError", "bad", attempts=1))
    True
    """
    if failure.exception is not None:
        return isinstance(failure.exception, PROGRAMMING_ERRORS)
    # From another process: its class hierarchy by name (or, read back from a
    # journal, only its own name, so a subclass is not recognised there).
    return not _PROGRAMMING_ERROR_NAMES.isdisjoint(failure.lineage or (failure.error_type,))


class RetryAfter(ManyhandsError):
    """Raise it from your function to say "try this item again in ``seconds``".

    The item waits at least that long, whatever the backoff says, and the
    whole run slows down (a server that says Retry-After speaks for every
    request, not just this one). Any exception with a numeric ``retry_after``
    attribute is honoured the same way, e.g. one built from an HTTP 429/503
    ``Retry-After`` header.

    >>> RetryAfter(2.5).retry_after
    2.5
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            raise ValueError(f"RetryAfter seconds must be a number >= 0, got {seconds!r}")
        self.retry_after = float(seconds)
        super().__init__(message or f"retry after {self.retry_after:g}s")


RetryAfter.__module__ = "manyhands"  # error_type "manyhands.RetryAfter"


_set = object.__setattr__


@dataclass(frozen=True, init=False, repr=False, eq=False)  # (see _records)
class Retry(Record):
    """How failed items are tried again: a small value the engine reads.

    A failed item waits in the engine's timer queue (it does not hold a
    worker) for a random delay between 0 and
    ``min(max_backoff, backoff * multiplier ** (attempt - 1))`` ("full
    jitter": retries of many items spread out instead of arriving together),
    or at least what the error asked for through ``retry_after``.

    A call that asks for more than ``max_retry_after`` is not retried: its
    item fails at once with that error, the run does not pause for it, and
    the Report says what was asked (resume later with ``retry_failed=True``).

    Attributes:
        retries: how many times an item is tried again after its first
            attempt (``retry=3`` on ``run``/``map`` is ``Retry(retries=3)``).
        on: which failures are retried: an exception class, a tuple of them,
            or a predicate taking the exception. Default (``None``): any
            ``Exception`` but the programming errors in
            ``Retry.PROGRAMMING_ERRORS`` (``TypeError``, ``AttributeError``,
            ``NameError``, ``SyntaxError``, ``ImportError``,
            ``NotImplementedError``), which fail the same way every time.
            ``on=Exception`` retries those too. Never retried:
            ``KeyboardInterrupt``/``SystemExit``-like BaseExceptions (naming
            one in ``on`` is refused).
        backoff: the ceiling of the first delay, in seconds.
        multiplier: how much the ceiling grows per attempt.
        max_backoff: the cap of the ceiling, in seconds.
        max_retry_after: the longest wait a call may ask for (through
            ``retry_after``: :class:`RetryAfter`, a Retry-After header) that
            is obeyed, in seconds (default 300; ``math.inf`` waits however
            long the server says). The cap holds for the run's pause too.
        random: a function returning a float in [0, 1) that draws the jitter
            (default ``None``: ``random.random``); tests pass a fixed one. A
            value outside [0, 1] (or NaN) is clamped into it.

    >>> policy = Retry(retries=5, on=(ConnectionError, TimeoutError), backoff=0.5)
    >>> policy.retries_error(ConnectionResetError()), policy.retries_error(ValueError())
    (True, False)
    >>> Retry().retries_error(ValueError()), Retry().retries_error(TypeError())
    (True, False)
    >>> policy.ceiling(1), policy.ceiling(3), Retry(max_backoff=1.0).ceiling(50)
    (0.5, 2.0, 1.0)
    >>> Retry(on=ConnectionError, backoff=1)
    Retry(retries=3, on=ConnectionError, backoff=1, multiplier=2.0, max_backoff=60.0)
    """

    PROGRAMMING_ERRORS: ClassVar[tuple[type[Exception], ...]] = PROGRAMMING_ERRORS

    retries: int = 3
    on: RetryOn | None = None
    backoff: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 60.0
    max_retry_after: float = MAX_RETRY_AFTER
    random: Callable[[], float] | None = field(default=None, compare=False)

    def __init__(
        self,
        retries: int = 3,
        on: RetryOn | None = None,
        backoff: float = 0.5,
        multiplier: float = 2.0,
        max_backoff: float = 60.0,
        max_retry_after: float = MAX_RETRY_AFTER,
        random: Callable[[], float] | None = None,
    ) -> None:
        _set(self, "retries", retries)
        _set(self, "on", on)
        _set(self, "backoff", backoff)
        _set(self, "multiplier", multiplier)
        _set(self, "max_backoff", max_backoff)
        _set(self, "max_retry_after", max_retry_after)
        _set(self, "random", random)
        self.__post_init__()

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"Retry retries must be an int >= 0, got {self.retries!r}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (0 <= value <= TIMEOUT_MAX):
                raise ValueError(
                    f"Retry {name} must be a number of seconds >= 0 and at most "
                    f"{TIMEOUT_MAX:.0f} (the longest a thread can wait), got {value!r}"
                )
        longest = self.max_retry_after
        if not isinstance(longest, (int, float)) or isinstance(longest, bool) or not longest >= 0:
            raise ValueError(
                "Retry max_retry_after must be a number of seconds >= 0 (math.inf: no cap), "
                f"got {longest!r}"
            )
        if not isinstance(self.multiplier, (int, float)) or not (1 <= self.multiplier < math.inf):
            raise ValueError(f"Retry multiplier must be a number >= 1, got {self.multiplier!r}")
        if self.on is not None:
            check_matcher("Retry on", self.on)
            named = self.on if isinstance(self.on, tuple) else (self.on,)
            for cls in (each for each in named if isinstance(each, type)):
                # (BaseException itself names every Exception too)
                if not issubclass(cls, Exception) and cls is not BaseException:
                    raise ValueError(
                        f"Retry on={cls.__name__}: an exception that is not an Exception "
                        "(like KeyboardInterrupt and SystemExit) stops the run and is never "
                        "retried; name Exception subclasses"
                    )
        if self.random is not None and not callable(self.random):
            raise TypeError(f"Retry random must be a function returning [0, 1): {self.random!r}")

    def __repr__(self) -> str:
        # What a user would type: Retry(on=(ConnectionError, TimeoutError)), not
        # <class 'builtins.ConnectionError'>; unset on/random are left out.
        parts = [f"retries={self.retries!r}"]
        if self.on is not None:
            parts.append(f"on={_spelled(self.on)}")
        parts += [
            f"backoff={self.backoff!r}",
            f"multiplier={self.multiplier!r}",
            f"max_backoff={self.max_backoff!r}",
        ]
        if self.max_retry_after != MAX_RETRY_AFTER:
            parts.append(f"max_retry_after={self.max_retry_after!r}")
        if self.random is not None:
            parts.append(f"random={_spelled(self.random)}")
        return f"Retry({', '.join(parts)})"

    @classmethod
    def coerce(cls, value: Retry | int | None) -> Retry | None:
        """The ``retry=`` option: a Retry, a number of retries, or None/0 for none."""
        if value is None or isinstance(value, Retry):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"retry must be >= 0 (retries per item) or a Retry, got {value!r}")
            return cls(retries=value) if value else None
        raise TypeError(
            f"retry must be an int (retries per item) or a manyhands.Retry, got {value!r}"
        )

    def retries_error(
        self, error: BaseException, broken: Callable[[Exception], None] | None = None
    ) -> bool:
        """Whether this policy retries ``error`` (attempts aside); ``broken``: see matches."""
        if not isinstance(error, Exception):
            return False
        if self.on is None:
            return not isinstance(error, PROGRAMMING_ERRORS)
        return matches(self.on, error, broken)

    def retries_failure(self, failure: Any) -> bool:
        """Whether this policy retries a failure that came from another process.

        Without the exception object, ``on`` classes are matched by name against
        the error's class hierarchy (so subclasses match, as with isinstance),
        and so are the programming errors the default policy leaves out; a
        predicate ``on`` cannot be applied, and such failures are not retried.
        """
        lineage = failure.lineage
        if "builtins.Exception" not in lineage:
            return False
        if self.on is None:
            return _PROGRAMMING_ERROR_NAMES.isdisjoint(lineage)
        return matches_described(self.on, failure)

    def ceiling(self, attempt: int) -> float:
        """The largest delay after the ``attempt``-th try (1-based)."""
        exponent = min(attempt - 1, 1000)  # no float overflow for absurd attempts
        try:
            return float(min(self.max_backoff, self.backoff * self.multiplier**exponent))
        except OverflowError:
            return float(self.max_backoff)

    def delay(
        self, attempt: int, error: BaseException | None = None, asked: float | None = None
    ) -> float:
        """Seconds to wait after the ``attempt``-th try failed with ``error``.

        ``asked``: a delay the error asked for, when there is no exception object.
        """
        drawn = (self.random or _uniform)()
        if not 0.0 <= drawn <= 1.0:  # (a broken `random`: NaN or out of range, clamped)
            drawn = 1.0 if drawn > 1.0 else 0.0
        wait = drawn * self.ceiling(attempt)
        if error is not None:
            asked = retry_after_of(error)
        return max(wait, asked) if asked is not None else wait


def _spelled(value: object) -> str:
    """A class, tuple of classes or function as a user would write it.

    >>> _spelled((ConnectionError, TimeoutError)), _spelled(retry_after_of)
    ('(ConnectionError, TimeoutError)', 'retry_after_of')
    """
    if isinstance(value, tuple):
        inner = ", ".join(_spelled(part) for part in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, type):
        return value.__qualname__ if value.__module__ == "builtins" else qualified_name(value)
    name = getattr(value, "__qualname__", None)
    return name if isinstance(name, str) else repr(value)


def _uniform() -> float:
    """``random.random()``; ``random`` is imported only by a run that retries."""
    import random

    return random.random()
