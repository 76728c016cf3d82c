"""Memory is bounded by the in-flight window, never by the input's length."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import pickle
import sqlite3
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import manyhands
from manyhands import _journal_writer


def numbers(n: int) -> Iterator[int]:
    return (i for i in range(n))


def peak_bytes(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_map_peak_does_not_grow_with_the_input(backend: str) -> None:
    def consume(n: int) -> Callable[[], object]:
        return lambda: sum(o.value for o in manyhands.map(lambda x: x * 2, numbers(n)))

    small = peak_bytes(consume(100_000))
    large = peak_bytes(consume(1_000_000))
    # 10x the input: a leak of even 8 bytes per item would add 7 MB.
    assert large < small * 1.5 + 512 * 1024, (small, large)
    assert large < 16 * 1024 * 1024


def test_run_peak_does_not_grow_with_the_input(backend: str) -> None:
    def consume(n: int) -> Callable[[], object]:
        return lambda: manyhands.run(lambda x: None if x % 97 else 1 / 0, numbers(n))

    small = peak_bytes(consume(100_000))
    large = peak_bytes(consume(1_000_000))
    assert large < small * 1.5 + 512 * 1024, (small, large)


def test_slow_consumer_does_not_buffer_the_input(backend: str) -> None:
    read = 0

    def source() -> Iterator[int]:
        nonlocal read
        for i in range(10_000_000):
            read += 1
            yield i

    for count, _ in enumerate(manyhands.map(abs, source(), window=1000), 1):
        if count == 10_000:
            break
    assert read <= 10_000 + 1000  # what was consumed, plus the window at most


class Buffer:
    """Stands for a large local (a response body, an image) in a call that fails."""


@pytest.mark.parametrize("chained", [True, False], ids=["chained", "alone"])
@pytest.mark.parametrize("kind", ["threads", "async"])
def test_kept_failures_do_not_pin_the_frames_of_their_calls(kind: str, chained: bool) -> None:
    """A kept failure keeps its traceback as text and lets go of every frame, with a chain
    (``raise ... from``) or without."""
    alive: weakref.WeakSet[Buffer] = weakref.WeakSet()

    def body(x: int) -> int:
        buffer = Buffer()  # a local of the failing frame
        alive.add(buffer)
        if x % 2 and chained:
            raise ValueError(f"item {x} failed") from KeyError(x)
        if x % 2:
            raise ValueError(f"item {x} failed")
        return x

    async def abody(x: int) -> int:
        await asyncio.sleep(0)
        return body(x)

    report = manyhands.run(abody if kind == "async" else body, range(2000), backend=kind)
    assert report.failed == 1000 and len(report.failures) == 1000
    gc.collect()
    assert len(alive) == 0, f"{len(alive)} frames' locals are still alive"
    failure = report.failures[0]
    assert "ValueError: item" in failure.traceback and "in body" in failure.traceback
    assert failure.exception is not None and failure.exception.__traceback__ is None
    assert isinstance(failure.exception.__cause__, KeyError) == chained
    assert pickle.loads(pickle.dumps(failure)).traceback == failure.traceback


def test_long_keys_from_key_fn_are_not_kept_whole_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new journal keeps the keys it records in memory (up to FRESH_KEYS): a key=
    # returning 4 KB (a whole row) kept 4 KB an item, 61 MB here. Now long keys are
    # kept as 16-byte digests (and the file still holds each key whole).
    monkeypatch.setattr(_journal_writer, "MAX_PENDING", 500)  # (rows waiting for a commit)
    n = 15_000

    def key(x: int) -> str:
        return f"{x:08d}" + "x" * 4096

    tracemalloc.start()
    try:
        outs = manyhands.map(abs, [*range(n), 5, 7], journal=tmp_path / "run.db", key=key)
        copies = sum(out.skipped == "duplicate key" for out in outs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 * 1024 * 1024, peak  # (~8 MB; keeping the keys: 61 MB more)
    assert copies == 2  # (a long key repeated is still told by its digest)
    with contextlib.closing(sqlite3.connect(tmp_path / "run.db")) as db:
        (longest,) = db.execute("SELECT max(length(key)) FROM items").fetchone()
    assert longest == 8 + 4096
    again = manyhands.run(abs, range(n), journal=tmp_path / "run.db", key=key)
    assert again.skipped == n
