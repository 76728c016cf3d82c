"""The text of a Report's summary: durations, plurals, causes, tracebacks as printed."""

from __future__ import annotations

from ._outcome import Failure, safe_repr
from ._retry import is_programming_error
from ._stats import BACKEND_STOPPED, RETRY_STOPPED, RUN_STOPPED, WORKERS_HELD

__all__ = [
    "TRACEBACK_SHOWN",
    "abandoned_text",
    "alike_text",
    "duration",
    "latency_label",
    "not_run_why",
    "plural",
    "shown_traceback",
]


#: What the summary says of each cause of items not run (``Report.not_run_causes``).
_NOT_RUN_WHY = {
    RUN_STOPPED: "the run stopped before calling {them}",
    RETRY_STOPPED: "the run stopped before retrying {them}",
    WORKERS_HELD: "every worker was held by a call past its timeout",
    BACKEND_STOPPED: "the process backend stopped before calling {them}",
}


def not_run_why(causes: dict[str, int], count: int) -> str:
    """Why ``count`` items were not run (``Report.not_run_causes``), as the summary says it.

    >>> not_run_why({"run stopped": 1}, 1)
    'the run stopped before calling it'
    >>> not_run_why({"run stopped": 4, "workers held": 3}, 7)
    '4: the run stopped before calling them, 3: every worker was held by a call past its timeout'
    """
    if not causes:  # (a Report made without them)
        return "never called"
    if len(causes) == 1:
        return _why(next(iter(causes)), count)
    return ", ".join(f"{items:,}: {_why(cause, items)}" for cause, items in causes.items())


def _why(cause: str, count: int) -> str:
    return _NOT_RUN_WHY.get(cause, cause).format(them="it" if count == 1 else "them")


def latency_label(backend: str) -> str:
    """What the latency line measures: each call's own time, or on Dask its batch's mean.

    A Dask task runs a batch of about half a second of work, and times it whole: a
    slow call among quick ones is averaged with them, and its percentiles do not show it.

    >>> latency_label("threads")
    'latency per call'
    >>> latency_label("dask")
    'latency per call (batch means: a Dask task times its batch, not each call)'
    """
    if backend == "dask":
        return "latency per call (batch means: a Dask task times its batch, not each call)"
    return "latency per call"


def abandoned_text(count: int, backend: str) -> str:
    """Calls left running: past ``timeout=``, or at the end of a stopped run's grace period."""
    if backend.startswith("async"):
        return (
            f"abandoned: {count:,} {plural(count, 'call')} past timeout= or the grace period "
            "did not end when cancelled, and were left running on the event loop"
        )
    return (
        f"abandoned: {count:,} {plural(count, 'thread')} left to calls still running past "
        "timeout= or the grace period (Python cannot stop a thread)"
    )


def plural(count: int, word: str) -> str:
    return word if count == 1 else f"{word}s"


def duration(seconds: float) -> str:
    """A short human duration.

    >>> duration(0.0000123), duration(0.25), duration(75.0), duration(7322.0)
    ('12.3us', '250.0ms', '1m15.0s', '2h02m02s')
    """
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"


#: The most of a traceback a Report prints (its head and its end, which names the error).
TRACEBACK_SHOWN = 4000


def shown_traceback(trace: str) -> str:
    """A traceback as a Report prints it: its control characters escaped (an error
    message may hold terminal escapes), and at most ``TRACEBACK_SHOWN`` characters.

    >>> shown_traceback("Traceback\\nValueError: \\x1b]0;title\\x07")
    'Traceback\\nValueError: \\\\x1b]0;title\\\\x07'
    >>> len(shown_traceback("x" * 1_000_000)) < TRACEBACK_SHOWN + 100
    True
    """
    from ._escape import escape_controls

    if len(trace) > TRACEBACK_SHOWN:
        head, tail = TRACEBACK_SHOWN // 4, TRACEBACK_SHOWN * 3 // 4
        cut = len(trace) - head - tail
        trace = f"{trace[:head]}\n[... {cut:,} characters not shown ...]\n{trace[-tail:]}"
    return escape_controls(trace, keep_newlines=True)


def alike_text(failure: Failure) -> str:
    """Every item failed with one error type: say what that suggests, with one traceback."""
    if is_programming_error(failure):
        verdict = (
            "this looks like a bug in fn (a programming error, so it was not retried by default)"
        )
    else:
        verdict = "this looks like a problem with fn or what it calls, not with the items"
    trace = shown_traceback(failure.traceback.rstrip()).replace("\n", "\n    ")
    return (
        f"every item failed with {failure.error_type}: {verdict}. The first one "
        f"(item {safe_repr(failure.item, 60)}):\n    {trace}"
    )
