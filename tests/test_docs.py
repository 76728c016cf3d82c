"""The docs and the test matrix stay honest.

The code blocks themselves run through ``conftest.py`` (Sybil); the site is built with
``mkdocs build --strict`` by ``nox -s docs``. Here: a skipped block always says why,
every page is reachable, and the noxfile's reading of the supported versions.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))


def test_every_skipped_code_block_says_why() -> None:
    for page in [ROOT / "README.md", *PAGES]:
        for directive in re.findall(r"<!--\s*skip:(.*?)-->", page.read_text(), re.S):
            assert re.fullmatch(r'\s*(next|start)\s+"[^"]{10,}"\s*', directive), (
                f"{page.name}: skip without a reason: {directive!r}"
            )


def test_every_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        assert page.relative_to(ROOT / "docs").as_posix() in nav, page


@functools.cache
def _noxfile() -> ModuleType:
    pytest.importorskip("nox", reason="nox is in the test extra: pip install -e '.[test]'")
    spec = importlib.util.spec_from_file_location("noxfile_under_test", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nox_tests_exactly_the_classified_versions_found_here() -> None:
    noxfile = _noxfile()
    pyproject = (ROOT / "pyproject.toml").read_text()
    classified = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    assert sorted(classified, key=lambda v: int(v.split(".")[1])) == noxfile.SUPPORTED
    assert noxfile.SUPPORTED[0] == "3.10"
    assert 'requires-python = ">=3.10"' in pyproject
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert noxfile.PRESENT.get(here)  # the interpreter running this is found
    assert set(noxfile.TESTED) <= set(noxfile.SUPPORTED)


def test_a_missing_oldest_or_unclassified_newest_python_is_named() -> None:
    missing = _noxfile().missing_pythons
    assert missing(["3.10", "3.11"], {"3.10": "a", "3.11": "b"}) == []
    assert missing(["3.10", "3.11"], {"3.11": "b"}) == [
        "3.10 (the oldest supported) is not installed"
    ]
    assert missing(["3.10", "3.11"], {"3.10": "a", "3.12": "c"}) == [
        "3.12 (the newest present) is not in the classifiers of pyproject.toml"
    ]


def test_every_test_the_faults_page_names_exists() -> None:
    page = (ROOT / "docs" / "faults.md").read_text()
    named = re.findall(r"`(tests/test_\w+\.py)(?:::(\w+))?`", page)
    assert len(named) > 40
    for path, name in named:
        source = (ROOT / path).read_text()
        assert not name or re.search(rf"^(async )?def {name}\(", source, re.M), (
            f"docs/faults.md names {path}::{name}, which does not exist: fix the page"
        )
