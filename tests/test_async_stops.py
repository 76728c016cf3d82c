"""Ctrl-C in a run whose coroutine blocks the event loop (``time.sleep`` in an ``async def``).

Nothing can interrupt such a call: the loop runs nothing else until it
returns, not even the run's cancellation. On a private loop (``run``/``map``
with a coroutine function) the run gives up on the loop's thread instead,
as on a hung worker thread: after the grace period, or at once on a second
Ctrl-C. Each program here blocks its loop for a minute; the test waits far
less than that.
"""

from __future__ import annotations

import signal
import textwrap
import time

import pytest

from .conftest import finish, start_python

BLOCKING_RUN = textwrap.dedent(
    """
    import asyncio, time, manyhands
    async def fn(x):
        if x == 0:
            print("running", flush=True)
            time.sleep(60)  # blocks the loop: nothing else runs on it meanwhile
        await asyncio.sleep(0.01)
    manyhands.run(fn, range(10), workers=4, grace=0.2)
    """
)


@pytest.mark.parametrize("signals", [1, 2], ids=["ctrl-c", "ctrl-c twice"])
def test_ctrl_c_during_a_call_that_blocks_a_private_loop_ends_the_program(signals: int) -> None:
    proc = start_python(BLOCKING_RUN)
    assert proc.stdout is not None and proc.stdout.readline() == "running\n"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    if signals == 2:
        time.sleep(0.2)  # (in the wait for the loop)
        proc.send_signal(signal.SIGINT)
    _, err = finish(proc, 30)
    # Not the minute of the blocking call (nor killed by finish): the grace period
    # (0.2 s) and the loop's slack (1 s), or at once for the second Ctrl-C.
    assert time.monotonic() - sent < 20
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert "Task was destroyed" not in err and "never awaited" not in err
