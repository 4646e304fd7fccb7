"""The contract of :class:`orthanc_plugin.job_queue.JobQueue`, run against every implementation
(real databases, several connections and processes). A new queue (PostgreSQL) is added to
``IMPLEMENTATIONS`` and must pass the same tests."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from converters.records import SeriesResult
from orthanc_plugin.job_queue import JobQueue, QueueCount, RetryPolicy
from orthanc_plugin.jobs import ConvertJob, ConvertResult, Deferred, Outcome, PushJob, SegmentJob
from orthanc_plugin.sqlite_queue import SqliteJobQueue

#: name -> factory(state folder, max_attempts) of a fresh queue; every call opens a new connection.
IMPLEMENTATIONS: dict[str, Callable[[Path, int], JobQueue]] = {
    "sqlite": lambda folder, attempts: SqliteJobQueue(folder, max_attempts=attempts,
                                                      retry_policy=RetryPolicy(base=30.0, cap=60.0)),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., JobQueue]]:
    opened: list[JobQueue] = []

    def open_queue(attempts: int = 3) -> JobQueue:
        queue = IMPLEMENTATIONS[request.param](tmp_path, attempts)
        opened.append(queue)
        return queue

    yield open_queue
    for queue in opened:
        queue.close()


def _runnable_now(queue: JobQueue, job_id: int) -> None:
    """Skip a job's backoff (tests only: through the SQLite connection)."""
    assert isinstance(queue, SqliteJobQueue)
    queue._db.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (job_id,))


def _done(outputs: tuple[str, ...] = ()) -> Outcome:
    return Outcome("done", ConvertResult(SeriesResult("1.2", "t1", "converted", outputs=outputs)), outputs)


def test_enqueue_coalesces_queued_jobs_of_one_series_kind_and_parameters(opener: Callable[..., JobQueue]) -> None:
    queue = opener()
    first = queue.enqueue("s1", "stable", ConvertJob())
    assert queue.enqueue("s1", "catch-up", ConvertJob()) == first
    assert queue.enqueue("s2", "stable", ConvertJob()) != first
    assert queue.enqueue("s1", "manual", ConvertJob(derive=("adc",))) != first
    assert queue.counts() == {"queued": 3}


def test_parameters_come_back_typed(opener: Callable[..., JobQueue]) -> None:
    queue = opener()
    push = PushJob(server="x", project="P", subject="", session="", dataset_root="/d", series_uid="1.2",
                   bids_subject="01", bids_session=None, outputs=("a.nii.gz",), derived_instances=("i1",))
    ids = [queue.enqueue("s", "rule", push), queue.enqueue("s", "manual", SegmentJob(labelmap="/u/l.nii.gz"))]
    jobs = [queue.get(job_id) for job_id in ids]
    assert [job.params for job in jobs if job] == [push, SegmentJob(labelmap="/u/l.nii.gz")]
    assert [job.kind for job in jobs if job] == ["push", "segment"]


def test_claim_never_runs_two_jobs_of_one_series(opener: Callable[..., JobQueue]) -> None:
    queue = opener()
    queue.enqueue("s1", "stable", ConvertJob())
    job = queue.claim(100)
    assert job is not None and job.state == "running" and job.attempts == 1 and job.worker_pid == 100
    # The series becomes stable again while it runs: a new job waits for the running one.
    second = queue.enqueue("s1", "stable", ConvertJob())
    assert second != job.id
    assert queue.claim(101) is None
    queue.finish(job.id, _done(("b.nii.gz", "a.json")))
    done = queue.get(job.id)
    assert done is not None and done.state == "done" and done.outputs == ("a.json", "b.nii.gz")
    assert done.convert_result() == ConvertResult(SeriesResult("1.2", "t1", "converted", outputs=("b.nii.gz",
                                                                                                   "a.json")))
    again = queue.claim(101)
    assert again is not None and again.id == second


def test_failed_attempts_retry_after_a_backoff_then_fail_with_the_reason(opener: Callable[..., JobQueue]) -> None:
    queue = opener(attempts=2)
    job_id = queue.enqueue("s1", "stable", ConvertJob())
    assert queue.claim(1) is not None
    assert queue.fail(job_id, "boom 1") == "queued"
    assert queue.claim(1) is None  # backoff: not runnable yet
    _runnable_now(queue, job_id)
    job = queue.claim(1)
    assert job is not None and job.attempts == 2
    assert queue.fail(job_id, "boom 2") == "failed"
    failed = queue.get(job_id)
    assert failed is not None and failed.state == "failed" and failed.error == "boom 2"
    # Every attempt's reason is kept, not only the last.
    assert [(a.attempt, a.reason) for a in failed.history] == [(1, "boom 1"), (2, "boom 2")]
    assert failed.to_dict()["history"][0]["reason"] == "boom 1"
    retried = queue.retry(job_id)
    assert retried is not None and retried.state == "queued" and retried.attempts == 0
    assert len(retried.history) == 2  # a retry by hand keeps the history


