"""A fake of the Orthanc REST calls the worker stages make (:class:`orthanc_plugin.rest_client.OrthancApi`),
serving real DICOM files from disk, so that handlers and stages are unit-tested without Orthanc.

Resources get stable ids derived from their UIDs; ``/instances/{id}/simplified-tags`` is built
with pydicom the way Orthanc simplifies tags (keywords, strings, ``\\``-joined multiple values,
sequences as lists of objects). Forwards, stored instances and downloads are recorded.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from orthanc_plugin.rest_client import SeriesNotFound


def _id(kind: str, uid: str) -> str:
    return f"{kind}-{hashlib.sha1(uid.encode()).hexdigest()[:12]}"


def simplified_tags(ds: Dataset) -> dict[str, Any]:
    """Orthanc's ``simplified-tags`` form of a dataset (public attributes, no pixel data)."""
    tags: dict[str, Any] = {}
    for element in ds:
        if element.tag.is_private or not element.keyword or element.keyword == "PixelData":
            continue
        if element.VR == "SQ":
            tags[element.keyword] = [simplified_tags(item) for item in element.value]
        elif isinstance(element.value, bytes):
            continue
        elif isinstance(element.value, MultiValue):
            tags[element.keyword] = "\\".join(str(v) for v in element.value)
        elif element.value is not None:
            tags[element.keyword] = str(element.value)
    return tags


@dataclass
class _Instance:
    path: Path
    tags: dict[str, Any]


@dataclass
class FakeOrthanc:
    """Series (folders of DICOM files) as Orthanc would hold them; see the module docstring."""

    calling_aet: str = "STORESCU"
    instances: dict[str, _Instance] = field(default_factory=dict)
    series: dict[str, list[str]] = field(default_factory=dict)
    study_of: dict[str, str] = field(default_factory=dict)
    unstable: set[str] = field(default_factory=set)
    forwards: list[tuple[str, Any]] = field(default_factory=list)
    stored: list[bytes] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    #: Every instance file fetched (by ``download_instance``, directly or for a series).
    fetched: list[str] = field(default_factory=list)
    #: What ``/jobs/{id}`` reports for a forward's Orthanc job.
    job_state: str = "Success"

    def add(self, files: Iterable[Path]) -> list[str]:
        """Store DICOM files; return the ids of the series they belong to (in first-seen order)."""
        added: list[str] = []
        for path in sorted(files):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            series_id = _id("series", str(ds.SeriesInstanceUID))
            instance_id = _id("instance", f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}/{path}")
            self.instances[instance_id] = _Instance(path, simplified_tags(ds))
            self.series.setdefault(series_id, []).append(instance_id)
            self.study_of[series_id] = _id("study", str(ds.StudyInstanceUID))
            if series_id not in added:
                added.append(series_id)
        return added

    def add_folder(self, folder: Path) -> list[str]:
        return self.add(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))

    # -- OrthancApi --------------------------------------------------------------------------
    def _series_document(self, series_id: str) -> dict[str, Any]:
        instances = sorted(self.series[series_id])
        first = self.instances[instances[0]].tags
        keys = ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "ProtocolName", "Modality")
        return {
            "ID": series_id,
            "Instances": instances,
            "ParentStudy": self.study_of[series_id],
            "IsStable": series_id not in self.unstable,
            "MainDicomTags": {key: first[key] for key in keys if key in first},
        }

    def get_json(self, path: str) -> Any:
        parts = [part for part in path.split("?", maxsplit=1)[0].split("/") if part]
        match parts:
            case ["series", series_id] if series_id in self.series:
                return self._series_document(series_id)
            case ["instances", instance_id, "simplified-tags"] if instance_id in self.instances:
                return dict(self.instances[instance_id].tags)
            case ["instances", instance_id, "metadata"] if instance_id in self.instances:
                return {"RemoteAET": self.calling_aet, "CalledAET": "BIDSBRIDGE_PACS", "RemoteIP": "127.0.0.1"}
            case ["studies", study_id, "series"]:
                return [self._series_document(s) for s, study in sorted(self.study_of.items()) if study == study_id]
            case ["jobs", _job]:
                return {"State": self.job_state, "ErrorDescription": "peer unreachable"}
        raise SeriesNotFound(f"Orthanc has no resource {path}")

    def get_bytes(self, path: str) -> bytes:
        parts = [part for part in path.split("/") if part]
        if len(parts) == 3 and parts[0] == "instances" and parts[2] == "file" and parts[1] in self.instances:
            return self.instances[parts[1]].path.read_bytes()
        raise SeriesNotFound(f"Orthanc has no resource {path}")

    def post_json(self, path: str, body: Any) -> Any:
        self.forwards.append((path, body))
        return {"ID": f"job-{len(self.forwards)}"}

    def post_instance(self, data: bytes) -> str:
        self.stored.append(data)
        return f"stored-{len(self.stored)}"

    def series_instances(self, series_id: str) -> list[str]:
        if series_id not in self.series:
            raise SeriesNotFound(f"Orthanc has no resource /series/{series_id}")
        return sorted(self.series[series_id])

    def download_instance(self, instance: str, path: Path) -> Path:
        if instance not in self.instances:
            raise SeriesNotFound(f"Orthanc has no resource /instances/{instance}/file")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.instances[instance].path, path)
        self.fetched.append(instance)
        return path

    def download_series(self, series_id: str, target: Path, *, threads: int = 4,
                        have: Mapping[str, Path] | None = None) -> list[Path]:
        self.downloads.append(series_id)
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for instance_id in self.series_instances(series_id):
            destination = target / f"{instance_id}.dcm"
            if have and instance_id in have and have[instance_id].is_file():
                have[instance_id].replace(destination)
            else:
                self.download_instance(instance_id, destination)
            written.append(destination)
        return written
