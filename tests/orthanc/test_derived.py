"""Derived DICOM objects registered in a real Orthanc, and SEG/PM from other tools converted back."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from converters.derived import derive_adc
from tests.orthanc.conftest import Harness, series_uid

pytestmark = pytest.mark.orthanc

PM, SEG, SR = "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def _study_series(harness: Harness, orthanc_series: str) -> dict[str, dict[str, Any]]:
    """SOP class of each series in the study of ``orthanc_series`` -> its first instance's tags."""
    study = harness.get(f"/series/{orthanc_series}")["ParentStudy"]
    found: dict[str, dict[str, Any]] = {}
    for series in harness.get(f"/studies/{study}/series"):
        instance = series["Instances"][0]
        tags = harness.get(f"/instances/{instance}/simplified-tags")
        found.setdefault(tags["SOPClassUID"], {"series": series["ID"], "instance": instance, "tags": tags})
    return found


def _dicom(harness: Harness, instance: str) -> pydicom.Dataset:
    data = requests.get(f"{harness.url}/instances/{instance}/file", timeout=30).content
    return pydicom.dcmread(io.BytesIO(data))


def _wait_job(harness: Harness, job_id: int, timeout: float = 120) -> dict[str, Any]:
    harness.wait_for(lambda: harness.get(f"/bidsbridge/jobs/{job_id}")["state"] in ("done", "skipped", "failed"),
                     timeout, f"job {job_id}")
    job: dict[str, Any] = harness.get(f"/bidsbridge/jobs/{job_id}")
    return job


def _referenced_series(ds: pydicom.Dataset) -> set[str]:
    uids: set[str] = set()
    for item in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        uids |= {str(s.SeriesInstanceUID) for s in item.ReferencedSeriesSequence}
    uids |= {str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])}
    return uids


