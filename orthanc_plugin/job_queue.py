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
  requeue; a job that failed ``max_attempts`` times is ``failed`` with its last reason.
"""

from __future__ import annotations

from typing import Protocol

from .jobs import Deferred, Job, JobParams, JobState, Outcome

__all__ = ["DEFAULT_LEASE_SECONDS", "MAX_BACKOFF_SECONDS", "JobQueue"]

#: How long a claim holds without a heartbeat (seconds).
DEFAULT_LEASE_SECONDS = 60.0
#: Longest wait between two attempts of a job (seconds).
MAX_BACKOFF_SECONDS = 300.0


class JobQueue(Protocol):
    """A connection to the queue; safe to share between the threads of one process."""

    max_attempts: int

    # -- producers -------------------------------------------------------------------------
    def enqueue(self, series: str, trigger: str, params: JobParams, *, max_attempts: int | None = None) -> int:
        """Queue a job for ``series`` unless the same one is queued already; return its id."""

    def retry(self, job_id: int) -> Job | None:
        """Put a finished job back with a fresh attempt budget; the job, or None if unknown."""

    # -- workers ---------------------------------------------------------------------------
    def claim(self, worker: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Job | None:
        """Take the oldest runnable queued job (counts an attempt) for ``worker`` (its pid)."""

    def heartbeat(self, job_id: int, worker: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
        """Renew the lease; False if the job is no longer this worker's (requeued meanwhile)."""

    def finish(self, job_id: int, outcome: Outcome) -> None:
        """Record a finished job (``done`` or ``skipped``) with its result."""

    def fail(self, job_id: int, reason: str, *, permanent: bool = False, retry_after: float | None = None) -> JobState:
        """Record a failed attempt: ``failed`` if permanent or out of attempts, else ``queued``
        again after ``retry_after`` seconds (default: exponential backoff with jitter)."""

    def defer(self, job_id: int, deferred: Deferred) -> None:
        """Put the job back to wait, the attempt not counted."""

    def release(self, job_id: int) -> None:
        """Give a running job back without counting the attempt (clean shutdown)."""

    # -- supervision -----------------------------------------------------------------------
    def requeue_worker(self, worker: int | None, reason: str, *, count_attempt: bool = True) -> list[int]:
        """Jobs left running by a dead worker (None: by any) go back; their ids."""

    def requeue_expired(self, reason: str) -> list[int]:
        """Running jobs whose lease expired go back (the attempt counts); their ids."""

    # -- readers ---------------------------------------------------------------------------
    def get(self, job_id: int) -> Job | None: ...

    def list(self, *, state: JobState | None = None, series: str | None = None, limit: int = 100,
             offset: int = 0) -> list[Job]:
        """Jobs, newest first."""

    def latest_for_series(self, series: str, *, states: tuple[JobState, ...] = ("done",)) -> Job | None: ...

    def newest_job_time(self, series: str) -> float | None: ...

    def counts(self) -> dict[str, int]: ...

    # -- bookkeeping -----------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...