def test_a_permanent_failure_fails_at_once_and_retry_after_is_honoured(opener: Callable[..., JobQueue]) -> None:
    queue = opener(attempts=5)
    doomed = queue.enqueue("a", "stable", ConvertJob())
    later = queue.enqueue("b", "stable", ConvertJob())
    queue.claim(1)
    queue.claim(2)
    assert queue.fail(doomed, "not DICOM", permanent=True) == "failed"
    assert queue.fail(later, "Orthanc busy", retry_after=0.0) == "queued"
    again = queue.claim(3)
    assert again is not None and again.id == later and again.attempts == 2


def test_a_deferred_job_waits_without_spending_an_attempt(opener: Callable[..., JobQueue]) -> None:
    queue = opener(attempts=1)
    job_id = queue.enqueue("s1", "stable", ConvertJob())
    assert queue.claim(1) is not None
    queue.defer(job_id, Deferred(0.0, "waiting for series 7006", waiting_since=123.0, acquisition="2.25.1"))
    waiting = queue.get(job_id)
    assert waiting is not None and waiting.state == "queued" and waiting.attempts == 0
    assert waiting.error == "waiting for series 7006" and waiting.waiting_since == 123.0
    job = queue.claim(1)
    assert job is not None and job.attempts == 1 and job.waiting_since == 123.0  # one attempt still left


def test_release_gives_the_job_back_without_counting(opener: Callable[..., JobQueue]) -> None:
    queue = opener(attempts=1)
    job_id = queue.enqueue("s1", "stable", ConvertJob())
    queue.claim(1)
    queue.release(job_id)
    job = queue.get(job_id)
    assert job is not None and (job.state, job.attempts) == ("queued", 0)


def test_dead_worker_jobs_are_requeued_and_a_clean_stop_does_not_count(opener: Callable[..., JobQueue]) -> None:
    queue = opener(attempts=2)
    a = queue.enqueue("a", "stable", ConvertJob())
    b = queue.enqueue("b", "stable", ConvertJob())
    assert queue.claim(7) is not None and queue.claim(8) is not None
    assert queue.requeue_worker(7, "worker died") == [a]
    job_a = queue.get(a)
    assert job_a is not None and job_a.state == "queued" and job_a.attempts == 1
    assert [h.reason for h in job_a.history] == ["worker died"]
    assert queue.requeue_worker(None, "Orthanc stopped", count_attempt=False) == [b]
    job_b = queue.get(b)
    assert job_b is not None and job_b.state == "queued" and job_b.attempts == 0 and job_b.history == ()
    # A crashed attempt waits its backoff like any failure; a clean stop does not.
    claimed = queue.claim(9)
    assert claimed is not None and claimed.id == b
    _runnable_now(queue, a)
    queue.claim(9)
    # A job that kills its worker max_attempts times is failed with the reason.
    queue.requeue_worker(9, "worker died again")
    job_a = queue.get(a)
    assert job_a is not None and job_a.state == "failed" and job_a.error == "worker died again"


def test_only_the_worker_holding_a_job_records_its_end(opener: Callable[..., JobQueue]) -> None:
    queue = opener()
    job_id = queue.enqueue("s1", "stable", ConvertJob())
    queue.claim(5)
    queue.requeue_worker(5, "lease lost")  # meanwhile given to another worker
    _runnable_now(queue, job_id)
    assert queue.claim(6) is not None
    assert not queue.finish(job_id, _done(), worker=5)  # the old worker's late answer is ignored
    queue.fail(job_id, "late failure", worker=5)
    job = queue.get(job_id)
    assert job is not None and (job.state, job.worker_pid) == ("running", 6)
    assert queue.finish(job_id, _done(), worker=6)


