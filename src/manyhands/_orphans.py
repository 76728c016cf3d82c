"""Commands of ``run --sh`` do not outlive a manyhands that was killed.

Each command leads a process group of its own (out of the terminal's reach,
so Ctrl-C reaches manyhands, which stops them itself). A manyhands killed
with SIGKILL (the OOM killer, a CI job's timeout) can stop nothing: its
commands would run on, orphaned, for as long as they last.

So the first command starts a watchdog: a small Python process in a session
of its own, told on a pipe which process groups are running (``+PGID``) and
which ended (``-PGID``). When the pipe reaches its end, whatever the reason,
it kills the groups still listed and exits. At a normal end none is listed
(every command ended, or was killed by manyhands itself), and it only exits.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import weakref
from typing import Any

__all__ = ["WATCHDOG_CODE", "Watchdog"]

#: What the watchdog runs (``python -I -S -c``: nothing of the user's is imported).
WATCHDOG_CODE = """\
import os, signal, sys
running = set()
for line in sys.stdin.buffer:
    if line[:1] == b"+":
        running.add(int(line[1:]))
    elif line[:1] == b"-":
        running.discard(int(line[1:]))
for pgid in running:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class Watchdog:
    """Tells a watchdog process which process groups to kill if this process dies.

    Started at the first :meth:`watch`. It must never cost a command its
    run: if the watchdog cannot start or its pipe breaks, the commands
    simply run without one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: int | None = None
        self._off = False  # it could not start, or it is gone: commands go on without it
        self._end: weakref.finalize[Any, Watchdog] | None = None  # (also if never closed)

    def watch(self, pgid: int) -> None:
        """The process group ``pgid`` is running."""
        self._say(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        """The process group ``pgid`` ended (or was killed)."""
        self._say(b"-%d\n" % pgid)

    def _say(self, line: bytes) -> None:
        with self._lock:
            if self._off:
                return
            if self._pipe is None and not self._start():
                return
            assert self._pipe is not None
            try:
                os.write(self._pipe, line)  # (under PIPE_BUF: whole or not at all)
            except OSError:
                self._off = True

    def _start(self) -> bool:
        try:
            read, write = os.pipe()
        except OSError:  # (out of descriptors: the commands come first)
            self._off = True
            return False
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", WATCHDOG_CODE],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # (a Ctrl-C or a kill of manyhands' group spares it)
                close_fds=True,
            )
        except OSError:  # (out of processes or descriptors: the commands come first)
            os.close(write)
            self._off = True
            return False
        finally:
            os.close(read)
        self._pipe = write  # (not inherited: a command holding it would hide the end)
        self._end = weakref.finalize(self, _end, write, process)
        return True

    def close(self) -> None:
        """End the watchdog (it kills the groups still listed, if any, and exits)."""
        with self._lock:
            self._off = True
            self._pipe = None
            end = self._end
        if end is not None:
            end()  # (once: a finalizer runs at most once)


def _end(pipe: int, process: subprocess.Popen[bytes]) -> None:
    os.close(pipe)  # its end of the input: it kills what is listed and exits
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)  # (reaped: no zombie left)
