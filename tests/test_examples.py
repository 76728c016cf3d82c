"""The bundled example still runs and prints what the README says it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import python_subprocess_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=python_subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "2,000 items in" in done.stdout
    assert "1,900 succeeded, 100 failed" in done.stdout
    assert "urllib.error.HTTPError" in done.stdout
