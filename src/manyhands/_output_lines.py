"""The lines ``manyhands run`` writes per outcome: the ``--output`` line, or a command's streams.

- :func:`json_line`: ``{"item", "ok", "value" | "error", "skipped"}``, one JSON
  line per outcome of a function.
- :func:`command_json_line`: a command's outcome (``run --sh``), its exit
  code, stdout and stderr in the line.
- :func:`command_streams`: without ``--output``, a command's stdout for stdout,
  its stderr to stderr, each command's whole once it ended.

The file they are written to, kept whole across resumes, is ``_output``'s.
"""

from __future__ import annotations

import json
import re
import sys
from typing import IO, Any

from ._escape import escape_json
from ._inputs import BadLine
from ._outcome import Failure, Outcome, safe_repr
from ._shell_failures import CommandFailed

__all__ = ["command_json_line", "command_streams", "json_line"]


def json_line(outcome: Outcome[Any, Any]) -> bytes:
    """The output line of ``outcome``, UTF-8 with its newline.

    A skipped item has ``"value"`` only when the journal holds one (results
    are stored by default with ``--output``): never a ``null`` that was not
    the value. Values JSON cannot hold are written as their ``repr``.

    >>> json_line(Outcome("a", 2, None, 1))
    b'{"item": "a", "ok": true, "value": 2}\\n'
    >>> json_line(Outcome("a", None, None, 0, "duplicate key"))
    b'{"item": "a", "ok": true, "skipped": "duplicate key"}\\n'
    """
    item = outcome.item.text if type(outcome.item) is BadLine else outcome.item
    record: dict[str, Any] = {"item": item, "ok": outcome.ok}
    if outcome.error is None:
        if not outcome.skipped or outcome.value is not None:
            record["value"] = outcome.value
    else:
        record["error"] = _error(outcome.error)
    if outcome.skipped:
        record["skipped"] = outcome.skipped
    try:
        text = json.dumps(record, ensure_ascii=False, default=safe_repr)
    except (TypeError, ValueError, RecursionError):  # keys JSON cannot hold, a cycle...
        for name in ("item", "value"):
            if name in record:
                record[name] = safe_repr(record[name], limit=10_000)
        text = json.dumps(record, ensure_ascii=False)
    return escape_json(text).encode() + b"\n"


def _error(error: Failure) -> dict[str, Any]:
    return {"type": error.error_type, "message": error.message, "attempts": error.attempts}


_EXIT_TYPE = re.compile(r"manyhands\.cli\.Exit(\d+)")


def command_json_line(outcome: Outcome[Any, Any]) -> bytes:
    """The ``--output`` line of a command's outcome (``run --sh``): exit code, stdout, stderr.

    >>> command_json_line(Outcome("a", {"exit_code": 0, "stdout": "A\\n", "stderr": ""}, None, 1))
    b'{"item": "a", "ok": true, "exit_code": 0, "stdout": "A\\\\n", "stderr": ""}\\n'
    """
    item = outcome.item.text if type(outcome.item) is BadLine else outcome.item
    record: dict[str, Any] = {"item": item, "ok": outcome.ok}
    error = outcome.error
    if error is None:
        if isinstance(outcome.value, dict):
            record |= outcome.value
    else:
        exc = error.exception
        found = _EXIT_TYPE.fullmatch(error.error_type)  # (read back from a journal)
        record["exit_code"] = getattr(exc, "exit_code", int(found[1]) if found else None)
        signal = getattr(exc, "signal", None)
        if signal is not None:
            record["signal"] = signal
        if isinstance(exc, CommandFailed):  # (the whole captured output, let go once written)
            record["stdout"], record["stderr"] = exc.written()
        record["error"] = _error(error)
    if outcome.skipped:
        record["skipped"] = outcome.skipped
    text = json.dumps(record, ensure_ascii=False, default=safe_repr)
    return escape_json(text).encode() + b"\n"


def command_streams(outcome: Outcome[Any, Any]) -> bytes:
    """A command's stdout, for the command's stdout; its stderr goes to stderr at once.

    Each command's output is written whole once it ended (never interleaved
    with another's), as GNU parallel's default ``--group`` does. A stdout
    passed through (``run --sh`` without ``--output``) is the command's bytes
    unchanged: it is copied to stdout here, and nothing is added to it.
    """
    error = outcome.error
    if error is not None:
        exc = error.exception
        stdout, stderr = None, ""
        if isinstance(exc, CommandFailed):  # (its stderr, passed on once: then let go)
            stdout, stderr = exc.passed, exc.written()[1]
    elif isinstance(outcome.value, dict):
        stdout, stderr = outcome.value.get("stdout"), outcome.value.get("stderr", "")
    else:
        return b""
    if error is not None and getattr(error.exception, "stdout_dropped", False):
        stderr += f"manyhands: item {safe_repr(outcome.item, 200)} failed: {error.message}\n"
    if stdout is not None and hasattr(stdout, "write_to"):  # (both streams as written)
        _write_bytes(sys.stderr, stdout.stderr)
    elif stderr:
        sys.stderr.write(stderr)
        sys.stderr.flush()
    if stdout is None:
        return b""
    if hasattr(stdout, "write_to"):  # (the whole stdout, kept in memory or a file)
        stdout.write_to(sys.stdout.buffer)
        if isinstance(outcome.value, dict):  # (passed on, not kept: a journal stores the rest)
            outcome.value["stdout"] = None
        return b""
    if outcome.skipped or not stdout:  # (its stdout was passed on by the run that ran it)
        return b""
    return str(stdout).encode("utf-8", "surrogateescape")


def _write_bytes(stream: IO[str], data: bytes) -> None:
    """``data`` to a text stream's bytes (a stream without them gets it as text)."""
    if not data:
        return
    stream.flush()
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(data.decode("utf-8", "backslashreplace"))
    else:
        buffer.write(data)
        buffer.flush()