def test_adc_parametric_map_seg_and_sr_are_stored_in_the_study(
    orthanc_factory: Callable[..., Harness], corpus: Path, tmp_path: Path
) -> None:
    harness = orthanc_factory()
    dwi = corpus / "dcm_qa_xa30" / "In" / "10_DWI_dir80_PA"
    harness.send([dwi])
    (job,) = harness.wait_all_finished(1).values()
    assert job["state"] == "done"
    orthanc_series = job["series"]

    queued = requests.post(f"{harness.url}/bidsbridge/series/{orthanc_series}/convert", json={"derive": ["adc"]},
                           timeout=10)
    assert queued.status_code == 202, queued.text
    derived = _wait_job(harness, queued.json()["id"])
    assert derived["state"] == "done", derived
    stored = derived["result"]["derived"]["adc"]["orthanc_instances"]
    assert len(stored) == 3

    in_study = _study_series(harness, orthanc_series)
    assert {PM, SEG, SR} <= set(in_study), sorted(in_study)
    source_uid = series_uid(dwi)
    pm = _dicom(harness, in_study[PM]["instance"])
    seg = _dicom(harness, in_study[SEG]["instance"])
    sr = _dicom(harness, in_study[SR]["instance"])
    for obj in (pm, seg, sr):  # same patient and study, a new series with a clear description
        assert obj.StudyInstanceUID == pydicom.dcmread(next(dwi.iterdir()), stop_before_pixels=True).StudyInstanceUID
        assert obj.SeriesInstanceUID != source_uid and obj.SeriesDescription
    assert source_uid in _referenced_series(pm) | _referenced_series(seg)
    assert {str(seg.SeriesInstanceUID), str(pm.SeriesInstanceUID)} <= _referenced_series(sr)

    bids = harness.server.bids_root
    adc_maps = list(bids.glob("derivatives/bidsbridge/sub-*/ses-*/dwi/*_dir-PA_ADC.nii.gz"))
    masks = list(bids.glob("derivatives/bidsbridge/sub-*/ses-*/dwi/*_dir-PA_desc-adcmask_dseg.nii.gz"))
    assert len(adc_maps) == 1 and len(masks) == 1
    assert masks[0].with_name(masks[0].name.replace(".nii.gz", ".tsv")).exists()
    assert (bids / "derivatives" / "bidsbridge" / "dataset_description.json").exists()
    # QC pictures of the series and of its derivations, listed in the job's result.
    pictures = derived["result"]["qc"]
    assert any(p.endswith("_dir-PA_desc-map_ADC.png") for p in pictures), pictures
    assert any(p.endswith("_dir-PA_desc-adcmaskOutline_dseg.png") for p in pictures), pictures
    assert any(p.endswith("_dir-PA_desc-ortho_dwi.png") for p in pictures), pictures
    assert all((bids / p).read_bytes().startswith(b"\x89PNG") for p in pictures)

    # The derived series arrive in Orthanc too: ours are recognised (no loop, nothing failed).
    harness.wait_for(lambda: len(harness.latest_jobs()) == 4
                     and all(j["state"] in ("done", "skipped") for j in harness.latest_jobs().values()),
                     120, "jobs of the stored-back series")

    # A user's label map of the series, POSTed as multipart with its label table -> a new SEG.
    mask = masks[0]
    files = {"labelmap": ("mask.nii.gz", mask.read_bytes()),
             "labels": ("labels.json", b'{"1": "brain tissue"}'), "desc": (None, b"brain")}
    body, content_type = requests.models.RequestEncodingMixin._encode_files(files, {})
    posted = requests.post(f"{harness.url}/bidsbridge/series/{orthanc_series}/segmentations", data=body,
                           headers={"Content-Type": content_type.replace("form-data", "related")}, timeout=30)
    assert posted.status_code == 202, posted.text
    segmented = _wait_job(harness, posted.json()["id"])
    assert segmented["state"] == "done", segmented
    user_seg = list(bids.glob("derivatives/bidsbridge/sub-*/ses-*/dwi/*_desc-brain_dseg.nii.gz"))
    assert len(user_seg) == 1
    (outline,) = segmented["result"]["segmentation"]["qc"]
    assert outline.endswith("_desc-brainOutline_dseg.png") and (bids / outline).is_file()
    assert np.array_equal(np.asanyarray(nib.load(user_seg[0]).dataobj) > 0, np.asanyarray(nib.load(mask).dataobj) > 0)
    instance = segmented["result"]["segmentation"]["orthanc_instances"][0]
    assert _dicom(harness, instance).SegmentSequence[0].SegmentLabel == "brain tissue"

    # A label map of the wrong grid is refused with the mismatch named.
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), np.eye(4)), wrong)
    bad = requests.post(f"{harness.url}/bidsbridge/series/{orthanc_series}/segmentations",
                        data=wrong.read_bytes(), timeout=30)
    assert bad.status_code == 202
    failed = _wait_job(harness, bad.json()["id"])
    assert failed["state"] == "failed" and "10x10x10" in (failed["error"] or "").replace(" ", ""), failed
    # A raw NIfTI body with the label table in headers works too.
    raw = requests.post(f"{harness.url}/bidsbridge/series/{orthanc_series}/segmentations",
                        headers={"X-Bidsbridge-Labels": '{"1": "signal"}', "X-Bidsbridge-Desc": "raw"},
                        data=mask.read_bytes(), timeout=30)
    assert raw.status_code == 202, raw.text
    assert _wait_job(harness, raw.json()["id"])["state"] == "done"
    assert list(bids.glob("derivatives/bidsbridge/sub-*/ses-*/dwi/*_desc-raw_dseg.tsv"))
    not_nifti = requests.post(f"{harness.url}/bidsbridge/series/{orthanc_series}/segmentations", data=b"hello",
                              timeout=30)
    assert not_nifti.status_code == 400 and "NIfTI" in not_nifti.json()["error"]


def test_segmentation_from_another_tool_is_converted_into_the_derivatives(
    orthanc_factory: Callable[..., Harness], corpus: Path, tmp_path: Path
) -> None:
    dwi = corpus / "dcm_qa_xa30" / "In" / "10_DWI_dir80_PA"
    made = derive_adc(dwi, tmp_path / "adc")
    seg = pydicom.dcmread(next(p for p in made if p.name.endswith("_mask_seg.dcm")))
    seg.Manufacturer = "ThirdPartyTool"  # as if another program had made it
    seg.SeriesInstanceUID, seg.SOPInstanceUID = generate_uid(), generate_uid()
    seg.file_meta.MediaStorageSOPInstanceUID = seg.SOPInstanceUID
    path = tmp_path / "third_party_seg.dcm"
    seg.save_as(path, enforce_file_format=True)

    harness = orthanc_factory()
    harness.send([dwi, path])
    jobs = harness.wait_all_finished(2)
    seg_job = next(j for j in jobs.values() if j["series"] == harness.orthanc_series_id(str(seg.SeriesInstanceUID)))
    assert seg_job["state"] == "done", seg_job
    assert seg_job["outputs"] and all(o.startswith("derivatives/bidsbridge/") for o in seg_job["outputs"])
    labels = [o for o in seg_job["outputs"] if o.endswith("_dseg.nii.gz")]
    assert len(labels) == 1 and "_dir-PA_" in labels[0]
    reference = next(p for p in made if p.name.endswith("_mask.nii.gz"))
    ours = nib.load(harness.server.bids_root / labels[0])
    assert np.array_equal(np.asanyarray(ours.dataobj) > 0, np.asanyarray(nib.load(reference).dataobj) > 0)
