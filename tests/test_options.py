"""Invalid options fail at the call with a message that names the parameter and the fix."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest

import manyhands

from .conftest import PeakConcurrency


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"workers": 0}, ValueError, "workers must be >= 1"),
        ({"workers": -3}, ValueError, "workers must be >= 1"),
        ({"workers": "ten"}, TypeError, "workers must be an int >= 1"),
        ({"workers": 2.5}, TypeError, "workers must be an int >= 1"),
        ({"workers": True}, TypeError, "workers must be an int >= 1"),
        (
            {"backend": "gpu"},
            ValueError,
            "backend='gpu' is not a known backend; accepted: 'threads'",
        ),
        ({"ordered": "yes"}, TypeError, "ordered must be True or False"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"window": 0}, ValueError, "window must be >= 1"),
        ({"keep_failures": -1}, ValueError, "keep_failures must be >= 0"),
        ({"grace": -1}, ValueError, "grace must be a number of seconds >= 0"),
        ({"grace": float("inf")}, ValueError, "grace must be a number of seconds >= 0"),
        ({"grace": float("nan")}, ValueError, "grace must be a number of seconds >= 0"),
        # Past what a thread can wait: refused here, not an OverflowError after the run.
        ({"grace": 1e300}, ValueError, "(the longest a thread can wait), got 1e+300"),
        ({"timeout": 1e10}, ValueError, "timeout must be a number of seconds > 0 (None: no"),
        ({"timeout": 0}, ValueError, "timeout must be a number of seconds > 0"),
        ({"timeout": -1}, ValueError, "timeout must be a number of seconds > 0"),
        ({"rate": 1e-300}, ValueError, "rate=1e-300 is too slow: at least one item per"),
        ({"rate": 5e-324}, ValueError, "rate=5e-324 is too slow"),
        ({"grace": "1s"}, TypeError, "grace must be a number of seconds"),
        ({"worker": 4}, TypeError, "unexpected keyword argument 'worker'; did you mean 'workers'?"),
        ({"zzz": 4}, TypeError, "unexpected keyword argument 'zzz'; accepted: ["),
        ({"progress": "yes"}, TypeError, "progress must be True, False or None"),
        ({"throttle_on": 429}, TypeError, "throttle_on must be an exception class, a tuple"),
        ({"throttle_on": (ValueError, "x")}, TypeError, "throttle_on must name exception classes"),
        ({"total": -1}, ValueError, "total must be >= 0"),
        ({"total": 2.5}, TypeError, "total must be an int >= 0"),
        ({"journal": ""}, ValueError, "journal= got an empty path (an unset variable?)"),
        ({"journal": "run.db\x00"}, ValueError, "journal='run.db\\x00' holds a NUL byte"),
    ],
)
@pytest.mark.parametrize("front", [manyhands.run, manyhands.map])
def test_bad_option_is_refused_at_the_call(
    front: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    calls = []
    with pytest.raises(error) as caught:
        front(calls.append, [1, 2, 3], **kwargs)
    assert message in str(caught.value)
    assert calls == []


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX device file")
@pytest.mark.parametrize("front", [manyhands.run, manyhands.map])
def test_a_journal_that_is_not_a_regular_file_is_refused_at_the_call(front: Any) -> None:
    calls = []
    with pytest.raises(manyhands.JournalError, match=r"journal='/dev/null' is not a regular file"):
        front(calls.append, [1, 2, 3], journal="/dev/null")
    assert calls == []


@pytest.mark.parametrize("front", [manyhands.run, manyhands.map])
def test_fn_must_be_callable(front: Any) -> None:
    with pytest.raises(TypeError, match="fn must be callable"):
        front("print", [1])


@pytest.mark.parametrize("front", [manyhands.run, manyhands.map])
def test_items_must_be_iterable(front: Any) -> None:
    with pytest.raises(TypeError, match=r"items must be an iterable .* got int"):
        front(print, 42)


def test_default_workers_is_documented_and_used() -> None:
    gate = threading.Barrier(manyhands.DEFAULT_WORKERS, timeout=5)
    probe = PeakConcurrency()
    # all 32 calls must be running at once to pass the barrier, else it times out
    report = manyhands.run(probe.wrap(lambda x: gate.wait()), range(manyhands.DEFAULT_WORKERS))
    assert report.ok, report
    assert probe.peak == manyhands.DEFAULT_WORKERS == 32

    probe = PeakConcurrency()
    manyhands.run(probe.wrap(lambda x: time.sleep(0.002)), range(500))
    assert probe.peak == 32  # and never more
    assert "default 32" in (manyhands.RunOptions.__doc__ or "")


def test_explicit_batch_size_is_honoured() -> None:
    seen: dict[int, list[int]] = {}

    def work(x: int) -> int:
        seen.setdefault(threading.get_ident(), []).append(x)
        return x

    report = manyhands.run(work, range(1000), workers=4, batch_size=25)
    assert report.succeeded == 1000
    for items in seen.values():
        blocks = [items[i : i + 25] for i in range(0, len(items), 25)]
        for block in blocks:  # each batch is 25 consecutive items, run by one worker
            assert block == list(range(block[0], block[0] + 25))
            assert block[0] % 25 == 0


@pytest.mark.parametrize("backend", ["threads", "async"])
def test_the_longest_grace_accepted_is_one_a_run_can_end_with(backend: str) -> None:
    import asyncio

    async def same_async(x: int) -> int:
        await asyncio.sleep(0)
        return x

    fn: Any = same_async if backend == "async" else (lambda x: x)
    report = manyhands.run(fn, range(3), backend=backend, grace=threading.TIMEOUT_MAX)
    assert report.succeeded == 3


def _init(tag: str) -> None:
    raise AssertionError("an initializer must not run where it is refused")


async def _async_identity(x: int) -> int:
    return x


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initializer": _init, "initargs": ("x",)},
        {"initializer": _init},
        {"start_method": "spawn"},
        {"start_timeout": 5},
        {"initializer": _init, "backend": "threads"},
    ],
)
@pytest.mark.parametrize("front", [manyhands.run, manyhands.map])
def test_worker_process_options_are_refused_on_threads(front: Any, kwargs: dict[str, Any]) -> None:
    # Left out backend= runs threads: an initializer there ran nothing, and every
    # call then failed on what it should have set up (50 of 50 AttributeErrors).
    calls: list[int] = []
    with pytest.raises(ValueError, match="to worker processes only") as caught:
        front(calls.append, [1, 2, 3], **kwargs)
    named = next(name for name in kwargs if name != "backend")
    assert f"{named}=" in str(caught.value)
    assert "backend='processes'" in str(caught.value)
    assert calls == []


@pytest.mark.parametrize("backend", ["dask", "tcp://127.0.0.1:8786"])
def test_worker_process_options_on_dask_say_where_they_apply(backend: str) -> None:
    # A Dask cluster does start worker processes: "starts none" was false there.
    with pytest.raises(ValueError) as caught:
        manyhands.run(_init, [1], backend=backend, initializer=_init, start_timeout=5)
    message = str(caught.value)
    assert "starts none" not in message
    assert message.count("initializer=, start_timeout=") == 2  # what was given; leave it out
    assert "backend='processes' only" in message and "Dask cluster's workers" in message


def test_worker_process_options_on_an_executor_point_to_its_own() -> None:
    import concurrent.futures

    message = r"ProcessPoolExecutor\(initializer="
    with (
        concurrent.futures.ThreadPoolExecutor(1) as executor,
        pytest.raises(ValueError, match=message) as caught,
    ):
        manyhands.run(_init, [1], backend=executor, initializer=_init)
    assert "0x" not in str(caught.value)  # (not the executor's repr)


def test_worker_process_options_are_refused_on_asyncio() -> None:
    import asyncio

    async def main() -> None:
        with pytest.raises(ValueError, match=r"amap\(\) got initializer= which applies"):
            manyhands.amap(_async_identity, [1], initializer=_init)
        with pytest.raises(ValueError, match=r"arun\(\) got initializer= which applies"):
            await manyhands.arun(_async_identity, [1], initializer=_init)
        with pytest.raises(ValueError, match=r"as asyncio tasks"):
            manyhands.amap(_async_identity, [1], initializer=_init, backend="auto")

    asyncio.run(main())
    with pytest.raises(ValueError, match=r"run\(\) got initializer= which applies"):
        manyhands.run(_async_identity, [1], initializer=_init)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initargs": ("x",)}, "initargs= is passed to initializer=, and none was given"),
        ({"initargs": ("x",), "backend": "processes"}, "initargs= is passed to initializer="),
        ({"durability": "full"}, "durability='full' applies to a journal, and there is none"),
        ({"changed_items": "skip"}, "changed_items='skip' applies to a journal"),
    ],
)
@pytest.mark.parametrize("front", [manyhands.run, manyhands.map])
def test_an_option_that_means_nothing_without_another_is_refused(
    front: Any, kwargs: dict[str, Any], message: str
) -> None:
    calls: list[int] = []
    with pytest.raises(ValueError) as caught:
        front(calls.append, [1, 2, 3], **kwargs)
    assert message in str(caught.value)
    assert calls == []


def test_changed_items_needs_a_key(tmp_path: Any) -> None:
    # Without key= an item's key is the item itself: it cannot change under it.
    with pytest.raises(ValueError, match=r"changed_items='rerun' applies with key= only"):
        manyhands.run(abs, [1], journal=str(tmp_path / "j.db"), changed_items="rerun")
    report = manyhands.run(
        abs, [1], journal=str(tmp_path / "j.db"), changed_items="rerun", key=lambda x: x
    )
    assert report.succeeded == 1


def test_a_pool_refuses_initargs_without_an_initializer() -> None:
    with pytest.raises(ValueError, match="initargs= is passed to initializer="):
        manyhands.Pool(workers=1, backend="processes", initargs=("x",))


def test_a_pools_runs_refuse_journal_options_without_a_journal() -> None:
    with manyhands.Pool(workers=1) as pool:
        with pytest.raises(ValueError, match="durability='full' applies to a journal"):
            pool.run(abs, [1], durability="full")
        with pytest.raises(ValueError, match="changed_items='skip' applies to a journal"):
            pool.map(abs, [1], changed_items="skip")
        assert pool.run(abs, [-1]).succeeded == 1
