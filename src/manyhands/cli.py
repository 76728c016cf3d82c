"""The ``manyhands`` command: run a Python function over a file of items, resumable.

Exit codes (also in each subcommand's ``--help``): see ``EXIT_*`` below and
docs/guide/command-line.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sqlite3
import stat
import sys
import time
import warnings
from _thread import TIMEOUT_MAX
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__, _api, _stream
from ._demo import DEFAULT_ITEMS, DEFAULT_JOURNAL
from ._escape import escape_controls, escape_json
from ._exceptions import InputError, JournalError, WorkerInitError
from ._inputs import BadLine, MalformedLine, UsageProblem, input_items, load_target, open_input
from ._keys import code_hash, default_key
from ._options import BACKENDS, DEFAULT_WORKERS
from ._outcome import Outcome
from ._output import OutputFailed, OutputFile, command_json_line, command_streams, json_line
from ._output_marks import Marks
from ._rate import parse_rate
from ._retry import Retry
from ._run import Run
from ._shell import (
    DEFAULT_CAPTURE,
    CommandFailed,
    CommandRunner,
    Template,
    commands_at_once,
    exit_codes,
    exits_with,
)
from ._signals import StopSignals, Terminated, hold_stop_signals, release_stop_signals
from ._stream import Outcomes

__all__ = ["CommandFailed", "MalformedLine", "Terminated", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE, as `cat` ends when `| head` has read enough
EXIT_OUTPUT_FAILED = 74  # EX_IOERR of sysexits.h: --output or the journal could not be written

RUN_EPILOG = """\b
Exit codes: 0 every item succeeded, 1 some items failed or were not
run, 2 usage error (bad TARGET, INPUT or flag), 74 --output or the
journal could not be written (disk full), 130 interrupted (Ctrl-C),
143 terminated (SIGTERM; 129 for SIGHUP), 141 stdout was closed early
(e.g. | head).
When stopped, what finished is written and, with --journal, saved:
run the same command again to resume.
"""
READ_EPILOG = """\b
Exit codes: 0 the journal was read (whether or not items failed),
2 no journal at JOURNAL, or not a readable manyhands journal,
141 stdout was closed early (e.g. | head).
"""
REPORT_EPILOG = """\b
Exit codes: 0 the report was written, 2 no journal at JOURNAL, not a
readable one, or --output cannot be written.
"""
DEMO_EPILOG = """\b
Exit codes: 0 the demo ran (a few items fail on purpose), 2 usage error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM): run it again to resume.
"""
GROUP_EPILOG = """\b
Exit codes: 0 success, 1 some items failed (run), 2 usage error,
130 interrupted, 143 terminated; each command's --help lists its own.
"""


class _OutputClosed(Exception):
    """Stdout was closed by its reader (``| head``): stop quietly, as ``cat`` does."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:  # (before click turns it into a silent exit 1)
            raise _OutputClosed from exc


@click.group(
    cls=_Group, epilog=GROUP_EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, "-V", "--version", prog_name="manyhands",
                      message="%(prog)s %(version)s")  # fmt: skip
def cli() -> None:
    """Run a Python function over many items, many at a time: failures as values,
    bounded memory, prompt Ctrl-C, and resumable with --journal."""


def _rate(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | float | None:
    """``--rate``: ``50/s``, ``300/min``, ``1000/h``, or a number of starts per second."""
    with contextlib.suppress(TypeError, ValueError):
        return float(value)  # type: ignore[arg-type]
    try:
        parse_rate(value)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(in_cli_terms(str(exc))) from None
    return value


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


def _failure_rate(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> float | tuple[float, int] | None:
    """``SHARE`` or ``SHARE,LAST_N``: 0.5, or 0.5,1000."""
    if value is None:
        return None
    share, _, last = value.partition(",")
    try:
        parsed = (float(share), int(last)) if last else float(share)
        if not 0 <= float(share) < 1 or (last and int(last) < 1):
            raise ValueError
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not SHARE or SHARE,LAST_N: a share of failed items in [0, 1) "
            "over the last 100 (or LAST_N) items, e.g. 0.5 or 0.5,1000"
        ) from None
    return parsed


@cli.command(epilog=RUN_EPILOG)
@click.argument("target", required=False, metavar="TARGET")
@click.argument("input_path", metavar="[INPUT]", default="-")
@click.option("--lines", "form", flag_value="lines", default=True, help="Each line is an item.")
@click.option("--jsonl", "form", flag_value="jsonl", help="Each line is a JSON value.")
@click.option("--csv", "form", flag_value="csv", help="Each row is a dict (header row).")
@click.option("-j", "--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS,
              show_default=True, help="Calls at once.")  # fmt: skip
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    help="Default: async for a coroutine function, else threads.",
)
@click.option("--scheduler", metavar="ADDRESS",
              help="The Dask scheduler to run on (tcp://host:8786); implies --backend dask, "
              "whose default is a LocalCluster started for the run.")  # fmt: skip
