"""A worker process: takes jobs from the queue, fetches the series from Orthanc, converts it.

Started by the :mod:`~orthanc_plugin.supervisor` as ``python -m orthanc_plugin.worker SETTINGS``
with an explicit interpreter (never forked from Orthanc).  ``SETTINGS`` is a JSON file holding a
:class:`WorkerSettings`; the REST authorisation arrives in the environment variable
``BIDSBRIDGE_ORTHANC_AUTHORIZATION`` so that it never shows in a process list.

Contract with the queue: every claimed job ends in exactly one of ``finish`` (done/skipped),
``fail_attempt`` (retried or failed) or ``release`` (clean stop before the work was published).
A worker killed outright leaves its job ``running``; the supervisor requeues it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from converters import convert_series
from converters.errors import BidsBridgeError, DicomInputError, LabelError

from .queue import Job, JobQueue
from .rest_client import OrthancError, OrthancRestClient, SeriesNotFound
from .worker_settings import AUTH_ENV, WorkerSettings

__all__ = ["main", "run_job"]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.25


def run_job(job: Job, queue: JobQueue, client: OrthancRestClient, settings: WorkerSettings) -> None:
    """Carry one claimed job to an end state (see the module's contract)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"job{job.id}-", dir=Path(settings.state_dir) / "tmp"))
    try:
        try:
            files = client.download_series(job.series, scratch / "dicom")
        except SeriesNotFound:
            queue.fail_attempt(job.id, f"series {job.series} no longer exists in Orthanc", permanent=True)
            return
        if not files:
            queue.finish(job.id, "skipped", reason=f"series {job.series} has no instances")
            return
        try:
            result = convert_series(
                scratch / "dicom", Path(settings.bids_root), subject=settings.subject, session=settings.session
            )
        except (DicomInputError, LabelError) as exc:  # retrying cannot help: fail now, with the reason
            queue.fail_attempt(job.id, str(exc), permanent=True)
            return
        if result.state == "converted":
            queue.finish(job.id, "done", outputs=result.outputs, result=result.to_dict())
        elif result.state == "skipped":
            queue.finish(job.id, "skipped", outputs=result.outputs, result=result.to_dict(), reason=result.reason)
        else:
            queue.fail_attempt(job.id, result.reason or "conversion failed", result=result.to_dict())
    except (OrthancError, BidsBridgeError, OSError) as exc:
        state = queue.fail_attempt(job.id, f"{exc.__class__.__name__}: {exc}")
        logger.warning("job %d (series %s) attempt %d failed (%s): %s", job.id, job.series, job.attempts,
                       state, exc)
    finally:
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
    queue = JobQueue(Path(settings.state_dir), max_attempts=settings.max_attempts)
    client = _client(settings)
    parent = os.getppid()
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    logger.info("worker started (Orthanc %s)", settings.orthanc_url)
    pid = os.getpid()
    while not stopping:
        if os.getppid() != parent:  # Orthanc died: do not linger as an orphan
            logger.warning("Orthanc (pid %d) is gone; worker exits", parent)
            break
        job = queue.claim(pid)
        if job is None:
            time.sleep(POLL_SECONDS)
            continue
        started = time.monotonic()
        logger.info("job %d: converting series %s (attempt %d)", job.id, job.series, job.attempts)
        run_job(job, queue, client, settings)
        done = queue.get(job.id)
        logger.info("job %d: %s in %.2f s", job.id, done.state if done else "?", time.monotonic() - started)
    client.close()
    queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
