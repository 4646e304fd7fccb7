"""The durable job queue on its own (real SQLite files, several connections)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from orthanc_plugin.job_queue import JobQueue


def test_enqueue_coalesces_queued_jobs_of_one_series(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path)
    first = queue.enqueue("s1", "stable")
    assert queue.enqueue("s1", "stable") == first
    assert queue.enqueue("s2", "stable") != first
    assert queue.counts() == {"queued": 2}


def test_claim_never_runs_two_jobs_of_one_series(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path)
    queue.enqueue("s1", "stable")
    job = queue.claim(100)
    assert job is not None and job.state == "running" and job.attempts == 1
    # The series becomes stable again while it runs: a new job waits for the running one.
    second = queue.enqueue("s1", "stable")
    assert second != job.id
    assert queue.claim(101) is None
    queue.finish(job.id, "done", outputs=["b.nii.gz", "a.json"])
    done = queue.get(job.id)
    assert done is not None and done.state == "done" and done.outputs == ("a.json", "b.nii.gz")
    again = queue.claim(101)
    assert again is not None and again.id == second


def test_failed_attempts_retry_then_fail_with_reason(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path, max_attempts=2)
    job_id = queue.enqueue("s1", "stable")
    job = queue.claim(1)
    assert job is not None
    assert queue.fail_attempt(job_id, "boom 1") == "queued"
    assert queue.claim(1) is None  # backoff: not runnable yet
    queue._db.execute("UPDATE jobs SET not_before = 0")
    job = queue.claim(1)
    assert job is not None and job.attempts == 2
    assert queue.fail_attempt(job_id, "boom 2") == "failed"
    failed = queue.get(job_id)
    assert failed is not None and failed.state == "failed" and failed.error == "boom 2"
    retried = queue.retry(job_id)
    assert retried is not None and retried.state == "queued" and retried.attempts == 0


def test_dead_worker_jobs_are_requeued_and_clean_stop_does_not_count(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path, max_attempts=2)
    a = queue.enqueue("a", "stable")
    b = queue.enqueue("b", "stable")
    assert queue.claim(7) is not None and queue.claim(8) is not None
    assert queue.requeue_worker(7, "worker died") == [a]
    job_a = queue.get(a)
    assert job_a is not None and job_a.state == "queued" and job_a.attempts == 1
    assert queue.requeue_worker(None, "Orthanc stopped", count_attempt=False) == [b]
    job_b = queue.get(b)
    assert job_b is not None and job_b.state == "queued" and job_b.attempts == 0
    # A job that kills its worker max_attempts times is failed with the reason.
    queue.claim(9)
    queue.requeue_worker(9, "worker died again")
    job_a = queue.get(a)
    assert job_a is not None and job_a.state == "failed" and job_a.error == "worker died again"


def _claim_all(state_dir: str, pid: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = JobQueue(Path(state_dir))
    claimed = []
    while (job := queue.claim(pid)) is not None:
        claimed.append(job.id)
        queue.finish(job.id, "done")
    out.put(claimed)


def test_concurrent_processes_claim_each_job_exactly_once(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path)
    ids = {queue.enqueue(f"s{i}", "stable") for i in range(60)}
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(tmp_path), 1000 + i, out)) for i in range(4)]
    for proc in procs:
        proc.start()
    claimed = [job for _ in procs for job in out.get(timeout=60)]
    for proc in procs:
        proc.join(timeout=60)
    assert sorted(claimed) == sorted(ids)
    assert queue.counts() == {"done": 60}
