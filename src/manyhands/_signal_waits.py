"""Waits that a signal can end: long waits of the main thread are cut into slices.

Python runs a signal's handler (Ctrl-C's KeyboardInterrupt, the command's
SIGTERM) in the main thread, but the kernel hands a signal sent to the process
to any of its threads that does not block it. When a worker thread takes it,
Python only sets a flag, which the main thread reads when it next runs Python
code: a main thread waiting on a lock, a queue or an Event is not woken, and
the signal waits for the wait's end. Seen: ``manyhands run --sh ... --grace 60``
ignored a second Ctrl-C (meant to stop at once) for the whole grace period, in
about one run in twenty on a loaded two-core machine; a first Ctrl-C during a
run of long calls is lost the same way until a call returns.

So every wait of the main thread that can last is cut into slices of
:data:`WAIT_SLICE` seconds: a signal's handler runs at most that long after
the signal, wherever the kernel delivered it.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic

__all__ = ["WAIT_SLICE", "wait_sliced"]

#: The longest a wait lasts before the thread looks for a signal that another thread took.
WAIT_SLICE = 0.1


def wait_sliced(wait: Callable[[float], bool | None], timeout: float | None) -> bool:
    """``wait(seconds)`` (an Event's ``wait``, a lock's ``acquire``: true once done) in slices.

    Returns whether it was done within ``timeout`` seconds (None: no limit).

    >>> import threading
    >>> wait_sliced(threading.Event().wait, 0.25)
    False
    >>> done = threading.Event(); done.set()
    >>> wait_sliced(done.wait, None)
    True
    """
    if timeout is None:
        while not wait(WAIT_SLICE):
            pass
        return True
    deadline = monotonic() + timeout
    while True:
        left = deadline - monotonic()
        if wait(min(max(left, 0.0), WAIT_SLICE)):
            return True
        if left <= WAIT_SLICE:
            return False
