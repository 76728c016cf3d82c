"""``manyhands run``: every item of INPUT through a function, or through a ``--sh`` command.

INPUT is read lazily (:mod:`._inputs`: lines, JSONL or CSV; an unreadable line
fails as its own item, in the function's wrapper). The items go through one run
of the library (``_api.open_run``), and each outcome is written to ``--output``
as it is delivered, under :class:`~._signals.StopSignals`, so that a stop never
lands between an outcome and its line. Then the summary, and the exit status:
1 if any item failed or was not run, 130, 143 or 129 when a signal stopped it.

The flags become the library's options in :mod:`._cli_options`; what
``--output`` and the journal need of each other is in :mod:`._cli_output`.
With ``--sh`` the function is a :class:`~._shell.CommandRunner`, on threads.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import _api, _stream
from ._cli_keys import CommandKey
from ._cli_options import check_paths, command_retries, key_field, run_options
from ._cli_output import (
    before_journal_error,
    flushing,
    has_records,
    late_lines,
    output_failed,
    output_marks,
)
from ._cli_terms import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, quietly, say
from ._exceptions import InputError, JournalError
from ._inputs import BadLine, UsageProblem, input_items, load_target, open_input
from ._open_file_limit import commands_at_once
from ._outcome import Failure, Outcome
from ._output import OutputFailed, OutputFile
from ._output_lines import command_json_line, command_streams, json_line
from ._run import Run
from ._shell import DEFAULT_CAPTURE, CommandRunner
from ._shell_template import Template
from ._signals import StopSignals, Terminated, hold_stop_signals
from ._stats import not_run_cause
from ._stream import Outcomes

__all__ = ["run_command"]

_COMMAND_FLAGS = ("sh", "shell", "retry_on_exit", "throttle_exit", "max_output")


def run_command(
    target: str | None,
    input_path: str,
    form: str,
    journal: str | None,
    output: str | None,
    key: str | None,
    flags: dict[str, Any],
) -> int:
    """Run the ``run`` command of these arguments and flags; its exit code."""
    command = {name: flags.pop(name) for name in _COMMAND_FLAGS}
    if command["sh"] is not None:
        return _run_commands((target, input_path), form, journal, output, key, flags, command)
    given = [f"--{name.replace('_', '-')}" for name, value in command.items() if value]
    if given:
        verb = "needs" if len(given) == 1 else "need"
        raise UsageProblem(f"{' and '.join(given)} {verb} --sh COMMAND")
    if target is None:
        ctx = click.get_current_context()
        param = next(p for p in ctx.command.params if p.name == "target")
        raise click.MissingParameter(ctx=ctx, param=param)
    options = run_options(journal, output, key, flags)
    field = key_field(key, form)
    fn = load_target(target)
    check_paths(input_path, output, journal)
    stream = open_input(input_path)
    try:
        items = input_items(stream, form, field, _keyed(options))
        return _run_items(fn, items, options, output)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _run_items(
    fn: Callable[[Any], Any],
    items: Any,
    options: dict[str, Any],
    output: str | None,
    line: Callable[[Outcome[Any, Any]], bytes] = json_line,
) -> int:
    # Without --output nobody reads the values: what finishes is recorded as in run(),
    # calls that finish in the grace period included. With --output, a row is recorded
    # once its outcome was delivered here and its line flushed (before_record).
    report_only = not output
    if report_only:
        options = {name: value for name, value in options.items() if name != "ordered"}
    caller = "run" if report_only else "map"
    try:
        run = _api.open_run(caller, _calling(fn), items, options, report_only=report_only)
    except (TypeError, ValueError) as exc:
        raise UsageProblem(str(exc)) from exc
    if isinstance(fn, CommandRunner):
        _running_commands(run, fn)
    journal: str | None = options.get("journal")
    # A resume appends to --output; the file is touched only once the run holds the lock.
    resumed = journal is not None and has_records(journal)
    marks = output_marks(journal, output, options)
    sink = OutputFile(output, resume=resumed, line=line, marks=marks) if output else None
    if sink is not None:
        run.before_record = flushing(sink, run)  # (a row is never committed before its line)
        run.on_late = late_lines(sink)  # (calls that finish in --grace after Ctrl-C)
    summary = sys.stderr if output == "-" else sys.stdout
    whole_input = False
    try:
        failed = _consume(run, sink, resumable=journal is not None)
        if sink is not None:
            sink.close()  # (its last lines reach the file now: a full disk may show here)
        whole_input = run.report().stopped is None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (Terminated)
        hold_stop_signals()  # (until main returns: the summary, the output's close)
        if sink is not None and (journal is None or Path(journal).exists()):
            sink.start()  # (a fresh run stopped before its first outcome)
        return _stopped(exc, run.report(), journal, summary)
    except InputError as exc:
        raise UsageProblem(f"reading INPUT failed: {exc.__cause__ or exc}") from exc
    except OutputFailed as exc:
        if sink is not None and journal is not None:
            sink.drop_unrecorded()  # (so a resume writes each of their lines once)
        with quietly():  # (what ran: with a journal, what it recorded)
            say(run.report(), summary)
        raise output_failed(exc, journal, run.journal_closed_as) from exc
    except JournalError:
        before_journal_error(run.report(), sink, summary)
        raise
    finally:
        if sink is not None:
            sink.close()  # (once more, or after a failure: quiet)
        if marks is not None:  # (what the file holds now, for the next resume into it)
            marks.ended(run.journal_run, whole_input=whole_input)
    report = run.report()
    say(report, summary)
    if report.failed and journal:  # (items not run are not in the journal: a resume runs them)
        say(f"\nsee the failures: manyhands failures {shlex.quote(journal)}", summary)
    return EXIT_FAILED if failed else EXIT_OK


def _run_commands(
    arguments: tuple[str | None, str],
    form: str,
    journal: str | None,
    output: str | None,
    key: str | None,
    flags: dict[str, Any],
    command: dict[str, Any],
) -> int:
    """``run --sh``: each item runs as a command (see ``_shell``), with the same run around it."""
    target, input_path = arguments
    if target is not None and input_path != "-":
        raise UsageProblem(f"with --sh, give only INPUT: {target!r} {input_path!r} is one too many")
    input_path = target or input_path
    template = Template(command["sh"], shell=command["shell"])
    if template.fields and form == "lines":
        field = sorted(template.fields)[0]
        raise UsageProblem(f"--sh {{{field}}} picks a field of each item: add --jsonl or --csv")
    if flags["backend"] not in (None, "threads"):
        raise UsageProblem("--sh runs each command from a thread: leave out --backend")
    program = template.program()
    if program is not None and shutil.which(program) is None:
        raise UsageProblem(f"--sh: no program {program!r} (not on PATH, or not executable)")
    capture = DEFAULT_CAPTURE if command["max_output"] is None else command["max_output"]
    runner = CommandRunner(
        template, timeout=flags["timeout"], capture=capture, throttle_exit=command["throttle_exit"],
        passthrough=not output, stdout_limit=command["max_output"],
    )  # fmt: skip
    flags["workers"], notice = commands_at_once(flags["workers"])  # (the open-file limit)
    if notice is not None:
        click.echo(notice, err=True)
    # The runner kills a command's process group at --timeout; the engine's
    # timeout would only abandon the thread waiting for it.
    flags |= {"backend": "threads", "timeout": None, "batch_size": flags["batch_size"] or 1}
    options = run_options(journal, output, key, flags)
    command_retries(options, command["retry_on_exit"], command["throttle_exit"])
    field = key_field(key, form)
    check_paths(input_path, output, journal)
    stream = open_input(input_path)
    try:
        items = input_items(stream, form, field, _keyed(options))
        if output:
            return _run_items(runner, items, options, output, command_json_line)
        return _run_items(runner, items, options, "-", command_streams)
    finally:
        runner.close()  # (a stopped run: the commands still running are killed)
        if stream is not sys.stdin.buffer:
            stream.close()


def _keyed(options: dict[str, Any]) -> Any:
    """What INPUT's reader hands each row on as: ``--key module:function`` makes its key."""
    key = options.get("key")
    return key.keyed if isinstance(key, CommandKey) else None


