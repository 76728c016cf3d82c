"""Retry policy: which failures are tried again, and how long an item waits first."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import ManyhandsError

__all__ = ["ErrorMatcher", "Retry", "RetryAfter", "check_matcher", "matches", "retry_after_of"]

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


def matches(on: ErrorMatcher, error: BaseException) -> bool:
    """Whether ``error`` is one ``on`` names; a predicate that raises says no.

    >>> matches((KeyError, IndexError), KeyError("k"))
    True
    >>> matches(lambda e: "429" in str(e), OSError("HTTP 503"))
    False
    """
    if isinstance(on, (type, tuple)):
        return isinstance(error, on)
    try:
        return bool(on(error))
    except Exception:  # a broken predicate must not break the run
        return False


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


def retry_after_of(error: BaseException) -> float | None:
    """The delay an exception asks for through a ``retry_after`` attribute, if any.

    >>> class Throttled(Exception):
    ...     retry_after = 3
    >>> retry_after_of(Throttled()), retry_after_of(ValueError())
    (3.0, None)
    """
    value = getattr(error, "retry_after", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(float(value), 0.0)
    return None


@dataclass(frozen=True)
class Retry:
    """How failed items are tried again: a small value the engine reads.

    A failed item waits in the engine's timer queue (it does not hold a
    worker) for a random delay between 0 and
    ``min(max_backoff, backoff * multiplier ** (attempt - 1))`` ("full
    jitter": retries of many items spread out instead of arriving together),
    or at least what the error asked for through ``retry_after``.

    Attributes:
        retries: how many times an item is tried again after its first
            attempt (``retry=3`` on ``run``/``map`` is ``Retry(retries=3)``).
        on: which failures are retried: an exception class, a tuple of them,
            or a predicate taking the exception. Default: any ``Exception``
            (never ``KeyboardInterrupt``/``SystemExit``-like BaseExceptions).
        backoff: the ceiling of the first delay, in seconds.
        multiplier: how much the ceiling grows per attempt.
        max_backoff: the cap of the ceiling, in seconds.

    >>> policy = Retry(retries=5, on=(ConnectionError, TimeoutError), backoff=0.5)
    >>> policy.retries_error(ConnectionResetError()), policy.retries_error(ValueError())
    (True, False)
    >>> policy.ceiling(1), policy.ceiling(3), Retry(max_backoff=1.0).ceiling(50)
    (0.5, 2.0, 1.0)
    """

    retries: int = 3
    on: RetryOn = Exception
    backoff: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 60.0
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"Retry retries must be an int >= 0, got {self.retries!r}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (0 <= value < math.inf):
                raise ValueError(
                    f"Retry {name} must be a finite number of seconds >= 0, got {value!r}"
                )
        if not isinstance(self.multiplier, (int, float)) or not (1 <= self.multiplier < math.inf):
            raise ValueError(f"Retry multiplier must be a number >= 1, got {self.multiplier!r}")
        check_matcher("Retry on", self.on)

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

    def retries_error(self, error: BaseException) -> bool:
        """Whether this policy retries ``error`` (attempts aside)."""
        return isinstance(error, Exception) and matches(self.on, error)

    def retries_failure(self, failure: Any) -> bool:
        """Whether this policy retries a failure that came from another process.

        Without the exception object, ``on`` classes are matched by name against
        the error's class hierarchy (so subclasses match, as with isinstance);
        a predicate ``on`` cannot be applied, and such failures are not retried.
        """
        lineage = failure.lineage
        if "builtins.Exception" not in lineage or not isinstance(self.on, (type, tuple)):
            return False
        classes = self.on if isinstance(self.on, tuple) else (self.on,)
        return any(f"{cls.__module__}.{cls.__qualname__}" in lineage for cls in classes)

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
        wait = self.random() * self.ceiling(attempt)
        if error is not None:
            asked = retry_after_of(error)
        return max(wait, asked) if asked is not None else wait
