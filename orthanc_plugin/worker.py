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
  with their traceback) — except that Orthanc not answering at all is not the job's fault: the
  job is given back to wait (``defer``, no attempt spent) and the worker stops claiming.

Workers stop with their Orthanc: the kernel sends them SIGTERM when Orthanc dies (Linux
``PR_SET_PDEATHSIG``) and, finding a new parent, give their job back at once (no attempt
spent) and end with their children (each worker leads a process group); a worker also notices a
new parent between jobs, and one that finds Orthanc unreachable exits after giving its job
back; the next Orthanc's workers resume the jobs. ``kill -USR1`` dumps a worker's stacks to its
log (``state/logs``). A worker killed outright leaves its job ``running``; the supervisor
requeues it (and any job whose lease expired). Every queue update names the worker, so a
worker that lost its job (requeued meanwhile) records nothing over its new owner.

Every line the worker logs while a job is in hand starts with ``job=<id> series=<Orthanc id>``
(:mod:`.job_log`), from whichever module or thread of the job it comes.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import faulthandler
import logging
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from types import FrameType

from converters.bids.tables import ensure_dataset
from converters.conversion import dcm2niix_version
from converters.errors import BidsBridgeError

from .handlers import HANDLERS, JobContext
from .job_log import JobTagFilter, in_this_context, job_context
from .job_queue import DEFAULT_LEASE_SECONDS, JobQueue, RetryPolicy
from .jobs import Deferred, Job
from .rest_client import OrthancApi, OrthancRestClient, OrthancUnreachable
from .routing_stage import RulesSnapshot
from .sqlite_queue import SqliteJobQueue
from .worker_settings import AUTH_ENV, PARENT_ENV, WorkerSettings

