"""Why a command failed (``run --sh``): :class:`CommandFailed`, its subclasses, what it keeps.

::

    a command's output ──▶ captured (up to --max-output each)  ──▶ its --output line, or
                           or passed (its stdout, whole)            stdout and stderr: once,
                                                                    then let go (:meth:`written`)
                       ──▶ stdout, stderr: the last KEPT_CHARS  ──▶ the failure kept by the
                           characters of each, once (the notes      Report and the journal
                           of its traceback text share them)

A run keeps up to 1,000 failures for its Report (``keep_failures``), and each
for as long as the run: what each keeps is bounded here, whatever its command
wrote, and says how much of it was cut. The rest of the output goes where the
command's output goes, and only there.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from ._exceptions import ManyhandsError, Timeout
from ._process_group import Buffer, Spool

__all__ = [
    "KEPT_CHARS",
    "CommandFailed",
    "CommandTimedOut",
    "OutputTooLarge",
    "command_failed",
    "failure_class",
    "signal_name",
]

#: A failure keeps at most this many characters of the end of each stream (and
#: as many bytes: fewer of them when they are not UTF-8, as each shows as a
#: 4-character ``\\xff`` escape).
KEPT_CHARS = 4096
TAIL_LINES = 3  # lines of stderr in a failure's message
TAIL_CHARS = 400
_PUBLIC_MODULE = "manyhands.cli"


class CommandFailed(ManyhandsError):
    """A command exited non-zero or was killed; its item fails with a subclass per cause.

    The error type names the cause: ``manyhands.cli.Exit22`` (exit code 22),
    ``manyhands.cli.KilledBySIGSEGV``, ``manyhands.cli.CommandTimedOut``. The
    message ends with the last lines of stderr; the end of stdout and of
    stderr (their last 4,096 characters) are in the attributes, and in the
    failure's traceback text (what ``manyhands failures --traceback`` shows).
    The whole output goes where the command's output goes: its ``--output``
    line (up to ``--max-output`` bytes of each), or stdout and stderr.

    Attributes:
        exit_code: the exit status, or ``None`` when a signal ended it.
        signal: the number of the signal that ended it, or ``None``.
        stdout, stderr: the end of what it wrote, at most 4,096 characters
            each; a first line says how many bytes came before, when some did.
    """

    exit_code: int | None = None
    signal: int | None = None
    retry_after: float | None = None  # (the engine honours a number here, as for RetryAfter)
    passed: Spool | None = None  # (run --sh without --output: the stdout to pass through)
    # What its --output line (or stderr) shows, up to --max-output each: until written.
    captured: tuple[str, str] | None = None

    def __init__(self, message: str, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr

    def written(self) -> tuple[str, str]:
        """Its stdout and stderr for where the command's output goes; then only their ends stay.

        >>> failed = CommandFailed("exit code 1", "end", "")
        >>> failed.captured = ("all", "")
        >>> failed.written(), failed.written()
        (('all', ''), ('end', ''))
        """
        captured, self.captured = self.captured, None
        return (self.stdout, self.stderr) if captured is None else captured


class CommandTimedOut(CommandFailed, Timeout):
    """A command ran past ``--timeout``: its whole process group was killed."""

    signal = int(signal.SIGKILL)


class OutputTooLarge(CommandFailed):
    """A command's passed-through stdout went past ``--max-output``: its group was killed."""

    signal = int(signal.SIGKILL)
    stdout_dropped = True  # (run --sh says so on stderr: its stdout is missing)


_classes: dict[tuple[str, int], type[CommandFailed]] = {}
_classes_lock = threading.Lock()


def failure_class(returncode: int) -> type[CommandFailed]:
    """The error type of a command's ``returncode`` (negative: the signal that ended it).

    >>> failure_class(22).__qualname__, failure_class(22).exit_code
    ('Exit22', 22)
    >>> failure_class(-9).__qualname__, failure_class(-9) is failure_class(-9)
    ('KilledBySIGKILL', True)
    """
    kind = ("exit", returncode) if returncode >= 0 else ("signal", -returncode)
    with _classes_lock:
        cls = _classes.get(kind)
        if cls is None:
            if returncode >= 0:
                name = f"Exit{returncode}"
                attrs: dict[str, Any] = {"exit_code": returncode}
            else:
                name = f"KilledBy{signal_name(-returncode)}"
                attrs = {"signal": -returncode}
            attrs |= {"__module__": _PUBLIC_MODULE, "__qualname__": name}
            cls = _classes[kind] = type(name, (CommandFailed,), attrs)
    return cls


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11; ``Signal99`` for a number no signal has."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"Signal{number}"


for _cls in (CommandFailed, CommandTimedOut, OutputTooLarge):
    _cls.__module__ = _PUBLIC_MODULE


def command_failed(
    error: type[CommandFailed],
    cause: str,
    ends: tuple[Buffer | None, Buffer],
    captured: tuple[str, str] | None = None,
) -> CommandFailed:
    """The failure ``error`` of a command: ``cause``, and the end of its stdout and stderr.

    ``ends``: the buffers that kept the end of its stdout (None: dropped) and
    of its stderr. ``captured``: what its ``--output`` line shows, if it goes
    to one (see :meth:`CommandFailed.written`).
    """
    stdout_end, stderr_end = ends
    stdout = "" if stdout_end is None else "".join(_end_of(stdout_end, "stdout"))
    cut, stderr_text = _end_of(stderr_end, "stderr")
    stderr = cut + stderr_text
    lines = [line.strip() for line in stderr_text.splitlines() if line.strip()]
    tail = " / ".join(lines[-TAIL_LINES:])
    if len(tail) > TAIL_CHARS:
        tail = "..." + tail[-TAIL_CHARS:]
    exc = error(f"{cause}: {tail}" if tail else f"{cause} (no stderr)", stdout, stderr)
    exc.captured = captured
    if sys.version_info >= (3, 11):  # in the traceback text a journal keeps
        for name, text in (("stdout", stdout), ("stderr", stderr)):
            if text:
                exc.add_note(f"--- {name} ---")
                exc.add_note(text)  # (the attribute's own string: kept once)
    return exc


def _end_of(buffer: Buffer, name: str) -> tuple[str, str]:
    """The last :data:`KEPT_CHARS` characters of a stream, after a line saying what was cut.

    >>> ends = Buffer(KEPT_CHARS, keep="tail")
    >>> ends.add(b"x" * 10_000 + b"\\nthe end\\n")
    >>> cut, text = _end_of(ends, "stderr")
    >>> cut, text
    ('[10,001 earlier bytes of stderr not kept]\\n', 'the end\\n')
    >>> junk = Buffer(KEPT_CHARS, keep="tail")
    >>> junk.add(b"\\xff" * 10_000)
    >>> cut, text = _end_of(junk, "stdout")
    >>> cut, len(text)
    ('[8,976 earlier bytes of stdout not kept]\\n', 4096)
    """
    kept = buffer.kept()
    total = buffer.dropped + len(kept)
    data = kept[-KEPT_CHARS:]
    if len(data) < total:  # (cut: from the start of a line, where there is one)
        data = data[data.find(b"\n", 0, len(data) - 1) + 1 :]
    text = data.decode("utf-8", "backslashreplace")
    while len(text) > KEPT_CHARS:  # bytes that are not UTF-8: 4 characters each
        data = data[len(data) - len(data) * KEPT_CHARS // len(text) :]
        text = data.decode("utf-8", "backslashreplace")
    cut = total - len(data)
    return (f"[{cut:,} earlier bytes of {name} not kept]\n" if cut else ""), text