@click.option("--retries", type=click.IntRange(min=0), default=0, help="Retries per item.")
@click.option("--rate", callback=_rate, help="Most starts per second: 50/s, 300/min, 1000/h.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=TIMEOUT_MAX),
              help="Seconds a call may run, or the item fails (manyhands.Timeout).")  # fmt: skip
@click.option("--ordered", "--keep-order", "ordered", is_flag=True,
              help="Write outcomes in input order.")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Items sent to a worker at once. Default: adapted.")  # fmt: skip
@click.option("--total", type=click.IntRange(min=0),
              help="How many items INPUT has, for the progress ETA.")  # fmt: skip
@click.option("--grace", type=click.FloatRange(min=0, max=TIMEOUT_MAX), default=2.0,
              show_default=True,
              help="Seconds running calls get to finish when the run stops early.")  # fmt: skip
@click.option("--stop-after-failures", type=click.IntRange(min=1), help="Stop after N failed.")
@click.option("--stop-after-failure-rate", metavar="SHARE[,LAST_N]", callback=_failure_rate,
              help="Stop once over SHARE of the last 100 (or LAST_N) items failed.")  # fmt: skip
@click.option("--journal", type=click.Path(dir_okay=False), help="Resumable SQLite journal.")
@click.option("--retry-failed", is_flag=True, help="With --journal: rerun recorded failures.")
@click.option("--key", help="With --journal: a JSON field name, or module:function.")
@click.option("--changed-items", type=click.Choice(["refuse", "rerun", "skip"]),
              help="With --key: what to do with an item that changed under its key "
                   "(default: refuse).")  # fmt: skip
@click.option("--store-results/--no-store-results", default=None,
              help="With --journal: store each value, so that a resumed --output has the "
                   "values of skipped items. Default: on with --output.")  # fmt: skip
@click.option("--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write one JSON line per item (- for stdout); a resume appends.")  # fmt: skip
@click.option("--progress/--no-progress", default=None, help="Default: on a terminal.")
@click.option("--sh", metavar="COMMAND",
              help="Run COMMAND per item instead of TARGET: {} is the item, {field} a field "
                   "(--jsonl/--csv); no shell: the item is an argument.")  # fmt: skip
@click.option("--shell", is_flag=True, help="With --sh: run COMMAND by /bin/sh -c (pipes), "
              "each {} quoted.")  # fmt: skip
@click.option("--retry-on-exit", metavar="CODES",
              help="With --sh: retry (3 times unless --retries) commands that exit with "
                   "one of CODES, e.g. 75,111.")  # fmt: skip
@click.option("--throttle-exit", type=click.IntRange(1, 255), metavar="CODE",
              help="With --sh: a command exiting with CODE means 'slow down': the run "
                   "slows down and retries it.")  # fmt: skip
@click.option("--max-output", type=click.IntRange(min=0), metavar="BYTES",
              help=f"With --sh: bytes of stdout and of stderr kept per command in --output "
                   f"(default {DEFAULT_CAPTURE}); without --output, a command whose stdout "
                   f"is longer fails (default: no limit).")  # fmt: skip
