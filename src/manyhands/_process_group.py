"""A command in a process group of its own: its output, bounded, until it ends; the group killed.

The command (``Popen(..., start_new_session=True)``) leads a group that its
children and grandchildren join, so one ``killpg`` ends them all. Its exit
is watched through a Linux pidfd where there is one (polled otherwise), so
that a background job still holding the pipes open does not keep its item
running: once the command exits, its group is killed and the pipes read to
their end.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
from collections.abc import Callable

__all__ = ["Buffer", "communicate", "decoded", "kill_group"]

DRAIN_SECONDS = 1.0  # pipes still open once the group is dead: a process left the group
POLL_SECONDS = 0.05  # without pidfd, how often the command's exit is looked at
_READ = 1 << 16


def kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid``: the command and whatever it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def communicate(
    proc: subprocess.Popen[bytes],
    deadline: float | None,
    capture: int,
    clock: Callable[[], float],
) -> tuple[bool, Buffer, Buffer]:
    """Read the command's output until it exits and its pipes close, or the deadline.

    Once the command itself exited, what is left of its group (a background
    job) is killed, and the pipes are read to their end. Returns (timed out,
    stdout, stderr).
    """
    assert proc.stdout is not None and proc.stderr is not None
    out, err = Buffer(capture, keep="head"), Buffer(capture, keep="tail")
    buffers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    pidfd = _exit_watch(proc)
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        if pidfd is not None:
            selector.register(pidfd, selectors.EVENT_READ)
        try:
            while buffers:
                wait = None if deadline is None else deadline - clock()
                if wait is not None and wait <= 0:
                    if timed_out or proc.poll() is not None:
                        break  # pipes held by a process that left the group
                    timed_out = True
                    kill_group(proc.pid)
                    deadline = clock() + DRAIN_SECONDS
                    continue
                if proc.returncode is None and pidfd is None:
                    wait = POLL_SECONDS if wait is None else min(wait, POLL_SECONDS)
                for key, _ in selector.select(wait):
                    fd = int(key.fd)  # (a selector key's fd is typed Any)
                    if fd == pidfd:
                        selector.unregister(fd)
                        continue
                    chunk = os.read(fd, _READ)
                    if chunk:
                        buffers[fd].add(chunk)
                    else:
                        selector.unregister(fd)
                        del buffers[fd]
                if proc.returncode is None and proc.poll() is not None:
                    kill_group(proc.pid)  # leftovers: nothing outlives its command
                    drained = clock() + DRAIN_SECONDS
                    deadline = drained if deadline is None else min(deadline, drained)
        finally:
            if pidfd is not None:
                os.close(pidfd)
            proc.stdout.close()
            proc.stderr.close()
    if proc.returncode is None and not timed_out:  # it closed its pipes but runs on
        if deadline is None:
            proc.wait()
        else:
            _wait(proc, deadline, clock)
        timed_out = proc.returncode is None
        if timed_out:
            kill_group(proc.pid)
    return timed_out, out, err


def _wait(proc: subprocess.Popen[bytes], deadline: float, clock: Callable[[], float]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(deadline - clock(), 0))


def _exit_watch(proc: subprocess.Popen[bytes]) -> int | None:
    """A file descriptor readable once ``proc`` exits (Linux pidfd), or None."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(proc.pid))
    except OSError:  # an older kernel, or a seccomp profile without it
        return None


class Buffer:
    """A stream's output, bounded: its first (``head``) or last (``tail``) ``limit`` bytes.

    >>> tail = Buffer(4, keep="tail")
    >>> for chunk in (b"abc", b"defg", b"h"): tail.add(chunk)
    >>> tail.kept(), tail.dropped
    (b'efgh', 4)
    >>> head = Buffer(4, keep="head")
    >>> for chunk in (b"abc", b"defg"): head.add(chunk)
    >>> head.kept(), head.dropped
    (b'abcd', 3)
    """

    __slots__ = ("_data", "dropped", "keep", "limit")

    def __init__(self, limit: int, *, keep: str) -> None:
        self.limit = limit
        self.keep = keep
        self._data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        if self.keep == "head":
            room = self.limit - len(self._data)
            self._data += chunk[: max(room, 0)]
            self.dropped += max(len(chunk) - room, 0)
            return
        self._data += chunk
        over = len(self._data) - self.limit
        if over > self.limit:  # trimmed now and then, not per chunk
            del self._data[:over]
            self.dropped += over

    def kept(self) -> bytes:
        over = len(self._data) - self.limit
        if over > 0:
            del self._data[:over]
            self.dropped += over
        return bytes(self._data)


def decoded(buffer: Buffer, name: str) -> str:
    text = buffer.kept().decode("utf-8", "backslashreplace")
    if not buffer.dropped:
        return text
    where = "end" if buffer.keep == "head" else "start"
    cut = f"[{buffer.dropped:,} bytes of {name} dropped at the {where}: --max-output]"
    return f"{text}\n{cut}\n" if buffer.keep == "head" else f"{cut}\n{text}"