def test_the_retry_policy_doubles_the_wait_up_to_its_cap() -> None:
    policy = RetryPolicy(base=2.0, cap=10.0)
    for attempts, full in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (30, 10.0)]:
        delays = [policy.delay(attempts) for _ in range(50)]
        assert all(0.75 * full <= d <= full for d in delays), (attempts, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered


def test_a_lease_is_renewed_by_heartbeats_and_an_expired_one_is_taken_back(opener: Callable[..., JobQueue]) -> None:
    queue = opener()
    job_id = queue.enqueue("s1", "stable", ConvertJob())
    job = queue.claim(5, lease_seconds=0.2)
    assert job is not None and job.lease_until is not None
    assert queue.heartbeat(job_id, 5, lease_seconds=60.0)
    assert not queue.heartbeat(job_id, 6)  # not that worker's job
    time.sleep(0.3)
    assert queue.requeue_expired("lease expired") == []  # renewed: still held
    assert queue.heartbeat(job_id, 5, lease_seconds=0.1)
    time.sleep(0.2)
    assert queue.requeue_expired("lease expired") == [job_id]
    expired = queue.get(job_id)
    assert expired is not None and (expired.state, expired.attempts, expired.error) == ("queued", 1, "lease expired")
    assert not queue.heartbeat(job_id, 5)  # the worker learns that it lost the job


def test_listing_filters_and_orders_newest_first(opener: Callable[..., JobQueue]) -> None:
    queue = opener()
    ids = [queue.enqueue(f"s{i}", "stable", ConvertJob()) for i in range(3)]
    queue.claim(1)
    queue.finish(ids[0], _done())
    assert [job.id for job in queue.list()] == ids[::-1]
    assert [job.id for job in queue.list(state="done")] == [ids[0]]
    assert [job.id for job in queue.list(series="s2")] == [ids[2]]
    assert [job.id for job in queue.list(limit=1, offset=1)] == [ids[1]]
    latest = queue.latest_for_series("s0")
    assert latest is not None and latest.id == ids[0]
    assert queue.latest_for_series("s1") is None  # only finished jobs by default
    assert (queue.newest_job_time("s1") or 0) > 0 and queue.newest_job_time("nope") is None
    assert queue.counts() == {"done": 1, "queued": 2}


def test_meta_values_persist_across_connections(opener: Callable[..., JobQueue]) -> None:
    opener().set_meta("changes_cursor", "42")
    assert opener().get_meta("changes_cursor") == "42"
    assert opener().get_meta("missing") is None


def test_every_counted_attempt_end_is_logged_once_in_order(opener: Callable[..., JobQueue]) -> None:
    queue = opener(attempts=2)
    done = queue.enqueue("a", "stable", ConvertJob())
    flaky = queue.enqueue("b", "stable", ConvertJob())
    crashed = queue.enqueue("c", "stable", ConvertJob())
    push = queue.enqueue("d", "rule", PushJob(server="x", project="P", subject="", session="", dataset_root="/d",
                                              series_uid="1.2", bids_subject="01", bids_session=None, outputs=()))
    for worker in (1, 2, 3, 4):
        assert queue.claim(worker) is not None
    queue.finish(done, _done())
    queue.fail(flaky, "boom")  # attempts left: retried
    queue.requeue_worker(3, "worker died")  # a counted attempt: retried
    queue.defer(push, Deferred(0.0, "waiting", waiting_since=1.0))  # no attempt spent: not logged
    assert queue.claim(4) is not None
    queue.finish(push, Outcome("skipped", reason="nothing to deliver"))
    _runnable_now(queue, flaky)
    _runnable_now(queue, crashed)
    assert queue.claim(5) is not None and queue.claim(6) is not None
    queue.fail(flaky, "not DICOM", permanent=True)
    queue.requeue_worker(None, "Orthanc stopped", count_attempt=False)  # the crashed one again: not counted
    queue.retry(done)  # by hand: not an attempt's end
    events = queue.events()
    assert [(e.job_id, e.kind, e.end) for e in events] == [
        (done, "convert", "done"), (flaky, "convert", "retried"), (crashed, "convert", "retried"),
        (push, "push", "skipped"), (flaky, "convert", "failed"),
    ]
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert all(e.seconds is not None and e.seconds >= 0 and e.at > 0 for e in events)
    assert queue.events(events[1].seq) == events[2:]
    assert queue.events(limit=2) == events[:2]
    assert opener().events() == events  # another connection reads the same log
    assert set(queue.counts_by_kind()) == {QueueCount("queued", "convert", 2), QueueCount("failed", "convert", 1),
                                           QueueCount("skipped", "push", 1)}


def _claim_all(name: str, state_dir: str, pid: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = IMPLEMENTATIONS[name](Path(state_dir), 3)
    claimed = []
    while (job := queue.claim(pid)) is not None:
        claimed.append(job.id)
        queue.finish(job.id, _done())
    out.put(claimed)


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
def test_concurrent_processes_claim_each_job_exactly_once(name: str, tmp_path: Path) -> None:
    queue = IMPLEMENTATIONS[name](tmp_path, 3)
    ids = {queue.enqueue(f"s{i}", "stable", ConvertJob()) for i in range(60)}
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(name, str(tmp_path), 1000 + i, out)) for i in range(4)]
    for proc in procs:
        proc.start()
    claimed = [job for _ in procs for job in out.get(timeout=60)]
    for proc in procs:
        proc.join(timeout=60)
    assert sorted(claimed) == sorted(ids)
    assert queue.counts() == {"done": 60}


def _wait_then_claim(name: str, state_dir: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = IMPLEMENTATIONS[name](Path(state_dir), 3)
    assert queue.claim(2000) is None
    out.put("waiting")
    started = time.monotonic()
    queue.wait_for_work(120.0)
    job = queue.claim(2000)
    out.put((time.monotonic() - started, None if job is None else job.series))
    queue.close()


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
def test_an_idle_worker_is_woken_by_a_job_queued_in_another_process(name: str, tmp_path: Path) -> None:
    """A waiting worker does not sleep out its poll interval when work arrives (the plugin
    queues in Orthanc's process, workers wait in theirs)."""
    queue = IMPLEMENTATIONS[name](tmp_path, 3)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_wait_then_claim, args=(name, str(tmp_path), out))
    proc.start()
    try:
        assert out.get(timeout=60) == "waiting"
        time.sleep(0.5)  # let it reach its wait
        queue.enqueue("woken", "stable", ConvertJob())
        waited, series = out.get(timeout=110)
    finally:
        proc.join(timeout=10)
        queue.close()
    assert series == "woken"
    assert waited < 60, "woke at its timeout, not by the new job"
