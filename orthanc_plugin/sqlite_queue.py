"""The durable job queue: one SQLite database (WAL mode) shared by the plugin and its workers.

Job life cycle::

    queued --claim--> running --finish--> done | skipped | failed
       ^                 |
       +---- retry ------+   (error with attempts left, worker died, Orthanc stopped)
       +---- defer ------+   (waiting for something else, e.g. the rest of its acquisition;
                              the attempt is not counted)

Guarantees:

* ``enqueue`` coalesces: a series has at most one *queued* job; a series that becomes stable
  again while its job runs gets a new queued job, which runs after the current one.
* ``claim`` never hands out two jobs of one series at once.
* A job whose worker died (``kill -9``) is put back by :meth:`JobQueue.requeue_worker` and
  retried while it has attempts left; after ``max_attempts`` it is failed with the reason.

Standard library only: this module also runs inside Orthanc's interpreter.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["TERMINAL_STATES", "Job", "JobQueue", "JobState"]

JobState = Literal["queued", "running", "done", "skipped", "failed"]
TERMINAL_STATES: frozenset[str] = frozenset({"done", "skipped", "failed"})
#: Longest wait between two attempts of a job, seconds.
MAX_BACKOFF = 300.0

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
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, not_before, id);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Job:
    id: int
    series: str
    kind: str
    trigger: str
    state: JobState
    attempts: int
    max_attempts: int
    error: str | None
    outputs: tuple[str, ...]
    result: dict[str, Any] | None
    params: dict[str, Any]
    worker_pid: int | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            series=row["series"],
            kind=row["kind"],
            trigger=row["trigger"],
            state=row["state"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            error=row["error"],
            outputs=tuple(json.loads(row["outputs"])),
            result=None if row["result"] is None else json.loads(row["result"]),
            params=json.loads(row["params"]),
            worker_pid=row["worker_pid"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "series": self.series,
            "kind": self.kind,
            "trigger": self.trigger,
            "state": self.state,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "error": self.error,
            "outputs": list(self.outputs),
            "result": self.result,
            "params": self.params,
            "worker_pid": self.worker_pid,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1000):03d}Z"


class JobQueue:
    """A connection to the queue database; safe to share between threads of one process."""

    FILE_NAME = "queue.sqlite3"

    def __init__(self, state_dir: Path, *, max_attempts: int = 3) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / self.FILE_NAME
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
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

    def close(self) -> None:
        with self._lock:
            self._db.close()

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

    def enqueue(self, series: str, trigger: str, *, kind: str = "convert",
                params: dict[str, Any] | None = None, max_attempts: int | None = None) -> int:
        """Queue a job for ``series`` unless the same one is already queued; return the job id."""
        now = time.time()
        encoded = json.dumps(params or {}, sort_keys=True)
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE series = ? AND kind = ? AND params = ? AND state = 'queued'"
                " ORDER BY id LIMIT 1",
                (series, kind, encoded),
            ).fetchone()
            if row is not None:
                db.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (now, row["id"]))
                return int(row["id"])
            cursor = db.execute(
                "INSERT INTO jobs (series, kind, trigger, state, max_attempts, params, created_at, updated_at)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                (series, kind, trigger, max_attempts or self.max_attempts, encoded, now, now),
            )
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
        return self.get(job_id)

    # -- workers ---------------------------------------------------------------------------

    def claim(self, worker_pid: int) -> Job | None:
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
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_pid = ?,"
                " started_at = ?, updated_at = ? WHERE id = ?",
                (worker_pid, now, now, row["id"]),
            )
            job_row = db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return Job._from_row(job_row)

    def finish(
        self,
        job_id: int,
        state: Literal["done", "skipped"],
        *,
        outputs: tuple[str, ...] | list[str] = (),
        result: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, outputs = ?, result = ?, error = ?, worker_pid = NULL,"
                " finished_at = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                (state, json.dumps(sorted(outputs)), _dump(result), reason, now, now, job_id),
            )

    def fail_attempt(
        self, job_id: int, error: str, *, permanent: bool = False, result: dict[str, Any] | None = None
    ) -> JobState:
        """Record a failed attempt: retried later with backoff, or failed for good."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT attempts, max_attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return "failed"
            exhausted = permanent or row["attempts"] >= row["max_attempts"]
            state: JobState = "failed" if exhausted else "queued"
            # Exponential backoff with jitter (so retries of many jobs do not arrive in step).
            delay = min(MAX_BACKOFF, 2.0 ** row["attempts"]) * random.uniform(0.75, 1.0)
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, result = ?, worker_pid = NULL, not_before = ?,"
                " finished_at = ?, updated_at = ? WHERE id = ?",
                (state, error, _dump(result), now + delay, now if exhausted else None, now, job_id),
            )
        return state

    def defer(self, job_id: int, seconds: float, note: str, *, result: dict[str, Any] | None = None) -> None:
        """Put a running job back to wait ``seconds`` without counting the attempt (it waits for
        something outside it, e.g. the other series of its acquisition); ``note`` says what."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), worker_pid = NULL, error = ?,"
                " result = ?, not_before = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                (note, _dump(result), now + seconds, now, job_id),
            )

    def release(self, job_id: int) -> None:
        """Give a running job back without counting the attempt (clean shutdown)."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), worker_pid = NULL,"
                " updated_at = ? WHERE id = ? AND state = 'running'",
                (now, job_id),
            )

    def requeue_worker(self, worker_pid: int | None, error: str, *, count_attempt: bool = True) -> list[int]:
        """Jobs left running by a dead worker (``None``: by any worker) go back to the queue."""
        now = time.time()
        with self._transaction() as db:
            if worker_pid is None:
                rows = db.execute("SELECT id, attempts, max_attempts FROM jobs WHERE state = 'running'")
            else:
                rows = db.execute(
                    "SELECT id, attempts, max_attempts FROM jobs WHERE state = 'running' AND worker_pid = ?",
                    (worker_pid,),
                )
            ids = []
            for row in rows.fetchall():
                attempts = row["attempts"] if count_attempt else max(row["attempts"] - 1, 0)
                exhausted = attempts >= row["max_attempts"]
                db.execute(
                    "UPDATE jobs SET state = ?, attempts = ?, error = ?, worker_pid = NULL,"
                    " finished_at = ?, updated_at = ? WHERE id = ?",
                    ("failed" if exhausted else "queued", attempts, error, now if exhausted else None, now,
                     row["id"]),
                )
                ids.append(int(row["id"]))
        return ids

    # -- readers ---------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job._from_row(row)

    def list(self, *, state: str | None = None, series: str | None = None, limit: int = 100,
             offset: int = 0) -> list[Job]:
        """Jobs, newest first."""
        clauses, params = [], []
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
        return [Job._from_row(row) for row in rows]

    def latest_for_series(self, series: str, *, states: tuple[str, ...] = ("done",)) -> Job | None:
        marks = ",".join("?" for _ in states)
        with self._lock:
            row = self._db.execute(
                f"SELECT * FROM jobs WHERE series = ? AND state IN ({marks}) ORDER BY id DESC LIMIT 1",
                (series, *states),
            ).fetchone()
        return None if row is None else Job._from_row(row)

    def newest_job_time(self, series: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MAX(created_at) AS t FROM jobs WHERE series = ?", (series,)).fetchone()
        return None if row is None or row["t"] is None else float(row["t"])

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {row["state"]: int(row["n"]) for row in rows}

    # -- bookkeeping -----------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _dump(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)
