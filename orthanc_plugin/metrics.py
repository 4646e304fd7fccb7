"""The plugin's Prometheus metrics: what the job queue and the supervisor say, as samples for
Orthanc's ``GET /tools/metrics-prometheus``.

Orthanc (with ``MetricsEnabled``, its default) serves every value a plugin set with
``orthanc.SetMetricsValue`` as one line ``name value timestamp``: plain gauges, no ``# TYPE``.
A name is written as given, so the names here carry their Prometheus labels
(``bidsbridge_queue_jobs{state="queued",kind="convert"}``), and durations are published the
way a Prometheus histogram is (cumulative ``_bucket{le="..."}`` counts, ``_count``, ``_sum``):
``histogram_quantile`` and ``rate`` work on them as on any client library's.

======================================================  =================================================
``bidsbridge_queue_jobs{state,kind}``                   jobs in the queue in that state (every state x
                                                        kind, zeros included)
``bidsbridge_jobs_done_total{kind}``                    jobs finished ``done`` (made something)
``bidsbridge_jobs_skipped_total{kind}``                 jobs finished ``skipped`` (nothing to make)
``bidsbridge_jobs_failed_total{kind}``                  jobs failed for good (permanent error, or
                                                        attempts used up)
``bidsbridge_jobs_retried_total{kind}``                 failed attempts queued again after a backoff
                                                        (a crashed worker's attempt included)
``bidsbridge_convert_seconds_bucket{le}``, ``_count``,  claim-to-finish seconds of ``convert`` jobs
``_sum``; ``bidsbridge_convert_last_seconds``           that ended ``done``: the histogram, and the
                                                        latest one
``bidsbridge_push_seconds_bucket{le}``, ``_count``,     the same for ``push`` jobs (XNAT deliveries)
``_sum``; ``bidsbridge_push_last_seconds``
``bidsbridge_worker_restarts_total``                    workers the supervisor replaced since Orthanc
                                                        started
``bidsbridge_workers``                                  worker processes alive
======================================================  =================================================

The ``_total`` counts come from the queue's event log (:meth:`~.job_queue.JobQueue.events`):
a :class:`MetricsCollector` reads it from where it last stopped (the first read after start
from its beginning), so they count every attempt this queue ever ended and survive a restart
of Orthanc; a ``_last_seconds`` appears once there is a value. :class:`MetricsPublisher` does
that every ``interval`` seconds in a thread of the plugin and hands each :class:`Sample` to a
function (the plugin's calls ``orthanc.SetMetricsValue``), never inside an Orthanc callback.
Standard library only: this module runs inside Orthanc's interpreter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, get_args

from .job_queue import AttemptEnd, JobEvent, JobQueue, QueueCount
from .jobs import JOB_STATES, JobKind
from .periodic import Periodic

__all__ = ["BUCKETS", "TIMED", "Durations", "EndCount", "MetricsCollector", "MetricsPublisher", "MetricsSnapshot",
           "Sample"]

logger = logging.getLogger(__name__)

#: Upper bounds (seconds) of the duration buckets; a ``+Inf`` bucket follows.
BUCKETS: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: The job kinds whose finished (``done``) attempts are timed, and their metric prefixes.
TIMED: Mapping[JobKind, str] = MappingProxyType({"convert": "bidsbridge_convert", "push": "bidsbridge_push"})

_KINDS: tuple[JobKind, ...] = get_args(JobKind)
_ENDS: tuple[AttemptEnd, ...] = get_args(AttemptEnd)


@dataclass(frozen=True)
class Sample:
    """One Orthanc metric: ``name`` with its Prometheus labels, and its value."""

    name: str
    value: float


def _label(bound: float) -> str:
    return f"{bound:g}"


@dataclass(frozen=True)
class Durations:
    """Seconds of finished attempts: cumulative bucket counts (one per :data:`BUCKETS` bound:
    the attempts that took at most that long), their count, sum, and the latest."""

    buckets: tuple[int, ...] = (0,) * len(BUCKETS)
    count: int = 0
    total: float = 0.0
    last: float | None = None

    def add(self, seconds: float) -> Durations:
        return Durations(tuple(n + (seconds <= bound) for n, bound in zip(self.buckets, BUCKETS, strict=True)),
                         self.count + 1, self.total + seconds, seconds)

    def samples(self, prefix: str) -> list[Sample]:
        found = [Sample(f'{prefix}_seconds_bucket{{le="{_label(bound)}"}}', n)
                 for bound, n in zip(BUCKETS, self.buckets, strict=True)]
        found += [Sample(f'{prefix}_seconds_bucket{{le="+Inf"}}', self.count),
                  Sample(f"{prefix}_seconds_count", self.count), Sample(f"{prefix}_seconds_sum", self.total)]
        if self.last is not None:
            found.append(Sample(f"{prefix}_last_seconds", self.last))
        return found


@dataclass(frozen=True)
class EndCount:
    """How many attempts of one kind of job ended one way."""

    kind: JobKind
    end: AttemptEnd
    count: int


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every value published at one moment."""

    #: Every (state, kind), zeros included.
    queue: tuple[QueueCount, ...]
    #: Every (kind, end), zeros included.
    ends: tuple[EndCount, ...]
    #: Per timed kind (:data:`TIMED`).
    durations: tuple[tuple[JobKind, Durations], ...]
    worker_restarts: int
    workers: int

    def samples(self) -> list[Sample]:
        found = [Sample(f'bidsbridge_queue_jobs{{state="{q.state}",kind="{q.kind}"}}', q.jobs) for q in self.queue]
        found += [Sample(f'bidsbridge_jobs_{e.end}_total{{kind="{e.kind}"}}', e.count) for e in self.ends]
        for kind, durations in self.durations:
            found += durations.samples(TIMED[kind])
        found += [Sample("bidsbridge_worker_restarts_total", self.worker_restarts),
                  Sample("bidsbridge_workers", self.workers)]
        return found

    def value(self, name: str) -> float | None:
        """The value of the sample called ``name`` (labels included), if published."""
        return next((s.value for s in self.samples() if s.name == name), None)