def run(
    target: str | None,
    input_path: str,
    form: str,
    journal: str | None,
    output: str | None,
    key: str | None,
    **flags: Any,
) -> int:
    """Call TARGET on every item of INPUT (a file, or - for stdin, the default).

    TARGET is package.module:function or path/to/file.py:function. The items
    are read lazily: lines (default), --jsonl or --csv. Results go to --output
    as they arrive; the summary goes to stdout (stderr with --output -).

    With --sh COMMAND (and no TARGET) each item runs as a command: its stdout
    and stderr are passed on (or go to --output), the summary to stderr.
    """
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
    options = _run_options(journal, output, key, flags)
    fn = load_target(target)
    _check_paths(input_path, output, journal)
    stream = open_input(input_path)
    try:
        return _run(fn, input_items(stream, form), options, output)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _run(
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
    if isinstance(fn, CommandRunner):  # its CPU is starting commands, on threads only
        run.task.measure = False  # (so no hint of another backend)
    journal: str | None = options.get("journal")
    # A resume appends to --output; the file is touched only once the run holds the lock.
    resumed = journal is not None and _has_records(journal)
    marks = _marks(journal, output, options)
    sink = OutputFile(output, resume=resumed, line=line, marks=marks) if output else None
    if sink is not None:
        run.before_record = _flushing(sink, run)  # (a row is never committed before its line)
        run.on_late = _late_lines(sink)  # (calls that finish in --grace after Ctrl-C)
    summary = sys.stderr if output == "-" else sys.stdout
    whole_input = False
    try:
        failed = _consume(run, sink)
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
        with _quietly():  # (what ran: with a journal, what it recorded)
            _print(run.report(), summary)
        raise _output_failed(exc, journal, run.journal_closed_as) from exc
    except JournalError:
        _before_journal_error(run.report(), sink, summary)
        raise
    finally:
        if sink is not None:
            sink.close()  # (once more, or after a failure: quiet)
        if marks is not None:  # (what the file holds now, for the next resume into it)
            marks.ended(run.journal_run, whole_input=whole_input)
    report = run.report()
    _print(report, summary)
    if report.failed and journal:  # (items not run are not in the journal: a resume runs them)
        _print(f"\nsee the failures: manyhands failures {shlex.quote(journal)}", summary)
    return EXIT_FAILED if failed else EXIT_OK


_COMMAND_FLAGS = ("sh", "shell", "retry_on_exit", "throttle_exit", "max_output")


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
    options = _run_options(journal, output, key, flags)
    _command_retries(options, command["retry_on_exit"], command["throttle_exit"])
    _check_paths(input_path, output, journal)
    stream = open_input(input_path)
    try:
        if output:
            return _run(runner, input_items(stream, form), options, output, command_json_line)
        return _run(runner, input_items(stream, form), options, "-", command_streams)
    finally:
        runner.close()  # (a stopped run: the commands still running are killed)
        if stream is not sys.stdin.buffer:
            stream.close()


def _command_retries(options: dict[str, Any], on_exit: str | None, throttle: int | None) -> None:
    """``--retry-on-exit`` and ``--throttle-exit`` as the run's retry policy and ``throttle_on``.

    ``--retries N`` alone retries every failure; ``--retry-on-exit`` only those
    exit codes (3 times unless ``--retries`` says); the throttled exit is retried either way.
    """
    codes = exit_codes(on_exit, "--retry-on-exit") if on_exit else None
    if throttle is not None:
        options["throttle_on"] = exits_with({throttle})
        if codes is None and not options["retry"]:
            codes = frozenset()  # (then only the throttled exit is retried)
    if codes is not None:
        retried = codes | ({throttle} if throttle is not None else set())
        options["retry"] = Retry(retries=options["retry"] or 3, on=exits_with(retried))


def _dask_options(options: dict[str, Any]) -> None:
    """--scheduler is the Dask backend's cluster; Dask's calls at once default to its threads."""
    scheduler = options.pop("scheduler", None)
    if scheduler is not None:
        if options.get("backend", "dask") != "dask":
            raise UsageProblem(f"--scheduler needs --backend dask, not {options['backend']}")
        from ._backends import SCHEDULER_PROTOCOLS

        if not scheduler.startswith(SCHEDULER_PROTOCOLS):
            raise UsageProblem(
                f"--scheduler {scheduler} is not a Dask scheduler's address: give it as "
                "tcp://host:8786"
            )
        options["backend"] = scheduler
    source = click.get_current_context().get_parameter_source("workers")
    dask = options.get("backend") == "dask" or scheduler is not None
    if dask and source is click.core.ParameterSource.DEFAULT:
        del options["workers"]


def _run_options(
    journal: str | None, output: str | None, key: str | None, flags: dict[str, Any]
) -> dict[str, Any]:
    """The library options of ``run``'s flags; a flag that needs --journal without it is refused."""
    needs_journal = [
        name
        for name, given in (
            ("--key", key),
            ("--retry-failed", flags["retry_failed"]),
            # "refuse" is the default: given explicitly, it asks for nothing more.
            ("--changed-items", flags["changed_items"] not in (None, "refuse")),
            ("--store-results", flags["store_results"]),
        )
        if given
    ]
    if needs_journal and journal is None:
        verb = "needs" if len(needs_journal) == 1 else "need"
        raise UsageProblem(f"{' and '.join(needs_journal)} {verb} --journal")
    if flags["changed_items"] not in (None, "refuse") and key is None:
        raise UsageProblem(
            "--changed-items needs --key: without it an item's key is the item itself, "
            "which cannot change under it"
        )
    options = {name: value for name, value in flags.items() if value is not None}
    options["retry"] = options.pop("retries")
    _dask_options(options)
    if journal is not None:  # ("": refused by the run, naming --journal)
        store = flags["store_results"]
        options |= {
            "journal": journal,
            "key": _key(key),
            # Stored values complete a resumed output (its skipped items' lines).
            "store_results": bool(output) if store is None else store,
        }
    else:
        options.pop("retry_failed", None)
    return options


def _check_paths(input_path: str, output: str | None, journal: str | None) -> None:
    """Refuse an --output that is INPUT or the journal: writing it would destroy it."""
    if not output or output == "-":
        return
    if input_path == "-" and _is_stdin(output):
        raise UsageProblem(
            f"--output {output!r} is the file stdin (INPUT -) reads from; write to another path"
        )
    precious = [("INPUT", input_path)] if input_path != "-" else []
    if journal:
        precious += [("--journal", journal + suffix) for suffix in ("", "-wal", "-shm", ".lock")]
    for what, path in precious:
        try:
            same = os.path.samefile(output, path)
        except OSError:  # one of them does not exist: not the same file
            continue
        if same:
            raise UsageProblem(f"--output {output!r} is the {what} file; write to another path")


def _is_stdin(path: str) -> bool:
    """Whether ``path`` is the regular file redirected to stdin (``< file``)."""
    try:
        stdin, found = os.fstat(0), os.stat(path)
    except OSError:  # no stdin, or no such file yet: not the same file
        return False
    same = (stdin.st_dev, stdin.st_ino) == (found.st_dev, found.st_ino)
    return same and stat.S_ISREG(stdin.st_mode)


def _consume(run: Run, sink: OutputFile | None) -> int:
    """Write every outcome; return how many did not succeed (failed, or not run)."""
    failed = 0
    outcomes: Outcomes[Any, Any] = Outcomes(run)
    # Not interrupted halfway: making an Outcome, recording what was delivered.
    delivery = (run.delivered, Outcome.__init__, _stream._settled, _stream._skipped)
    with StopSignals(protect=delivery) as signals, outcomes:
        try:
            for outcome in signals.guard(outcomes):
                failed += outcome.error is not None
                if sink is not None:
                    sink.write(outcome)
                signals.done()  # a signal that came while writing stops the run now
        finally:
            signals.release()
    if sink is not None:
        sink.start()  # (no outcome at all: an empty input still gets a fresh file)
    return failed


def _stopped(exc: KeyboardInterrupt, report: Any, journal: str | None, summary: Any) -> int:
    """Print what a stopped run did and how to resume; the exit code."""
    with _quietly():
        _print(report, summary)
        how = f"terminated ({exc})" if isinstance(exc, Terminated) else "interrupted"
        saved = (
            f" The journal {journal} is saved: run the same command again to resume."
            if journal
            else ""
        )
        _print(f"\n{how}.{saved}", sys.stderr)
    return exc.exit_code if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _marks(journal: str | None, output: str | None, options: dict[str, Any]) -> Marks | None:
    """The marks of which recorded items a regular ``--output`` file holds (with a journal)."""
    if journal is None or output is None or output == "-":
        return None
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.stat(output).st_mode):
            return None  # (a pipe or a device takes every line)
    from ._key_fn import as_key

    keyfn: Callable[[Any], Any] = options.get("key") or default_key
    return Marks(journal, output, lambda item: as_key(keyfn(item)))


