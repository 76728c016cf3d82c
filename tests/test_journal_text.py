"""Text the journal stores comes back as it was, whatever it holds.

A lone surrogate is what Python makes of bytes that are not UTF-8: a file name
read with ``os.fsdecode``/``os.listdir``, or stdin under ``LC_ALL=C``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import manyhands
from manyhands._inspect import read_failures, read_status

from .conftest import python_subprocess_env

NAME = os.fsdecode(b"caf\xe9.txt")  # 'caf\udce9.txt'


def opening(calls: Counter[str]) -> Any:
    def fn(name: str) -> str:
        calls[name] += 1
        if name.startswith("bad"):
            raise FileNotFoundError(f"no such file: {name}")  # the surrogate, not its repr
        return name.upper()

    return fn


def test_items_and_errors_with_lone_surrogates_are_recorded_and_skipped_on_resume(
    tmp_path: Path,
) -> None:
    folder = tmp_path / os.fsdecode(b"d\xffir")  # the journal's own path is not UTF-8 either
    folder.mkdir()
    journal = folder / "run.db"
    items = [f"f{n}" for n in range(499)] + [NAME, "bad" + NAME] + [f"g{n}" for n in range(99)]
    calls: Counter[str] = Counter()
    report = manyhands.run(opening(calls), items, journal=journal, workers=4)
    assert (report.succeeded, report.failed) == (599, 1)

    again = list(manyhands.map(opening(calls), items, journal=journal, ordered=True))
    assert [o.skipped for o in again] == ["done in the journal"] * 500 + [
        "failed in the journal"
    ] + ["done in the journal"] * 99
    assert calls == Counter(items), "an item ran twice"
    failure = again[500].error
    assert failure is not None and failure.error_type == "builtins.FileNotFoundError"
    assert failure.message == f"no such file: bad{NAME}"  # as it was, surrogate included
    assert "FileNotFoundError" in (failure.traceback or "")

    [row] = read_failures(journal)
    assert (row["key"], row["message"]) == ('"bad' + NAME.replace("\udce9", "\\udce9") + '"',
                                            failure.message)  # fmt: skip
    assert read_status(journal).errors_by_type == {"builtins.FileNotFoundError": 1}


def test_keys_with_lone_surrogates_from_key_functions_stay_distinct(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    items = [NAME, NAME.replace("\udce9", "\\udce9"), NAME.replace("\udce9", "\ufffd")]
    calls: Counter[str] = Counter()
    manyhands.run(opening(calls), items, journal=journal, key=lambda name: name)
    report = manyhands.run(opening(calls), items, journal=journal, key=lambda name: name)
    assert (report.skipped, report.duplicates) == (3, 0)
    assert calls == Counter(items)


def test_status_and_failures_print_text_that_is_not_utf8(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    manyhands.run(opening(Counter()), ["bad" + NAME, "ok"], journal=journal)
    for command in (["failures"], ["failures", "--json", "--traceback"], ["status"]):
        done = subprocess.run(
            [sys.executable, "-m", "manyhands", *command, str(journal)],
            env=python_subprocess_env() | {"PYTHONIOENCODING": "utf-8"},  # strict, as a pipe
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert b"FileNotFoundError" in done.stdout
