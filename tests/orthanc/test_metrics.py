"""Metrics and job-tagged log lines in a real Orthanc: one series converts, one (a damaged file)
fails; ``/tools/metrics-prometheus`` shows the bidsbridge metrics with those numbers, parsed by
prometheus_client (the reference parser of the text format), and every log line of a job, in
the worker logs and in Orthanc's, names the job and its series."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from orthanc_plugin.embedded import EmbeddedOrthanc, free_port
from orthanc_plugin.jobs import JOB_STATES
from orthanc_plugin.metrics import BUCKETS
from tests.orthanc.conftest import Harness, series_uid
from tests.orthanc.test_pipeline import _corrupt_copy

pytestmark = pytest.mark.orthanc

Labels = frozenset[tuple[str, str]]


def _metrics(harness: Harness) -> dict[tuple[str, Labels], float]:
    response = requests.get(f"{harness.url}/tools/metrics-prometheus", auth=harness.auth, timeout=10)
    response.raise_for_status()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def _value(metrics: dict[tuple[str, Labels], float], name: str, **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


@dataclass
class Run:
    harness: Harness
    jobs: dict[str, dict[str, Any]]
    good: dict[str, Any]
    broken: dict[str, Any]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Iterator[Run]:
    # Early completion off: one job per series (an early job and its STABLE_SERIES re-run would be two).
    server = EmbeddedOrthanc(workdir=tmp_path_factory.mktemp("metrics"), http_port=free_port(),
                             dicom_port=free_port(), workers=2, stable_age=2, verbose=True,
                             bidsbridge={"EarlyCompletion": False})
    server.start()
    harness = Harness(server)
    try:
        # The metrics are there before any job: zeros.
        harness.wait_for(lambda: _value(_metrics(harness), "bidsbridge_workers") == 2, 60, "the first metrics")
        assert _value(_metrics(harness), "bidsbridge_jobs_done_total", kind="convert") == 0
        xa30 = corpus / "dcm_qa_xa30" / "In"
        broken_dir = tmp_path_factory.mktemp("broken")
        _corrupt_copy(next(p for p in sorted((xa30 / "5_anat-T1w_acq-tfl").iterdir())), broken_dir / "t1.dcm")
        bold = xa30 / "7_func-bold_task-fa_run-1"
        harness.send([broken_dir, bold])
        jobs = harness.wait_all_finished(2, timeout=120)
        good = jobs[harness.orthanc_series_id(series_uid(bold))]
        broken = jobs[harness.orthanc_series_id(series_uid(xa30 / "5_anat-T1w_acq-tfl"))]
        assert (good["state"], broken["state"]) == ("done", "failed"), jobs
        # The publisher runs every few seconds: wait for the round after the ends.
        harness.wait_for(lambda: (_value(m := _metrics(harness), "bidsbridge_jobs_done_total", kind="convert"),
                                  _value(m, "bidsbridge_jobs_failed_total", kind="convert")) == (1, 1),
                         60, "the metrics to count both jobs")
        yield Run(harness, jobs, good, broken)
    finally:
        server.stop()


def test_totals_and_queue_depth(run: Run) -> None:
    metrics = _metrics(run.harness)
    assert _value(metrics, "bidsbridge_jobs_done_total", kind="convert") == 1
    assert _value(metrics, "bidsbridge_jobs_failed_total", kind="convert") == 1
    assert _value(metrics, "bidsbridge_jobs_skipped_total", kind="convert") == 0
    # Retried: every failed attempt but a job's last. A damaged file is no error a retry fixes: the job
    # failed at its first attempt, none was retried (retries are counted in tests/plugin/test_metrics.py).
    assert run.broken["attempts"] == 1
    retried = sum(job["attempts"] - 1 for job in run.jobs.values())
    assert _value(metrics, "bidsbridge_jobs_retried_total", kind="convert") == retried == 0
    depth = {state: _value(metrics, "bidsbridge_queue_jobs", state=state, kind="convert") for state in JOB_STATES}
    assert depth == {"queued": 0, "running": 0, "done": 1, "skipped": 0, "failed": 1}
    assert _value(metrics, "bidsbridge_queue_jobs", state="queued", kind="push") == 0
    assert _value(metrics, "bidsbridge_jobs_done_total", kind="push") == 0
    assert _value(metrics, "bidsbridge_workers") == 2
    # Orthanc's own metrics are still served beside ours.
    assert any(name.startswith("orthanc_") for name, _ in metrics)


def test_conversion_seconds_are_the_done_jobs_claim_to_finish(run: Run) -> None:
    metrics = _metrics(run.harness)
    last = _value(metrics, "bidsbridge_convert_last_seconds")
    took = (datetime.fromisoformat(run.good["finished_at"]) - datetime.fromisoformat(run.good["started_at"]))
    # The job record shows milliseconds (cut), Orthanc keeps a 32-bit float.
    assert last is not None and last == pytest.approx(took.total_seconds(), abs=2.5e-3)
    assert _value(metrics, "bidsbridge_convert_seconds_count") == 1
    assert _value(metrics, "bidsbridge_convert_seconds_sum") == pytest.approx(last)
    for bound in BUCKETS:  # cumulative: the one conversion sits in every bucket from its own on
        assert _value(metrics, "bidsbridge_convert_seconds_bucket", le=f"{bound:g}") == (1 if last <= bound else 0)
    assert _value(metrics, "bidsbridge_convert_seconds_bucket", le="+Inf") == 1
    # No delivery yet: an empty histogram and no last value.
    assert _value(metrics, "bidsbridge_push_seconds_count") == 0
    assert _value(metrics, "bidsbridge_push_last_seconds") is None


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} bidsbridge-worker\[\d+\] [A-Z]+ (\S+): (.*)$")


def test_worker_log_lines_during_a_job_carry_its_job_and_series(run: Run) -> None:
    logs = sorted((run.harness.server.state_dir / "logs").glob("worker-*.log"))
    assert logs
    claimed = {job["id"]: 0 for job in run.jobs.values()}
    tagged_modules: set[str] = set()
    for path in logs:
        current: dict[str, Any] | None = None
        for line in path.read_text(errors="replace").splitlines():
            record = _RECORD.match(line)
            if record is None:  # a traceback's continuation: part of the record above
                continue
            module, message = record.groups()
            if current is None:
                current = next((job for job in run.jobs.values()
                                if message.startswith(f"job={job['id']} series={job['series']} claimed:")), None)
                if current is None:
                    assert not message.startswith("job="), line  # between jobs: no tag
                    continue
                claimed[current["id"]] += 1
            assert message.startswith(f"job={current['id']} series={current['series']} "), line
            tagged_modules.add(module)
            if message.removeprefix(f"job={current['id']} series={current['series']} ").startswith("ended:"):
                current = None
    # Every attempt of every job was seen (a deferral claims once more), and the stages' lines are tagged too.
    assert all(claimed[job["id"]] >= job["attempts"] > 0 for job in run.jobs.values()), claimed
    # (the worker's own lines come from "__main__": it runs as ``python -m orthanc_plugin.worker``)
    assert tagged_modules - {"__main__", "orthanc_plugin.worker"}, tagged_modules


def test_plugin_lines_about_a_job_carry_its_job_and_series(run: Run) -> None:
    log = run.harness.server.log_path.read_text(errors="replace")
    for job in run.jobs.values():
        assert f"bidsbridge: job={job['id']} series={job['series']} queued: the series is stable" in log


def test_a_replaced_worker_is_counted(run: Run) -> None:
    harness = run.harness
    before = _value(_metrics(harness), "bidsbridge_worker_restarts_total")
    assert before == 0
    pid = harness.get("/bidsbridge/status")["workers"][0]
    os.kill(pid, signal.SIGKILL)  # idle: no job lost
    harness.wait_for(lambda: _value(_metrics(harness), "bidsbridge_worker_restarts_total") == 1, 60,
                     "the restart to be counted")
    harness.wait_for(lambda: _value(_metrics(harness), "bidsbridge_workers") == 2, 60, "the new worker")
    assert pid not in harness.get("/bidsbridge/status")["workers"]
