import importlib
import pkgutil
import subprocess
import sys

import pytest

import manyhands


def test_public_names_are_exactly_the_intended_set() -> None:
    assert set(manyhands.__all__) == {
        "AsyncOutcomes",
        "DEFAULT_WORKERS",
        "Failure",
        "InputError",
        "ItemsFailed",
        "JournalError",
        "JournalWarning",
        "Latency",
        "ManyhandsError",
        "Outcome",
        "Outcomes",
        "Pool",
        "Report",
        "Retry",
        "RetryAfter",
        "RunOptions",
        "Timeout",
        "WorkerCrashed",
        "WorkerInitError",
        "amap",
        "arun",
        "map",
        "run",
    }
    for name in manyhands.__all__:
        assert getattr(manyhands, name) is not None


def test_private_modules_declare_all() -> None:
    for info in pkgutil.walk_packages(manyhands.__path__, "manyhands."):
        module = importlib.import_module(info.name)
        assert hasattr(module, "__all__"), f"{info.name} has no __all__"


def test_exception_tree() -> None:
    assert issubclass(manyhands.InputError, manyhands.ManyhandsError)
    assert issubclass(manyhands.ItemsFailed, manyhands.ManyhandsError)
    assert issubclass(manyhands.ManyhandsError, Exception)


def test_import_is_light() -> None:
    code = (
        "import sys, manyhands; "
        "heavy = [m for m in ('concurrent.futures', 'multiprocessing', 'asyncio', 'dask', "
        "'cloudpickle', 'sqlite3') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_leaves_out_what_only_some_runs_need() -> None:
    """Pool, RunOptions, the journal, the CLI, backend="auto", retries' jitter: when used."""
    lazy = (
        "manyhands._pool",
        "manyhands._run_options",
        "manyhands._journal",
        "manyhands.cli",
        "manyhands._auto",
        "manyhands._backends._threads",
        "manyhands._backends._processes",
        "manyhands._backends._async",
        "random",
        "queue",
        "sqlite3",
        "multiprocessing",
        "csv",
        "json",
        "argparse",
    )
    code = (
        "import sys, manyhands; "
        f"print([m for m in {lazy!r} if m in sys.modules]); "
        "print(manyhands.Pool.__module__, 'Pool' in dir(manyhands)); "
        "from manyhands import Pool, RunOptions; print(Pool is manyhands.Pool); "
        "print(sorted(RunOptions.__annotations__) == sorted(manyhands.RunOptions.__annotations__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "manyhands._pool True", "True", "True"]


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Poll'"):
        manyhands.Poll  # type: ignore[attr-defined]  # noqa: B018


def test_import_leaves_the_engine_until_a_name_is_used() -> None:
    # A worker process's forkserver imports manyhands before it can start a worker:
    # the engine is imported on the first use of a public name, not by the import.
    code = (
        "import sys, manyhands; before = 'manyhands._run' in sys.modules; "
        "manyhands.run; print(before, 'manyhands._run' in sys.modules, 'run' in dir(manyhands))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]