class WorkerPool(Protocol):
    """What the metrics read of the :class:`~orthanc_plugin.supervisor.Supervisor`."""

    @property
    def restarts(self) -> int: ...

    def pids(self) -> list[int]: ...


class MetricsCollector:
    """Reads the queue and keeps the totals between reads (one reader thread)."""

    def __init__(self, queue: JobQueue, *, page: int = 1000) -> None:
        self.queue = queue
        #: Events read per query.
        self.page = page
        #: The ``seq`` of the last event counted.
        self.cursor = 0
        self._ends: dict[tuple[JobKind, AttemptEnd], int] = {}
        self._durations: dict[JobKind, Durations] = {kind: Durations() for kind in TIMED}

    def add(self, events: Iterable[JobEvent]) -> None:
        """Count the events (they follow ``cursor``, oldest first)."""
        for event in events:
            key = (event.kind, event.end)
            self._ends[key] = self._ends.get(key, 0) + 1
            if event.end == "done" and event.kind in self._durations and event.seconds is not None:
                self._durations[event.kind] = self._durations[event.kind].add(max(event.seconds, 0.0))
            self.cursor = max(self.cursor, event.seq)

    def snapshot(self, counts: Sequence[QueueCount], *, worker_restarts: int, workers: int) -> MetricsSnapshot:
        """The totals so far with the queue's ``counts`` (the missing pairs as zeros)."""
        jobs = {(c.state, c.kind): c.jobs for c in counts}
        return MetricsSnapshot(
            queue=tuple(QueueCount(state, kind, jobs.get((state, kind), 0)) for state in JOB_STATES for kind in _KINDS),
            ends=tuple(EndCount(kind, end, self._ends.get((kind, end), 0)) for end in _ENDS for kind in _KINDS),
            durations=tuple(self._durations.items()),
            worker_restarts=worker_restarts,
            workers=workers,
        )

    def collect(self, workers: WorkerPool) -> MetricsSnapshot:
        """Read the events logged since the last call, and the queue's counts now."""
        while True:
            events = self.queue.events(self.cursor, limit=self.page)
            self.add(events)
            if len(events) < self.page:
                break
        return self.snapshot(self.queue.counts_by_kind(), worker_restarts=workers.restarts,
                             workers=len(workers.pids()))


class MetricsPublisher:
    """Every ``interval`` seconds, in a daemon thread: collect, and ``publish`` each sample."""

    def __init__(self, collector: MetricsCollector, workers: WorkerPool, publish: Callable[[Sample], None], *,
                 interval: float = 5.0) -> None:
        self.collector = collector
        self.interval = interval
        self._workers = workers
        self._publish = publish
        self._periodic = Periodic("bidsbridge-metrics", self.publish_once, interval, at_start=True)
        self._last_error = ""

    def publish_once(self) -> MetricsSnapshot | None:
        """Collect and publish now; None (logged once per kind of error) if that failed. Never raises."""
        try:
            snapshot = self.collector.collect(self._workers)
            for sample in snapshot.samples():
                self._publish(sample)
        except Exception as exc:  # a metrics failure must never take the plugin down
            error = f"{exc.__class__.__name__}: {exc}"
            if error != self._last_error:
                logger.exception("metrics not updated")
            self._last_error = error
            return None
        self._last_error = ""
        return snapshot

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
