"""The exceptions manyhands raises.

Every exception of manyhands' own derives from one root::

    ManyhandsError
     ├── InputError        the user's iterable of items raised while it was read
     ├── Timeout           an item's call ran past ``timeout=`` (recorded, not raised)
     ├── WorkerCrashed     a worker process died running the item (recorded, not raised)
     ├── WorkerInitError   no worker could start (the initializer failed, fn could not
     │                     be loaded in a worker process): the run did not start
     ├── JournalError      the journal cannot be used (in use, corrupt, unwritable,
     │                     an item without a key, an edited item)
     ├── ItemsFailed       Report.raise_for_failures(): some items failed (or were not run)
     └── RetryAfter        raised by your function: "try this item again later"
                           (defined with the retry policy, in ``_retry.py``)

    JournalWarning         (a UserWarning) the journal was written by other code,
                           or a value could not be stored or read back

An item's failure is never raised by ``run`` or ``map``: it is a value, a
:class:`~manyhands.Failure`, in the :class:`~manyhands.Outcome` of that item.
Invalid options raise the built-in ``TypeError`` or ``ValueError`` at the call.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._outcome import Failure
    from ._report import Report

__all__ = [
    "InputError",
    "ItemsFailed",
    "JournalError",
    "JournalWarning",
    "ManyhandsError",
    "Timeout",
    "WorkerCrashed",
    "WorkerInitError",
]


class ManyhandsError(Exception):
    """The root of every exception manyhands raises itself.

    Attributes:
        report: when :func:`manyhands.run` ended with this error after items
            ran, their Report; else ``None``.
    """

    report: Report | None = None


class InputError(ManyhandsError):
    """The iterable of items raised an exception while manyhands read it.

    Every item before ``position`` was run and has its outcome; the item at
    ``position`` and everything after it were never read. The original
    exception is chained as ``__cause__``.

    Attributes:
        position: 0-based index of the item whose reading raised.
        report: for :func:`manyhands.run`, the Report of the items before
            ``position``; ``None`` when raised by :func:`manyhands.map`
            (the outcomes were already yielded).
    """

    def __init__(
        self, position: int, cause: BaseException, report: Report | None = None, hint: str = ""
    ):
        self.position = position
        self.report = report
        what = (
            f"items 0..{position - 1} got their outcomes, nothing from {position} on was read"
            if position
            else "no item was read"
        )
        super().__init__(
            f"reading item {position} from the items iterable raised "
            f"{type(cause).__qualname__}; {what}{f' ({hint})' if hint else ''}"
        )


class Timeout(ManyhandsError, TimeoutError):
    """An item's call ran longer than ``timeout=``; its Failure has this error type.

    Recorded as ``"manyhands.Timeout"``. Never raised by ``run`` or ``map``.

    Attributes:
        ran: ``False`` when the item's call never started: on threads, every
            worker was held by a call past its timeout that had not returned,
            and no more thread could be abandoned (at most one per worker), as
            the message says. Such an item is not retried, and that attempt
            made no call (it is not counted in ``attempts``); the Report counts
            it in ``not_run``, not in ``failed``.
    """

    ran = True


class WorkerCrashed(ManyhandsError):
    """The worker process running an item died (a segfault, ``os._exit``, SIGKILL).

    Recorded as ``"manyhands.WorkerCrashed"``, with the exit code or signal
    in the message. Never raised by ``run`` or ``map``.

    Attributes:
        ran: ``False`` when the item was never called, as the message says:
            the run stopped before a worker process (or a Dask task) began it
            ("not called: ..."), or the process backend had stopped (no
            worker was left, or none could be started). Such an item is not
            retried, and that attempt made no call (it is not counted in
            ``attempts``); the Report counts it in ``not_run``, not in ``failed``.
            On any backend, also when a stop rule ended the run before the
            retry an item had left ("not called: the run stopped before
            retrying it ..."; its Failure's traceback is its last failure's).
        stopped: ``True`` when ``ran`` is False because the run stopped first
            (a stop rule, Ctrl-C, an exception or ``break``), not because the
            backend could not go on.
    """

    ran = True
    stopped = False


def not_called(why: str) -> WorkerCrashed:
    """The error of an item whose call the run stopped before it was made.

    >>> error = not_called("the run stopped first")
    >>> error.ran, error.stopped, str(error)
    (False, True, 'not called: the run stopped first')
    """
    error = WorkerCrashed(f"not called: {why}")
    error.ran = False  # (not retried, no attempt counted, not journaled)
    error.stopped = True
    return error


class WorkerInitError(ManyhandsError):
    """No worker could start; no item was run.

    The ``initializer`` raised in a worker process, or ``fn`` (or the
    initializer) could not be loaded there (its module fails to import in a
    new process), or the system refused the process; the message says which.

    Attributes:
        traceback: the formatted traceback from the worker process.
        run_status: how a journal records the run's end: ``"failed to
            start: "`` and the first line of the message.
    """

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback

    @property
    def run_status(self) -> str:
        """How a journal records the run this error ended (see the class docstring)."""
        return ended_by("failed to start", self)


class JournalError(ManyhandsError):
    """The journal cannot be used as asked; the message says why and what to do.

    Raised before any item runs when the journal is in use by another run,
    corrupt, not a journal, or cannot be written. Raised after the items
    before it finished (and were recorded) when an item has no key or was
    edited since it was recorded, or when writing fails mid-run.

    Attributes:
        report: for :func:`manyhands.run` once items ran, their Report; else ``None``.
        writing: True when writing the journal failed during the run (a full
            disk, the file removed or replaced under it): the command exits 74
            then, as for an ``--output`` it cannot write.
    """

    report: Report | None = None
    writing = False


class JournalWarning(UserWarning):
    """Something about the journal deserves a look; the run goes on.

    It was written by a different function (or its code changed), or a
    value could not be stored or read back (``store_results``).
    """


class ItemsFailed(ManyhandsError):
    """Raised by :meth:`Report.raise_for_failures` when any item failed or was not run.

    Attributes:
        report: the whole Report.
        failures: the kept failures (``report.failures``).
    """

    def __init__(self, report: Report):
        from ._report_text import not_run_why

        self.report = report
        self.failures: list[Failure] = list(report.failures)
        said = []
        if report.failed:
            kinds = ", ".join(f"{name} x{count}" for name, count in report.errors_by_type.items())
            said.append(f"{report.failed} of {report.total} items failed: {kinds}")
        if report.not_run:
            of = "" if said else f" of {report.total} items"
            why = not_run_why(report.not_run_causes, report.not_run)
            said.append(f"{report.not_run}{of} not run ({why})")
        super().__init__("; ".join(said))


#: Characters of an error's first line that a journal's row of a run keeps.
_REASON_LIMIT = 200


def ended_by(how: str, error: BaseException) -> str:
    """How a run ended, as its row in a journal says: ``how``, and the first line of ``error``.

    An error of manyhands' own says what happened; any other is named by its type too.

    >>> ended_by("input error", ValueError("line 3 is not JSON\\nat column 7"))
    'input error: ValueError: line 3 is not JSON'
    >>> ended_by("failed to start", WorkerInitError("no worker process could be started"))
    'failed to start: no worker process could be started'
    """
    try:
        lines = str(error).strip().splitlines()
    except Exception:  # (a broken __str__: its type says what it can)
        lines = []
    why = lines[0] if lines else ""
    if not isinstance(error, ManyhandsError):
        why = f"{type(error).__qualname__}: {why}" if why else type(error).__qualname__
    if len(why) > _REASON_LIMIT:
        why = why[: _REASON_LIMIT - 3] + "..."
    return f"{how}: {why}"


#: How a journal's row records a run its consumer left (``break``, ``close()``, the
#: iterator dropped, a ``Pool`` closed around it): the consumer chose to stop.
LEFT_EARLY = "left early"


def ended_early(error: BaseException | None, *, in_loop: bool = False) -> str:
    """How a journal's row records a run that ``error`` ended before its last item.

    ``error`` was raised in the run, or (``in_loop``) in the body of the loop that
    reads its outcomes. Ctrl-C is "interrupted" (an ``amap`` gets it as its task's
    cancellation); an error that names its own ``run_status`` (the command's
    SIGTERM) is that; leaving the loop is "left early", with the first line of
    the exception that left it.

    >>> ended_early(KeyboardInterrupt()), ended_early(GeneratorExit())
    ('interrupted', 'left early')
    >>> ended_early(RuntimeError("no more\\nof this"), in_loop=True)
    'left early: RuntimeError: no more'
    """
    status = getattr(error, "run_status", None)
    if isinstance(status, str):
        return status
    if error is None or isinstance(error, GeneratorExit):
        return LEFT_EARLY
    asyncio = sys.modules.get("asyncio")  # (not imported: no task was cancelled)
    if isinstance(error, KeyboardInterrupt) or (
        asyncio is not None and isinstance(error, asyncio.CancelledError)
    ):
        return "interrupted"
    return ended_by(LEFT_EARLY if in_loop else "error", error)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the user's line, not manyhands'.

    For ``warnings.warn`` called by the caller of this function: the first frame
    outside the package (the user's ``run(...)`` call, or the ``for`` line that
    iterates ``map``), however deep inside the engine the warning is raised.
    """
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


# Users meet these as manyhands.X: in tracebacks, reprs and error_type strings
# ("manyhands.Timeout"), not as manyhands._exceptions.X.
for _name in __all__:
    globals()[_name].__module__ = "manyhands"