def _running_commands(run: Run, runner: CommandRunner) -> None:
    """A run of ``runner``'s commands: its CPU starts them, on threads only (so no hint
    of another backend); when a stopped run's grace period ends, they are killed, and no
    thread is left to them."""
    run.task.measure = False
    run.end_calls = runner.close


def _consume(run: Run, sink: OutputFile | None, resumable: bool) -> int:
    """Write every outcome; return how many did not succeed (failed, or not run).

    ``resumable`` (a journal): an item not run (the run stopped before it was
    called, or before its retry) gets no line, as after Ctrl-C: the journal has
    no record of it, and the resume that runs it writes its line.
    """
    failed = 0
    outcomes: Outcomes[Any, Any] = Outcomes(run)
    # Not interrupted halfway: making an Outcome, recording what was delivered.
    delivery = (run.delivered, Outcome.__init__, _stream._settled, _stream._skipped)
    with StopSignals(protect=delivery) as signals, outcomes:
        try:
            for outcome in signals.guard(outcomes):
                error = outcome.error
                failed += error is not None
                if sink is not None and not (resumable and error is not None and _not_run(error)):
                    sink.write(outcome)
                signals.done()  # a signal that came while writing stops the run now
        finally:
            signals.release()
    if sink is not None:
        sink.start()  # (no outcome at all: an empty input still gets a fresh file)
    return failed


def _not_run(failure: Failure) -> bool:
    """Whether the item was not run (never called, or stopped before its retry), as the
    journal tells it: manyhands' own errors only, not a user's with an attribute ``ran``."""
    return not_run_cause(failure) is not None


def _stopped(exc: KeyboardInterrupt, report: Any, journal: str | None, summary: Any) -> int:
    """Print what a stopped run did and how to resume; the exit code."""
    with quietly():
        say(report, summary)
        how = f"terminated ({exc})" if isinstance(exc, Terminated) else "interrupted"
        saved = (
            f" The journal {journal} is saved: run the same command again to resume."
            if journal
            else ""
        )
        say(f"\n{how}.{saved}", sys.stderr)
    return exc.exit_code if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _calling(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn``, except that an unreadable line, or a row with no key, fails as its own item.

    A coroutine function stays one, so that it runs on asyncio.
    """
    call: Callable[[Any], Any]
    if _api.is_coroutine_function(fn):

        async def call(item: Any) -> Any:
            __tracebackhide__ = True  # (a traceback starts at fn: see _outcome._past_wrappers)
            if type(item) is BadLine:
                raise item.kind(item.error)
            return await fn(item)

    else:

        def call(item: Any) -> Any:
            __tracebackhide__ = True  # (a traceback starts at fn: see _outcome._past_wrappers)
            if type(item) is BadLine:
                raise item.kind(item.error)
            return fn(item)

    call.__qualname__ = getattr(fn, "__qualname__", "call")
    call.__module__ = getattr(fn, "__module__", __name__)
    return call
