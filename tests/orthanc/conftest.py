"""A real Orthanc with the plugin, on free loopback ports in a temp dir, and helpers to drive it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from orthanc_plugin.dicom_send import send_files
from orthanc_plugin.embedded import ORTHANC_AET, EmbeddedOrthanc, free_port

TERMINAL = ("done", "skipped", "failed")


class Harness:
    """Wraps one :class:`EmbeddedOrthanc` with the calls the tests make."""

    def __init__(self, server: EmbeddedOrthanc) -> None:
        self.server = server
        #: Credentials of the harness's own calls (``EmbeddedOrthanc.http_auth``; None: authentication is off).
        self.auth = server.http_auth

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.url}{path}", params=params, auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()

    def send(self, paths: Iterable[Path]) -> int:
        files: list[Path] = []
        for path in paths:
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
        report = send_files(files, "127.0.0.1", self.server.dicom_port, called_aet=ORTHANC_AET)
        assert not report.failed, report.failed
        return report.sent

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.get("/bidsbridge/jobs", limit=10000)
        return jobs

    def latest_jobs(self) -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for job in self.jobs():  # newest first
            latest.setdefault(job["series"], job)
        return latest

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; jobs: {self.jobs()}")

    def wait_all_finished(self, series_count: int, timeout: float = 120) -> dict[str, dict[str, Any]]:
        def finished() -> bool:
            latest = self.latest_jobs()
            return len(latest) >= series_count and all(j["state"] in TERMINAL for j in latest.values())

        self.wait_for(finished, timeout, f"{series_count} series to finish")
        return self.latest_jobs()

    def orthanc_series_id(self, series_uid: str) -> str:
        found = requests.post(
            f"{self.url}/tools/lookup", data=series_uid, auth=self.auth, timeout=10
        ).json()
        ids = [item["ID"] for item in found if item["Type"] == "Series"]
        assert ids, f"series {series_uid} is not in Orthanc"
        return str(ids[0])


def series_uid(directory: Path) -> str:
    first = next(p for p in sorted(directory.rglob("*")) if p.is_file())
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Start Orthanc + plugin: ``factory(workdir=None, start=True, **EmbeddedOrthanc fields)``."""
    started: list[EmbeddedOrthanc] = []

    def factory(workdir: Path | None = None, start: bool = True, **options: Any) -> Harness:
        options.setdefault("workers", 2)
        options.setdefault("stable_age", 2)
        server = EmbeddedOrthanc(
            workdir=workdir or tmp_path / "server", http_port=free_port(), dicom_port=free_port(), **options
        )
        started.append(server)
        if start:
            server.start()
        return Harness(server)

    yield factory
    for server in started:
        server.stop()