__all__ = ["ORTHANC_WAIT_SECONDS", "main", "run_job"]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.25
#: How long a job given back because Orthanc did not answer waits before it may run again.
ORTHANC_WAIT_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> int:
    """Ask the kernel for SIGTERM when the parent (Orthanc) dies (Linux; elsewhere the loop's
    parent check alone); return the pid of the Orthanc that started this worker."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        logger.info("no parent-death signal on this system; the parent is checked between jobs")
    expected = os.environ.get(PARENT_ENV, "")
    return int(expected) if expected.isdigit() else os.getppid()


def _failure_reason(error: Exception) -> str:
    if isinstance(error, BidsBridgeError) and not error.retryable:
        return str(error)
    return f"{error.__class__.__name__}: {error}"


def _heartbeat(queue: JobQueue, job: Job, worker: int, stop: threading.Event, lease: float) -> None:
    while not stop.wait(lease / 3):
        if not queue.heartbeat(job.id, worker, lease_seconds=lease):
            logger.warning("the job is no longer this worker's (requeued meanwhile)")
            return


def run_job(job: Job, queue: JobQueue, client: OrthancApi, settings: WorkerSettings, rules: RulesSnapshot,
            *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
    """Carry one claimed job to an end state (see the module's contract); False when Orthanc did
    not answer (the job was given back: the worker should stop claiming). Its log lines carry
    the job's tag (:func:`~orthanc_plugin.job_log.job_context`)."""
    with job_context(job.id, job.series):
        return _run_job(job, queue, client, settings, rules, lease_seconds=lease_seconds)


def _run_job(job: Job, queue: JobQueue, client: OrthancApi, settings: WorkerSettings, rules: RulesSnapshot,
             *, lease_seconds: float) -> bool:
    pid = os.getpid()
    scratch = Path(tempfile.mkdtemp(prefix=f"job{job.id}-pid{pid}-", dir=Path(settings.state_dir) / "tmp"))
    stop = threading.Event()
    beat = threading.Thread(target=in_this_context(_heartbeat), args=(queue, job, pid, stop, lease_seconds),
                            daemon=True)
    beat.start()
    try:
        with ExitStack() as stack:
            outcome = HANDLERS[job.kind](JobContext(job, queue, client, settings, rules, scratch, stack))
        if isinstance(outcome, Deferred):
            queue.defer(job.id, outcome, worker=pid)
            logger.info("waits: %s", outcome.note)
        elif not queue.finish(job.id, outcome, worker=pid):
            logger.warning("the job was requeued while this worker ran it; its outcome is not recorded")
    except OrthancUnreachable as error:  # not the job's fault: it waits, no attempt spent
        queue.defer(job.id, Deferred(ORTHANC_WAIT_SECONDS, f"{error}; the job waits (no attempt spent)",
                                     job.waiting_since or time.time()), worker=pid)
        logger.warning("given back: %s", error)
        return False
    except MemoryError:  # the series needs more than the worker may take: retrying would not help
        reason = (f"the job needed more memory than the worker may use (BidsBridge.WorkerMemoryMB = "
                  f"{settings.memory_mb}); raise it and retry the job")
        queue.fail(job.id, reason, permanent=True, worker=pid)
        logger.error("%s", reason)
    except Exception as error:  # every failure ends the attempt; the error tree says whether to retry
        permanent = isinstance(error, BidsBridgeError) and not error.retryable
        if not isinstance(error, BidsBridgeError | OSError):
            logger.exception("unexpected error")
        state = queue.fail(job.id, _failure_reason(error), permanent=permanent, worker=pid)
        logger.warning("attempt %d failed (%s): %s", job.attempts, state, error)
    finally:
        stop.set()
        shutil.rmtree(scratch, ignore_errors=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_scratch(folder: Path) -> None:
    """Remove the job folders of workers that were killed (``job<id>-pid<pid>-…``, pid gone)."""
    for entry in folder.iterdir():
        found = re.match(r"job\d+-pid(\d+)-", entry.name)
        if found is not None and not _alive(int(found.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _limit_memory(megabytes: int) -> None:
    """Cap the address space of this worker and of what it starts (dcm2niix) at ``megabytes``."""
    if megabytes <= 0:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = megabytes << 20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


#: ioprio_set(2) numbers (Linux): the syscall per machine, "process" target, best-effort class.
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "i686": 289, "armv7l": 314}
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_BE = 2


def _lower_priority(nice: int) -> None:
    """Run below Orthanc: ``nice`` more niceness, and the lowest best-effort I/O level (what
    ``ionice -c2 -n7`` sets); inherited by dcm2niix. Where the system cannot, the worker says so."""
    if nice <= 0:
        return
    try:
        os.nice(nice)
    except OSError as exc:
        logger.warning("cannot lower the worker's CPU priority (%s)", exc)
    number = _IOPRIO_SET.get(os.uname().machine)
    try:
        if number is None:
            raise OSError(f"ioprio_set unknown on {os.uname().machine}")
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.syscall(number, _IOPRIO_WHO_PROCESS, 0, _IOPRIO_CLASS_BE << 13 | 7) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        logger.info("worker I/O priority left as Orthanc's (%s)", exc)


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


def _abandon(queue: JobQueue, pid: int, parent: int) -> None:
    """Orthanc died under this worker: its job goes back to the queue (no attempt spent) and the
    worker ends at once with every process it started (its process group: dcm2niix…).  What it
    leaves half-done is what a SIGKILL leaves: scratch and staging folders of a dead pid, swept
    by the next worker."""
    try:
        given_back = queue.requeue_worker(pid, "Orthanc stopped during the job", count_attempt=False)
        logger.warning("Orthanc (pid %d) is gone; worker exits, job(s) given back: %s", parent, given_back or "none")
    except Exception:  # the queue is unusable: the next Orthanc requeues the job at start anyway
        logger.exception("Orthanc (pid %d) is gone; the job could not be given back", parent)
    finally:
        logging.shutdown()
        if os.getpgrp() == pid:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(pid, signal.SIGKILL)
        os._exit(0)


def _loop(queue: JobQueue, client: OrthancRestClient, settings: WorkerSettings, rules: RulesSnapshot, *,
          parent: int) -> None:
    stopping = threading.Event()
    pid = os.getpid()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if os.getppid() != parent:  # Orthanc is dead: give the job back now, do not finish it
            _abandon(queue, pid, parent)
        stopping.set()  # Orthanc is stopping us: finish the job in hand, then exit

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while not stopping.is_set():
        if os.getppid() != parent:  # Orthanc died: do not linger as an orphan
            logger.warning("Orthanc (pid %d) is gone; worker exits", parent)
            return
        job = queue.claim(pid)
        if job is None:
            queue.wait_for_work(POLL_SECONDS)
            continue
        with job_context(job.id, job.series):
            started = time.monotonic()
            logger.info("claimed: %s job, attempt %d", job.kind, job.attempts)
            answered = run_job(job, queue, client, settings, rules)
            done = queue.get(job.id)
            logger.info("ended: %s in %.2f s", done.state if done else "?", time.monotonic() - started)
        if not answered and not client.reachable():
            logger.warning("Orthanc at %s does not answer; worker stops claiming and exits", settings.orthanc_url)
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orthanc_plugin.worker")
    parser.add_argument("settings", type=Path)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobTagFilter())  # job=<id> series=<id> while a job is in hand
    logging.basicConfig(
        level=logging.INFO, handlers=[handler],
        format=f"%(asctime)s bidsbridge-worker[{os.getpid()}] %(levelname)s %(name)s: %(job_tag)s%(message)s",
    )
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <pid>: stacks to the log
    parent = _die_with_parent()
    with suppress(OSError):
        os.setpgid(0, 0)  # a group of its own: when Orthanc dies, the worker ends its children too
    if os.getppid() != parent:  # Orthanc died while this worker started: the signal came too late
        logger.warning("Orthanc (pid %d) is gone; worker exits", parent)
        return 0
    settings = WorkerSettings.read(args.settings)
    _limit_memory(settings.memory_mb)
    _lower_priority(settings.nice)
    (Path(settings.state_dir) / "tmp").mkdir(parents=True, exist_ok=True)
    _sweep_scratch(Path(settings.state_dir) / "tmp")
    queue = SqliteJobQueue(Path(settings.state_dir), max_attempts=settings.max_attempts,
                           retry_policy=RetryPolicy(settings.retry_base, settings.retry_cap))
    client = _client(settings)
    rules = RulesSnapshot(Path(settings.state_dir), settings.rules_path, settings.rules_context)
    _prepare_datasets(settings)
    logger.info("worker started (Orthanc %s)", settings.orthanc_url)
    try:
        _loop(queue, client, settings, rules, parent=parent)
    finally:
        client.close()
        queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
