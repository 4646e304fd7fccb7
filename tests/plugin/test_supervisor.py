"""The supervisor without Orthanc: real worker processes (the project's interpreter) that find no
job to do; a killed one is replaced and its job put back, a job over JobTimeout has its worker
killed and is retried, a job whose lease expired is taken back."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orthanc_plugin.job_log import JobTagFilter
from orthanc_plugin.sqlite_queue import SqliteJobQueue
from orthanc_plugin.supervisor import Supervisor
from orthanc_plugin.worker_settings import WorkerSettings


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _running_job(queue: SqliteJobQueue, pid: int, started_at: float, lease_until: float | None = None) -> int:
    """A job as if worker ``pid`` had claimed it (written directly: no worker can claim it first)."""
    with queue._transaction() as db:
        cursor = db.execute(
            "INSERT INTO jobs (series, kind, trigger, state, attempts, max_attempts, params, worker_pid, started_at,"
            " lease_until, created_at, updated_at) VALUES ('s1', 'convert', 'stable', 'running', 1, 3, '{}', ?, ?, ?,"
            " ?, ?)",
            (pid, started_at, lease_until, started_at, started_at),
        )
    return int(cursor.lastrowid or 0)


Supervised = tuple[Supervisor, SqliteJobQueue, list[str]]


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Supervised]:
    state = tmp_path / "state"
    settings = WorkerSettings(state_dir=str(state), bids_root=str(tmp_path / "bids"),
                              orthanc_url="http://127.0.0.1:9", max_attempts=3)
    queue = SqliteJobQueue(state)
    messages: list[str] = []
    tags = JobTagFilter()

    def log(message: str) -> None:  # as the plugin's log handler writes it: the job's tag first
        record = logging.makeLogRecord({"msg": message})
        tags.filter(record)
        messages.append(f"{record.job_tag}{message}")

    supervisor = Supervisor(python=Path(sys.executable), settings=settings, queue=queue, workers=1, job_timeout=1.0,
                            authorization=None, log=log, stop_timeout=5.0)
    supervisor.start()
    _wait(lambda: len(supervisor.pids()) == 1, 30, "the worker to start")
    yield supervisor, queue, messages
    supervisor.stop()
    queue.close()


def test_a_dead_worker_is_replaced_and_its_job_put_back(supervised: Supervised) -> None:
    supervisor, queue, messages = supervised
    (pid,) = supervisor.pids()
    job_id = _running_job(queue, pid, time.time())
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: supervisor.pids() not in ([], [pid]), 30, "a new worker")
    job = queue.get(job_id)
    assert job is not None and job.attempts == 1 and "died (signal 9)" in str(job.error)
    assert any(m.startswith(f"job={job_id} series=s1 ") and f"worker {pid} ended (signal 9)" in m for m in messages)
    assert supervisor.restarts == 1


def test_a_job_over_job_timeout_has_its_worker_killed(supervised: Supervised) -> None:
    supervisor, queue, messages = supervised
    (pid,) = supervisor.pids()
    job_id = _running_job(queue, pid, time.time() - 5)
    _wait(lambda: (job := queue.get(job_id)) is not None and "JobTimeout" in str(job.error), 30,
          "the job to be put back")
    _wait(lambda: supervisor.pids() not in ([], [pid]), 30, "the worker to be replaced")
    assert any(m.startswith(f"job={job_id} series=s1 ") and "exceeded JobTimeout" in m for m in messages)
    assert supervisor.restarts == 1


def test_an_expired_lease_is_taken_back(supervised: Supervised) -> None:
    _supervisor, queue, messages = supervised
    job_id = _running_job(queue, 999999, time.time(), lease_until=time.time() - 1)
    _wait(lambda: (job := queue.get(job_id)) is not None and job.state != "running", 30, "the job to be put back")
    job = queue.get(job_id)
    assert job is not None and "lease" in str(job.error)
    assert any(m.startswith(f"job={job_id} series=s1 ") and "lease expired" in m for m in messages)
