"""The signals that stop a run of the command: SIGINT (Ctrl-C), SIGTERM and SIGHUP.

The first one stops the run as Ctrl-C stops the library's: no new item
starts, running calls get the grace period, what finished is written and
recorded, and the journal closes the run as "interrupted" (SIGINT) or
"terminated" (SIGTERM, what ``kill``, systemd, Docker and Kubernetes send;
SIGHUP, a closed terminal). A second one during the grace period stops at
once. A signal that was ignored when the command started (``nohup``, a
background job of a script) stays ignored.

One care: the journal records an outcome once the command got it, and the
command writes its line; a stop that lands between the two would leave a row
without a line (or a line without a row, so the item runs and is written
twice). So the handler raises at once while the run waits or works, except in
two places, where it only notes the signal:

- while the command holds an outcome it has not written: :meth:`StopSignals.done`
  raises once the line is written;
- while the run is inside one of the ``protect``-ed functions (making the
  next Outcome, recording what was delivered): the handler looks again a few
  milliseconds later (the signal is re-sent to the main thread), and raises
  once the run is out of them.
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType, TracebackType
from typing import Any, TypeVar

__all__ = ["StopSignals", "Terminated", "hold_stop_signals", "release_stop_signals"]

T = TypeVar("T")

RECHECK_SECONDS = 0.005  # how soon a signal noted in a protected function is looked at again

_STOPPING = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


_held: dict[int, Any] = {}  # the stop signals' handlers before hold_stop_signals


def hold_stop_signals() -> None:
    """After a stop signal: the command reports and exits; more stop signals do nothing.

    Stopped by a signal, ``manyhands run`` still prints its summary, closes its
    output and exits 130 or 143. A second signal sent just after the first found
    Python's own handlers back (or, as the interpreter tears down, the default
    action) and ended the process by the signal: exit -2 or -15. Until
    :func:`release_stop_signals`, the stopping signals do nothing.
    """
    if not _held:
        _held.update({signum: signal.getsignal(signum) for signum in _STOPPING})
    for signum in _STOPPING:
        signal.signal(signum, _ignore)


def release_stop_signals(*, exiting: bool) -> None:
    """End :func:`hold_stop_signals`: ignored for good if the process is ``exiting``
    (``SIG_IGN`` survives the interpreter's teardown, which puts the default
    action back for handlers it set), else as they were (a caller in-process).
    """
    for signum, handler in _held.items():
        # (None: a handler not set from Python, which cannot be put back: the default)
        signal.signal(signum, signal.SIG_IGN if exiting else handler or signal.SIG_DFL)
    _held.clear()


def _ignore(signum: int, frame: FrameType | None) -> None:
    return None


class Terminated(KeyboardInterrupt):
    """The command received SIGTERM or SIGHUP: it stops as on Ctrl-C, and exits 128 + signal.

    ``run_status`` is what the journal records as the run's end.
    """

    run_status = "terminated"

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for a process that a signal ended: 128 + its number."""
        return 128 + self.signum


Terminated.__module__ = "manyhands.cli"


class StopSignals:
    """Handles the stopping signals while a run is under way; restores the old handlers after.

    ``for outcome in signals.guard(outcomes): write(outcome); signals.done()``
    """

    def __init__(self, protect: Iterable[Callable[..., Any]] = ()) -> None:
        self._pid = os.getpid()
        self._protected = frozenset(getattr(fn, "__func__", fn).__code__ for fn in protect)
        self._holding = False  # the command holds an outcome it has not written yet
        self._deferred: KeyboardInterrupt | None = None
        self._previous: dict[int, Any] = {}
        self._active = False
        self._lock = threading.Lock()  # between the main thread and a recheck timer
        self._recheck: threading.Timer | None = None
        self._rechecking = False

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # (signals are the main thread's; nothing to install)
        for signum in _STOPPING:
            handler = signal.getsignal(signum)
            if handler is signal.SIG_IGN:
                continue  # ignored by whoever started us (nohup, `&` in a script)
            self._previous[signum] = handler
            signal.signal(signum, self._handle)
        self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._active = False
            recheck, self._recheck = self._recheck, None
        if recheck is not None:
            recheck.cancel()
            recheck.join()  # (a signal it re-sent is handled here, by _handle, as a no-op)
        self._deferred = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def guard(self, outcomes: Iterable[T]) -> Iterator[T]:
        """``outcomes``, each held (a signal waits for :meth:`done`) once received."""
        try:
            for outcome in outcomes:
                self._holding = True
                yield outcome
        finally:
            self._holding = False

    def done(self) -> None:
        """The held outcome is written: raise the signal that came meanwhile, if one did."""
        self._holding = False
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            raise deferred

    def release(self) -> None:
        """Hold nothing any more (the loop ended): a signal now raises at once."""
        self._holding = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a worker forked by the run: the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        rechecking, self._rechecking = self._rechecking, False
        if rechecking:
            if self._deferred is None:  # raised meanwhile, or the run is over
                return
        elif self._deferred is not None:  # a second signal: stop at once
            self._deferred = None
            raise _stop(signum)
        stop = self._deferred or _stop(signum)
        self._deferred = stop
        if self._holding:
            return  # done() raises it once the outcome is written
        if self._protected and _inside(frame, self._protected):
            self._recheck_soon(signum)
            return
        self._deferred = None
        raise stop

    def _recheck_soon(self, signum: int) -> None:
        timer = threading.Timer(RECHECK_SECONDS, self._resend, (signum,))
        timer.daemon = True
        with self._lock:
            if not self._active:
                return
            self._recheck = timer
        timer.start()

    def _resend(self, signum: int) -> None:
        with self._lock:
            if not self._active:
                return
            self._rechecking = True
            # _handle runs again in the main thread; a real signal wakes it from a wait.
            if hasattr(signal, "pthread_kill"):
                signal.pthread_kill(threading.main_thread().ident or 0, signum)
            else:  # pragma: no cover - Windows
                _thread.interrupt_main(signal.Signals(signum))


def _stop(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _inside(frame: FrameType | None, codes: frozenset[Any]) -> bool:
    """Whether ``frame`` or one of its callers runs one of ``codes``."""
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False
