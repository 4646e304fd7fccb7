"""REST routes under ``/bidsbridge/``; they decide, so errors become clear HTTP answers.

Orthanc's own authentication applies (routes are registered through the plugin SDK).

========================================  ==========================================================
``GET  /bidsbridge/jobs``                 jobs, newest first (``?state=``, ``?series=``, ``?limit=``)
``GET  /bidsbridge/jobs/{id}``            one job
``POST /bidsbridge/jobs/{id}/retry``      put a finished job back in the queue
``POST /bidsbridge/series/{id}/convert``  queue a conversion by hand
``GET  /bidsbridge/series/{id}/nifti``    zip of the series' NIfTI files and sidecars
``GET  /bidsbridge/status``               queue counts and worker pids
========================================  ==========================================================

The handlers are plain functions of the request returning a :class:`Response`, so they are
tested without Orthanc; :mod:`orthanc_plugin.plugin` adapts them to the SDK.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .queue import JobQueue

__all__ = ["Response", "Routes"]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    allow: str | None = None  # for 405 answers

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value, indent=2).encode() + b"\n")

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json({"error": message, "status": status}, status)


class Routes:
    def __init__(
        self,
        queue: JobQueue,
        bids_root: Path,
        series_exists: Callable[[str], bool],
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self.queue = queue
        self.bids_root = bids_root
        self.series_exists = series_exists
        self.status = status

    def jobs(self, method: str, get: Mapping[str, str]) -> Response:
        if method != "GET":
            return Response(405, b"", allow="GET")
        try:
            limit = int(get.get("limit", "100"))
            offset = int(get.get("offset", "0"))
        except ValueError:
            return Response.error(400, "limit and offset must be integers")
        state = get.get("state")
        if state is not None and state not in ("queued", "running", "done", "skipped", "failed"):
            return Response.error(400, f"unknown state {state!r}")
        jobs = self.queue.list(state=state, series=get.get("series"), limit=max(1, min(limit, 10000)),
                               offset=max(0, offset))
        return Response.json([job.to_dict() for job in jobs])

    def job(self, method: str, job_id: str, action: str | None) -> Response:
        if not job_id.isdigit():
            return Response.error(400, f"job id must be a number, not {job_id!r}")
        if action is None:
            if method != "GET":
                return Response(405, b"", allow="GET")
            job = self.queue.get(int(job_id))
            return Response.error(404, f"no job {job_id}") if job is None else Response.json(job.to_dict())
        if action == "retry":
            if method != "POST":
                return Response(405, b"", allow="POST")
            job = self.queue.get(int(job_id))
            if job is None:
                return Response.error(404, f"no job {job_id}")
            if job.state not in ("done", "skipped", "failed"):
                return Response.error(409, f"job {job_id} is {job.state}; only finished jobs can be retried")
            retried = self.queue.retry(int(job_id))
            return Response.json(retried.to_dict() if retried else None, 202)
        return Response.error(404, f"unknown job action {action!r}")

    def series(self, method: str, series_id: str, action: str) -> Response:
        if action == "convert":
            if method != "POST":
                return Response(405, b"", allow="POST")
            if not self.series_exists(series_id):
                return Response.error(404, f"Orthanc has no series {series_id}")
            job_id = self.queue.enqueue(series_id, "manual")
            job = self.queue.get(job_id)
            return Response.json(job.to_dict() if job else {"id": job_id}, 202)
        if action == "nifti":
            if method != "GET":
                return Response(405, b"", allow="GET")
            job = self.queue.latest_for_series(series_id)
            if job is None:
                return Response.error(404, f"series {series_id} has no finished conversion")
            images = [p for p in job.outputs if not p.startswith("sourcedata/")]
            if not images:
                return Response.error(404, f"series {series_id} was converted to no NIfTI file")
            return Response(200, self._zip(images), "application/zip")
        return Response.error(404, f"unknown series action {action!r}")

    def status_route(self, method: str) -> Response:
        if method != "GET":
            return Response(405, b"", allow="GET")
        return Response.json(self.status())

    def _zip(self, relative_paths: list[str]) -> bytes:
        buffer = io.BytesIO()
        root = self.bids_root.resolve()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for relative in sorted(relative_paths):
                path = (root / relative).resolve()
                if root not in path.parents or not path.is_file():
                    continue
                archive.write(path, relative)
        return buffer.getvalue()
