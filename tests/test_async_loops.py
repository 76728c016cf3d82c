"""Which event loop the calls run on: uvloop's for a private loop when it is installed."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

import manyhands

from .conftest import python_subprocess_env


async def loop_kind(item: int) -> str:
    """The package the running loop's class comes from: "asyncio" or "uvloop"."""
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def kinds_on_a_private_loop() -> set[str]:
    return {out.value for out in manyhands.map(loop_kind, range(20), workers=4, progress=False)}


def test_import_manyhands_does_not_import_uvloop() -> None:
    code = (
        "import sys, manyhands\n"
        "manyhands.run(len, ['ab', 'c'], progress=False)\n"
        "print('uvloop' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=python_subprocess_env(),
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "False"


def test_a_private_loop_runs_on_uvloop_when_it_is_installed(no_thread_left: None) -> None:
    pytest.importorskip("uvloop")
    assert kinds_on_a_private_loop() == {"uvloop"}


def test_a_private_loop_runs_on_asyncio_without_uvloop(
    monkeypatch: pytest.MonkeyPatch, no_thread_left: None
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # (then `import uvloop` fails)
    assert kinds_on_a_private_loop() == {"asyncio"}


async def kinds_on_the_callers_loop() -> set[str]:
    return {out.value async for out in manyhands.amap(loop_kind, range(20), workers=4)}


def test_amap_runs_on_the_callers_loop_whichever_it_is() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert asyncio.run(kinds_on_the_callers_loop()) == {"asyncio"}
    assert uvloop.run(kinds_on_the_callers_loop()) == {"uvloop"}


def test_amap_without_an_asyncio_loop_says_what_it_needs() -> None:
    async def main() -> list[str]:
        return [out.value async for out in manyhands.amap(loop_kind, range(3))]

    driven = main()  # driven by hand, as a loop other than asyncio's (trio) would
    with pytest.raises(RuntimeError, match=r"asyncio event loop.*trio"):
        driven.send(None)
    driven.close()
