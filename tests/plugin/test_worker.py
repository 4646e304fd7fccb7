"""The worker's contract for one job (``run_job``): the handler's answer or error decides the end
state — finish, defer, or fail (permanent unless the error is retryable) — and a heartbeat
keeps the lease while the handler runs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from converters.errors import DatasetError, DicomInputError
from orthanc_plugin import worker
from orthanc_plugin.handlers import JobContext
from orthanc_plugin.jobs import Deferred, Outcome
from orthanc_plugin.rest_client import OrthancUnreachable
from tests.plugin.conftest import Plant


def _run_with(plant: Plant, monkeypatch: pytest.MonkeyPatch, handler: Callable[[JobContext], object],
              **options: float) -> int:
    monkeypatch.setattr(worker, "HANDLERS", {**worker.HANDLERS, "convert": handler})
    job = plant.claim("s1")
    worker.run_job(job, plant.queue, plant.orthanc, plant.settings, plant.rules, **options)
    return job.id


def test_an_outcome_finishes_the_job(plant: Plant, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = _run_with(plant, monkeypatch, lambda ctx: Outcome("skipped", reason="nothing to do"))
    job = plant.queue.get(job_id)
    assert job is not None and (job.state, job.error, job.attempts) == ("skipped", "nothing to do", 1)


def test_a_deferral_puts_the_job_back_without_spending_an_attempt(plant: Plant,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = _run_with(plant, monkeypatch, lambda ctx: Deferred(30.0, "waiting for series 7", time.time()))
    job = plant.queue.get(job_id)
    assert job is not None and (job.state, job.attempts, job.error) == ("queued", 0, "waiting for series 7")
    assert plant.queue.claim(2) is None  # not before 30 s


def _raise(error: Exception) -> Callable[[JobContext], object]:
    def handler(ctx: JobContext) -> object:
        raise error

    return handler


def test_a_non_retryable_error_fails_the_job_at_once_with_its_message(plant: Plant,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = _run_with(plant, monkeypatch, _raise(DicomInputError("not one series", "/in")))
    job = plant.queue.get(job_id)
    assert job is not None and (job.state, job.error) == ("failed", "not one series (/in)")


def test_a_retryable_error_queues_the_job_again_after_a_backoff(plant: Plant, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = _run_with(plant, monkeypatch, _raise(DatasetError("disk full")))
    job = plant.queue.get(job_id)
    assert job is not None and (job.state, job.error) == ("queued", "DatasetError: disk full")
    assert plant.queue.claim(2) is None  # backoff


def test_orthanc_unreachable_gives_the_job_back_without_spending_an_attempt(
    plant: Plant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "HANDLERS", {**worker.HANDLERS,
                                             "convert": _raise(OrthancUnreachable("cannot reach Orthanc"))})
    job = plant.claim("s1")
    answered = worker.run_job(job, plant.queue, plant.orthanc, plant.settings, plant.rules)
    again = plant.queue.get(job.id)
    assert not answered  # the worker loop then stops claiming
    assert again is not None and (again.state, again.attempts, again.history) == ("queued", 0, ())
    assert again.error is not None and "no attempt spent" in again.error


def test_an_unexpected_exception_is_logged_and_retried(plant: Plant, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="orthanc_plugin.worker"):
        job_id = _run_with(plant, monkeypatch, _raise(KeyError("bug")))
    job = plant.queue.get(job_id)
    assert job is not None and job.state == "queued" and job.error == "KeyError: 'bug'"
    assert any("unexpected error" in record.message and record.exc_info for record in caplog.records)


def test_running_out_of_memory_fails_the_job_for_good_naming_the_setting(
    plant: Plant, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _run_with(plant, monkeypatch, _raise(MemoryError()))
    job = plant.queue.get(job_id)
    assert job is not None and job.state == "failed"
    assert job.error is not None and "BidsBridge.WorkerMemoryMB" in job.error


def test_the_memory_limit_reaches_the_worker_and_its_children() -> None:
    script = ("import resource, subprocess, sys; from orthanc_plugin.worker import _limit_memory; "
              "_limit_memory(512); "
              "print(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20); "
              "sys.stdout.flush(); subprocess.run(['sh', '-c', 'ulimit -v'], check=True)")
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert shown == ["512", str(512 * 1024)]  # ulimit -v counts KiB


def test_the_heartbeat_keeps_the_lease_of_a_long_job(plant: Plant, monkeypatch: pytest.MonkeyPatch) -> None:
    expired: list[list[int]] = []

    def slow(ctx: JobContext) -> Outcome:
        time.sleep(1.0)  # five lease periods of 0.2 s
        expired.append(ctx.queue.requeue_expired("lease expired"))
        return Outcome("done")

    job_id = _run_with(plant, monkeypatch, slow, lease_seconds=0.2)
    job = plant.queue.get(job_id)
    assert expired == [[]] and job is not None and job.state == "done"


def test_a_worker_runs_below_orthancs_cpu_and_io_priority() -> None:
    """``WorkerNice``: the worker lowers itself (dcm2niix inherits it); read back from the kernel."""
    code = ("import os, subprocess; from orthanc_plugin.worker import _lower_priority; _lower_priority(7); "
            "print(os.getpriority(os.PRIO_PROCESS, 0)); "
            "print(subprocess.run(['ionice', '-p', str(os.getpid())], capture_output=True, text=True).stdout)")
    before = os.getpriority(os.PRIO_PROCESS, 0)
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=os.environ).stdout.split("\n")
    assert int(shown[0]) == min(before + 7, 19)
    assert shown[1].strip() == "best-effort: prio 7"
