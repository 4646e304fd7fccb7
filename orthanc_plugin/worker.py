"""A worker process: claims jobs from the queue and carries each to an end state.

Started by the :mod:`~orthanc_plugin.supervisor` as ``python -m orthanc_plugin.worker SETTINGS``
with an explicit interpreter (never forked from Orthanc).  ``SETTINGS`` is a JSON file holding a
:class:`WorkerSettings`; the REST authorisation arrives in the environment variable
``BIDSBRIDGE_ORTHANC_AUTHORIZATION`` so that it never shows in a process list.

One job (:func:`run_job`): the handler of its kind (:data:`orthanc_plugin.handlers.HANDLERS`)
runs while a heartbeat thread renews the job's lease; then exactly one of

* ``finish`` — the handler returned an :class:`~orthanc_plugin.jobs.Outcome`;
* ``defer`` — it returned a :class:`~orthanc_plugin.jobs.Deferred` (no attempt spent);
* ``fail`` — it raised: permanently when the error is not ``retryable``
  (:mod:`converters.errors`), else retried after a backoff (unexpected exceptions too, logged
  with their traceback).

A worker killed outright leaves its job ``running``; the supervisor requeues it (and any job
whose lease expired).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from converters.bids.tables import ensure_dataset
from converters.conversion import dcm2niix_version
from converters.errors import BidsBridgeError

from .handlers import HANDLERS, JobContext
from .job_queue import DEFAULT_LEASE_SECONDS, JobQueue
from .jobs import Deferred, Job
from .rest_client import OrthancApi, OrthancRestClient
from .routing_stage import RulesSnapshot
from .sqlite_queue import SqliteJobQueue
from .worker_settings import AUTH_ENV, WorkerSettings

__all__ = ["main", "run_job"]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.25


def _failure_reason(error: Exception) -> str:
    if isinstance(error, BidsBridgeError) and not error.retryable:
        return str(error)
    return f"{error.__class__.__name__}: {error}"


def _heartbeat(queue: JobQueue, job: Job, worker: int, stop: threading.Event, lease: float) -> None:
    while not stop.wait(lease / 3):
        if not queue.heartbeat(job.id, worker, lease_seconds=lease):
            logger.warning("job %d is no longer this worker's (requeued meanwhile)", job.id)
            return


def run_job(job: Job, queue: JobQueue, client: OrthancApi, settings: WorkerSettings, rules: RulesSnapshot,
            *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
    """Carry one claimed job to an end state (see the module's contract)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"job{job.id}-", dir=Path(settings.state_dir) / "tmp"))
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(queue, job, os.getpid(), stop, lease_seconds), daemon=True)
    beat.start()
    try:
        with ExitStack() as stack:
            outcome = HANDLERS[job.kind](JobContext(job, queue, client, settings, rules, scratch, stack))
        if isinstance(outcome, Deferred):
            queue.defer(job.id, outcome)
            logger.info("job %d (series %s) waits: %s", job.id, job.series, outcome.note)
        else:
            queue.finish(job.id, outcome)
    except Exception as error:  # every failure ends the attempt; the error tree says whether to retry
        permanent = isinstance(error, BidsBridgeError) and not error.retryable
        if not isinstance(error, BidsBridgeError | OSError):
            logger.exception("job %d (series %s): unexpected error", job.id, job.series)
        state = queue.fail(job.id, _failure_reason(error), permanent=permanent)
        logger.warning("job %d (series %s) attempt %d failed (%s): %s", job.id, job.series, job.attempts, state,
                       error)
    finally:
        stop.set()
        shutil.rmtree(scratch, ignore_errors=True)


def _client(settings: WorkerSettings) -> OrthancRestClient:
    password = None
    if settings.rest_password_file is not None:
        password = Path(settings.rest_password_file).read_text().strip()
    return OrthancRestClient(
        settings.orthanc_url,
        authorization=os.environ.get(AUTH_ENV),
        username=settings.rest_username,
        password=password,
    )


def _prepare_datasets(settings: WorkerSettings) -> None:
    """A dataset never exists without its dataset files."""
    for root in (settings.datasets or {"default": settings.bids_root}).values():
        try:
            ensure_dataset(Path(root), dcm2niix_version())
        except BidsBridgeError as exc:
            logger.error("cannot prepare the BIDS dataset %s: %s", root, exc)


def _loop(queue: JobQueue, client: OrthancApi, settings: WorkerSettings, rules: RulesSnapshot) -> None:
    parent = os.getppid()
    stopping = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    pid = os.getpid()
    while not stopping.is_set():
        if os.getppid() != parent:  # Orthanc died: do not linger as an orphan
            logger.warning("Orthanc (pid %d) is gone; worker exits", parent)
            return
        job = queue.claim(pid)
        if job is None:
            time.sleep(POLL_SECONDS)
            continue
        started = time.monotonic()
        logger.info("job %d: %s of series %s (attempt %d)", job.id, job.kind, job.series, job.attempts)
        run_job(job, queue, client, settings, rules)
        done = queue.get(job.id)
        logger.info("job %d: %s in %.2f s", job.id, done.state if done else "?", time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orthanc_plugin.worker")
    parser.add_argument("settings", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s bidsbridge-worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    settings = WorkerSettings.read(args.settings)
    (Path(settings.state_dir) / "tmp").mkdir(parents=True, exist_ok=True)
    queue = SqliteJobQueue(Path(settings.state_dir), max_attempts=settings.max_attempts)
    client = _client(settings)
    rules = RulesSnapshot(Path(settings.state_dir), settings.rules_path, settings.rules_context)
    _prepare_datasets(settings)
    logger.info("worker started (Orthanc %s)", settings.orthanc_url)
    try:
        _loop(queue, client, settings, rules)
    finally:
        client.close()
        queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
