"""The server zoo: each limit on a fake clock, and behind the loopback HTTP API."""

from __future__ import annotations

import asyncio
import urllib.error

import pytest

import manyhands
from manyhands._demo_api import Refused, afetch, fetch, is_throttle, serve
from manyhands._servers import (
    MODELS,
    Changing,
    ConcurrencyCap,
    FixedWindow,
    Overload,
    SlidingWindow,
    TokenBucket,
    bound_of,
)


def statuses(model: object, times: list[float]) -> list[int]:
    return [model.request(t).status for t in times]  # type: ignore[attr-defined]


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=100, burst=5)
    assert statuses(bucket, [0.0] * 6) == [200] * 5 + [429]
    assert statuses(bucket, [0.01, 0.01]) == [200, 429]  # one token per 10 ms
    assert bucket.request(0.01).retry_after == 1.0  # seconds, rounded up


@pytest.mark.parametrize("count_rejected", [False, True])
def test_sliding_window_counts_rejected_requests_only_if_told(count_rejected: bool) -> None:
    log = SlidingWindow(limit=3, window=1.0, count_rejected=count_rejected)
    assert statuses(log, [0.0, 0.1, 0.2]) == [200] * 3
    # A client that keeps asking while refused: every 0.1 s for a second.
    refused = statuses(log, [0.3 + 0.1 * n for n in range(7)])
    assert refused == [429] * 7
    # The first requests have left the window; the refused ones only count if told.
    after = statuses(log, [1.05, 1.15, 1.25])
    assert after == ([429] * 3 if count_rejected else [200] * 3)


def test_fixed_window_resets_on_the_second_and_says_when() -> None:
    fixed = FixedWindow(limit=2, window=1.0, retry_after="date")
    assert statuses(fixed, [10.2, 10.3]) == [200, 200]
    refused = fixed.request(10.75)
    assert refused.status == 429 and refused.retry_after == pytest.approx(0.25)
    assert fixed.request(11.0).status == 200


def test_retry_after_wording() -> None:
    assert SlidingWindow(1, retry_after=None).request(0.0).accepted
    silent = SlidingWindow(1, retry_after=None)
    silent.request(0.0)
    assert silent.request(0.5).retry_after is None
    seconds = SlidingWindow(1)
    seconds.request(0.0)
    assert seconds.request(0.5).retry_after == 1.0


def test_concurrency_cap_refuses_above_its_limit_with_its_status() -> None:
    cap = ConcurrencyCap(limit=2, latency=0.1, status=503, retry_after=None)
    answers = [cap.request(0.0) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 503]
    assert answers[2].retry_after is None and answers[2].latency == 0.0
    assert cap.request(0.1).status == 200  # the first two finished


def test_overload_only_gets_slower() -> None:
    queue = Overload(servers=2, service=0.1)
    answers = [queue.request(0.0) for _ in range(6)]
    assert all(a.accepted for a in answers)
    assert [round(a.latency, 3) for a in answers] == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]
    assert queue.request(1.0).latency == pytest.approx(0.1)  # the queue drained


def test_changing_capacity_and_its_bound() -> None:
    changing = Changing(TokenBucket(200, burst=1))  # halves after 3 s, back after 6 s
    assert bound_of(changing, 2000) == pytest.approx(3 + 3 + 1100 / 200)
    changing.request(100.0)  # the schedule counts from the first request
    assert changing.capacity == 200
    changing.request(103.5)
    assert changing.capacity == 100
    changing.request(106.0)
    assert changing.capacity == 200


def test_every_model_of_the_zoo_starts_fresh_at_the_same_capacity() -> None:
    for name, make in MODELS.items():
        model = make()
        assert model.capacity == 200, name
        assert make() is not model


def test_http_api_words_retry_after_as_each_model_says() -> None:
    with serve(SlidingWindow(1, retry_after="date")) as (base, counters):
        assert fetch(f"{base}/items/1") == "/items/1"
        with pytest.raises(manyhands.RetryAfter) as dated:
            fetch(f"{base}/items/2")
    assert 0 < dated.value.retry_after <= 2.0  # an HTTP date: whole seconds
    assert (counters.requests, counters.throttled) == (2, 1)
    with serve(SlidingWindow(1, retry_after=None)) as (base, counters):
        fetch(f"{base}/items/1")
        with pytest.raises(Refused) as silent:
            fetch(f"{base}/items/2")
    assert silent.value.code == 429 and is_throttle(silent.value)


def test_async_client_reads_the_same_answers() -> None:
    async def together(base: str) -> list[object]:
        calls = [afetch(f"{base}/items/{n}") for n in (1, 2)]
        return list(await asyncio.gather(*calls, return_exceptions=True))

    with serve(ConcurrencyCap(limit=1, latency=0.5, status=503, retry_after=None)) as (base, _):
        answers = asyncio.run(together(base))
    # One call is served; the other arrives while it is in progress and is refused.
    assert sorted(map(type, answers), key=str) == sorted([str, Refused], key=str)
    refused = next(a for a in answers if isinstance(a, Refused))
    assert refused.code == 503 and is_throttle(refused)


def test_async_client_refusal_with_retry_after() -> None:
    async def two(base: str) -> BaseException | None:
        await afetch(f"{base}/items/1")
        try:
            await afetch(f"{base}/items/2")
        except Exception as exc:
            return exc
        return None

    with serve(TokenBucket(rate=0.5, burst=1)) as (base, _):
        error = asyncio.run(two(base))
    assert isinstance(error, manyhands.RetryAfter) and error.retry_after == 2.0


def test_missing_items_are_404_and_not_transient() -> None:
    with (
        serve(TokenBucket(1000, burst=1000), missing_every=2) as (base, counters),
        pytest.raises(urllib.error.HTTPError) as missing,
    ):
        fetch(f"{base}/items/1")
    assert missing.value.code == 404 and counters.missing == 1
