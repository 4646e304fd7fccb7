"""Deliver one BIDS session to XNAT exactly once: idempotent, resumable, verified.

:func:`push_session` is what the plugin's delivery job stage and ``bidsbridge xnat push`` call:

1. plan the layout (:mod:`xnat_container.layout`);
2. create project-level objects idempotently with PUT (subject, session, scans: 201 created or
   200 existing; resources: 201 or 409 existing);
3. list each resource's files; a file XNAT already holds with the local size and MD5 is skipped
   (so re-running after a partial failure resumes where it stopped, and a re-push is a no-op);
   every other file is uploaded with ``overwrite=true`` — a ``{"duplicates": [...]}`` answer
   means XNAT kept an old file and is an error;
4. list each resource again and check every file's size and digest against the local file
   (downloading it when XNAT lists no digest).

``progress`` (optional, every delivery function) is called with an :class:`UploadProgress`
once per planned file, when it was uploaded or found already there; it only observes (an
exception it raises is logged and ignored).

Errors: :class:`~xnat_container.errors.XnatUnavailable` and
:class:`~xnat_container.errors.XnatVerificationError` are retryable (``.retryable``);
:class:`~xnat_container.errors.XnatAuthError` and
:class:`~xnat_container.errors.XnatRequestError` are not.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.jsonform import to_json
from xnat_container.client import RemoteFile, XnatClient, file_md5, quote_path
from xnat_container.destinations import Destination
from xnat_container.errors import XnatRequestError, XnatVerificationError
from xnat_container.layout import ResourcePlan, ScanPlan, SessionPlan, dataset_sessions, plan_session

__all__ = ["PushReport", "UploadProgress", "push_dataset", "push_plan", "push_session"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushReport:
    """What one delivery did. :meth:`to_dict` is safe for job records (no credentials)."""

    destination: str
    url: str
    project: str
    subject_label: str
    session_label: str
    #: XNAT's accession number of the session (``XNAT_E00001``).
    experiment_id: str
    scans: tuple[str, ...]
    files_uploaded: int
    files_verified: int
    #: Files already in XNAT with the same size and digest (not sent again).
    files_skipped_identical: int
    bytes_uploaded: int
    duration_seconds: float
    requests: int
    retries: int
    #: Files XNAT holds in the delivered resources that this delivery did not plan (left alone).
    extra_remote_files: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {**to_json(self), "duration_seconds": round(self.duration_seconds, 3)}


@dataclass(frozen=True)
class UploadProgress:
    """One planned file handled: uploaded, or found in XNAT with the same size and digest.

    Totals cover every file the call delivers (all sessions of :func:`push_dataset`); a file
    planned twice (a JSON sidecar in the scan's ``NIFTI`` and ``BIDS`` resources) counts twice.
    """

    #: Files handled so far (this one included), 1 to ``files_total``.
    files_done: int
    files_total: int
    #: Bytes of the files handled so far, uploaded or already there, 0 to ``bytes_total``.
    bytes_done: int
    bytes_total: int
    #: XNAT session label, scan ID (``None`` for a session resource), resource label, and the
    #: file's path inside the resource.
    session_label: str
    scan: str | None
    resource: str
    path: str
    size: int
    #: ``False``: XNAT already held it (same size and digest), nothing was sent.
    uploaded: bool


class _Meter:
    """Counts the files handled across the plans of one call and tells the callback."""

    def __init__(self, plans: Sequence[SessionPlan], callback: Callable[[UploadProgress], None] | None) -> None:
        files = [item.local for plan in plans for _scan, resource in plan.all_resources() for item in resource.files]
        self.files_total = len(files)
        self.bytes_total = sum(path.stat().st_size for path in files)
        self.files_done = 0
        self.bytes_done = 0
        self._callback = callback

    def handled(
        self,
        plan: SessionPlan,
        scan: ScanPlan | None,
        resource: ResourcePlan,
        remote: str,
        size: int,
        *,
        uploaded: bool,
    ) -> None:
        self.files_done += 1
        self.bytes_done += size
        if self._callback is None:
            return
        event = UploadProgress(
            files_done=self.files_done,
            files_total=self.files_total,
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            session_label=plan.session_label,
            scan=None if scan is None else scan.scan_id,
            resource=resource.label,
            path=remote,
            size=size,
            uploaded=uploaded,
        )
        try:
            self._callback(event)
        except Exception:  # the callback only observes: it must not stop the delivery
            logger.exception("the progress callback failed on file %d/%d (ignored)", self.files_done, self.files_total)


@dataclass
class _Tally:
    uploaded: int = 0
    verified: int = 0
    skipped: int = 0
    bytes: int = 0
    extra: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Local:
    size: int
    md5: str


def _q(label: str) -> str:
    return quote_path(label).replace("/", "%2F")


def _session_path(plan: SessionPlan) -> str:
    return f"/data/projects/{_q(plan.project)}/subjects/{_q(plan.subject_label)}/experiments/{_q(plan.session_label)}"


def _resource_path(plan: SessionPlan, scan: ScanPlan | None, resource: ResourcePlan) -> str:
    owner = _session_path(plan) + (f"/scans/{_q(scan.scan_id)}" if scan is not None else "")
    return f"{owner}/resources/{_q(resource.label)}"


def _create_objects(client: XnatClient, plan: SessionPlan) -> str:
    project = _q(plan.project)
    client.request("GET", f"/data/projects/{project}", query={"format": "json"}, what=f"read project {plan.project}")
    client.request(
        "PUT",
        f"/data/projects/{project}/subjects/{_q(plan.subject_label)}",
        accepted=(200, 201),
        what=f"create subject {plan.subject_label}",
    )
    fields = {"xsiType": plan.xsi_type}
    if plan.date:
        fields[f"{plan.xsi_type}/date"] = plan.date
    if plan.time:
        fields[f"{plan.xsi_type}/time"] = plan.time
    answer = client.request(
        "PUT", _session_path(plan), query=fields, accepted=(200, 201), what=f"create session {plan.session_label}"
    )
    experiment_id = answer.text.strip()
    for scan in plan.scans:
        client.request(
            "PUT",
            f"{_session_path(plan)}/scans/{_q(scan.scan_id)}",
            query={
                "xsiType": scan.xsi_type,
                f"{scan.xsi_type}/type": scan.type,
                f"{scan.xsi_type}/series_description": scan.series_description,
            },
            accepted=(200, 201),
            what=f"create scan {scan.scan_id} of {plan.session_label}",
        )
    return experiment_id


def _upload(client: XnatClient, path: str, local: Path, remote: str) -> None:
    answer = client.request(
        "PUT",
        f"{path}/files/{quote_path(remote)}",
        query={"overwrite": "true", "inbody": "true"},
        body=local,
        accepted=(200, 201),
        what=f"upload {remote}",
    )
    text = answer.text.strip()
    if text.startswith("{"):
        try:
            reply = json.loads(text)
        except ValueError:
            reply = None
        if isinstance(reply, dict) and reply.get("duplicates"):
            raise XnatRequestError(
                f"XNAT at {client.url} kept its existing copy of {reply['duplicates']} in {path} "
                "although the upload asked for overwrite=true"
            )


def _matches(client: XnatClient, path: str, remote: RemoteFile | None, local: _Local) -> bool:
    if remote is None or remote.size != local.size:
        return False
    if remote.digest:
        return remote.digest == local.md5
    return client.download_md5(f"{path}/files/{quote_path(remote.path)}") == local.md5


def _deliver_resource(
    client: XnatClient,
    plan: SessionPlan,
    scan: ScanPlan | None,
    resource: ResourcePlan,
    *,
    locals_: Mapping[Path, _Local],
    tally: _Tally,
    meter: _Meter,
) -> None:
    path = _resource_path(plan, scan, resource)
    existing = client.list_files(path)
    if not existing:
        client.request(
            "PUT",
            path,
            query={"format": resource.format, "content": resource.label},
            accepted=(200, 201, 409),
            what=f"create resource {resource.label}",
        )
    for item in resource.files:
        local = locals_[item.local]
        if _matches(client, path, existing.get(item.remote), local):
            tally.skipped += 1
            logger.debug("%s/%s already delivered", path, item.remote)
            meter.handled(plan, scan, resource, item.remote, local.size, uploaded=False)
            continue
        _upload(client, path, item.local, item.remote)
        tally.uploaded += 1
        tally.bytes += local.size
        meter.handled(plan, scan, resource, item.remote, local.size, uploaded=True)
    listed = client.list_files(path)
    for item in resource.files:
        if not _matches(client, path, listed.get(item.remote), locals_[item.local]):
            remote = listed.get(item.remote)
            shown = "missing" if remote is None else f"size {remote.size}, digest {remote.digest or 'none'}"
            raise XnatVerificationError(
                f"{item.remote} in {path} does not match the local file after upload ({shown}, "
                f"expected size {locals_[item.local].size}, md5 {locals_[item.local].md5})"
            )
        tally.verified += 1
    planned = {item.remote for item in resource.files}
    tally.extra.extend(f"{path}/files/{name}" for name in sorted(set(listed) - planned))


def push_plan(
    destination: Destination,
    plan: SessionPlan,
    *,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[UploadProgress], None] | None = None,
) -> PushReport:
    """Deliver a computed plan (see the module docstring)."""
    return _deliver(destination, plan, sleep=sleep, meter=_Meter([plan], progress))


def _deliver(
    destination: Destination, plan: SessionPlan, *, sleep: Callable[[float], None], meter: _Meter
) -> PushReport:
    started = time.monotonic()
    locals_ = {
        item.local: _Local(item.local.stat().st_size, file_md5(item.local))
        for _scan, resource in plan.all_resources()
        for item in resource.files
    }
    tally = _Tally()
    with XnatClient(destination, sleep=sleep) as client:
        experiment_id = _create_objects(client, plan)
        for scan, resource in plan.all_resources():
            _deliver_resource(client, plan, scan, resource, locals_=locals_, tally=tally, meter=meter)
        report = PushReport(
            destination=destination.alias,
            url=destination.url,
            project=plan.project,
            subject_label=plan.subject_label,
            session_label=plan.session_label,
            experiment_id=experiment_id,
            scans=tuple(scan.scan_id for scan in plan.scans),
            files_uploaded=tally.uploaded,
            files_verified=tally.verified,
            files_skipped_identical=tally.skipped,
            bytes_uploaded=tally.bytes,
            duration_seconds=time.monotonic() - started,
            requests=client.requests_sent,
            retries=client.retries_done,
            extra_remote_files=tuple(tally.extra),
        )
    logger.info(
        "delivered %s/%s/%s to %s: %d uploaded, %d already there, %d verified (%d requests, %d retries)",
        plan.project,
        plan.subject_label,
        plan.session_label,
        destination.url,
        report.files_uploaded,
        report.files_skipped_identical,
        report.files_verified,
        report.requests,
        report.retries,
    )
    return report


def push_session(
    destination: Destination,
    project: str,
    bids_root: Path,
    subject: str,
    session: str | None,
    *,
    series_outputs: Mapping[str, Sequence[str]] | None = None,
    derived: Sequence[Path] = (),
    subject_label: str | None = None,
    session_label: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[UploadProgress], None] | None = None,
) -> PushReport:
    """Deliver BIDS session ``sub-<subject>/[ses-<session>]`` of ``bids_root`` to ``project``.

    :param series_outputs: SeriesInstanceUID -> files relative to the dataset root (a job's
        ``outputs``): deliver only those series; ``None`` delivers the whole session.
    :param derived: derived DICOM files (SEG, Parametric Map, SR), each series a scan of its own.
    :param subject_label: XNAT subject label (default: the destination's ``SubjectLabel`` template).
    :param session_label: XNAT session label (default: the destination's ``SessionLabel`` template).
    :param progress: called once per planned file (see :class:`UploadProgress`).
    :raises XnatUnavailable: XNAT unreachable or failing after the client's retries (retryable).
    :raises XnatVerificationError: a delivered file differs after upload (retryable).
    :raises XnatAuthError: 401/403 (permanent).
    :raises XnatRequestError: XNAT refused a request, or the dataset is inconsistent (permanent).
    """
    plan = plan_session(
        project,
        bids_root,
        subject,
        session,
        series_outputs=series_outputs,
        derived=derived,
        subject_label=subject_label,
        session_label=session_label,
        subject_template=destination.subject_label,
        session_template=destination.session_label,
    )
    return push_plan(destination, plan, sleep=sleep, progress=progress)


def push_dataset(
    destination: Destination,
    project: str,
    bids_root: Path,
    *,
    subject: str | None = None,
    session: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[UploadProgress], None] | None = None,
) -> list[PushReport]:
    """Deliver every session of a converted dataset (or those of ``subject``/``session``).

    Every session is planned before the first upload (so that ``progress`` knows the totals of
    the whole delivery): a session that cannot be planned delivers nothing. Then raises on the
    first session that fails; sessions delivered before stay delivered, and running it again
    skips their files.
    """
    sessions = [
        (s, x)
        for s, x in dataset_sessions(Path(bids_root))
        if (subject is None or s == subject) and (session is None or x == session)
    ]
    if not sessions:
        wanted = "" if subject is None else f" for sub-{subject}" + ("" if session is None else f" ses-{session}")
        raise XnatRequestError(f"no converted session{wanted} in {bids_root}")
    plans = [
        plan_session(
            project,
            Path(bids_root),
            s,
            x,
            subject_template=destination.subject_label,
            session_template=destination.session_label,
        )
        for s, x in sessions
    ]
    meter = _Meter(plans, progress)
    return [_deliver(destination, plan, sleep=sleep, meter=meter) for plan in plans]
