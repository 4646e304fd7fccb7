"""Early completion in a real Orthanc: a series whose headers prove it complete is converted
before Orthanc calls it stable; one whose headers claimed too few instances is converted again
from all of them at STABLE_SERIES, into one file set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import pydicom
import pytest

from tests.orthanc.conftest import TERMINAL, Harness, series_uid

pytestmark = pytest.mark.orthanc


def _series_jobs(harness: Harness, series_id: str) -> list[dict[str, Any]]:
    return [job for job in harness.jobs() if job["series"] == series_id and job["kind"] == "convert"]


def test_a_complete_series_is_converted_before_orthanc_calls_it_stable(
    orthanc_factory: Callable[..., Harness], corpus: Path
) -> None:
    harness = orthanc_factory(stable_age=600)
    (folder,) = (corpus / "dcm_qa_xa30" / "In").glob("5_*")
    harness.send([folder])
    series_id = harness.orthanc_series_id(series_uid(folder))
    harness.wait_for(lambda: any(j["state"] in TERMINAL for j in _series_jobs(harness, series_id)), 120,
                     "the early conversion")
    (job,) = _series_jobs(harness, series_id)
    assert job["trigger"] == "early" and job["state"] == "done", job
    assert harness.get(f"/series/{series_id}")["IsStable"] is False  # StableAge (600 s) is far off
    assert len(list(harness.server.bids_root.rglob("*_T1w.nii.gz"))) == 1


def test_a_series_that_turns_out_incomplete_is_converted_again_into_one_file_set(
    orthanc_factory: Callable[..., Harness], corpus: Path, tmp_path: Path
) -> None:
    (folder,) = (corpus / "dcm_qa_xa30" / "In").glob("7_*")
    copies = tmp_path / "bold"
    copies.mkdir()
    for path in sorted(folder.iterdir()):  # headers announcing 10 volumes of a 20-volume run
        ds = pydicom.dcmread(path)
        ds.NumberOfTemporalPositions = 10
        ds.save_as(copies / path.name)
    files = sorted(copies.iterdir())
    harness = orthanc_factory(stable_age=3)
    harness.send(files[:10])
    series_id = harness.orthanc_series_id(series_uid(copies))
    harness.wait_for(lambda: any(j["trigger"] == "early" and j["state"] == "done"
                                 for j in _series_jobs(harness, series_id)), 120, "the early conversion")
    (early_run,) = harness.server.bids_root.rglob("*_bold.nii.gz")
    assert nib.load(early_run).shape[3] == 10
    harness.send(files[10:])

    def converted_again() -> bool:
        jobs = _series_jobs(harness, series_id)
        newest = jobs[0] if jobs else {}
        note = str((newest.get("result") or {}).get("note") or "")
        return newest.get("trigger") == "stable" and newest.get("state") in TERMINAL and "already converted" not in note

    harness.wait_for(converted_again, 120, "the conversion at STABLE_SERIES")
    newest = _series_jobs(harness, series_id)[0]
    assert newest["state"] == "done", newest
    (bold,) = harness.server.bids_root.rglob("*_bold.nii.gz")  # one run: replaced, not added
    assert nib.load(bold).shape[3] == 20
    assert len(list(harness.server.bids_root.rglob("*_bold.json"))) == 1
