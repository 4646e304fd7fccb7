"""A small client for the parts of Orthanc's REST API the workers use.

Workers run outside Orthanc, so they talk to it over HTTP, authorised by the token the plugin
minted (``Authorization`` header) or by configured credentials.  Credentials are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import requests

from converters.errors import BidsBridgeError

from .job_log import in_this_context

__all__ = ["OrthancApi", "OrthancError", "OrthancRestClient", "OrthancUnreachable", "SeriesNotFound"]

logger = logging.getLogger(__name__)


class OrthancError(BidsBridgeError, RuntimeError):
    """Orthanc answered with an error or could not be reached: retried later."""

    retryable = True


class OrthancUnreachable(OrthancError):
    """Orthanc does not answer at all (stopped, restarting, gone). Not the job's fault: the worker
    gives the job back without spending an attempt and stops claiming (see :mod:`.worker`)."""


class SeriesNotFound(OrthancError):
    """The series no longer exists in Orthanc (deleted since it was queued): nothing to retry."""

    retryable = False


class OrthancApi(Protocol):
    """The calls the worker stages make of Orthanc's REST API (what a test's fake provides).
    JSON answers are Orthanc's own documents (``/series/{id}``, ``/instances/{id}/simplified-tags``,
    ``/jobs/{id}``, ...); every failure is an :class:`OrthancError`."""

    def get_json(self, path: str) -> Any: ...

    def get_bytes(self, path: str) -> bytes: ...

    def post_json(self, path: str, body: Any) -> Any: ...

    def post_instance(self, data: bytes) -> str: ...

    def series_instances(self, series_id: str) -> list[str]: ...

    def download_instance(self, instance: str, path: Path) -> Path: ...

    def download_series(self, series_id: str, target: Path, *, threads: int = 4,
                        have: Mapping[str, Path] | None = None) -> list[Path]: ...


class OrthancRestClient:
    def __init__(self, url: str, *, authorization: str | None = None, username: str | None = None,
                 password: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        # Orthanc gzips answers for clients that accept it: 260-320 ms for a 3 MB instance against
        # 6 ms plain (make bench). Workers read from a nearby Orthanc; its bytes come as stored.
        self._session.headers["Accept-Encoding"] = "identity"
        if authorization:
            self._session.headers["Authorization"] = authorization
        elif username is not None and password is not None:
            self._session.auth = (username, password)

    def close(self) -> None:
        self._session.close()

    def reachable(self) -> bool:
        """Orthanc answers ``GET /system`` (any status counts: it is there)."""
        try:
            self._session.get(f"{self.url}/system", timeout=min(self.timeout, 5.0))
        except requests.RequestException:
            return False
        return True

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One call; connection problems, 401/403 and 5xx become :class:`OrthancError`."""
        try:
            response = self._session.request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise OrthancUnreachable(f"cannot reach Orthanc at {self.url}: {exc.__class__.__name__}") from exc
        except requests.RequestException as exc:
            raise OrthancError(f"cannot talk to Orthanc at {self.url}: {exc.__class__.__name__}") from exc
        if response.status_code in (401, 403):
            raise OrthancError(f"Orthanc refused {path} ({response.status_code}): check the plugin's REST credentials")
        return response

    def _get(self, path: str, **kwargs: Any) -> requests.Response:
        response = self._request("GET", path, **kwargs)
        if response.status_code == 404:
            raise SeriesNotFound(f"Orthanc has no resource {path}")
        if response.status_code >= 400:
            raise OrthancError(f"Orthanc answered {response.status_code} to GET {path}")
        return response

    def post_instance(self, data: bytes) -> str:
        """Store one DICOM file in Orthanc; return its Orthanc instance id."""
        response = self._request("POST", "/instances", data=data, headers={"Content-Type": "application/dicom"})
        if response.status_code >= 400:
            raise OrthancError(
                f"Orthanc refused a derived DICOM object ({response.status_code}): {response.text[:200]}"
            )
        return str(response.json()["ID"])

    def post_json(self, path: str, body: Any) -> Any:
        response = self._request("POST", path, json=body)
        if response.status_code == 404:
            raise OrthancError(f"Orthanc has no {path} (unknown modality or peer?)")
        if response.status_code >= 400:
            raise OrthancError(f"Orthanc answered {response.status_code} to POST {path}: {response.text[:200]}")
        return response.json()

    def get_bytes(self, path: str) -> bytes:
        return self._get(path).content

    def get_json(self, path: str) -> Any:
        return self._get(path).json()

    def series_instances(self, series_id: str) -> list[str]:
        series = self.get_json(f"/series/{series_id}")
        return sorted(series["Instances"])

    def download_instance(self, instance: str, path: Path) -> Path:
        """Stream one instance file to ``path`` (1 MiB at a time: an enhanced file of gigabytes
        never sits in memory); return ``path``."""
        response = self._get(f"/instances/{instance}/file", stream=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            for chunk in response.iter_content(chunk_size=1 << 20):
                handle.write(chunk)
        return path

    def download_series(self, series_id: str, target: Path, *, threads: int = 4,
                        have: Mapping[str, Path] | None = None) -> list[Path]:
        """Write every instance file of ``series_id`` into ``target``; return the paths.
        ``have``: files of some of its instances already downloaded (moved into ``target``)."""
        instances = self.series_instances(series_id)
        target.mkdir(parents=True, exist_ok=True)
        ready = dict(have or {})

        def fetch(instance: str) -> Path:
            path = target / f"{instance}.dcm"
            if instance in ready and ready[instance].is_file():
                return ready[instance].replace(path)
            return self.download_instance(instance, path)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return list(pool.map(in_this_context(fetch), instances))  # their log lines: the job's tag
