"""A journal is data: opening one runs none of its contents, and it keeps no secrets."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import manyhands
from manyhands._inspect import read_failures, read_status

from .conftest import python_subprocess_env


class Payload:
    """Unpickling it creates a directory: the proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def inverse(x: int) -> float:
    return 1 / x


def crafted_journal(tmp_path: Path) -> tuple[Path, Path]:
    """A journal whose stored values (and one message) are pickles that run code."""
    journal = tmp_path / "shared.db"
    manyhands.run(inverse, [0, 1, 2], journal=journal, store_results=True)
    marker = tmp_path / "code-ran"
    evil = pickle.dumps(Payload(marker))
    with sqlite3.connect(journal) as db:
        db.execute("UPDATE items SET result = ?, result_format = 'pickle'", (evil,))
        db.execute("UPDATE items SET message = ? WHERE state = 'failed'", (evil,))
    db.close()
    return journal, marker


def test_resuming_a_journal_never_unpickles_its_values_unless_asked(tmp_path: Path) -> None:
    journal, marker = crafted_journal(tmp_path)
    with pytest.warns(manyhands.JournalWarning, match="is a pickle, which is not loaded"):
        outs = list(manyhands.map(inverse, [0, 1, 2], journal=journal, store_results=True))
    assert {o.item: o.value for o in outs if o.ok} == {1: None, 2: None}
    assert {o.skipped for o in outs} == {"done in the journal", "failed in the journal"}
    manyhands.run(inverse, [0, 1, 2], journal=journal)
    assert not marker.exists(), "code from the journal ran"


def test_status_and_failures_never_unpickle_anything(tmp_path: Path) -> None:
    journal, marker = crafted_journal(tmp_path)
    assert read_status(journal).states == {"done": 2, "failed": 1}
    [failed] = read_failures(journal)
    assert failed["error_type"] == "builtins.ZeroDivisionError"
    for command in (["status"], ["failures", "--json", "--traceback"]):
        done = subprocess.run(
            [sys.executable, "-m", "manyhands", *command, str(journal)],
            env=python_subprocess_env(),
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    assert not marker.exists(), "code from the journal ran"


def test_initargs_and_initializer_are_recorded_as_set_never_their_values(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "run.db"
    secret = "sk-live-4f9c2a7be1d0"

    def connect(api_key: str) -> None:
        os.environ["MANYHANDS_TEST_KEY"] = api_key

    report = manyhands.run(
        lambda x: os.environ["MANYHANDS_TEST_KEY"] == secret,
        range(4),
        backend="processes",
        workers=1,
        initializer=connect,
        initargs=(secret,),
        retry=manyhands.Retry(retries=2, on=lambda exc: secret in str(exc)),
        journal=journal,
    )
    assert report.succeeded == 4
    with sqlite3.connect(journal) as db:
        [options] = db.execute("SELECT options FROM runs").fetchone()
    db.close()
    recorded = json.loads(options)
    assert (recorded["initializer"], recorded["initargs"]) == ("set", "set")
    assert recorded["retry"]["retries"] == 2
    for suffix in ("", "-wal", ".lock"):
        if os.path.exists(f"{journal}{suffix}"):
            assert secret.encode() not in Path(f"{journal}{suffix}").read_bytes()
