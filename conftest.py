"""The Python code blocks of README.md and docs/ run as tests (with Sybil).

The blocks of one page run in order, in one namespace, in a fresh temporary directory
(journals they write land there). Each page starts with the names an example leaves to
the reader (``fetch``, ``urls``, ``api``...) bound to the local stand-ins of
``tests/doc_standins.py``. A block may use ``await`` and ``async for`` at top level: it
then runs on a new event loop, as it would inside the reader's ``async def``.

A block that cannot run here says so in the Markdown, where a reader of the source sees
it, and the test run lists it as skipped with that reason::

    <!-- skip: next "why it cannot run in the tests" -->
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import tempfile
from pathlib import Path
from typing import Any

from sybil import Example, Sybil
from sybil.evaluators.python import pad
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from tests import doc_standins


def _evaluate(example: Example) -> None:
    source = pad(example.parsed, example.line + example.parsed.line_offset)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    code = compile(source, example.path, "exec", flags=flags, dont_inherit=True)
    result = eval(code, example.namespace)
    if inspect.iscoroutine(result):  # the block awaits at top level
        asyncio.run(result)
    example.namespace.pop("__builtins__", None)


def _setup(namespace: dict[str, Any]) -> None:
    namespace["__name__"] = "__main__"  # as in a script: `if __name__ == "__main__":` runs
    namespace["_docs_home"] = os.getcwd()
    namespace["_docs_dir"] = directory = tempfile.TemporaryDirectory(prefix="manyhands-docs-")
    os.chdir(directory.name)
    namespace.update(doc_standins.names())


def _teardown(namespace: dict[str, Any]) -> None:
    os.chdir(namespace["_docs_home"])
    namespace["_docs_dir"].cleanup()


pytest_collect_file = Sybil(
    parsers=[CodeBlockParser(language="python", evaluator=_evaluate), SkipParser()],
    patterns=["README.md", "docs/*.md", "docs/**/*.md"],
    path=str(Path(__file__).parent),
    setup=_setup,
    teardown=_teardown,
).pytest()