def _has_records(journal: str) -> bool:
    """Whether an earlier run recorded items in ``journal`` (a rerun is then a resume).

    A journal left by a run that stopped before its first item (a bad ``--key``)
    holds none: its output is written afresh.
    """
    if not Path(journal).exists():
        return False
    from ._inspect import reading

    try:
        with reading(journal) as db:
            return db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is not None
    except (JournalError, sqlite3.Error):  # (the run itself says what is wrong with it)
        return True


def _flushing(sink: OutputFile, run: Run) -> Callable[[], None]:
    """``sink.flush``, which ends the journal's run as an "output error" when it fails."""

    def flush() -> None:
        try:
            sink.flush()
        except OutputFailed as exc:
            run.exit_status = exc.run_status
            raise

    return flush


def _late_lines(sink: OutputFile) -> Callable[[list[Outcome[Any, Any]]], None]:
    """Write the lines of calls that finished in the grace period of a stopped run.

    The run records their items once this returns: what a command did in
    ``--grace`` is written and kept, not run again. A failed write raises,
    and those items run again.
    """

    def write(outcomes: list[Outcome[Any, Any]]) -> None:
        for outcome in outcomes:
            sink.write(outcome)
        sink.flush()

    return write


def _before_journal_error(report: Any, sink: OutputFile | None, summary: Any) -> None:
    """Say what ran before a JournalError's line, and close the output quietly.

    (If its last lines fail too, its error must not take the journal's place.)
    """
    if report.total:
        with _quietly():
            _print(report, summary)
    if sink is not None:
        with contextlib.suppress(OutputFailed):
            sink.close()


