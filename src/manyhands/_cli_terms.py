"""What every command of ``manyhands`` shares: its exit codes, and how it speaks.

A library message names its options as keywords (``journal='a.db'``); the
command says them as its flags (``--journal a.db``), and prints what a journal
or an error message brought escaped, so that no stored text drives the terminal.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from ._escape import escape_controls

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTPUT_CLOSED",
    "EXIT_OUTPUT_FAILED",
    "EXIT_USAGE",
    "in_cli_terms",
    "quietly",
    "say",
    "silence_stdout",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE, as `cat` ends when `| head` has read enough
EXIT_OUTPUT_FAILED = 74  # EX_IOERR of sysexits.h: --output or the journal could not be written

#: What the library's messages call an option, and its flag here.
_FLAGS = {
    "journal": "--journal",
    "retry_failed": "--retry-failed",
    "changed_items": "--changed-items",
    "stop_after_failures": "--stop-after-failures",
    "stop_after_failure_rate": "--stop-after-failure-rate",
    "timeout": "--timeout",
    "workers": "-j",
    "backend": "--backend",
    "key": "--key",
    "store_results": "--store-results",
    "rate": "--rate",
    "grace": "--grace",
    "batch_size": "--batch-size",
}
_OPTION = re.compile(r"\b(" + "|".join(_FLAGS) + r")=('[^']*'|[^\s:;,)']+)?")


def in_cli_terms(text: str) -> str:
    """A library message as the command line says it: ``journal='a.db'`` is ``--journal a.db``.

    >>> in_cli_terms("use another journal= to start afresh, or retry_failed=True")
    'use another --journal to start afresh, or --retry-failed'
    >>> in_cli_terms("Pass changed_items='rerun'; ran past timeout=0.3s; settled on workers=8")
    'Pass --changed-items rerun; ran past --timeout 0.3s; settled on -j 8'
    >>> in_cli_terms("rate=nan must be more than 0, and rate=-3.0 too")
    '--rate nan must be more than 0, and --rate -3.0 too'
    """

    def flag(found: re.Match[str]) -> str:
        name, value = found.group(1), found.group(2)
        if value is None or value == "True":
            return _FLAGS[name]
        return f"{_FLAGS[name]} {value.strip(chr(39))}"

    return _OPTION.sub(flag, text)


def say(text: object, file: Any) -> None:
    """Print text that may hold what a journal or an error message brought: escaped."""
    print(escape_controls(in_cli_terms(str(text)), keep_newlines=True), file=file)


class quietly:
    """Suppress OSError: the terminal may be gone (SIGHUP) while a stopped run reports."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail (and say so)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured): nothing to flush
        pass
