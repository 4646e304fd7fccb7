"""Worker stage: deliver a converted series (and its derived DICOM objects) to an XNAT project.

A push is a job of its own in the durable queue (kind ``push``), queued by the conversion job
when a rule says ``push_xnat``: delivery failures never redo the conversion.  Errors are sorted
by :mod:`xnat_container.errors`: retryable ones (XNAT down, timeouts, 5xx, a file that differs
after upload) come back with exponential backoff and jitter; 401/403 and refused requests fail at
once with their message.  Credentials live in the destination (environment or secret file) and
never reach a job record.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from xnat_container import XnatError, parse_destinations, push_session

from .rest_client import OrthancRestClient

__all__ = ["PushFailed", "push"]

logger = logging.getLogger(__name__)


class PushFailed(Exception):
    """A push that failed; ``retryable`` tells the queue whether to try again."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def push(params: dict[str, Any], destinations: dict[str, Any] | None, client: OrthancRestClient) -> dict[str, Any]:
    """Carry out one ``push`` job; return its report (no secrets)."""
    try:
        known = parse_destinations(destinations or {})
    except (ValueError, XnatError) as exc:
        raise PushFailed(f"BidsBridge.Destinations: {exc}", retryable=False) from exc
    alias = params["server"]
    if alias not in known:
        raise PushFailed(f"no XNAT destination {alias!r} in BidsBridge.Destinations", retryable=False)
    with tempfile.TemporaryDirectory(prefix="push-") as tmp:
        derived = []
        for index, instance in enumerate(params.get("derived_instances", [])):
            path = Path(tmp) / f"derived-{index}.dcm"
            path.write_bytes(client.get_bytes(f"/instances/{instance}/file"))
            derived.append(path)
        try:
            report = push_session(
                known[alias], params["project"], Path(params["dataset_root"]), params["bids_subject"],
                params.get("bids_session"), series_outputs={params["series_uid"]: params["outputs"]},
                derived=derived, subject_label=params.get("subject"), session_label=params.get("session"),
            )
        except XnatError as exc:
            raise PushFailed(f"{exc.__class__.__name__}: {exc}", retryable=exc.retryable) from exc
    return report.to_dict()
