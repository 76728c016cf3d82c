"""Test sessions: the suite on every supported CPython found here, and the docs.

    nox -s pythons           # which supported CPythons are here; fails if one CI needs is not
    nox -s tests             # the test suite on each of them (nox -s "tests(3.12)": one)
    nox -s docs              # mkdocs build --strict

Supported versions are the ``Programming Language :: Python :: 3.X`` classifiers in
pyproject.toml (one place to change them). Interpreters are found without naming this
machine's paths: under pyenv's root (``pyenv root``, ``$PYENV_ROOT`` or ``~/.pyenv``),
then as ``python3.X`` on ``PATH``; each candidate is asked its version, so a pyenv shim
for a version that is not selected, a free-threaded build or a stray binary is not taken
for a CPython it is not. nox never downloads an interpreter here.

Every run must include the oldest supported version and the newest CPython present on the
machine: ``pythons`` fails otherwise, naming what is missing. On the Pythons other than the
one that runs nox itself, the tests of interpreter-dependent code run (``ON_EVERY_PYTHON``);
the whole suite runs on the one that runs nox.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
nox.options.download_python = "never"
nox.options.default_venv_backend = "uv|venv"  # uv installs in seconds; venv without it
nox.options.sessions = ["pythons", "tests", "docs"]

_PROBE = (
    "import sys; print(sys.implementation.name, *sys.version_info[:2], "
    "getattr(sys, '_is_gil_enabled', lambda: True)())"
)


def supported_versions() -> list[str]:
    """The ``3.X`` classifiers of pyproject.toml, oldest first."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.findall(r'"Programming Language :: Python :: 3\.(\d+)"', text)
    if not found:
        raise SystemExit("pyproject.toml lists no 'Programming Language :: Python :: 3.X'")
    return [f"3.{minor}" for minor in sorted({int(m) for m in found})]


def _pyenv_root() -> Path | None:
    if shutil.which("pyenv"):
        done = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip())
    root = os.environ.get("PYENV_ROOT")
    return Path(root) if root else Path.home() / ".pyenv"


def _candidates() -> list[Path]:
    found: list[Path] = []
    root = _pyenv_root()
    if root is not None and (root / "versions").is_dir():
        # Release builds only ("3.12.1", not "3.13.0t", "3.14.0a1" or "miniconda3").
        for home in sorted((root / "versions").iterdir()):
            match = re.fullmatch(r"3\.(\d+)\.\d+", home.name)
            if match:
                found.append(home / "bin" / f"python3.{match.group(1)}")
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and "shims" not in Path(folder).parts:
            found.extend(sorted(Path(folder).glob("python3.[0-9]*")))
    return [path for path in found if re.fullmatch(r"python3\.\d+", path.name)]


def find_pythons() -> dict[str, str]:
    """``{"3.X": interpreter}`` for each GIL-enabled CPython 3.X found (the first found)."""
    pythons: dict[str, str] = {}
    for path in _candidates():
        if not os.access(path, os.X_OK):
            continue
        try:
            done = subprocess.run(
                [str(path), "-c", _PROBE], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) != 4:
            continue
        name, major, minor, gil = fields
        version = f"{major}.{minor}"
        if name == "cpython" and gil == "True" and version not in pythons:
            pythons[version] = str(path)
    return dict(sorted(pythons.items(), key=lambda item: _key(item[0])))


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def missing_pythons(supported: list[str], present: dict[str, str]) -> list[str]:
    """What a full run lacks: the oldest supported version, or the newest one present.

    >>> missing_pythons(["3.10", "3.11"], {"3.11": "python3.11"})
    ['3.10 (the oldest supported) is not installed']
    >>> missing_pythons(["3.10"], {"3.10": "a", "3.14": "b"})
    ['3.14 (the newest present) is not in the classifiers of pyproject.toml']
    >>> missing_pythons(["3.10", "3.11"], {"3.10": "a"})
    []
    """
    problems = []
    if supported[0] not in present:
        problems.append(f"{supported[0]} (the oldest supported) is not installed")
    newest = max(present, key=_key, default=None)
    if newest is not None and newest not in supported:
        problems.append(
            f"{newest} (the newest present) is not in the classifiers of pyproject.toml"
        )
    return problems


