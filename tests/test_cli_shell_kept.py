"""``manyhands run --sh``: what a failed command's failure keeps, whatever the command wrote.

A run keeps up to 1,000 failures for its Report: each keeps the end of its
command's stdout and stderr (4,096 characters of each at most), saying what was
cut, while the whole output still goes to ``--output`` or to stdout and stderr.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from manyhands._outcome import Failure, Outcome
from manyhands._output_lines import command_json_line, command_streams
from manyhands._shell import CommandFailed, CommandRunner
from manyhands._shell_template import Template

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX commands")

KEPT = 4096  # characters of each stream a failure keeps
MB = 1_000_000
# 1 MB of text on stdout and on stderr (numbered lines: the end is known), then exit 3.
LOUD = (
    "seq 1 200000 | head -c 1000000; echo; echo 'last of stdout'; "
    "seq 1 200000 | head -c 1000000 >&2; echo >&2; echo 'last of stderr' >&2; exit 3"
)
# 1 MB of bytes that are not UTF-8 on each stream (4 characters each as \xff escapes).
JUNK = "head -c 1000000 /dev/zero | tr '\\0' '\\377' | tee /dev/stderr; exit 3"


@contextlib.contextmanager
def quiet_streams() -> Iterator[None]:
    """stdout and stderr to /dev/null (what ``command_streams`` passes on is not kept here)."""
    saved = sys.stdout, sys.stderr
    with open(os.devnull, "w") as out, open(os.devnull, "w") as err:
        sys.stdout, sys.stderr = out, err
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def fail(runner: CommandRunner, item: str) -> Failure:
    with pytest.raises(CommandFailed) as raised:
        runner(item)
    return Failure.from_exception(item, raised.value)


def fail_once(command: str, passthrough: bool) -> Failure:
    """The Failure of ``command`` (``--shell``), run once by a runner of its own."""
    runner = CommandRunner(Template(command, shell=True), passthrough=passthrough)
    try:
        return fail(runner, "x")
    finally:
        runner.close()


@pytest.mark.parametrize("passthrough", [True, False], ids=["stdout", "output-file"])
def test_a_failure_keeps_the_end_of_each_stream_and_says_what_was_cut(passthrough: bool) -> None:
    failure = fail_once(LOUD, passthrough)
    with quiet_streams():
        line = (command_streams if passthrough else command_json_line)(
            Outcome("x", None, failure, 1)
        )
    failure.release_frames()  # (as the Report keeps it)
    failed = failure.exception
    assert isinstance(failed, CommandFailed) and failed.exit_code == 3
    for name in ("stdout", "stderr"):
        kept = getattr(failed, name)
        cut, _, end = kept.partition("\n")
        assert cut.startswith("[") and f"earlier bytes of {name} not kept]" in cut
        assert end.endswith(f"last of {name}\n") and len(end) <= KEPT
    assert failure.message.endswith("last of stderr")
    # Its traceback text (what the journal and `manyhands failures --traceback` keep) too.
    assert "last of stdout" in failure.traceback and len(failure.traceback) < 3 * KEPT
    if not passthrough:  # the --output line still has what --max-output keeps: 256 KiB each
        assert len(line) > 2 * 256 * 1024


def test_bytes_that_are_not_utf_8_are_kept_to_the_same_bound() -> None:
    failure = fail_once(JUNK, True)
    with quiet_streams():
        command_streams(Outcome("x", None, failure, 1))
    failure.release_frames()
    failed = failure.exception
    assert isinstance(failed, CommandFailed)
    for name in ("stdout", "stderr"):
        cut, _, end = getattr(failed, name).partition("\n")
        assert f"earlier bytes of {name} not kept" in cut
        assert end.endswith("\\xff") and len(end) <= KEPT
    assert len(failure.traceback) < 3 * KEPT


def kept_memory(count: int, line: Callable[[Outcome[Any, Any]], bytes], passthrough: bool) -> int:
    """Bytes held by ``count`` failures as the Report keeps them, each of a command that
    wrote 1 MB to stdout and to stderr, once their output went where it goes (``line``)."""
    runner = CommandRunner(Template(JUNK, shell=True), passthrough=passthrough)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = []
        for number in range(count):
            failure = fail(runner, str(number))
            with quiet_streams():
                line(Outcome(number, None, failure, 1))
            failure.release_frames()
            kept.append(failure)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        runner.close()
    assert len(kept) == count
    return held


@pytest.mark.parametrize(
    ("line", "passthrough"),
    [(command_streams, True), (command_json_line, False)],
    ids=["stdout", "output-file"],
)
def test_kept_failures_hold_a_bounded_size_whatever_their_commands_wrote(
    line: Callable[[Outcome[Any, Any]], bytes], passthrough: bool
) -> None:
    count = 8
    held = kept_memory(count, line, passthrough)
    # Two streams of at most 4,096 characters (4 bytes each at worst), in the
    # exception and in the traceback text: not the megabytes the commands wrote.
    assert held / count < 2 * 2 * 4 * KEPT + 20_000, f"{held / count:,.0f} bytes a failure"
