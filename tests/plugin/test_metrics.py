"""The metrics without Orthanc: a real SQLite queue, its event log read from a cursor, the
snapshot and its Prometheus samples (names with labels, every state x kind, histogram buckets)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from converters.records import SeriesResult
from orthanc_plugin.jobs import JOB_STATES, ConvertJob, ConvertResult, Outcome, PushJob
from orthanc_plugin.metrics import BUCKETS, Durations, MetricsCollector, MetricsPublisher, MetricsSnapshot, Sample
from orthanc_plugin.sqlite_queue import SqliteJobQueue


@dataclass
class Pool:
    """Stands for the supervisor: how many workers it replaced, which are alive."""

    restarts: int = 0
    alive: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        return self.alive


def _done() -> Outcome:
    return Outcome("done", ConvertResult(SeriesResult("1.2", "t1", "converted", outputs=("a.nii.gz",))),
                   ("a.nii.gz",))


def _push() -> PushJob:
    return PushJob(server="x", project="P", subject="", session="", dataset_root="/d", series_uid="1.2",
                   bids_subject="01", bids_session=None, outputs=())


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SqliteJobQueue]:
    queue = SqliteJobQueue(tmp_path, max_attempts=2)
    yield queue
    queue.close()


def _work(queue: SqliteJobQueue) -> None:
    """One convert done, one retried then failed, one still queued; one push done."""
    converted = queue.enqueue("a", "stable", ConvertJob())
    broken = queue.enqueue("b", "stable", ConvertJob())
    pushed = queue.enqueue("d", "rule", _push())
    assert [getattr(queue.claim(worker), "id", None) for worker in (1, 2, 3)] == [converted, broken, pushed]
    queue.finish(converted, _done())
    queue.finish(pushed, Outcome("done"))
    assert queue.fail(broken, "boom", retry_after=0.0) == "queued"
    assert getattr(queue.claim(4), "id", None) == broken
    assert queue.fail(broken, "boom again") == "failed"
    queue.enqueue("c", "stable", ConvertJob())


def test_durations_are_cumulative_buckets_with_count_sum_and_last() -> None:
    durations = Durations().add(0.5).add(7.0).add(4000.0)
    assert dict(zip(BUCKETS, durations.buckets, strict=True)) == {
        1.0: 1, 2.0: 1, 5.0: 1, 10.0: 2, 30.0: 2, 60.0: 2, 120.0: 2, 300.0: 2, 600.0: 2, 1800.0: 2}
    assert (durations.count, durations.total, durations.last) == (3, 4007.5, 4000.0)
    samples = {s.name: s.value for s in durations.samples("x")}
    assert samples['x_seconds_bucket{le="1"}'] == 1 and samples['x_seconds_bucket{le="1800"}'] == 2
    assert samples['x_seconds_bucket{le="+Inf"}'] == samples["x_seconds_count"] == 3
    assert samples["x_seconds_sum"] == 4007.5 and samples["x_last_seconds"] == 4000.0
    assert "x_last_seconds" not in {s.name for s in Durations().samples("x")}  # no value yet: not published


def test_a_snapshot_counts_the_queue_and_its_ended_attempts(queue: SqliteJobQueue) -> None:
    _work(queue)
    snapshot = MetricsCollector(queue).collect(Pool(restarts=2, alive=[11, 12]))
    value = snapshot.value
    assert value('bidsbridge_jobs_done_total{kind="convert"}') == 1
    assert value('bidsbridge_jobs_retried_total{kind="convert"}') == 1
    assert value('bidsbridge_jobs_failed_total{kind="convert"}') == 1
    assert value('bidsbridge_jobs_done_total{kind="push"}') == 1
    assert value('bidsbridge_jobs_skipped_total{kind="convert"}') == 0
    assert value('bidsbridge_queue_jobs{state="queued",kind="convert"}') == 1
    assert value('bidsbridge_queue_jobs{state="failed",kind="convert"}') == 1
    assert value('bidsbridge_queue_jobs{state="running",kind="convert"}') == 0
    assert value("bidsbridge_worker_restarts_total") == 2 and value("bidsbridge_workers") == 2
    # Every state x kind is published, zeros too: a gauge Orthanc once had never goes stale.
    queue_names = [s.name for s in snapshot.samples() if s.name.startswith("bidsbridge_queue_jobs")]
    assert len(queue_names) == len(set(queue_names)) == len(JOB_STATES) * 3
    # The done conversion is timed (claim to finish), the failed attempts are not.
    (done,) = [e for e in queue.events() if e.kind == "convert" and e.end == "done"]
    assert done.seconds is not None
    assert value("bidsbridge_convert_seconds_count") == 1 and value("bidsbridge_convert_last_seconds") == done.seconds
    for bound in BUCKETS:
        assert value(f'bidsbridge_convert_seconds_bucket{{le="{bound:g}"}}') == (done.seconds <= bound)
    assert value("bidsbridge_push_seconds_count") == 1


def test_the_collector_reads_on_from_its_cursor_and_a_new_one_from_the_start(queue: SqliteJobQueue) -> None:
    _work(queue)
    collector = MetricsCollector(queue, page=1)  # one event per query: the paging loop too
    first = collector.collect(Pool())
    assert collector.cursor == queue.events()[-1].seq
    waiting = queue.claim(9)
    assert waiting is not None
    queue.finish(waiting.id, _done())
    again = collector.collect(Pool())
    assert again.value('bidsbridge_jobs_done_total{kind="convert"}') == 2  # the new one, the old not twice
    assert again.value("bidsbridge_convert_seconds_count") == 2
    assert first.value('bidsbridge_jobs_done_total{kind="convert"}') == 1
    # After a restart of Orthanc a new collector counts the whole log: the totals stand.
    assert MetricsCollector(queue).collect(Pool()).samples() == again.samples()


def test_the_publisher_hands_every_sample_over_and_survives_a_failing_sink(queue: SqliteJobQueue) -> None:
    _work(queue)
    published: list[Sample] = []
    snapshot = MetricsPublisher(MetricsCollector(queue), Pool(), published.append).publish_once()
    assert isinstance(snapshot, MetricsSnapshot) and published == snapshot.samples()

    def broken(sample: Sample) -> None:
        raise RuntimeError("Orthanc said no")

    assert MetricsPublisher(MetricsCollector(queue), Pool(), broken).publish_once() is None


def test_the_publisher_thread_publishes_until_stopped(queue: SqliteJobQueue) -> None:
    rounds = threading.Semaphore(0)
    publisher = MetricsPublisher(MetricsCollector(queue), Pool(),
                                 lambda s: rounds.release() if s.name == "bidsbridge_workers" else None,
                                 interval=0.05)
    publisher.start()
    try:
        assert rounds.acquire(timeout=10) and rounds.acquire(timeout=10)  # at start, then every interval
    finally:
        publisher.stop()
    assert not any(t.name == "bidsbridge-metrics" for t in threading.enumerate())
