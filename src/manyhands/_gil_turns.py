"""Short turns on the GIL for one thread, for a moment (backend="auto").

Threads taking turns on the GIL hold it for the switch interval (5 ms by
default) each. While auto measures the first calls, and while it moves a
run (starting processes gives up the GIL at every system call), the
interval is lowered so that its own looks and steps wait a short turn; the
shortest interval asked for holds, and the last to leave restores the one
there was.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

__all__ = ["first_in_line", "in_line"]


@contextlib.contextmanager
def first_in_line(interval: float = 1e-4) -> Iterator[None]:
    """This thread's waits for the GIL kept short, for a moment (auto's move).

    Threads taking turns on the GIL hold it for the switch interval (5 ms)
    each; starting processes gives it up at every system call, and waited a
    turn each time: a quarter to half a second in all, here.
    """
    in_line.enter(interval)
    try:
        yield
    finally:
        in_line.leave(interval)


class _InLine:
    """The switch intervals asked for now (the shortest holds), and the one to restore."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asked: list[float] = []
        self.saved = 0.0

    def enter(self, interval: float) -> None:
        with self.lock:  # (runs at once: the first saves it, the last restores it)
            if not self.asked:
                self.saved = sys.getswitchinterval()
            self.asked.append(interval)
            sys.setswitchinterval(min([self.saved, *self.asked]))

    def leave(self, interval: float) -> None:
        with self.lock:
            self.asked.remove(interval)
            sys.setswitchinterval(min([self.saved, *self.asked]))


in_line = _InLine()
