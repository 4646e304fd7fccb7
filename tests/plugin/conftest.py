"""Fixtures of the plugin's unit tests: no Orthanc, a fake of its REST API over corpus files, a
real SQLite queue and real conversions into a temporary dataset."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from orthanc_plugin.handlers import JobContext
from orthanc_plugin.jobs import ConvertJob, Job, JobParams
from orthanc_plugin.routing_stage import RulesSnapshot
from orthanc_plugin.sqlite_queue import SqliteJobQueue
from orthanc_plugin.worker_settings import WorkerSettings
from tests.plugin.fake_orthanc import FakeOrthanc


@dataclass
class Plant:
    """A fake Orthanc, a queue and the settings a worker would have."""

    orthanc: FakeOrthanc
    queue: SqliteJobQueue
    settings: WorkerSettings
    rules: RulesSnapshot
    root: Path

    def claim(self, series_id: str, params: JobParams | None = None, trigger: str = "stable") -> Job:
        self.queue.enqueue(series_id, trigger, params or ConvertJob())
        job = self.queue.claim(os.getpid())  # as this process's worker would
        assert job is not None and job.series == series_id
        return job

    def context(self, job: Job, stack: ExitStack, scratch: Path) -> JobContext:
        scratch.mkdir(parents=True, exist_ok=True)
        return JobContext(job, self.queue, self.orthanc, self.settings, self.rules, scratch, stack)


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    state = tmp_path / "state"
    (state / "tmp").mkdir(parents=True)
    settings = WorkerSettings(state_dir=str(state), bids_root=str(tmp_path / "bids"), orthanc_url="http://fake",
                              max_attempts=3, datasets={"default": str(tmp_path / "bids")})
    queue = SqliteJobQueue(state, max_attempts=3)
    yield Plant(FakeOrthanc(), queue, settings, RulesSnapshot(state, None, None), tmp_path / "bids")
    queue.close()


@pytest.fixture
def run(plant: Plant, tmp_path: Path) -> Callable[..., object]:
    """``run(handler, job)``: a handler on a job, its scratch folder and lock stack cleaned after."""

    def call(handler: Callable[[JobContext], object], job: Job) -> object:
        with ExitStack() as stack:
            return handler(plant.context(job, stack, tmp_path / f"scratch-{job.id}"))

    return call
