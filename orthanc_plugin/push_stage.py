"""Worker stage: deliver a converted series (and its derived DICOM objects) to an XNAT project.

A push is a job of its own in the durable queue (kind ``push``), queued by the conversion job
when a rule says ``push_xnat``: delivery failures never redo the conversion. It delivers the
series' whole BIDS session, so that what a later series changed in the session (field-map links
in earlier sidecars, run renumbering) reaches XNAT with it.  Errors are sorted
by :mod:`xnat_container.errors`: retryable ones (XNAT down, timeouts, 5xx, a file that differs
after upload) come back with exponential backoff and jitter; 401/403 and refused requests fail at
once with their message.  Credentials live in the destination (environment or secret file) and
never reach a job record.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xnat_container import XnatConfigError, XnatError, parse_destinations, push_session
from xnat_container.push import PushReport

from .jobs import PushJob
from .rest_client import OrthancApi

__all__ = ["push"]

logger = logging.getLogger(__name__)


def push(job: PushJob, destinations: Mapping[str, Any] | None, client: OrthancApi) -> PushReport:
    """Carry out one ``push`` job; return its report (no secrets). Raises :class:`XnatError`
    (retryable or not, see :mod:`xnat_container.errors`) or an Orthanc error."""
    try:
        known = parse_destinations(dict(destinations or {}))
    except ValueError as exc:
        raise XnatConfigError(f"BidsBridge.Destinations: {exc}") from exc
    except XnatError as exc:
        raise XnatConfigError(f"BidsBridge.Destinations: {exc}") from exc
    if job.server not in known:
        raise XnatConfigError(f"no XNAT destination {job.server!r} in BidsBridge.Destinations")
    with tempfile.TemporaryDirectory(prefix="push-") as tmp:
        derived = []
        for index, instance in enumerate(job.derived_instances):
            path = Path(tmp) / f"derived-{index}.dcm"
            path.write_bytes(client.get_bytes(f"/instances/{instance}/file"))
            derived.append(path)
        # The whole BIDS session, not only this series: publishing a series may have changed the
        # sidecars of others (field-map links) or renamed them (runs); files XNAT already holds
        # identically are not sent again.
        return push_session(
            known[job.server], job.project, Path(job.dataset_root), job.bids_subject, job.bids_session,
            series_outputs=None, derived=derived,
            subject_label=job.subject or None, session_label=job.session or None,
        )
