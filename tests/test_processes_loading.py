"""backend="processes": a function that pickles here but cannot be loaded in a worker process.

A worker rebuilds ``fn`` from its pickle: it imports fn's module by name, and
calls what the pickle names. That can fail there though it worked here (a
module that raises outside the parent process, one removed since this process
imported it, a ``__reduce__`` that raises). The error says that fn could not
be loaded, why, and what to change; before, it read "the worker initializer
raised ..." though no initializer was given (docs/faults.md).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import manyhands

from .conftest import python_subprocess_env

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX start methods"),
    pytest.mark.timeout(120, method="thread"),
]

PARENT_ONLY = """
import multiprocessing
if multiprocessing.parent_process() is not None:  # (in a worker process only)
    raise RuntimeError("this module needs the parent's database")

def work(x):
    return x

def setup():
    pass
"""

# The child's preamble: each error a run raised, as one JSON line.
PREAMBLE = """
import json, os, shutil, sys, manyhands

def refused(call, **kwargs):
    try:
        report = call(**kwargs)
    except manyhands.WorkerInitError as exc:
        print(json.dumps({"error": str(exc), "traceback": exc.traceback}), flush=True)
    else:
        messages = sorted({f.message for f in report.failures})
        print(json.dumps({"ok": report.succeeded, "messages": messages}), flush=True)
"""


def run_script(tmp_path: Path, body: str, modules: dict[str, str]) -> list[dict[str, Any]]:
    """Run ``body`` (after the preamble) in a child that can import ``modules``; its lines."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for name, code in modules.items():
        (lib / f"{name}.py").write_text(textwrap.dedent(code))
    env = python_subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(lib), env["PYTHONPATH"]])
    done = subprocess.run(
        [sys.executable, "-c", PREAMBLE + textwrap.dedent(body)], cwd=tmp_path,
        capture_output=True, text=True, timeout=90, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def check_not_loaded(error: str, cause: str, module: str | None) -> None:
    assert error.startswith(f"fn could not be loaded in a worker process: {cause}"), error
    assert "initializer" not in error
    assert "or use backend='threads'" in error and error.endswith("; no item was run")
    if module is not None:
        assert f"imports fn's module `{module}` by name" in error


def test_fn_whose_module_raises_in_a_worker_process_is_reported_as_not_loaded(
    tmp_path: Path,
) -> None:
    """Its module raises when a worker process imports it (it checks
    ``multiprocessing.parent_process()``), under each start method."""
    body = """
    import parent_only
    for method in ("forkserver", "spawn"):
        refused(manyhands.run, fn=parent_only.work, items=range(5), backend="processes",
                workers=2, start_method=method)
    """
    results = run_script(tmp_path, body, {"parent_only": PARENT_ONLY})
    assert len(results) == 2
    for result in results:
        cause = "builtins.RuntimeError: this module needs the parent's database"
        check_not_loaded(result["error"], cause, "parent_only")
        assert "RuntimeError: this module needs the parent's database" in result["traceback"]


def test_fn_whose_module_was_removed_since_it_was_imported_is_reported_as_not_loaded(
    tmp_path: Path,
) -> None:
    body = """
    import gone
    os.remove(gone.__file__)
    shutil.rmtree(os.path.join(os.path.dirname(gone.__file__), "__pycache__"), True)
    refused(manyhands.run, fn=gone.work, items=range(5), backend="processes", workers=2)
    """
    (result,) = run_script(tmp_path, body, {"gone": "def work(x):\n    return x\n"})
    check_not_loaded(
        result["error"], "builtins.ModuleNotFoundError: No module named 'gone'", "gone"
    )


def test_a_replacement_worker_that_cannot_load_fn_says_so(tmp_path: Path) -> None:
    """fn's module is removed mid-run, then fn's call crashes its worker: the
    replacement cannot load fn (before: "the initializer of a replacement raised")."""
    leaving = """
    import os, shutil

    def work(x):
        if x == 0:
            os.remove(__file__)
            shutil.rmtree(os.path.join(os.path.dirname(__file__), "__pycache__"), True)
        if x == 3:
            os._exit(1)
        return x
    """
    body = """
    import leaving
    refused(manyhands.run, fn=leaving.work, items=range(10), backend="processes", workers=1,
            batch_size=1)
    """
    (result,) = run_script(tmp_path, body, {"leaving": leaving})
    assert result["ok"] == 3
    left = [m for m in result["messages"] if "no worker process is left" in m]
    assert left, result
    expected = (
        "no worker process is left: fn could not be loaded in a replacement worker process: "
        "builtins.ModuleNotFoundError: No module named 'leaving'"
    )
    assert all(expected in m for m in left)
    assert all("initializer" not in m for m in left)


def test_an_initializer_that_raises_or_cannot_be_loaded_is_named_as_such(tmp_path: Path) -> None:
    """Only the initializer's own failures speak of the initializer."""
    body = """
    import parent_only

    def setup():
        raise RuntimeError("the license server is gone")

    refused(manyhands.run, fn=abs, items=range(5), backend="processes", workers=1,
            initializer=setup)
    refused(manyhands.run, fn=abs, items=range(5), backend="processes", workers=1,
            initializer=parent_only.setup)
    """
    raised, unloadable = run_script(tmp_path, body, {"parent_only": PARENT_ONLY})
    assert raised["error"] == (
        "the worker initializer raised builtins.RuntimeError: the license server is gone; "
        "no item was run"
    )
    assert unloadable["error"].startswith(
        "initializer could not be loaded in a worker process: builtins.RuntimeError: "
        "this module needs the parent's database (a worker process imports initializer's "
        "module `parent_only` by name to rebuild initializer:"
    )


def rebuilt_in_the_parent_only() -> OnlyHere:
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("an OnlyHere cannot be rebuilt in a worker process")
    return OnlyHere()


class OnlyHere:
    """A callable whose pickle calls what raises in a worker process."""

    def __call__(self, x: int) -> int:
        return x

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return rebuilt_in_the_parent_only, ()


REBUILD = "builtins.RuntimeError: an OnlyHere cannot be rebuilt in a worker process"


def test_fn_whose_pickle_raises_in_a_worker_process_is_reported_as_not_loaded() -> None:
    with pytest.raises(manyhands.WorkerInitError) as raised:
        manyhands.run(OnlyHere(), range(5), backend="processes", workers=1)
    error = str(raised.value)
    check_not_loaded(error, REBUILD, None)
    assert "a worker process rebuilds fn from its pickle, and that failed there" in error
    assert raised.value.run_status.startswith(f"failed to start: {error[:60]}")


def test_a_pools_items_fail_naming_fn_as_not_loaded_and_why() -> None:
    """A Pool's workers load each run's fn with its first batch: its items fail."""
    with manyhands.Pool(backend="processes", workers=1) as pool:
        report = pool.run(OnlyHere(), range(5))
        assert pool.run(abs, range(5)).succeeded == 5  # (the pool serves other runs)
    assert report.failed == 5
    (message,) = {failure.message for failure in report.failures}
    assert message.startswith(f"fn could not be loaded in a worker process: {REBUILD} (")
    assert message.endswith("; or use backend='threads'); this item did not run")
