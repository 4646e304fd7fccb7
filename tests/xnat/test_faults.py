"""Delivery through a failing XNAT: 30 % of requests fail and XNAT goes away for a while in the middle.

The test drives :func:`push_session` the way the plugin's durable queue does: a retryable error
(``XnatUnavailable``, ``XnatVerificationError``) means "try the job again later"; any other error
fails the test. At the end every planned file is in XNAT with the local size and MD5, nothing
else is, and no write was refused as a duplicate.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.xnat.conftest import PROJECT, make_destination
from tests.xnat.test_push import SESSION, SUBJECT, expected_files, stored_files
from tests.xnat_emulator import FaultKind, FaultPlan, XnatEmulator
from xnat_container import XnatError, push_session

pytestmark = pytest.mark.slow

MAX_JOB_ATTEMPTS = 30


def _outage_after(emulator: XnatEmulator, requests: int, seconds: float, happened: threading.Event) -> None:
    """Make XNAT unreachable for ``seconds`` once it has served ``requests`` requests."""
    deadline = time.monotonic() + 60
    while len(emulator.requests) < requests and time.monotonic() < deadline:
        time.sleep(0.01)
    emulator.make_unreachable(seconds=seconds)
    happened.set()


def test_thirty_percent_failures_and_an_outage_deliver_everything_once(xa30_bids: Path, emulator: XnatEmulator):
    # The client's own retries (5, the default) absorb most faults; the 2 s outage outlasts them
    # (backoff capped at 0.2 s), so the job fails retryably and is run again, as the plugin's queue does.
    destination = make_destination(
        emulator.url, retries=5, backoff_seconds=0.02, max_backoff_seconds=0.2, read_timeout=0.5
    )
    emulator.faults = FaultPlan(
        error_rate=0.10,
        timeout_rate=0.04,
        timeout_seconds=1.0,
        drop_rate=0.10,
        fail_after_write_rate=0.06,
        fail_after_write_as=FaultKind.TIMEOUT_AFTER_WRITE,
    )
    outage = threading.Event()
    watcher = threading.Thread(target=_outage_after, args=(emulator, 120, 2.0, outage), daemon=True)
    watcher.start()

    failures: list[str] = []
    report = None
    started = time.monotonic()
    for _attempt in range(MAX_JOB_ATTEMPTS):
        try:
            report = push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
            break
        except XnatError as exc:
            assert exc.retryable, f"a permanent error under transient faults: {exc!r}"
            failures.append(f"{type(exc).__name__} ({str(exc).rsplit('(', 1)[-1].rstrip(')')})")
    watcher.join(timeout=10)
    elapsed = time.monotonic() - started
    emulator.clear_faults()

    expected = expected_files(xa30_bids)
    stored = stored_files(emulator)
    missing = expected - stored
    unexpected = stored - expected
    requests = emulator.requests
    faulted = sum(1 for r in requests if r.fault is not None)
    after_write = sum(1 for r in requests if r.fault is not None and r.fault.after_write)
    print(
        f"\nfault test: {len(requests)} requests served, {faulted} faulted ({faulted / len(requests):.0%}; "
        f"{after_write} after the write), outage={outage.is_set()}, job attempts={len(failures) + 1} "
        f"(failed: {failures}), files expected={len(expected)} stored={len(stored)} missing={len(missing)} "
        f"unexpected={len(unexpected)} duplicates={emulator.duplicate_file_writes}, {elapsed:.1f}s"
    )
    assert report is not None, f"not delivered after {MAX_JOB_ATTEMPTS} job attempts: {failures}"
    assert outage.is_set() and any("connection refused" in failure for failure in failures)
    assert faulted / len(requests) >= 0.2 and after_write >= 1
    assert missing == set() and unexpected == set()
    assert emulator.duplicate_file_writes == 0
    inventory = emulator.inventory()
    assert len(inventory.subjects) == 1 and len(inventory.experiments) == 1
    assert report.files_verified == len(expected)

    # A clean re-push afterwards changes nothing.
    again = push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    assert again.files_uploaded == 0 and stored_files(emulator) == stored
