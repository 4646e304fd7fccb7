"""The durable job queue's interface: what the plugin, its supervisor, its workers and its REST
routes may ask of a queue. :class:`~orthanc_plugin.sqlite_queue.SqliteJobQueue` implements it (one
SQLite file per Orthanc); a PostgreSQL queue shared by several Orthanc nodes will implement it
next. ``tests/orthanc/test_queue_contract.py`` runs the same contract tests against every
implementation.

Job life cycle::

    queued --claim--> running --finish--> done | skipped
       ^                 |  \\--fail(permanent / attempts used up)--> failed
       +---- fail -------+   (retryable error with attempts left: after a backoff)
       +---- defer ------+   (waiting for something else; the attempt is not counted)
       +---- release ----+   (clean stop before the work was published; not counted)
       +---- requeue ----+   (worker died, lease expired: counted; Orthanc stopped: not counted)
    done | skipped | failed --retry--> queued   (by hand, with a fresh attempt budget)

Guarantees every implementation gives:

* ``enqueue`` coalesces: a series has at most one *queued* job of one kind and parameters; a
  series that becomes stable again while its job runs gets a new queued job, run after it;
* ``claim`` hands out the oldest runnable job whose series has no running job, with a lease
  that the worker renews (``heartbeat``); a job whose lease expired is given back by
  ``requeue_expired``;
* every claimed job ends in exactly one of ``finish``, ``fail``, ``defer``, ``release`` or a
  requeue; a job that failed ``max_attempts`` times is ``failed`` with its last reason;
* the end of every counted attempt (finish, fail, a counted requeue) is appended to an event log
  in the same transaction (:class:`JobEvent`, read with ``events``): ``seq`` grows in commit
  order, so a reader that remembers the last ``seq`` it saw misses none and counts none twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Protocol

from .jobs import Deferred, Job, JobKind, JobParams, JobState, Outcome

__all__ = ["DEFAULT_LEASE_SECONDS", "AttemptEnd", "JobEvent", "JobQueue", "QueueCount", "RetryPolicy"]

#: How a counted attempt ended: finished (``done`` / ``skipped``), failed with attempts left
#: (``retried``: queued again after a backoff, a crashed worker's attempt included), or failed
#: for good (``failed``: the job's end).
AttemptEnd = Literal["done", "skipped", "retried", "failed"]

#: How long a claim holds without a heartbeat (seconds).
DEFAULT_LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed attempt is tried again: ``base * 2**(attempts - 1)`` seconds, at most ``cap``,
    less up to a quarter at random (jitter: retries of many jobs do not arrive in step).
    Configured by ``BidsBridge.RetryBaseSeconds`` / ``RetryMaxSeconds``."""

    base: float = 2.0
    cap: float = 300.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        exponent = min(max(attempts - 1, 0), 62)
        return min(self.cap, self.base * 2.0**exponent) * random.uniform(0.75, 1.0)


@dataclass(frozen=True)
class JobEvent:
    """The end of one counted attempt, from the queue's append-only event log."""

    #: Position in the log: grows in commit order.
    seq: int
    job_id: int
    kind: JobKind
    end: AttemptEnd
    #: Seconds from the attempt's claim to its end (None: the queue did not know the start).
    seconds: float | None
    at: float


@dataclass(frozen=True)
class QueueCount:
    """How many jobs of one kind are in one state."""

    state: JobState
    kind: JobKind
    jobs: int


class JobQueue(Protocol):
    """A connection to the queue; safe to share between the threads of one process."""

    max_attempts: int

    # -- producers -------------------------------------------------------------------------
    def enqueue(self, series: str, trigger: str, params: JobParams, *, max_attempts: int | None = None,
                delay: float = 0.0) -> int:
        """Queue a job for ``series`` unless the same one is queued already; return its id.
        ``delay``: seconds before it may run (a job found queued keeps its own time)."""

    def retry(self, job_id: int) -> Job | None:
        """Put a finished job back with a fresh attempt budget; the job, or None if unknown."""

    # -- workers ---------------------------------------------------------------------------
    def claim(self, worker: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Job | None:
        """Take the oldest runnable queued job (counts an attempt) for ``worker`` (its pid)."""

    def heartbeat(self, job_id: int, worker: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
        """Renew the lease; False if the job is no longer this worker's (requeued meanwhile)."""

    def finish(self, job_id: int, outcome: Outcome, *, worker: int | None = None) -> bool:
        """Record a finished job (``done`` or ``skipped``) with its result; with ``worker``, only if
        the job is still that worker's (False: it was requeued meanwhile, nothing recorded)."""

    def fail(self, job_id: int, reason: str, *, permanent: bool = False, retry_after: float | None = None,
             worker: int | None = None) -> JobState:
        """Record a failed attempt in the job's history: ``failed`` if permanent or out of attempts,
        else ``queued`` again after ``retry_after`` seconds (default: the :class:`RetryPolicy`)."""

    def defer(self, job_id: int, deferred: Deferred, *, worker: int | None = None) -> None:
        """Put the job back to wait, the attempt not counted."""

    def release(self, job_id: int) -> None:
        """Give a running job back without counting the attempt (clean shutdown)."""

    def wait_for_work(self, timeout: float) -> None:
        """Return when a job may have become claimable (queued, retried, released, or a job of
        the same series finished: anyone doing so wakes the waiters, in any process) or after
        ``timeout`` seconds; a wake-up may be spurious, none is lost beyond ``timeout``."""

    # -- supervision -----------------------------------------------------------------------
    def requeue_worker(self, worker: int | None, reason: str, *, count_attempt: bool = True) -> list[int]:
        """Jobs left running by a dead worker (None: by any) go back; their ids. A counted attempt
        is kept in the history and waits its backoff like any failure."""

    def requeue_expired(self, reason: str) -> list[int]:
        """Running jobs whose lease expired go back (the attempt counts, with backoff); their ids."""

    # -- readers ---------------------------------------------------------------------------
    def get(self, job_id: int) -> Job | None: ...

    def list(self, *, state: JobState | None = None, series: str | None = None, limit: int = 100,
             offset: int = 0) -> list[Job]:
        """Jobs, newest first."""

    def latest_for_series(self, series: str, *, states: tuple[JobState, ...] = ("done",)) -> Job | None: ...

    def newest_job_time(self, series: str) -> float | None: ...

    def counts(self) -> dict[str, int]: ...

    def counts_by_kind(self) -> tuple[QueueCount, ...]:
        """Jobs by state and kind (only the pairs that have jobs)."""

    def events(self, after: int = 0, *, limit: int = 1000) -> tuple[JobEvent, ...]:
        """Ends of attempts logged after the event ``after`` (a ``seq``; 0: from the start),
        oldest first, at most ``limit``. Deferrals, releases, uncounted requeues and retries
        by hand end no attempt and are not logged."""

    # -- bookkeeping -----------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...
