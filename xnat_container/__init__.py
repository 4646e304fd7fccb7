"""XNAT delivery: destinations, a retrying REST client, the layout, verified exactly-once push,
the ``bidsbridge xnat`` commands and the Container Service entrypoint.

The configuration and error names are imported eagerly and need only the standard library, so
the plugin can validate ``BidsBridge.Destinations`` inside Orthanc's embedded interpreter. The
delivery functions (which import xnat-py, requests and pydicom) load on first use.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from xnat_container.destinations import Destination, Secret, destination_from_url, parse_destinations
from xnat_container.errors import (
    XnatAuthError,
    XnatConfigError,
    XnatError,
    XnatLabelError,
    XnatRequestError,
    XnatTLSError,
    XnatUnavailable,
    XnatVerificationError,
)

if TYPE_CHECKING:
    from xnat_container.check import CheckResult, check_destination
    from xnat_container.push import PushReport, UploadProgress, push_dataset, push_session

__all__ = [
    "CheckResult",
    "Destination",
    "PushReport",
    "Secret",
    "UploadProgress",
    "XnatAuthError",
    "XnatConfigError",
    "XnatError",
    "XnatLabelError",
    "XnatRequestError",
    "XnatTLSError",
    "XnatUnavailable",
    "XnatVerificationError",
    "check_destination",
    "destination_from_url",
    "parse_destinations",
    "push_dataset",
    "push_session",
]

_LAZY = {
    "CheckResult": "xnat_container.check",
    "check_destination": "xnat_container.check",
    "PushReport": "xnat_container.push",
    "UploadProgress": "xnat_container.push",
    "push_dataset": "xnat_container.push",
    "push_session": "xnat_container.push",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


logging.getLogger(__name__).addHandler(logging.NullHandler())