SUPPORTED = supported_versions()
PRESENT = find_pythons()
TESTED = {version: path for version, path in PRESENT.items() if version in SUPPORTED}
NOX_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


@nox.session(python=False)
def pythons(session: nox.Session) -> None:
    """List the supported CPythons found; fail if the oldest or the newest present is missing."""
    session.log(f"supported (pyproject.toml classifiers): {', '.join(SUPPORTED)}")
    for version in SUPPORTED:
        session.log(f"  {version}: {TESTED.get(version, 'not found')}")
    problems = missing_pythons(SUPPORTED, PRESENT)
    if problems:
        session.error(
            "; ".join(problems) + ". Install it (e.g. `pyenv install 3.X`), or change the "
            "classifiers and requires-python in pyproject.toml to what is tested."
        )


# What runs on the Pythons other than the one that runs nox (CI runs the whole suite on
# that one first): the tests of code whose behaviour depends on the interpreter, so that
# CI's total time stays under its limit with four CPythons. asyncio (timeouts, cancellation,
# task factories), multiprocessing and the forkserver's ``__main__`` handling, fork
# warnings (3.12+), signals, pickling of functions and exceptions, sqlite3, and the
# doctests of the package. The rest (the engine's policies, the journal's text, the
# command's output format, the report, the slowdown's rules on a fake clock, ruff and mypy)
# runs the same code on every interpreter.
ON_EVERY_PYTHON = [
    "src/manyhands",  # doctests
    "tests/test_versions.py",
    "tests/test_async.py",
    "tests/test_async_loops.py",  # (uvloop there: see tests())
    "tests/test_async_pieces.py",
    "tests/test_processes.py",
    "tests/test_processes_faults.py",
    "tests/test_fork_in_a_call.py",
    "tests/test_lifecycle.py",
    "tests/test_timeouts.py",
    "tests/test_cli_signals.py",
    "tests/test_journal.py",
    "tests/test_journal_writer.py",
    "tests/test_keys.py",
    "tests/test_pool.py",
    "tests/test_first_hour.py",
    "tests/test_exports.py",
]
# Within those, the long real-time scenarios that exercise no version-specific code.
SLOW_ELSEWHERE = [
    "tests/test_journal.py::test_a_full_disk_stops_the_run_and_records_nothing_false",
    "tests/test_processes.py::test_crash_storm_costs_only_the_crashing_items",
]


@nox.session
@nox.parametrize("python", list(TESTED.values()), ids=list(TESTED))
def tests(session: nox.Session) -> None:
    """The test suite on one CPython (extra pytest arguments after ``--``).

    On the interpreter that runs nox: the whole suite. On the others: ``ON_EVERY_PYTHON``.
    ``nox -s "tests(3.12)" -- tests`` runs the whole suite there too.
    """
    args = list(session.posargs)
    version = session.run(
        "python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])", silent=True
    )
    elsewhere = str(version).strip() != NOX_PYTHON
    # The main run tests the default asyncio loop (what a plain install gets); the other
    # Pythons run with the fast extra, so a private loop runs on uvloop there.
    session.install("-e", ".[test,fast]" if elsewhere else ".[test]")
    if elsewhere and not args:
        args = list(ON_EVERY_PYTHON)
        for slow in SLOW_ELSEWHERE:
            args += ["--deselect", slow]
    session.run("pytest", "-p", "no:cacheprovider", *args)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the site with ``mkdocs build --strict`` (a broken link or reference fails)."""
    session.install("-e", ".[docs]")
    site = Path(session.create_tmp()) / "site"
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site), *session.posargs)
