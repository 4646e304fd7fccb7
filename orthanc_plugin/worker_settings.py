"""Settings handed from the plugin to its worker processes (standard library only)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["AUTH_ENV", "PARENT_ENV", "WorkerSettings"]

#: Environment variable carrying the REST ``Authorization`` value (kept out of argv and files).
AUTH_ENV = "BIDSBRIDGE_ORTHANC_AUTHORIZATION"
#: Environment variable carrying the pid of the Orthanc that started the worker: a worker whose
#: parent is another process (Orthanc died before the worker set its parent-death signal) exits.
PARENT_ENV = "BIDSBRIDGE_ORTHANC_PID"


@dataclass(frozen=True)
class WorkerSettings:
    state_dir: str
    bids_root: str
    orthanc_url: str
    max_attempts: int
    subject: str | None = None
    session: str | None = None
    rest_username: str | None = None
    rest_password_file: str | None = None
    rules_path: str | None = None
    #: Dataset name -> root directory (``default`` included).
    datasets: dict[str, str] | None = None
    #: What the rule checks need to know of Orthanc's configuration (names only, no secrets):
    #: ``{"BidsBridge": {"Destinations": ..., "Datasets": ...}, "DicomModalities": ..., "OrthancPeers": ...}``.
    rules_context: dict[str, Any] | None = None
    #: ``BidsBridge.Destinations`` as configured (credentials are only named there, never held).
    destinations: dict[str, Any] | None = None
    push_attempts: int = 12
    #: Backoff of retried attempts (see :class:`~orthanc_plugin.job_queue.RetryPolicy`).
    retry_base: float = 2.0
    retry_cap: float = 300.0
    #: Address-space limit of the worker and its children (MiB); 0 = none.
    memory_mb: int = 0
    #: CPU niceness the worker adds to itself (and lowest best-effort I/O class when > 0).
    nice: int = 0

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> WorkerSettings:
        return cls(**json.loads(path.read_text()))
