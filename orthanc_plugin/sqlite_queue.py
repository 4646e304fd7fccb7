"""The durable job queue in one SQLite database (WAL mode) shared by the plugin and its workers:
the implementation of :class:`~orthanc_plugin.job_queue.JobQueue` for one Orthanc.

Standard library only (and the job records): this module also runs inside Orthanc's interpreter.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from .doorbell import Doorbell
from .job_queue import DEFAULT_LEASE_SECONDS, AttemptEnd, JobEvent, QueueCount, RetryPolicy
from .jobs import Attempt, Deferred, Job, JobKind, JobParams, JobState, Outcome, params_from_json, params_to_json

__all__ = ["SqliteJobQueue"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'convert',
    trigger TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    error TEXT,
    outputs TEXT NOT NULL DEFAULT '[]',
    result TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    worker_pid INTEGER,
    lease_until REAL,
    history TEXT NOT NULL DEFAULT '[]',
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, not_before, id);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    event TEXT NOT NULL,
    seconds REAL,
    at REAL NOT NULL
);
"""


def _job(row: sqlite3.Row) -> Job:
    kind = cast(JobKind, row["kind"])
    return Job(
        id=row["id"],
        series=row["series"],
        kind=kind,
        trigger=row["trigger"],
        state=cast(JobState, row["state"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        error=row["error"],
        outputs=tuple(json.loads(row["outputs"])),
        result=None if row["result"] is None else json.loads(row["result"]),
        params=params_from_json(kind, json.loads(row["params"])),
        worker_pid=row["worker_pid"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        lease_until=row["lease_until"],
        history=tuple(Attempt(**item) for item in json.loads(row["history"])),
    )


class SqliteJobQueue:
    """The queue in ``<state_dir>/queue.sqlite3``; safe to share between threads of one process.

    The event log (:class:`~orthanc_plugin.job_queue.JobEvent`) is the table ``job_events``:
    ``seq`` is an ``AUTOINCREMENT`` key given inside ``BEGIN IMMEDIATE`` write transactions,
    which SQLite runs one at a time, so it grows in commit order. Queue files from before the
    log have none for their older jobs.
    """

    FILE_NAME = "queue.sqlite3"

    def __init__(self, state_dir: Path, *, max_attempts: int = 3, retry_policy: RetryPolicy | None = None) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / self.FILE_NAME
        self.max_attempts = max_attempts
        self.retry_policy = retry_policy or RetryPolicy()
        self._lock = threading.Lock()
        self._doorbell = Doorbell(state_dir)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            if "params" not in columns:  # queue files from before job parameters existed
                db.execute("ALTER TABLE jobs ADD COLUMN params TEXT NOT NULL DEFAULT '{}'")
            if "lease_until" not in columns:  # queue files from before leases
                db.execute("ALTER TABLE jobs ADD COLUMN lease_until REAL")
            if "history" not in columns:  # queue files from before attempt histories
                db.execute("ALTER TABLE jobs ADD COLUMN history TEXT NOT NULL DEFAULT '[]'")

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._doorbell.close()

    def wait_for_work(self, timeout: float) -> None:
        """Sleep until a job may have become claimable (rung by whoever queued or freed it, in any
        process: :mod:`.doorbell`) or ``timeout`` seconds passed."""
        self._doorbell.wait(timeout)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- producers -------------------------------------------------------------------------

    def enqueue(self, series: str, trigger: str, params: JobParams, *, max_attempts: int | None = None,
                delay: float = 0.0) -> int:
        """Queue a job for ``series`` unless the same one is already queued; return the job id."""
        now = time.time()
        encoded = json.dumps(params_to_json(params), sort_keys=True)
        not_before = now + delay if delay > 0 else 0.0
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE series = ? AND kind = ? AND params = ? AND state = 'queued'"
                " ORDER BY id LIMIT 1",
                (series, params.kind, encoded),
            ).fetchone()
            if row is not None:
                db.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (now, row["id"]))
                return int(row["id"])
            cursor = db.execute(
                "INSERT INTO jobs (series, kind, trigger, state, max_attempts, params, not_before, created_at,"
                " updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (series, params.kind, trigger, max_attempts or self.max_attempts, encoded, not_before, now, now),
            )
        if not_before == 0.0:
            self._doorbell.ring()
        return int(cursor.lastrowid or 0)

    def retry(self, job_id: int) -> Job | None:
        """Put a finished job back in the queue with a fresh attempt budget."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, error = NULL, not_before = 0,"
                " updated_at = ?, finished_at = NULL WHERE id = ? AND state IN ('done','skipped','failed')",
                (now, job_id),
            )
        self._doorbell.ring()
        return self.get(job_id)

    # -- workers ---------------------------------------------------------------------------

    def claim(self, worker: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Job | None:
        """Take the oldest runnable queued job whose series has no running job."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' AND not_before <= ?"
                " AND series NOT IN (SELECT series FROM jobs WHERE state = 'running')"
                " ORDER BY not_before, id LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_pid = ?, lease_until = ?,"
                " started_at = ?, updated_at = ? WHERE id = ?",
                (worker, now + lease_seconds, now, now, row["id"]),
            )
            job_row = db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return _job(job_row)

    def heartbeat(self, job_id: int, worker: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running' AND worker_pid = ?",
                (now + lease_seconds, job_id, worker),
            )
        return cursor.rowcount == 1

    @staticmethod
    def _owned(worker: int | None) -> tuple[str, tuple[int, ...]]:
        """The SQL condition that the running job is still ``worker``'s (any worker: None)."""
        return ("", ()) if worker is None else (" AND worker_pid = ?", (worker,))

    def finish(self, job_id: int, outcome: Outcome, *, worker: int | None = None) -> bool:
        now = time.time()
        result = None if outcome.result is None else outcome.result.to_json()
        owned, args = self._owned(worker)
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, outputs = ?, result = ?, error = ?, worker_pid = NULL, lease_until = NULL,"
                f" finished_at = ?, updated_at = ? WHERE id = ? AND state = 'running'{owned}",
                (outcome.state, json.dumps(sorted(outcome.outputs)), _dump(result), outcome.reason, now, now, job_id,
                 *args),
            )
            if cursor.rowcount == 1:
                _log_end(db, job_id, outcome.state, now)
        self._doorbell.ring()  # the series' next job may run now
        return cursor.rowcount == 1

    def fail(self, job_id: int, reason: str, *, permanent: bool = False, retry_after: float | None = None,
             worker: int | None = None) -> JobState:
        """Record a failed attempt (kept in the job's history): retried later with backoff, or failed."""
        now = time.time()
        owned, args = self._owned(worker)
        with self._transaction() as db:
            row = db.execute(
                f"SELECT attempts, max_attempts, history FROM jobs WHERE id = ? AND state = 'running'{owned}",
                (job_id, *args),
            ).fetchone()
            if row is None:
                return "failed" if self.get_state(db, job_id) == "failed" else "queued"
            exhausted = permanent or row["attempts"] >= row["max_attempts"]
            state: JobState = "failed" if exhausted else "queued"
            delay = self.retry_policy.delay(row["attempts"]) if retry_after is None else retry_after
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, result = NULL, worker_pid = NULL, lease_until = NULL,"
                " not_before = ?, finished_at = ?, updated_at = ?, history = ? WHERE id = ?",
                (state, reason, now + delay, now if exhausted else None, now,
                 _append(row["history"], row["attempts"], now, reason), job_id),
            )
            _log_end(db, job_id, "failed" if exhausted else "retried", now)
        return state

    @staticmethod
    def get_state(db: sqlite3.Connection, job_id: int) -> str | None:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else str(row["state"])

    def defer(self, job_id: int, deferred: Deferred, *, worker: int | None = None) -> None:
        """Put a running job back to wait without counting the attempt."""
        now = time.time()
        owned, args = self._owned(worker)
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), worker_pid = NULL,"
                " lease_until = NULL, error = ?, result = ?, not_before = ?, updated_at = ?"
                f" WHERE id = ? AND state = 'running'{owned}",
                (deferred.note, _dump(deferred.to_json()), now + deferred.seconds, now, job_id, *args),
            )

    def release(self, job_id: int) -> None:
        """Give a running job back without counting the attempt (clean shutdown)."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), worker_pid = NULL,"
                " lease_until = NULL, updated_at = ? WHERE id = ? AND state = 'running'",
                (now, job_id),
            )
        self._doorbell.ring()

    def requeue_worker(self, worker: int | None, reason: str, *, count_attempt: bool = True) -> list[int]:
        """Jobs left running by a dead worker (``None``: by any worker) go back to the queue."""
        if worker is None:
            return self._requeue("state = 'running'", (), reason, count_attempt=count_attempt)
        return self._requeue("state = 'running' AND worker_pid = ?", (worker,), reason, count_attempt=count_attempt)

    def requeue_expired(self, reason: str) -> list[int]:
        return self._requeue("state = 'running' AND lease_until IS NOT NULL AND lease_until < ?", (time.time(),),
                             reason, count_attempt=True)

    def _requeue(self, where: str, args: tuple[Any, ...], reason: str, *, count_attempt: bool) -> list[int]:
        now = time.time()
        with self._transaction() as db:
            rows = db.execute(f"SELECT id, attempts, max_attempts, history FROM jobs WHERE {where}", args).fetchall()
            ids = []
            for row in rows:
                attempts = row["attempts"] if count_attempt else max(row["attempts"] - 1, 0)
                exhausted = attempts >= row["max_attempts"]
                # A counted attempt (the worker died with it) waits its backoff like any failure.
                delay = self.retry_policy.delay(attempts) if count_attempt else 0.0
                history = _append(row["history"], row["attempts"], now, reason) if count_attempt else row["history"]
                db.execute(
                    "UPDATE jobs SET state = ?, attempts = ?, error = ?, worker_pid = NULL, lease_until = NULL,"
                    " not_before = ?, finished_at = ?, updated_at = ?, history = ? WHERE id = ?",
                    ("failed" if exhausted else "queued", attempts, reason, now + delay,
                     now if exhausted else None, now, history, row["id"]),
                )
                if count_attempt or exhausted:
                    _log_end(db, int(row["id"]), "failed" if exhausted else "retried", now)
                ids.append(int(row["id"]))
        if ids:
            self._doorbell.ring()
        return ids

    # -- readers ---------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def list(self, *, state: JobState | None = None, series: str | None = None, limit: int = 100,
             offset: int = 0) -> list[Job]:
        """Jobs, newest first."""
        clauses: list[str] = []
        params: list[str] = []
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if series is not None:
            clauses.append("series = ?")
            params.append(series)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY id DESC LIMIT ? OFFSET ?", (*params, limit, offset)
            ).fetchall()
        return [_job(row) for row in rows]

    def latest_for_series(self, series: str, *, states: tuple[JobState, ...] = ("done",)) -> Job | None:
        marks = ",".join("?" for _ in states)
        with self._lock:
            row = self._db.execute(
                f"SELECT * FROM jobs WHERE series = ? AND state IN ({marks}) ORDER BY id DESC LIMIT 1",
                (series, *states),
            ).fetchone()
        return None if row is None else _job(row)

    def newest_job_time(self, series: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MAX(created_at) AS t FROM jobs WHERE series = ?", (series,)).fetchone()
        return None if row is None or row["t"] is None else float(row["t"])

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {row["state"]: int(row["n"]) for row in rows}

    def counts_by_kind(self) -> tuple[QueueCount, ...]:
        with self._lock:
            rows = self._db.execute(
                "SELECT state, kind, COUNT(*) AS n FROM jobs GROUP BY state, kind ORDER BY state, kind"
            ).fetchall()
        return tuple(QueueCount(cast(JobState, row["state"]), cast(JobKind, row["kind"]), int(row["n"]))
                     for row in rows)

    def events(self, after: int = 0, *, limit: int = 1000) -> tuple[JobEvent, ...]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM job_events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return tuple(JobEvent(seq=int(row["seq"]), job_id=int(row["job_id"]), kind=cast(JobKind, row["kind"]),
                              end=cast(AttemptEnd, row["event"]), seconds=row["seconds"], at=float(row["at"]))
                     for row in rows)

    # -- bookkeeping -----------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _log_end(db: sqlite3.Connection, job_id: int, end: AttemptEnd, now: float) -> None:
    """Append the end of the job's current attempt to the event log (inside the caller's
    transaction, before anything resets the attempt's ``started_at``)."""
    db.execute(
        "INSERT INTO job_events (job_id, kind, event, seconds, at) SELECT id, kind, ?, ? - started_at, ?"
        " FROM jobs WHERE id = ?",
        (end, now, now, job_id),
    )


def _append(history: str, attempt: int, at: float, reason: str) -> str:
    """The stored history with one more failed attempt."""
    return json.dumps([*json.loads(history), {"attempt": attempt, "at": at, "reason": reason}])


def _dump(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)
