"""Text at the command's edges: a BOM, bytes that are not UTF-8, escape sequences in a journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_cli import TARGET, manyhands

BOM = b"\xef\xbb\xbf"

ESCAPES = """
WeirdError = type("Weird\\x1b]0;class\\x07Error", (Exception,), {})

def hostile(line):
    if line == "class":
        raise WeirdError("x")
    raise ValueError("bad \\x1b]0;owned title\\x07 then \\x1b[2J\\x9b31m\\r\\u202e fake\\nsecond")
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "target.py").write_text(TARGET)
    return tmp_path


def outputs(done_stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in done_stdout.splitlines()]


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_byte_order_mark_is_not_part_of_the_first_item(workdir: Path, source: str) -> None:
    data = BOM + b"a\nb\n"
    (workdir / "items.txt").write_bytes(data)
    path = "items.txt" if source == "file" else "-"
    done = manyhands("run", "target.py:shout", path, "--ordered", "--output", "-",
                     cwd=workdir, stdin=data.decode() if source == "stdin" else None)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [o["item"] for o in outputs(done.stdout)] == ["a", "b"]


def test_a_csv_with_a_byte_order_mark_has_its_first_field_named_right(workdir: Path) -> None:
    (workdir / "people.csv").write_bytes(BOM + b"id,name\r\n1,ann\r\n2,bob\r\n")
    done = manyhands("run", "target.py:name_of", "people.csv", "--csv", "--journal", "j.db",
                     "--key", "id", "--ordered", "--output", "-", cwd=workdir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [o["item"] for o in outputs(done.stdout)] == [
        {"id": "1", "name": "ann"},
        {"id": "2", "name": "bob"},
    ]


@pytest.mark.parametrize("form", ["lines", "jsonl", "csv"])
def test_a_line_that_is_not_utf8_fails_as_its_own_item_with_its_line_number(
    workdir: Path, form: str
) -> None:
    # Far past the first read chunk, where the old message gave a position inside it.
    good = [f'{{"name": "n{n}"}}' if form == "jsonl" else f"n{n}" for n in range(20_000)]
    header = [b"name"] if form == "csv" else []
    raw = [*header, *(line.encode() for line in good[:15_000]), b"caf\xe9",
           *(line.encode() for line in good[15_000:])]  # fmt: skip
    (workdir / "items.in").write_bytes(b"\n".join(raw) + b"\n")
    number = len(header) + 15_001
    fn = "target.py:name_of" if form != "lines" else "target.py:shout"
    done = manyhands("run", fn, "items.in", f"--{form}", "--output", "-", cwd=workdir)
    assert done.returncode == 1, done.stderr  # one item failed; the run went on
    out = outputs(done.stdout)
    assert len(out) == 20_001
    failed = [o for o in out if not o["ok"]]
    assert len(failed) == 1
    error = failed[0]["error"]
    assert isinstance(error, dict)
    assert error["type"] == "manyhands.cli.MalformedLine"
    assert f"line {number} is not valid UTF-8" in error["message"]
    assert failed[0]["item"] == "caf\\xe9"


def test_failures_and_status_escape_control_sequences_from_the_journal(workdir: Path) -> None:
    (workdir / "hostile.py").write_text(ESCAPES)
    manyhands("run", "hostile.py:hostile", "-", "--journal", "j.db", cwd=workdir,
              stdin="one\nclass\n")  # fmt: skip
    for args in (["failures", "j.db"], ["failures", "j.db", "--traceback"], ["status", "j.db"]):
        done = manyhands(*args, cwd=workdir)
        assert done.returncode == 0, done.stderr
        text = done.stdout + done.stderr
        for raw in ("\x1b", "\x07", "\x9b", "\r", "\u202e"):
            assert raw not in text, (args, text)
    listed = manyhands("failures", "j.db", cwd=workdir).stdout
    assert "bad \\x1b]0;owned title\\x07 then \\x1b[2J\\x9b31m\\r\\u202e fake\\nsecond" in listed
    assert len(listed.splitlines()) == 2  # one line per failure, whatever its message holds
    assert "Weird\\x1b]0;class\\x07Error" in manyhands("status", "j.db", cwd=workdir).stdout
    traced = manyhands("failures", "j.db", "--traceback", cwd=workdir).stdout
    assert "\n    Traceback (most recent call last):\n" in traced  # tracebacks keep their lines

    as_json = manyhands("failures", "j.db", "--json", cwd=workdir)
    assert "\x9b" not in as_json.stdout and "\x1b" not in as_json.stdout
    messages = {json.loads(line)["message"] for line in as_json.stdout.splitlines()}
    assert "bad \x1b]0;owned title\x07 then \x1b[2J\x9b31m\r\u202e fake\nsecond" in messages


def test_a_journal_warning_is_one_escaped_line(workdir: Path) -> None:
    (workdir / "renamed.py").write_text(
        "def first(line):\n    return line\n"
        "first.__qualname__ = 'first\\x1b]0;title\\x07'\n"
        "def second(line):\n    return line\n"
    )
    assert manyhands("run", "renamed.py:first", "-", "--journal", "j.db", cwd=workdir,
                     stdin="a\n").returncode == 0  # fmt: skip
    done = manyhands("run", "renamed.py:second", "-", "--journal", "j.db", cwd=workdir,
                     stdin="a\nb\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "manyhands: warning: journal j.db was written by" in done.stderr
    assert "first\\x1b]0;title\\x07" in done.stderr and "\x1b" not in done.stderr
