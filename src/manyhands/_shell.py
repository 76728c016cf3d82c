"""Items as commands: ``manyhands run --sh TEMPLATE``, one process per item.

::

    item ──▶ Template.argv(item) ──▶ CommandRunner (in an engine thread)
             split once with shlex,     Popen in a session of its own (its
             the item substituted       process group), stdin /dev/null,
             into arguments; or         stdout/stderr read into bounded buffers
             /bin/sh -c with the        until the command and its pipes end;
             item shlex.quote-d         the group killed on --timeout, on the
             (_shell_template)          command's exit (leftovers), on close()
                                    ──▶ {"exit_code", "stdout", "stderr"}
                                        or CommandFailed (Exit75, KilledBySIGSEGV,
                                        CommandTimedOut: see _shell_failures), which
                                        keeps the ends of stdout and stderr

Why a session per command: the terminal's Ctrl-C goes to its foreground
process group, so commands in that group would die at the first Ctrl-C
instead of finishing in the grace period; and a group is what can be killed
whole, grandchildren included. The run's engine never sees a process: the
runner is a plain function on the threads backend, so retries, the rate
limit, the slowdown, the journal and the Report work as for Python functions.
A command short of file descriptors waits for another to end (``-j`` is
capped beforehand to what the open-file limit fits: ``_open_file_limit``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._inputs import UsageProblem
from ._open_file_limit import open_file_limit
from ._orphans import Watchdog
from ._process_group import DRAIN_SECONDS, Buffer, Spool, Tee, communicate, decoded, kill_group, raw
from ._shell_failures import (
    KEPT_CHARS,
    CommandFailed,
    CommandTimedOut,
    OutputTooLarge,
    command_failed,
    failure_class,
    signal_name,
)
from ._shell_template import Template

__all__ = [
    "DEFAULT_CAPTURE",
    "CommandFailed",
    "CommandRunner",
    "CommandTimedOut",
    "OutputTooLarge",
    "exit_codes",
    "exits_with",
    "failure_class",
]

#: Bytes of each stream kept per command for its ``--output`` line: stdout's first,
#: stderr's last (a failure keeps only their ends, see ``_shell_failures``).
DEFAULT_CAPTURE = 256 * 1024


class CommandRunner:
    """The function the engine calls per item: runs its command, returns what it wrote.

    Returns ``{"exit_code": 0, "stdout": str, "stderr": str}`` (bytes that are
    not UTF-8 are shown as ``\\xff`` escapes); raises :class:`CommandFailed`.
    With ``passthrough``, ``"stdout"`` is a :class:`Spool` instead: the
    command's whole stdout, byte for byte, for the command's own stdout (a
    failure carries it as ``passed``); past ``stdout_limit`` bytes the
    command is killed and fails with :class:`OutputTooLarge`.
    :meth:`close` kills the process groups of the commands still running
    (the run was stopped), and no command starts after it.

    A command that cannot start for want of file descriptors (the open-file
    limit, ``ulimit -n``) waits for another command of the run to end and
    starts then: it is not a failure of its item.
    """

    def __init__(
        self,
        template: Template,
        *,
        timeout: float | None = None,
        capture: int = DEFAULT_CAPTURE,
        throttle_exit: int | None = None,
        passthrough: bool = False,
        stdout_limit: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.template = template
        self.timeout = timeout
        self.capture = capture
        self.throttle_exit = throttle_exit
        self.passthrough = passthrough
        self.stdout_limit = stdout_limit
        self._clock = clock
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)  # a command ended: its fds are free
        self._scarce = threading.Lock()  # held by the command retrying a start (fds short)
        self._closed = False
        self._watchdog = Watchdog()  # (kills the commands if manyhands is killed)
        # What the journal records as the run's function (a changed command is warned about).
        self.__qualname__ = template.text
        self.__module__ = "manyhands.sh" if template.shell else "manyhands.command"

    def __call__(self, item: Any) -> dict[str, Any]:
        try:
            return self._run(item)
        except (CommandFailed, RuntimeError) as exc:
            if self._closed:  # (killed by close(), or not started: it runs next time)
                exc.stopped_by_run = True  # type: ignore[union-attr]
            raise

    def _run(self, item: Any) -> dict[str, Any]:
        argv = self.template.argv(item)
        proc = self._start(argv)
        deadline = None if self.timeout is None else self._clock() + self.timeout
        out: Buffer | Spool = (
            Spool(self.stdout_limit) if self.passthrough else Buffer(self.capture, keep="head")
        )
        err = Buffer(self.capture, keep="tail")
        out_end = Buffer(min(self.capture, KEPT_CHARS), keep="tail")  # (what a failure keeps)
        try:
            timed_out = communicate(proc, deadline, Tee(out, out_end), err, self._clock)
        except BaseException:
            if isinstance(out, Spool):
                out.close()
            raise
        finally:
            self._forget(proc)
        code = proc.returncode
        if isinstance(out, Spool):
            if out.over:
                cause = (
                    f"its stdout went past --max-output={out.limit:,} bytes; its process "
                    "group was killed and its stdout dropped"
                )
                captured = ("", decoded(err, "stderr"))  # (its stderr, for stderr)
                raise command_failed(OutputTooLarge, cause, (None, err), captured)
            out.stderr = raw(err, "stderr")  # (passed on as written)
            if code == 0 and not timed_out:
                return {"exit_code": 0, "stdout": out, "stderr": decoded(err, "stderr")}
        elif code == 0 and not timed_out:
            return {
                "exit_code": 0,
                "stdout": decoded(out, "stdout"),
                "stderr": decoded(err, "stderr"),
            }
        raise self._failed(code, timed_out, out, (out_end, err))

    def _failed(
        self, code: int, timed_out: bool, out: Buffer | Spool, ends: tuple[Buffer, Buffer]
    ) -> CommandFailed:
        """The error of a command that ran past its timeout or exited non-zero."""
        if timed_out:
            error: type[CommandFailed] = CommandTimedOut
            cause = f"ran past --timeout={self.timeout:g}s; its process group was killed"
        else:
            error = failure_class(code)
            cause = f"exit code {code}" if code > 0 else f"killed by {signal_name(-code)}"
        if isinstance(out, Spool):  # (passed on whole: its stderr with it)
            failed = command_failed(error, cause, ends)
            failed.passed = out
        else:  # (the whole captured output is for its --output line)
            failed = command_failed(
                error, cause, ends, (decoded(out, "stdout"), decoded(ends[1], "stderr"))
            )
        if not timed_out and code == self.throttle_exit:
            failed.retry_after = retry_after_in(failed.stderr)
        return failed

    def _start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        try:
            proc = self._popen(argv)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            # Short of file descriptors: the commands that wait try again one at a
            # time, or each would take a few and all would fail together, again.
            with self._scarce:
                proc = self._start_when_free(argv, exc)
        with self._lock:
            self._running[proc.pid] = proc
            closed = self._closed
        self._watchdog.watch(proc.pid)
        if closed:  # close() ran while it started: it missed this one
            kill_group(proc.pid)
        return proc

    def _popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start a command, its stdout and stderr on pipes of its own.

        The pipes are made here, not by subprocess (``PIPE``): on a start that
        fails for lack of file descriptors, Python 3.11.2's subprocess leaves
        the pipes it made open, and short of descriptors each failure then
        made it worse, until nothing could start at all.
        """
        if self._closed:
            raise RuntimeError("the run is stopping: no new command starts")
        stdin = _devnull()  # (one for every command: DEVNULL opens one per start)
        made: list[int] = []
        try:
            made += os.pipe()
            made += os.pipe()
            out_read, out_write, err_read, err_write = made
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=out_write,
                stderr=err_write,
                start_new_session=True,  # its own process group, out of the terminal's reach
            )
        except BaseException:
            for fd in made:
                os.close(fd)
            raise
        os.close(out_write)  # (the command's now: at its end, reading them ends)
        os.close(err_write)
        proc.stdout = open(out_read, "rb")  # noqa: SIM115 - closed by communicate()
        proc.stderr = open(err_read, "rb")  # noqa: SIM115
        return proc

    def _start_when_free(self, argv: list[str], exc: OSError) -> subprocess.Popen[bytes]:
        """Start once another command ended and freed file descriptors (``exc``: EMFILE)."""
        alone = 0.0  # seconds waited with no other command running
        while True:
            with self._ended:
                others = bool(self._running)
                if not others and alone >= FD_WAIT_SECONDS:
                    raise OSError(exc.errno, _no_fds(exc)) from exc
                self._ended.wait(FD_RETRY_SECONDS)  # (woken when a command ends)
            alone = 0.0 if others else alone + FD_RETRY_SECONDS
            try:
                return self._popen(argv)
            except OSError as again:
                if again.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                exc = again

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.pop(proc.pid, None)
            if proc.returncode is None:  # interrupted while it ran (close())
                kill_group(proc.pid)
            self._ended.notify()
        self._watchdog.forget(proc.pid)  # (its group is dead: communicate() killed it)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=DRAIN_SECONDS)  # reaped: no zombie left

    def close(self) -> None:
        """Kill the process group of every command still running; start no other."""
        with self._lock:
            self._closed = True
            running = list(self._running)
            self._ended.notify_all()
        for pid in running:
            kill_group(pid)
        self._watchdog.close()


