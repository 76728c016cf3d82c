"""The ``--output`` of ``manyhands run``: one JSON line per outcome, kept whole across resumes.

What the file holds (docs/guide/command-line.md says the same):

- A run without ``--journal`` writes the file afresh: one line per item of its
  input read, those not run included. One whose journal did not exist yet
  writes it afresh too, but with no line for an item read and not run (the
  journal has no record of it: the resume that runs it writes its line).
- A rerun on an existing journal (a resume) appends. Items the journal skips
  because an earlier run recorded them get no new line: theirs is already in
  the file. So after a run that was interrupted (Ctrl-C, SIGTERM) or stopped
  by a stop rule, and its rerun, the file holds every item exactly once.
  After a run that was killed outright (SIGKILL, a crash, a power cut), items
  that were running or whose rows were not yet committed run again and may
  have two lines; the last one is the final outcome, as for the items
  ``--retry-failed`` runs again.
- A resume into a file that is new or empty (or into stdout, or a pipe)
  writes every item, the skipped ones with the value the journal stored. If
  it is stopped before the end of its input, or a run in between wrote its
  lines elsewhere, the next resume into the file writes the skipped items it
  lacks (``_output_marks``).

Four mechanisms keep those promises:

- The file is truncated or inspected only once the run holds the journal's
  lock (:meth:`OutputFile.start`, at the first outcome): a second command on
  the same journal fails on the lock with the file untouched.
- :meth:`OutputFile.flush` runs before the journal records the outcomes
  delivered so far, so no row is committed before its line is in the file.
- A line cut short by a kill (a buffer flushed mid-line) is an item whose row
  was never committed; a resume removes it (the item runs again).
- A file that fails (a full disk) is cut back to its lines when last flushed
  (:meth:`OutputFile.drop_unrecorded`): those of the items recorded.

What each line holds (a function's outcome, a command's) is ``_output_lines``'.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, NoReturn

from ._inputs import BadLine, UsageProblem
from ._outcome import SKIPPED_DONE, SKIPPED_FAILED, Outcome
from ._output_lines import json_line
from ._output_marks import Held, Marks

__all__ = ["OutputFailed", "OutputFile"]

_RECORDED_EARLIER = (SKIPPED_DONE, SKIPPED_FAILED)
_TAIL_CHUNK = 1 << 16
FLUSH_WITHIN = 0.5  # seconds a line may wait in the buffer (see OutputFile._flush_soon)


class OutputFailed(Exception):
    """``--output`` could not be written (a full disk, a lost mount...): the run stops.

    A closed pipe is not one: it raises :class:`BrokenPipeError`, and the
    command stops quietly as ``cat`` does.
    """

    run_status = "output error"  # how the journal records the run's end

    def __init__(self, path: str, error: OSError, then: str = "") -> None:
        where = "stdout" if path == "-" else f"--output {path!r}"
        what = f"cannot write {where}: {error.strerror or error}"
        super().__init__(f"{what}; {then}" if then else what)
        self.path = path
        self.error = error


class OutputFile:
    """``--output``: ``path`` or ``-`` (stdout); see the module docstring for what it holds."""

    def __init__(
        self,
        path: str,
        *,
        resume: bool,
        line: Callable[[Outcome[Any, Any]], bytes] | None = None,
        flush_within: float = FLUSH_WITHIN,
        marks: Marks | None = None,
    ) -> None:
        self.path = path
        self._marks = marks  # (with a journal: which recorded items the file holds)
        self._held: set[Held] | None = None  # marks of skipped items it has lines for
        self._line = line or json_line  # what an outcome's line is
        self._resume = resume
        self._started = False
        self._failed: BaseException | None = None  # (set by the flushing thread too)
        self._raised = False  # the failure was raised to the caller
        self._closed = False
        self._flush_within = flush_within
        self._pending = False  # lines written that the flushing thread has not flushed
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._flusher: threading.Thread | None = None
        self.write_skipped = True  # lines for items an earlier run recorded
        self._file: IO[bytes]  # (a file that does not exist yet: set by start())
        self._regular = True
        # The file's size when all its lines were last flushed (a regular file):
        # the lines after it are of items not recorded yet (see drop_unrecorded).
        self._flushed_at: int | None = None
        if path == "-":
            self._file = sys.stdout.buffer
            self._regular = False
            return
        try:
            # Appending changes nothing yet: what the file keeps is decided in start().
            self._file = open(os.open(path, os.O_WRONLY | os.O_APPEND), "ab")  # noqa: SIM115
        except FileNotFoundError:
            _check_creatable(path)  # (created by start(): a refused run creates nothing)
            return
        except OSError as exc:
            raise UsageProblem(f"cannot write --output {path!r}: {exc.strerror or exc}") from exc
        self._regular = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)

    def start(self) -> None:
        """Decide what the file keeps; call once the run holds the journal's lock."""
        if self._started:
            return
        self._started = True
        if not self._regular:  # stdout, a pipe, a terminal: a stream gets every line
            return
        try:
            if not hasattr(self, "_file"):
                self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
                size = 0
            elif not self._resume:
                self._file.truncate(0)
                self._flushed_at = 0
                return
            else:
                size = _drop_cut_line(self.path, self._file)
            self._flushed_at = size
            if self._resume and self._marks is not None:
                self._held = self._marks.started(size)
        except OSError as exc:
            raise OutputFailed(self.path, exc) from exc
        self.write_skipped = size == 0 if self._marks is None else self._held is not None

    def write(self, outcome: Outcome[Any, Any]) -> None:
        """Write the line of ``outcome`` (unless the file already has it).

        Raises:
            OutputFailed: the file cannot take it (a full disk...).
        """
        if not self._started:
            self.start()
        if outcome.skipped in _RECORDED_EARLIER and (
            not self.write_skipped or (self._held and self._has_line(outcome))
        ):
            return
        if self._failed is not None:  # (the flushing thread failed)
            self._raise_failed()
        try:
            self._file.write(self._line(outcome))
        except BaseException as exc:
            self._failed = exc
            self._raise_failed()
        if not self._pending:
            self._flush_soon()

    def _has_line(self, outcome: Outcome[Any, Any]) -> bool:
        """Whether the file held a line for this skipped item when the run began."""
        assert self._held is not None and self._marks is not None
        item = outcome.item
        if type(item) is BadLine:  # (its line holds the row's text: see keys_held)
            return ("row", item.text) in self._held
        try:
            return self._marks.key(item) in self._held
        except Exception:  # (the journal made its key: this never fails in practice)
            return False

    def flush(self) -> None:
        """Push the lines written so far to the OS; the journal may then record their items.

        Once a write or flush failed, this raises again: the rows of lines
        that never reached the file must not be recorded.

        Raises:
            OutputFailed: the lines did not all reach the file.
        """
        if self._failed is not None:
            self._raise_failed()
        if not self._started:  # (nothing written: a file not created yet stays so)
            return
        try:
            self._file.flush()
        except BaseException as exc:
            self._failed = exc
            self._raise_failed()
        if self._flushed_at is not None:  # (its size, not tell(): appended, after a truncate)
            try:
                self._flushed_at = os.fstat(self._file.fileno()).st_size
            except (OSError, ValueError):
                self._flushed_at = None  # (never cut back, then)

    def drop_unrecorded(self) -> None:
        """Close, and cut a file that failed back to its lines when last flushed; never raises.

        With a journal, a line's item is recorded only after :meth:`flush`
        pushed the line to the file, so the lines written since (some may
        have reached the file before the disk filled, the last one cut short)
        are of items that run again on a resume: it writes their lines once.
        """
        at = self._flushed_at
        if at is None or self._failed is None or not self._file_opened():
            self._quiet_close()
            return
        try:
            kept = os.dup(self._file.fileno())  # (closing flushes what it holds, if it can)
        except (OSError, ValueError):
            self._quiet_close()
            return
        try:
            self._quiet_close()
            os.ftruncate(kept, at)
        except OSError:
            pass  # (a resume drops a line cut short; the others get a second line)
        finally:
            os.close(kept)

    def _quiet_close(self) -> None:
        with contextlib.suppress(OutputFailed, OSError):
            self.close()

    def close(self) -> None:
        """Flush and close (stdout is flushed only); idempotent.

        Raises:
            OutputFailed: the last lines did not reach the file (once: a
                second close, or a close after a failed write, is quiet).
        """
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join()
        try:
            if not self._raised:
                self.flush()
        finally:
            if self._file_opened() and self._file is not sys.stdout.buffer:
                try:
                    self._file.close()  # (closes the file even when its flush fails)
                except OSError as exc:  # quiet if it is the failed flush again
                    if self._failed is None:
                        self._failed = exc
                        self._raise_failed()

    def _file_opened(self) -> bool:
        return hasattr(self, "_file")

    def _raise_failed(self) -> NoReturn:
        """Raise what made lines go missing: an OSError as OutputFailed.

        A closed pipe stays a BrokenPipeError (the reader left: stop quietly),
        and Ctrl-C stays KeyboardInterrupt.
        """
        failed = self._failed
        assert failed is not None
        self._raised = True
        if isinstance(failed, OSError) and not isinstance(failed, BrokenPipeError):
            raise OutputFailed(self.path, failed) from failed
        raise failed

    def _flush_soon(self) -> None:
        """Have the line just written flushed within ``flush_within`` seconds, from a thread.

        Without it a slow run's lines would sit in the buffer until it fills
        or the run ends (a journal flushes them before recording their items,
        but nothing else does). Lines that come meanwhile share that flush, so
        a fast run flushes twice a second, not once a line.
        """
        self._pending = True
        if self._flusher is None:  # (started at the first line: after any worker forked)
            self._flusher = threading.Thread(
                target=self._flush_lines, name="manyhands-output-flush", daemon=True
            )
            self._flusher.start()
        self._wake.set()

    def _flush_lines(self) -> None:
        """The flushing thread: once woken by a line, wait ``flush_within``, then flush.

        close() sets ``_closing`` then ``_wake``; the loop checks ``_closing``
        after each flush, since clearing ``_wake`` may have dropped that wake-up.
        """
        while not self._closing.is_set():
            self._wake.wait()
            if self._closing.wait(self._flush_within):
                return  # (close() flushes what is left)
            self._wake.clear()
            self._pending = False  # (before flushing: a line written now wakes it again)
            try:
                self._file.flush()
            except BaseException as exc:  # raised by the next write, flush or close
                self._failed = exc
                return


def _check_creatable(path: str) -> None:
    """Refuse an --output that could not be created, without creating it."""
    folder = os.path.dirname(path) or "."
    problem = (
        errno.ENOENT
        if not os.path.exists(folder)
        else errno.ENOTDIR
        if not os.path.isdir(folder)
        else errno.EACCES
        if not os.access(folder, os.W_OK | os.X_OK)
        else None
    )
    if problem is not None:
        raise UsageProblem(f"cannot write --output {path!r}: {os.strerror(problem)}")


def _drop_cut_line(path: str, file: IO[bytes]) -> int:
    """Remove a last line without its newline (written by a killed run); return the new size.

    Its item's row was never committed (rows are committed only after their
    lines were flushed whole), so the item runs again.
    """
    size = os.fstat(file.fileno()).st_size
    if size == 0:
        return 0
    with open(path, "rb") as reader:
        end = size
        while end > 0:
            start = max(end - _TAIL_CHUNK, 0)
            reader.seek(start)
            chunk = reader.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return size  # the common case: whole lines
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
    file.truncate(end)
    return end
