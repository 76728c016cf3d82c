"""The signals that stop a run of the command: SIGINT (Ctrl-C), SIGTERM and SIGHUP.

The first one stops the run as Ctrl-C stops the library's: no new item
starts, running calls get the grace period, what finished is written and
recorded, and the journal closes the run as "interrupted" (SIGINT) or
"terminated" (SIGTERM, what ``kill``, systemd, Docker and Kubernetes send;
SIGHUP, a closed terminal). A second one during the grace period stops at
once. A signal that was ignored when the command started (``nohup``, a
background job of a script) stays ignored.

One care: an outcome the run delivered must be written before the stop, or
its journal row would be committed for a line the output never got. So the
handler raises at once while the command waits in the engine, but while the
command holds an outcome it only notes the signal, and :meth:`StopSignals.done`
raises it once the outcome's line is written.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType, TracebackType
from typing import Any, TypeVar

__all__ = ["StopSignals", "Terminated"]

T = TypeVar("T")

_STOPPING = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


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

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._holding = False  # the command holds an outcome it has not written yet
        self._deferred: KeyboardInterrupt | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # (signals are the main thread's; nothing to install)
        for signum in _STOPPING:
            handler = signal.getsignal(signum)
            if handler is signal.SIG_IGN:
                continue  # ignored by whoever started us (nohup, `&` in a script)
            self._previous[signum] = handler
            signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
        del frame
        if os.getpid() != self._pid:  # a worker forked by the run: the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stop = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
        if self._holding and self._deferred is None:
            self._deferred = stop
            return
        raise stop