def _output_failed(exc: OutputFailed, journal: str | None, closed_as: str | None) -> OutputFailed:
    """The error of a run whose --output could not be written: what was kept, and what next.

    ``closed_as``: how the journal recorded the run's end (None: it could not be
    written either, a full disk filling both at once).
    """
    if not journal:
        kept = "the run stopped (without --journal, a rerun starts over)"
    elif closed_as is not None:
        kept = (
            f"the journal {journal} recorded only the items whose lines were written: "
            "make room and run the same command again to resume"
        )
    else:
        kept = (
            f"nor could the journal {journal} be written: it recorded some of the items "
            "whose lines were written, not all (the others run again, and get a second "
            "line): make room and run the same command again to resume"
        )
    return OutputFailed(exc.path, exc.error, kept)


def _calling(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn``, except that an unreadable line fails as its own item.

    A coroutine function stays one, so that it runs on asyncio.
    """
    call: Callable[[Any], Any]
    if _api.is_coroutine_function(fn):

        async def call(item: Any) -> Any:
            __tracebackhide__ = True  # (a traceback starts at fn: see _outcome._past_wrappers)
            if type(item) is BadLine:
                raise MalformedLine(item.error)
            return await fn(item)

    else:

        def call(item: Any) -> Any:
            __tracebackhide__ = True  # (a traceback starts at fn: see _outcome._past_wrappers)
            if type(item) is BadLine:
                raise MalformedLine(item.error)
            return fn(item)

    call.__qualname__ = getattr(fn, "__qualname__", "call")
    call.__module__ = getattr(fn, "__module__", __name__)
    return call


def _key(spec: str | None) -> Callable[[Any], Any]:
    """The journal key: --key as a field or a function; a bad line by its number."""
    if spec is None:
        base: Callable[[Any], Any] = default_key
    elif ":" in spec:
        base = load_target(spec, "--key")
    else:

        def base(item: Any) -> Any:
            try:
                return item[spec]
            except (KeyError, TypeError, IndexError):
                raise UsageProblem(f"--key {spec!r}: item {item!r} has no field {spec!r}") from None

    def key(item: Any) -> Any:
        if type(item) is BadLine:
            return f"<line {item.number}>"
        return base(item)

    # (what the journal records of it, to warn when --key changes between runs)
    key.journal_identity = (spec or "", "" if spec is None else code_hash(base) or "")  # type: ignore[attr-defined]
    # (how the run's options name it: as the user wrote it; none with default keys)
    key.journal_label = f"--key {spec}" if spec is not None else ""  # type: ignore[attr-defined]
    return key


def _print(text: object, file: Any) -> None:
    """Print text that may hold what a journal or an error message brought: escaped."""
    print(escape_controls(in_cli_terms(str(text)), keep_newlines=True), file=file)


class _quietly:
    """Suppress OSError: the terminal may be gone (SIGHUP) while a stopped run reports."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)


@cli.command(epilog=READ_EPILOG)
@click.argument("journal", type=click.Path(dir_okay=False))
def status(journal: str) -> int:
    """Counts by state, errors by type, and the runs recorded in JOURNAL."""
    from ._inspect import read_status

    found = read_status(journal)
    lines = [
        f"{journal}: {found.total:,} item{'' if found.total == 1 else 's'} with a final record"
    ]
    lines += [f"  {count:>10,}  {state}" for state, count in sorted(found.states.items())]
    if found.errors_by_type:
        lines.append("errors by type:")
        lines += [f"  {count:>10,}  {name}" for name, count in found.errors_by_type.items()]
    from ._timeline import throughput_sparkline

    lines.append(throughput_sparkline(journal))
    shown = " (the last 5)" if len(found.runs) > 5 else ""  # (not read as all of them)
    lines.append(f"runs: {len(found.runs)}{shown}")
    lines += [line for run_ in found.runs[-5:] for line in _run_lines(run_)]
    for line in lines:  # the journal's text, from whatever code wrote it: escaped
        click.echo(escape_controls(line))
    return EXIT_OK


def _run_lines(run_: dict[str, Any]) -> list[str]:
    """A run of ``status``: when, how long, how it ended, and its counts.

    A run that ended without closing, or is running, has no counts in its
    row yet: those of the items it recorded are shown, and how long it ran
    until its last record. A run that ended on an error ("failed to start:
    ...", "input error: ...") has the error on a line of its own.
    """
    began = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run_["started"] or 0))
    counts = f"{run_['succeeded'] or 0:,} succeeded, {run_['failed'] or 0:,} failed"
    if run_["finished"]:
        took = f"{run_['finished'] - run_['started']:.1f}s"
    elif run_.get("last_record") and run_["started"]:
        took = f"{run_['last_record'] - run_['started']:.1f}s+"  # (until its last record)
    else:
        took = "?"
    if "last_record" in run_:  # (ended without closing, or running: what it recorded)
        so_far = " so far" if run_["status"] == "running" else ""
        return [
            f"  #{run_['id']} {began} ({took}) {run_['fn']}: {run_['status']}; "
            f"recorded {counts}{so_far}"
        ]
    how, _, why = str(run_["status"]).partition(": ")
    line = f"  #{run_['id']} {began} ({took}) {run_['fn']}: {how}, {counts}, "
    return [f"{line}{run_['skipped'] or 0:,} skipped", *([f"      {why}"] if why else [])]