# -- the open-file limit ---------------------------------------------------------

FD_RETRY_SECONDS = 0.05  # a command short of fds tries again this often (or when one ends)
_DEVNULL: list[int] = []
_DEVNULL_LOCK = threading.Lock()


def _devnull() -> int:
    """A descriptor of os.devnull for reading, shared by every command of the process."""
    with _DEVNULL_LOCK:
        if not _DEVNULL:
            _DEVNULL.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        return _DEVNULL[0]


FD_WAIT_SECONDS = 5.0  # ...and fails once it waited this long with no other command running


def _no_fds(exc: OSError) -> str:
    limit = open_file_limit()
    said = f"the limit is {limit}" if limit is not None else "at the system's limit"
    return (
        f"{exc.strerror}: a command cannot start ({said}, and no other command of the run "
        f"is running to free some); raise it with ulimit -n"
    )


_RETRY_AFTER = re.compile(r"retry-after:\s*([0-9]+(?:\.[0-9]+)?)\s*$", re.IGNORECASE)


def retry_after_in(stderr: str) -> float | None:
    """The seconds a throttled command asked for: a last line of stderr ``Retry-After: N``.

    >>> retry_after_in("HTTP 429\\nRetry-After: 30\\n"), retry_after_in("HTTP 429\\n")
    (30.0, None)
    """
    lines = stderr.rstrip().rsplit("\n", 1)
    found = _RETRY_AFTER.search(lines[-1])
    return float(found[1]) if found else None


def exit_codes(text: str, flag: str) -> frozenset[int]:
    """``75,111`` as a set of exit codes; a bad one is a usage error.

    >>> sorted(exit_codes("75, 111", "--retry-on-exit"))
    [75, 111]
    """
    try:
        codes = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        codes = frozenset({-1})
    if not codes or not all(1 <= code <= 255 for code in codes):
        raise UsageProblem(f"{flag} {text!r}: give exit codes from 1 to 255, e.g. 75,111")
    return codes


def exits_with(codes: Iterable[int]) -> Callable[[BaseException], bool]:
    """A predicate for ``Retry(on=...)``/``throttle_on``: a command exited with one of ``codes``."""
    wanted = frozenset(codes)

    def matches(error: BaseException) -> bool:
        return isinstance(error, CommandFailed) and error.exit_code in wanted

    matches.__qualname__ = f"exits_with({sorted(wanted)})"
    return matches
