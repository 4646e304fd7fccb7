"""A worker process: takes jobs from the queue and carries them out against Orthanc's REST API.

Job kinds and their stages:

* ``convert`` — the routing rules decide (:mod:`.routing_stage`); forwards run as Orthanc jobs;
  the series is downloaded, converted into each dataset the rules name (:mod:`converters`),
  derivations are made and stored back (:mod:`.derive_stage`), and one ``push`` job is queued per
  XNAT destination.  A SEG or Parametric Map from another tool goes to the derivatives instead.
* ``segment`` — a user's label map becomes a SEG of the series (``POST …/segmentations``).
* ``push`` — delivery to XNAT (:mod:`.push_stage`), retried on its own.

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
import fcntl
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from converters import convert_series, converted_sources, series_outputs
from converters.bids.publish import ensure_dataset
from converters.conversion import dcm2niix_version
from converters.errors import BidsBridgeError, DicomInputError, LabelError

from .acquisition_stage import find_acquisition
from .derive_stage import (
    PARAMETRIC_MAP_CLASS,
    SEGMENTATION_CLASSES,
    derive,
    reverse_convert,
    segment,
    sop_class_of,
)
from .job_queue import Job, JobQueue
from .push_stage import PushFailed, push
from .rest_client import OrthancError, OrthancRestClient, SeriesNotFound
from .routing_stage import RulesSnapshot, SeriesInfo, decide, fetch_series_info, forward
from .worker_settings import AUTH_ENV, WorkerSettings

__all__ = ["main", "run_job"]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.25


#: Seconds between two looks at an acquisition's other series while one is not stable yet.
ACQUISITION_POLL_SECONDS = 2.0
#: Longest wait for them (seconds); then the parts present are converted.
ACQUISITION_WAIT_SECONDS = 1800.0


class _Permanent(Exception):
    """A failure that retrying cannot mend; carries the reason."""


class _Wait(Exception):
    """The job waits for something outside it; it is deferred without spending an attempt."""

    def __init__(self, note: str, result: dict[str, Any]) -> None:
        super().__init__(note)
        self.note = note
        self.result = result


def _hold(state_dir: Path, name: str, stack: ExitStack) -> bool:
    """Take the worker-wide lock ``name`` until ``stack`` closes; False when another worker holds it."""
    folder = state_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / name).open("a+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    stack.callback(handle.close)  # closing the file releases the lock
    return True


def _acquisition(job: Job, client: OrthancRestClient, info: SeriesInfo, roots: list[Path], *,
                 dicom_dir: Path, record: dict[str, Any], state_dir: Path, stack: ExitStack) -> list[str] | None:
    """For a series that is one part of an acquisition exported as several series: wait until
    every part is stable and no other part's job is converting it (raises :class:`_Wait`), then
    download all parts into ``dicom_dir`` — or return the outputs if the same parts were already
    converted (by another part's job). The acquisition's lock is held until ``stack`` closes."""
    found = find_acquisition(client, job.series, info.tags, info.study_id) if info.study_id else None
    if found is None or len(found.members) < 2:
        return None
    since = float((job.result or {}).get("waiting_since") or time.time())
    if found.unstable and time.time() - since < ACQUISITION_WAIT_SECONDS:
        waiting = ", ".join(str(m.series_number) for m in found.unstable)
        raise _Wait(f"part of an {found.describe()}: waiting for series {waiting} to become stable",
                    {"waiting_since": since, "acquisition": found.uid})
    if not _hold(state_dir, f"acquisition-{found.uid}", stack):
        raise _Wait(f"part of an {found.describe()}: another part's job is converting it",
                    {"waiting_since": since, "acquisition": found.uid})
    record["acquisition"] = found.uid
    record["members"] = [member.series_uid for member in found.members]
    if all(converted_sources(root, found.uid) == found.sources for root in roots):
        record["note"] = f"{found.describe()} already converted from these instances (by another part's job)"
        return series_outputs(roots[0], found.uid)
    for member in found.members:
        client.download_series(member.orthanc_id, dicom_dir / member.orthanc_id)
    return None


def _datasets(settings: WorkerSettings) -> dict[str, Path]:
    return {name: Path(root) for name, root in (settings.datasets or {"default": settings.bids_root}).items()}


def _convert(job: Job, scratch: Path, settings: WorkerSettings, client: OrthancRestClient,
             holder: RulesSnapshot, *, queue: JobQueue,
             stack: ExitStack) -> tuple[str, list[str], dict[str, Any], str | None]:
    """(state, outputs, result record, reason) of a convert job: rules, conversion, derivations, forwards."""
    dicom_dir = scratch / "dicom"
    info = fetch_series_info(client, job.series)
    if info.instance_count == 0:
        return "skipped", [], {}, f"series {job.series} has no instances"
    bids_root = Path(settings.bids_root)
    if info.tags.get("SOPClassUID") in SEGMENTATION_CLASSES | {PARAMETRIC_MAP_CLASS}:
        # SEG / Parametric Map from elsewhere: NIfTI into the derivatives of the series it refers to.
        files = client.download_series(job.series, dicom_dir)
        reverse = reverse_convert(files, bids_root, wait_for_source=job.attempts < job.max_attempts)
        reverse_record: dict[str, Any] = {
            "reverse": reverse.to_dict() if reverse else None,
            "series_uid": str(info.tags.get("SeriesInstanceUID", "")),
            "series_description": str(info.tags.get("SeriesDescription", "")),
            "state": "converted" if reverse and reverse.outputs else "skipped",
            "outputs": list(reverse.outputs) if reverse else [],
        }
        if reverse is None or not reverse.outputs:
            return "skipped", [], reverse_record, "; ".join(reverse.notes if reverse else ()) or "nothing to convert"
        return "done", list(reverse.outputs), reverse_record, None

    decision = decide(holder, info)
    record: dict[str, Any] = {"decision": decision.to_dict()}
    if decision.problems:
        raise _Permanent("the routing rules cannot be applied to this series: " + "; ".join(decision.problems))
    roots = _datasets(settings)
    converts = decision.skip is None and bool(decision.converts)
    # Before anything is sent anywhere: a part of a multi-series acquisition may have to wait.
    already = _acquisition(job, client, info, [roots[plan.dataset] for plan in decision.converts],
                           dicom_dir=dicom_dir, record=record, state_dir=Path(settings.state_dir),
                           stack=stack) if converts else None
    forwards = [forward(client, job.series, f.kind, f.target) for f in decision.forwards]
    if forwards:
        record["forwards"] = forwards
    if not converts:
        reason = decision.skip.reason if decision.skip is not None else "no conversion planned by the rules"
        # The same per-series record as `bidsbridge convert --report` writes.
        record.update(series_uid=decision.series_uid, series_description=decision.series_description,
                      series_number=decision.series_number, state="skipped", reason=reason, reason_code="rule",
                      outputs=[])
        return ("done" if forwards else "skipped"), [], record, reason
    if already is not None:
        record.update(series_uid=decision.series_uid, series_description=decision.series_description,
                      series_number=decision.series_number, state="converted", reason=None, outputs=already)
        return "done", already, record, None
    if not dicom_dir.exists():
        client.download_series(job.series, dicom_dir)
    outputs: list[str] = []
    converted: dict[str, Any] = {}
    result = None
    for plan in decision.converts:
        root = roots[plan.dataset]
        try:
            result = convert_series(dicom_dir, root, subject=plan.subject or settings.subject,
                                    session=plan.session or settings.session,
                                    overrides=[plan.override] if plan.override is not None else ())
        except (DicomInputError, LabelError) as exc:
            raise _Permanent(str(exc)) from exc
        if result.state == "failed":
            raise RuntimeError(result.reason or "conversion failed")
        converted[plan.dataset] = {**result.to_dict(), "dataset_root": str(root)}
        if not outputs:
            outputs = list(result.outputs)
    assert result is not None
    record["conversion"] = converted
    record.update(next(iter(converted.values())))  # series_uid, state, reason, outputs of the first dataset
    if result.acquisition is not None:  # this job's own series, filed with the rest of its acquisition
        record.update(series_uid=decision.series_uid, series_number=decision.series_number)
    names = sorted({"adc" for d in decision.derives for n in d.names if n in ("adc", "seg_mask")}
                   | set(job.params.get("derive", [])))
    derived: dict[str, Any] = {}
    first_root = roots[decision.converts[0].dataset]
    problems: list[str] = []
    for name in names:
        try:
            outcome = derive(name, dicom_dir, first_root, result.series_uid, client)
        except DicomInputError as exc:
            # Not derivable from this series (no diffusion data, no b = 0, ...): the conversion stands,
            # the reason is recorded on the job.
            derived[name] = {"error": str(exc)}
            problems.append(f"derivation {name!r} not made: {exc}")
            continue
        derived[name] = outcome.to_dict()
        outputs += outcome.outputs
    if derived:
        record["derived"] = derived
    if result.state == "converted":
        pushes = []
        for target in decision.pushes:
            converted_in = decision.converts[0]
            params = {
                "server": target.server, "project": target.project, "subject": target.subject,
                "session": target.session,
                "dataset_root": str(roots[converted_in.dataset]), "series_uid": result.series_uid,
                "bids_subject": result.subject, "bids_session": result.session, "outputs": list(result.outputs),
                "derived_instances": [i for d in derived.values() for i in d.get("orthanc_instances", [])],
            }
            pushes.append(queue.enqueue(job.series, "rule", kind="push", params=params,
                                        max_attempts=settings.push_attempts))
        if pushes:
            record["push_jobs"] = pushes
    state = "done" if result.state == "converted" or derived else "skipped"
    why = result.reason if state == "skipped" else None
    return state, outputs, record, "; ".join(problems) or why


def _segment(job: Job, dicom_dir: Path, settings: WorkerSettings,
             client: OrthancRestClient) -> tuple[str, list[str], dict[str, Any], str | None]:
    params = job.params
    labels = Path(params["labels"]) if params.get("labels") else None
    series_uid = sop_class_of(sorted(dicom_dir.iterdir()))[2]
    try:
        outcome = segment(Path(params["labelmap"]), labels, dicom_dir, Path(settings.bids_root),
                          series_uid=series_uid, client=client,
                          segmentation_type=params.get("segmentation_type", "BINARY"),
                          desc=params.get("desc", "user"))
    except (DicomInputError, ValueError) as exc:
        raise _Permanent(str(exc)) from exc
    return "done", list(outcome.outputs), {"segmentation": outcome.to_dict()}, None


def run_job(job: Job, queue: JobQueue, client: OrthancRestClient, settings: WorkerSettings,
            holder: RulesSnapshot) -> None:
    """Carry one claimed job to an end state (see the module's contract)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"job{job.id}-", dir=Path(settings.state_dir) / "tmp"))
    try:
        if job.kind == "push":
            try:
                report = push(job.params, settings.destinations, client)
            except PushFailed as exc:
                if not exc.retryable:
                    raise _Permanent(str(exc)) from exc
                raise RuntimeError(str(exc)) from exc
            queue.finish(job.id, "done", outputs=job.params.get("outputs", []), result={"push": report})
            return
        if job.kind == "segment":
            client.download_series(job.series, scratch / "dicom")
            state, outputs, record, reason = _segment(job, scratch / "dicom", settings, client)
        else:
            with ExitStack() as stack:
                state, outputs, record, reason = _convert(job, scratch, settings, client, holder, queue=queue,
                                                          stack=stack)
        queue.finish(job.id, "done" if state == "done" else "skipped", outputs=outputs, result=record, reason=reason)
    except _Wait as wait:
        queue.defer(job.id, ACQUISITION_POLL_SECONDS, wait.note, result=wait.result)
        logger.info("job %d (series %s) waits: %s", job.id, job.series, wait.note)
    except SeriesNotFound:
        queue.fail_attempt(job.id, f"series {job.series} no longer exists in Orthanc", permanent=True)
    except _Permanent as exc:  # retrying cannot help: fail now, with the reason
        queue.fail_attempt(job.id, str(exc), permanent=True)
    except (OrthancError, BidsBridgeError, OSError, RuntimeError) as exc:
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
    holder = RulesSnapshot(Path(settings.state_dir), settings.rules_path, settings.rules_context)
    for root in _datasets(settings).values():  # a dataset never exists without its dataset files
        try:
            ensure_dataset(root, dcm2niix_version())
        except BidsBridgeError as exc:
            logger.error("cannot prepare the BIDS dataset %s: %s", root, exc)
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
        run_job(job, queue, client, settings, holder)
        done = queue.get(job.id)
        logger.info("job %d: %s in %.2f s", job.id, done.state if done else "?", time.monotonic() - started)
    client.close()
    queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