@cli.command(epilog=READ_EPILOG)
@click.argument("journal", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--traceback", "with_traceback", is_flag=True, help="Show full tracebacks.")
def failures(journal: str, as_json: bool, with_traceback: bool) -> int:
    """The items that failed in JOURNAL: error type, message and attempts."""
    import json

    from ._inspect import read_failures

    found = read_failures(journal)
    for row in found:
        item = row["item"] if row["item"] is not None else row["key"]
        if as_json:
            record = {k: v for k, v in row.items() if k != "traceback" or with_traceback}
            record["item"] = item
            click.echo(escape_json(json.dumps(record, ensure_ascii=False)))
            continue
        click.echo(
            escape_controls(f"{item}: {row['error_type']}: {row['message']}")
            + f" (attempts: {row['attempts']})"
        )
        if with_traceback and row["traceback"]:
            text = escape_controls(row["traceback"].rstrip(), keep_newlines=True)
            click.echo("    " + text.replace("\n", "\n    "))
    if not as_json:
        click.echo(f"{len(found):,} failed items", err=True)
    return EXIT_OK


@cli.command(epilog=DEMO_EPILOG)
@click.option("--items", type=click.IntRange(min=1), default=DEFAULT_ITEMS, show_default=True)
@click.option("--journal", type=click.Path(dir_okay=False), default=DEFAULT_JOURNAL,
              show_default=True)  # fmt: skip
@click.option("--fresh", is_flag=True,
              help="Delete the demo journal first (a manyhands journal only).")  # fmt: skip
def demo(items: int, journal: str, fresh: bool) -> int:
    """A self-contained showcase against a flaky, throttled local API."""
    from ._demo import run_demo

    with StopSignals():  # SIGTERM stops it as Ctrl-C does: the journal is closed
        return run_demo(items, Path(journal), fresh)


@cli.command(epilog=REPORT_EPILOG)
@click.argument("journal", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              default="run.html", show_default=True,
              help="The HTML file to write (- for stdout).")  # fmt: skip
def report(journal: str, output: str) -> int:
    """Write an HTML report of JOURNAL: throughput, latency, failures and runs over time.

    One self-contained file (no network needed to view it), read from the journal alone.
    """
    from ._html_report import render_html, write_report

    if output != "-":
        _check_report_path(journal, output)
    try:
        if output == "-":
            from ._timeline import read_timeline

            sys.stdout.buffer.write(render_html(read_timeline(journal)).encode())
            sys.stdout.buffer.flush()
            return EXIT_OK
        write_report(journal, output)
    except BrokenPipeError:
        raise  # (stdout closed early: exit 141, as for `run`)
    except OSError as exc:
        if output == "-":
            _silence_stdout()  # (flushing the rest at exit would fail again)
        raise UsageProblem(f"cannot write --output {output!r}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {output}")
    return EXIT_OK


def _check_report_path(journal: str, output: str) -> None:
    """Refuse a report written over the journal it reads (or its companion files)."""
    for suffix in ("", "-wal", "-shm", ".lock"):
        try:
            same = os.path.samefile(output, journal + suffix)
        except OSError:  # one of them does not exist: not the same file
            continue
        if same:
            raise UsageProblem(f"--output {output!r} is the journal's file; write to another path")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``manyhands`` and ``python -m manyhands``; returns the exit code."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return _main(argv)
        finally:
            release_stop_signals(exiting=argv is None)  # (if a stop signal held them)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A warning as one line, escaped: a JournalWarning quotes what the journal holds."""
    with _quietly():
        click.echo(f"manyhands: warning: {escape_controls(in_cli_terms(str(message)))}", err=True)


def _main(argv: list[str] | None) -> int:
    try:
        code = cli.main(args=argv, prog_name="manyhands", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `manyhands`: the help
            click.echo(exc.format_message(), err=True)
            return EXIT_USAGE
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
        click.echo(f"manyhands: error: {escape_controls(exc.format_message())}{hint}", err=True)
        return EXIT_USAGE
    except (UsageProblem, JournalError) as exc:
        click.echo(f"manyhands: error: {escape_controls(in_cli_terms(str(exc)))}", err=True)
        return EXIT_OUTPUT_FAILED if getattr(exc, "writing", False) else EXIT_USAGE
    except WorkerInitError as exc:
        if not getattr(exc, "usage", False):  # (an initializer's failure: its traceback)
            raise
        click.echo(f"manyhands: error: {escape_controls(str(exc))}", err=True)  # (--scheduler)
        return EXIT_USAGE
    except click.exceptions.Abort as exc:
        stop = exc.__cause__
        with _quietly():
            click.echo("terminated" if isinstance(stop, Terminated) else "interrupted", err=True)
        return stop.exit_code if isinstance(stop, Terminated) else EXIT_INTERRUPTED
    except _OutputClosed:
        _silence_stdout()
        return EXIT_OUTPUT_CLOSED
    except OutputFailed as exc:
        with _quietly():
            click.echo(f"manyhands: error: {escape_controls(str(exc))}", err=True)
        if exc.path == "-":
            _silence_stdout()  # (flushing what is left of it at exit would fail again)
        return EXIT_OUTPUT_FAILED
    return code if isinstance(code, int) else EXIT_OK


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail (and say so)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured): nothing to flush
        pass
