"""What the journal calls done reached the consumer: map, amap and a consumer that leaves."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import manyhands


def recorded(journal: Path) -> dict[str, str]:
    with sqlite3.connect(journal) as db:
        found = dict(db.execute("SELECT key, state FROM items").fetchall())
    db.close()
    return found


def statuses(journal: Path) -> list[str]:
    with sqlite3.connect(journal) as db:
        found = [row[0] for row in db.execute("SELECT status FROM runs ORDER BY id")]
    db.close()
    return found


@pytest.mark.parametrize("ordered", [False, True])
def test_break_records_only_the_outcomes_the_consumer_got(tmp_path: Path, ordered: bool) -> None:
    journal = tmp_path / "j.db"
    seen = []
    for out in manyhands.map(abs, range(100), workers=20, journal=journal, ordered=ordered):
        seen.append(out.item)
        if len(seen) == 5:
            break
    assert sorted(recorded(journal)) == sorted(str(item) for item in seen)
    # The resume runs every other item, and skips exactly those five.
    outs = list(manyhands.map(abs, range(100), workers=20, journal=journal))
    assert sorted(o.item for o in outs if o.skipped) == sorted(seen)
    assert sum(1 for o in outs if not o.skipped and o.ok) == 95


def as_list(x: int) -> list[int]:
    time.sleep(0.005)
    return [x]


def as_set(x: int) -> set[int]:
    time.sleep(0.005)
    return {x}


@pytest.mark.parametrize("fn", [as_list, as_set])
def test_break_with_store_results_records_late_outcomes_only_with_their_values(
    tmp_path: Path, fn: Any
) -> None:
    """Outcomes that finished after you left are kept when their value is: a resume gives it."""
    journal = tmp_path / "j.db"
    seen = []
    options: dict[str, Any] = {"workers": 8, "journal": journal, "store_results": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", manyhands.JournalWarning)  # (a set is not JSON)
        for out in manyhands.map(fn, range(300), **options):
            seen.append(out.item)
            if len(seen) == 100:
                break
        late = set(recorded(journal)) - {str(item) for item in seen}
        resumed = list(manyhands.map(fn, range(300), **options))
    if fn is as_set:  # no value to give back: they run again instead
        assert not late
    for out in resumed:
        if str(out.item) in late:
            assert out.skipped and out.value == [out.item]
    assert sorted(out.item for out in resumed) == list(range(300))


def test_break_after_retries_and_failures_records_what_was_seen(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    tries: dict[int, int] = {}

    def flaky(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        if x % 3 == 0 and tries[x] == 1:
            raise ConnectionError(x)
        if x % 7 == 0:
            raise ValueError(x)
        return x

    seen = {}
    policy = manyhands.Retry(2, backoff=0.0)
    for out in manyhands.map(flaky, range(200), workers=4, retry=policy, journal=journal):
        seen[str(out.item)] = "done" if out.ok else "failed"
        if len(seen) == 60:
            break
    assert recorded(journal) == seen


def test_amap_break_records_only_what_was_seen(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def main() -> list[int]:
        seen = []
        async with manyhands.amap(double, range(1000), journal=journal) as outs:
            async for out in outs:
                seen.append(out.item)
                if len(seen) == 7:
                    break
        return seen

    seen = asyncio.run(main())
    assert sorted(recorded(journal)) == sorted(str(item) for item in seen)


def test_before_record_runs_before_rows_are_handed_to_the_journal(tmp_path: Path) -> None:
    from manyhands._api import open_run
    from manyhands._stream import Outcomes

    journal = tmp_path / "j.db"
    engine = open_run("map", abs, range(50), {"journal": journal, "workers": 4})
    written: list[int] = []
    flushed: list[int] = []
    engine.before_record = lambda: flushed.extend(written[len(flushed) :])
    for out in Outcomes(engine):
        written.append(out.item)
    assert flushed == written  # every line was "flushed" before its row could commit
    assert len(recorded(journal)) == 50


class Terminated(KeyboardInterrupt):
    run_status = "terminated"


def test_an_interrupting_exception_names_how_the_run_ended(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    with pytest.raises(Terminated), manyhands.map(abs, range(100), journal=journal) as outs:
        for _ in outs:
            raise Terminated

    def stop(x: int) -> int:
        raise Terminated  # fails only its item: it is the function's own exception

    assert manyhands.run(stop, [1], journal=tmp_path / "k.db").failed == 1
    assert statuses(journal) == ["terminated"]


def test_a_signal_that_raises_during_run_names_how_the_run_ended(tmp_path: Path) -> None:
    import signal
    import time

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    journal = tmp_path / "j.db"
    previous = signal.signal(signal.SIGALRM, terminate)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Terminated):
            manyhands.run(lambda x: time.sleep(0.01), range(10_000), workers=4, journal=journal)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert statuses(journal) == ["terminated"]
    assert 0 < len(recorded(journal)) < 10_000
