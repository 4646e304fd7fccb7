"""An acquisition exported as one series per volume, through a real Orthanc: each part arrives and
becomes stable on its own; the plugin waits for the set and converts it once into one 4D run."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.orthanc.conftest import Harness, series_uid
from tests.validator import validate

pytestmark = pytest.mark.orthanc

SUITE = "dcm_qa_xa30i_bold"


def _parts(corpus: Path) -> list[Path]:
    return sorted(p for p in (corpus / SUITE / "In").iterdir() if p.is_dir())


def _runs(root: Path) -> list[Path]:
    return sorted(root.glob("sub-*/ses-*/func/*_bold.nii.gz"))


def test_the_parts_become_one_4d_run_equal_to_dcm2niix(
    orthanc_factory: Callable[..., Harness], corpus: Path
) -> None:
    harness = orthanc_factory()
    parts = _parts(corpus)
    harness.send(parts)
    jobs = harness.wait_all_finished(len(parts), timeout=240)
    assert len(jobs) == 6 and all(job["state"] == "done" for job in jobs.values()), jobs
    (run,) = _runs(harness.server.bids_root)
    (expected,) = (corpus / SUITE / "expected").glob("*.nii.gz")
    ours, reference = nib.load(run), nib.load(expected)
    assert ours.shape == reference.shape == (64, 64, 33, 6)
    assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(reference.dataobj))
    assert np.allclose(ours.affine, reference.affine)
    # Every part's job says what became of it: the same files, one acquisition of six series.
    uids = {series_uid(part) for part in parts}
    records = [job["result"] for job in jobs.values()]
    assert {record["series_uid"] for record in records} == uids
    assert len({record["acquisition"] for record in records}) == 1
    assert all(sorted(record["members"]) == sorted(uids) for record in records)
    root = harness.server.bids_root
    sidecar = run.parent / run.name.replace(".nii.gz", ".json")
    files = tuple(sorted(str(path.relative_to(root)) for path in (run, sidecar)))
    assert {tuple(job["outputs"]) for job in jobs.values()} == {files}
    assert validate(root) == []
    # Any part's NIfTI route gives the run.
    part_id = harness.orthanc_series_id(series_uid(parts[2]))
    answer = requests.get(f"{harness.url}/bidsbridge/series/{part_id}/nifti", timeout=30)
    assert answer.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(answer.content)).namelist()
    assert any(name.endswith("_bold.nii.gz") for name in names), names


def test_a_late_part_converts_the_acquisition_again_into_one_file_set(
    orthanc_factory: Callable[..., Harness], corpus: Path
) -> None:
    harness = orthanc_factory()
    parts = _parts(corpus)
    harness.send(parts[:5])
    harness.wait_all_finished(5, timeout=240)
    (first,) = _runs(harness.server.bids_root)
    assert nib.load(first).shape == (64, 64, 33, 5)
    harness.send(parts[5:])
    late = series_uid(parts[5])

    def late_done() -> bool:
        jobs = harness.latest_jobs()
        return len(jobs) == 6 and all(job["state"] in ("done", "skipped", "failed") for job in jobs.values())

    harness.wait_for(late_done, 240, "the late part to be converted")
    jobs = harness.latest_jobs()
    (job,) = [j for j in jobs.values() if j["result"] and j["result"].get("series_uid") == late]
    assert job["state"] == "done", job
    (run,) = _runs(harness.server.bids_root)  # one file set: the 5-volume run was replaced
    assert run == first and nib.load(run).shape == (64, 64, 33, 6)
    files = sorted(p.name for p in run.parent.iterdir())
    assert len(files) == 2, files
    assert validate(harness.server.bids_root) == []
