"""QC pictures delivered to XNAT: each series' pictures (and those of its derivations) as the
scan resource ``QC``, through the plugin's push stage, against the XNAT emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xnat as xnat_py

from converters import convert_tree
from converters.bids.derivatives import DerivativeImage, publish_derivatives
from converters.derived.derive import derive_adc
from converters.qc import write_derived_qc
from orthanc_plugin.jobs import PushJob
from orthanc_plugin.push_stage import push
from tests.converters.helpers import series_dir, series_tree
from tests.plugin.fake_orthanc import FakeOrthanc
from tests.xnat.conftest import PASSWORDS, PROJECT, md5
from tests.xnat_emulator import XnatEmulator


@pytest.fixture(scope="module")
def qc_bids(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, set[str]]]:
    """The XA30 T1w and one DWI series converted with QC, the DWI's ADC derived: (dataset, the
    QC pictures of each series number)."""
    base = tmp_path_factory.mktemp("qc-push")
    tree = series_tree(corpus / "dcm_qa_xa30", base, [5, 10])
    root = base / "bids"
    results = {r.series_number: r for r in convert_tree(tree, root, qc=True)}
    pictures = {number: set(result.qc) for number, result in results.items()}
    written = {p.name.rsplit("_", 1)[-1]: p for p in derive_adc(series_dir(corpus / "dcm_qa_xa30", 10), base / "adc")}
    outputs = publish_derivatives(root, results[10].series_uid, "adc", [
        DerivativeImage(written["adc.nii.gz"], "ADC", sidecar={"Units": "um2/s"}),
        DerivativeImage(written["mask.nii.gz"], "dseg", desc="adcmask", table=written["mask.tsv"]),
    ])
    pictures[10] |= set(write_derived_qc(root, outputs).files)
    return root, pictures


def _job(root: Path, number: int) -> PushJob:
    for path in (root / ".bidsbridge" / "series").glob("*.json"):
        manifest = json.loads(path.read_text())
        if manifest["series_number"] == number:
            return PushJob(server="site", project=PROJECT, subject="", session="", dataset_root=str(root),
                           series_uid=manifest["series_uid"], bids_subject=manifest["subject"],
                           bids_session=manifest["session"], outputs=tuple(manifest["outputs"]))
    raise AssertionError(f"no series {number} in {root}")


def _destinations(url: str, tmp_path: Path) -> dict[str, object]:
    secret = tmp_path / "xnat-password"
    secret.write_text(PASSWORDS["uploader"])
    return {"site": {"Url": url, "Username": "uploader", "PasswordFile": str(secret), "Retries": 1,
                     "BackoffSeconds": 0.01}}


def test_a_push_uploads_each_series_qc_pictures_as_the_scan_resource_qc(
    qc_bids: tuple[Path, dict[int, set[str]]], emulator: XnatEmulator, tmp_path: Path
) -> None:
    root, pictures = qc_bids
    assert len(pictures[5]) == 2 and len(pictures[10]) == 4  # T1w ortho+mosaic; DWI ortho+mean, ADC, mask
    report = push(_job(root, 5), _destinations(emulator.url, tmp_path), FakeOrthanc())
    stored = {(f.scan, f.resource, f.path, f.size, f.md5) for f in emulator.inventory().files if f.resource == "QC"}
    expected = {
        (str(number), "QC", Path(picture).name, (root / picture).stat().st_size, md5(root / picture))
        for number, found in pictures.items()
        for picture in found
    }
    assert stored == expected  # the whole session is delivered: both scans' pictures, byte for byte
    assert report.files_uploaded == report.files_verified
    with xnat_py.connect(emulator.url, user="admin", password=PASSWORDS["admin"], loglevel="ERROR") as session:
        experiment = next(iter(session.projects[PROJECT].subjects.values())).experiments[report.session_label]
        for scan_id in ("5", "10"):
            resources = {resource.label: resource for resource in experiment.scans[scan_id].resources.values()}
            assert {"NIFTI", "BIDS", "QC"} == set(resources)
            assert {file.path for file in resources["QC"].files.values()} == {
                Path(p).name for p in pictures[int(scan_id)]
            }
    again = push(_job(root, 5), _destinations(emulator.url, tmp_path), FakeOrthanc())
    assert again.files_uploaded == 0 and again.files_skipped_identical == report.files_uploaded
