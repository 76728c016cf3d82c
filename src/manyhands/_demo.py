"""``manyhands demo``: a run against a flaky, throttled API that starts and stops with it."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from ._api import run
from ._retry import Retry

__all__ = ["DEFAULT_ITEMS", "DEFAULT_JOURNAL", "run_demo"]

DEFAULT_ITEMS = 2000
DEFAULT_JOURNAL = "manyhands-demo.db"

CAPACITY = 200.0  # requests/s the API accepts before it answers 429
RATE = "250/s"  # what the demo asks for: more than the API takes, so it must slow down
MISSING_EVERY = 97  # every 97th item is a 404 that no retry fixes


def run_demo(items: int, journal: Path, fresh: bool) -> int:
    """Run the demo; print what happened and what to try next. Returns 0."""
    from ._demo_api import ItemFetcher, flaky_api, is_transient  # (http.server: only here)

    if fresh:
        _delete_journal(journal)
    resumed = journal.exists()
    out = sys.stdout
    print(
        f"Starting a local API on 127.0.0.1: 10 ms per request, {CAPACITY:.0f} requests/s at "
        "most\n(above that: 429 Too Many Requests), 5% random 503s, and every "
        f"{MISSING_EVERY}th item missing (404).\n",
        file=out,
    )
    print(
        f"manyhands.run(fetch, range({items}), workers=50,\n"
        "              retry=Retry(3, on=is_transient, backoff=0.2),  # 429, 5xx: not 404\n"
        f'              rate="{RATE}", journal="{journal}")\n',
        file=out,
        flush=True,
    )
    with flaky_api(capacity=CAPACITY, missing_every=MISSING_EVERY) as (base, counters):
        started = time.perf_counter()
        report = run(
            ItemFetcher(base),
            range(items),
            workers=50,
            retry=Retry(3, on=is_transient, backoff=0.2),
            rate=RATE,
            journal=journal,
        )
        wall = time.perf_counter() - started
    print(report, file=out)
    print(
        f"\nThe API saw {counters.requests:,} requests in {wall:.1f}s: "
        f"{counters.throttled:,} answered 429, {counters.unavailable:,} answered 503, "
        f"{counters.missing:,} answered 404.",
        file=out,
    )
    if resumed and report.skipped:
        print(
            f"This run resumed from {journal}: {report.skipped:,} items recorded by an "
            "earlier run were skipped.",
            file=out,
        )
    path = shlex.quote(str(journal))
    again = "manyhands demo"  # the same demo: the same items, the same journal
    if items != DEFAULT_ITEMS:
        again += f" --items {items}"
    if str(journal) != DEFAULT_JOURNAL:
        again += f" --journal {path}"
    steps = [
        (f"manyhands failures {path}", "the items that failed, and why"),
        (f"manyhands status {path}", "counts, errors by type, the runs"),
        (again, "again: resumes, skipping what is recorded"),
        (f"{again} --fresh", "start over"),
    ]
    width = max(len(command) for command, _ in steps) + 3
    print("\nNext:", file=out)
    for command, what in steps:
        print(f"  {command:<{width}}{what}", file=out)
    return 0


def _delete_journal(journal: Path) -> None:
    """``--fresh``: delete the demo's journal, unless it is in use or not a journal at all.

    A journal whose creation was cut short (the demo killed as it began) is
    deleted too: it holds nothing, and is no other program's file.
    """
    from ._exceptions import JournalError
    from ._inspect import creation_cut_short, read_status
    from ._journal_file import acquire_lock, lock_path, release_lock

    lock_file = lock_path(journal)
    had_lock_file = lock_file.exists()
    lock = acquire_lock(journal)  # a demo running on it: JournalError, nothing deleted
    deleted = False
    try:
        if journal.exists() and not creation_cut_short(journal):
            try:
                read_status(journal)
            except JournalError as exc:
                raise JournalError(f"--fresh deletes a manyhands journal only: {exc}") from None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{journal}{suffix}").unlink(missing_ok=True)
        deleted = True
    finally:
        release_lock(lock)
        if deleted or not had_lock_file:
            lock_file.unlink(missing_ok=True)
