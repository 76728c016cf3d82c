"""Memory is bounded by the in-flight window, never by the input's length."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator

import manyhands


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
