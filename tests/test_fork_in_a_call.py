"""A call that forks (a daemon's double fork, a library that forks without exec).

The child is a copy of the whole process, worker loop included. It must leave
as soon as the call returns into manyhands, and never run another item.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import psutil
import pytest

from .conftest import finish, start_python


@pytest.mark.parametrize("backend", ["threads", "async"])
@pytest.mark.parametrize("child", ["sys.exit(0)", "sys.exit(3)", "None", "1 / 0"])
def test_a_forked_child_leaves_at_once_and_no_item_runs_twice(
    tmp_path: Path, backend: str, child: str
) -> None:
    log = tmp_path / "calls.log"
    code = textwrap.dedent(
        f"""
        import asyncio, os, sys, time
        import manyhands

        LOG = {str(log)!r}
        children = []

        def body(x):
            fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"{{x}}\\n".encode())
            os.close(fd)
            if x % 7 == 3:
                pid = os.fork()
                if pid == 0:
                    {child}  # the child's end of the call
                    return "child"
                children.append(pid)
            time.sleep(0.002)
            return x

        async def abody(x):
            await asyncio.sleep(0)
            return body(x)

        fn = abody if {backend!r} == "async" else body
        report = manyhands.run(fn, range(60), backend={backend!r}, workers=3, batch_size=4)
        codes = [os.waitpid(pid, 0)[1] for pid in children]
        print(report.succeeded, report.failed, [os.waitstatus_to_exitcode(c) for c in codes])
        """
    )
    proc = start_python(code)
    out, err = finish(proc, timeout=60)
    assert proc.returncode == 0, err
    succeeded, failed, codes = out.split(maxsplit=2)
    assert (int(succeeded), int(failed)) == (60, 0)
    calls = Counter(log.read_text().split())
    assert sorted(calls) == sorted(str(i) for i in range(60))
    assert set(calls.values()) == {1}, "an item ran twice: a forked child went on working"
    expected = {"sys.exit(0)": 0, "sys.exit(3)": 3, "None": 0, "1 / 0": 1}[child]
    assert eval(codes) == [expected] * 9  # every child left, with its own exit code
    assert [
        p for p in psutil.process_iter(["cmdline"]) if str(log) in " ".join(p.info["cmdline"] or [])
    ] == []
