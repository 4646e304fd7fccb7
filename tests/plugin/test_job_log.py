"""Job-tagged log lines: ``job=<id> series=<id>`` inside a job's context (its threads too, when
started for it), nothing outside; ``run_job`` tags the lines of the handler and of the worker."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator

import pytest

from orthanc_plugin import worker
from orthanc_plugin.handlers import JobContext
from orthanc_plugin.job_log import JobTagFilter, in_this_context, job_context
from orthanc_plugin.jobs import Outcome
from tests.plugin.conftest import Plant


@pytest.fixture
def lines() -> Iterator[Callable[[], list[str]]]:
    """The lines logged to ``test.job_log``, formatted as the worker and the plugin do."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobTagFilter())
    handler.setFormatter(logging.Formatter("%(job_tag)s%(message)s"))
    log = logging.getLogger("test.job_log")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield lambda: stream.getvalue().splitlines()
    log.removeHandler(handler)


def test_lines_inside_a_job_context_carry_the_job_and_series(lines: Callable[[], list[str]]) -> None:
    log = logging.getLogger("test.job_log")
    log.info("before")
    with job_context(7, "5b0c"):
        log.info("inside")
        with job_context(8, "9f1e"):
            log.info("nested")
        log.info("back")
    log.info("after")
    assert lines() == ["before", "job=7 series=5b0c inside", "job=8 series=9f1e nested", "job=7 series=5b0c back",
                       "after"]


def test_a_thread_started_for_the_job_keeps_its_tag_and_another_does_not(lines: Callable[[], list[str]]) -> None:
    log = logging.getLogger("test.job_log")
    with job_context(3, "abc"):
        tagged = threading.Thread(target=in_this_context(log.info), args=("from the heartbeat",))
        plain = threading.Thread(target=log.info, args=("from elsewhere",))
    for thread in (tagged, plain):
        thread.start()
        thread.join()
    assert lines() == ["job=3 series=abc from the heartbeat", "from elsewhere"]


def test_run_job_tags_the_lines_of_the_handler_and_of_the_worker(plant: Plant, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    def handler(ctx: JobContext) -> Outcome:
        logging.getLogger("orthanc_plugin.handlers").info("converting")
        raise OSError("disk gone")

    monkeypatch.setattr(worker, "HANDLERS", {**worker.HANDLERS, "convert": handler})
    job = plant.claim("s1")
    caplog.handler.addFilter(JobTagFilter())
    with caplog.at_level(logging.INFO, logger="orthanc_plugin"):
        worker.run_job(job, plant.queue, plant.orthanc, plant.settings, plant.rules)
        logging.getLogger("orthanc_plugin.worker").info("between jobs")
    tags = [(record.name, record.getMessage(), getattr(record, "job_tag", None)) for record in caplog.records]
    tag = f"job={job.id} series=s1 "
    assert ("orthanc_plugin.handlers", "converting", tag) in tags
    assert any(name == "orthanc_plugin.worker" and "attempt 1 failed" in message and t == tag
               for name, message, t in tags)
    assert ("orthanc_plugin.worker", "between jobs", "") in tags
