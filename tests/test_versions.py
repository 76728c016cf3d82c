"""Behaviour that depends on the CPython version, tested on every version (``nox``).

- per-call timeouts on asyncio (a timer per call, the same on every version): a run
  that is cancelled cancels its calls;
- a multi-threaded process that forks gets CPython's ``DeprecationWarning`` on 3.12+
  (``start_method="fork"``): the run is still complete, and the warning reaches the user.

The forkserver's ``__main__`` preload is tested by
``test_processes.py::test_the_main_script_is_imported_once_not_by_every_worker``,
which runs on each version too.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap

import pytest

import manyhands

from .conftest import finish, start_python


def test_cancelling_a_run_with_timeouts_cancels_its_calls_and_leaves_no_task() -> None:
    # Each call has a timer of its own: cancelling the run must cancel the calls too, and
    # wait for them.
    started: list[int] = []
    cancelled: list[int] = []

    async def slow(x: int) -> int:
        started.append(x)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async def consume() -> None:
        async for _ in manyhands.amap(slow, range(100), workers=5, timeout=60):
            pass

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(consume())
        while len(started) < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())
    assert sorted(cancelled) == sorted(started) and len(started) == 5


FORK_RUN = textwrap.dedent(
    """
    import json, os, threading, warnings
    import manyhands

    def crash(x):
        if x == 3:
            os._exit(1)  # a replacement worker is forked while the dispatcher thread runs
        return x

    if __name__ == "__main__":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = manyhands.run(crash, range(20), backend="processes", workers=2,
                                   start_method="fork")
        forks = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
                 and "fork" in str(w.message)]
        print(json.dumps([report.succeeded, report.failed, forks]))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="no fork on Windows")
def test_fork_in_a_threaded_process_works_and_warns_on_3_12_and_newer() -> None:
    proc = start_python(FORK_RUN)
    out, err = finish(proc, 120)
    assert proc.returncode == 0, err
    succeeded, failed, warnings = json.loads(out.strip().splitlines()[-1])
    assert (succeeded, failed) == (19, 1)
    if sys.version_info >= (3, 12):
        assert warnings and "multi-threaded" in warnings[0]
    else:
        assert warnings == []
