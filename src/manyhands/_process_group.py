"""A command in a process group of its own: its output, bounded, until it ends; the group killed.

The command (``Popen(..., start_new_session=True)``) leads a group that its
children and grandchildren join, so one ``killpg`` ends them all. Its exit
is watched through a Linux pidfd where there is one (polled otherwise), so
that a background job still holding the pipes open does not keep its item
running: once the command exits, its group is killed and the pipes read to
their end.

Where the output goes: :class:`Buffer` keeps a bounded part of a stream (the
``--output`` line; the end a failure keeps, beside it through a :class:`Tee`);
:class:`Spool` keeps the whole of it, byte for byte, in memory and then in a
temporary file, for the stdout that is passed through.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from typing import IO, Protocol

__all__ = ["Buffer", "Spool", "Tee", "communicate", "decoded", "kill_group", "raw"]

DRAIN_SECONDS = 1.0  # pipes still open once the group is dead: a process left the group
POLL_SECONDS = 0.05  # without pidfd, how often the command's exit is looked at
_READ = 1 << 16
SPOOL_MEMORY = 1 << 20  # a passed-through stdout past this goes to a temporary file
# poll() needs no file descriptor of its own (epoll does: one more per command running).
_Selector = getattr(selectors, "PollSelector", selectors.SelectSelector)


class Sink(Protocol):
    """Where a stream's chunks go; ``over`` once it took more than it may."""

    @property
    def over(self) -> bool: ...

    def add(self, chunk: bytes) -> None: ...


def kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid``: the command and whatever it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def communicate(
    proc: subprocess.Popen[bytes],
    deadline: float | None,
    out: Sink,
    err: Sink,
    clock: Callable[[], float],
) -> bool:
    """Read the command's output into ``out`` and ``err`` until it exits and its pipes close.

    Once the command itself exited, what is left of its group (a background
    job) is killed, and the pipes are read to their end. A sink that took
    more than it may (``over``) gets the group killed too. Returns whether
    the deadline passed (the group was killed).
    """
    assert proc.stdout is not None and proc.stderr is not None
    buffers: dict[int, Sink] = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    pidfd = _exit_watch(proc)
    timed_out = killed = False
    with _Selector() as selector:
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
                    if _read(fd, buffers, selector) and not killed:
                        killed = True
                        kill_group(proc.pid)  # (its pipes close: read to their end)
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
    return timed_out


def _read(fd: int, sinks: dict[int, Sink], selector: selectors.BaseSelector) -> bool:
    """Move a chunk of ``fd`` to its sink (at its end, forget it); True if the sink is over."""
    chunk = os.read(fd, _READ)
    if not chunk:
        selector.unregister(fd)
        del sinks[fd]
        return False
    sink = sinks[fd]
    sink.add(chunk)
    return sink.over


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
    over = False  # (it keeps its part, whatever comes)

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
        if len(chunk) >= self.limit:  # (a long chunk's end is all it keeps)
            self.dropped += len(self._data) + len(chunk) - self.limit
            self._data = bytearray(chunk[len(chunk) - self.limit :])
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


class Spool:
    """A stream's whole output, unchanged: in memory, then in a temporary file.

    ``limit`` (bytes, or None): past it, ``over`` is set and nothing more is
    kept. :meth:`write_to` copies it out once, then frees it.

    >>> spool = Spool(memory=4)
    >>> for chunk in (b"ab", b"\\xff\\xfe", b"cd"): spool.add(chunk)
    >>> import io; copy = io.BytesIO(); spool.write_to(copy); copy.getvalue(), spool.size
    (b'ab\\xff\\xfecd', 6)
    """

    __slots__ = ("_file", "_memory", "_spill", "limit", "over", "size", "stderr")

    def __init__(self, limit: int | None = None, *, memory: int = SPOOL_MEMORY) -> None:
        self.limit = limit
        self.over = False
        self.size = 0
        self.stderr = b""  # the command's stderr as it wrote it, to pass on with its stdout
        self._memory = bytearray()
        self._spill = memory
        self._file: IO[bytes] | None = None

    def add(self, chunk: bytes) -> None:
        if self.over:
            return
        if self.limit is not None and self.size + len(chunk) > self.limit:
            self.over = True
            self.close()
            return
        self.size += len(chunk)
        if self._file is None:
            self._memory += chunk
            if len(self._memory) > self._spill:
                self._to_file()
        else:
            self._file.write(chunk)

    def _to_file(self) -> None:
        try:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        except OSError:  # no file to be had (the open-file limit, a full /tmp): memory then
            self._spill = 1 << 62
            return
        self._file.write(self._memory)
        self._memory = bytearray()

    def head(self, size: int) -> tuple[bytes, int]:
        """Its first ``size`` bytes, and how many bytes follow them."""
        if self._file is None:
            data = bytes(self._memory[:size])
        else:
            self._file.flush()
            data = os.pread(self._file.fileno(), size, 0)
        return data, self.size - len(data)

    def write_to(self, out: IO[bytes]) -> None:
        """Copy the whole output to ``out``, then free it."""
        try:
            if self._file is None:
                out.write(self._memory)
            else:
                self._file.seek(0)
                shutil.copyfileobj(self._file, out, _READ * 16)
        finally:
            self.close()

    def close(self) -> None:
        self._memory = bytearray()
        self.stderr = b""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:  # (what a stored or printed value shows)
        return f"<stdout: {self.size:,} bytes, passed through>"


def decoded(buffer: Buffer, name: str) -> str:
    """What ``buffer`` kept, as text (bytes that are not UTF-8 as ``\\xff``), the cut said."""
    return raw(buffer, name).decode("utf-8", "backslashreplace")


class Tee:
    """A stream's chunks to ``sink`` and to ``end`` (what a failure keeps); over when ``sink`` is.

    >>> head, end = Buffer(2, keep="head"), Buffer(2, keep="tail")
    >>> both = Tee(head, end)
    >>> both.add(b"abc"); head.kept(), end.kept(), both.over
    (b'ab', b'bc', False)
    """

    __slots__ = ("end", "sink")

    def __init__(self, sink: Sink, end: Buffer) -> None:
        self.sink = sink
        self.end = end

    @property
    def over(self) -> bool:
        return self.sink.over

    def add(self, chunk: bytes) -> None:
        self.sink.add(chunk)
        self.end.add(chunk)


def raw(buffer: Buffer, name: str) -> bytes:
    """What ``buffer`` kept, as it was written, with a line saying what was dropped."""
    data = buffer.kept()
    if not buffer.dropped:
        return data
    where = "end" if buffer.keep == "head" else "start"
    cut = f"[{buffer.dropped:,} bytes of {name} dropped at the {where}: --max-output]".encode()
    return data + b"\n" + cut + b"\n" if buffer.keep == "head" else cut + b"\n" + data
