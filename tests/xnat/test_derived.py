"""Derived DICOM objects (Parametric Map, SEG, SR) delivered as scans of their own."""

from __future__ import annotations

from pathlib import Path

import pytest
import xnat as xnat_py

from converters.derived.derive import derive_adc
from tests.xnat.conftest import PASSWORDS, PROJECT, md5
from tests.xnat.test_push import SESSION, SESSION_LABEL, SUBJECT, SUBJECT_LABEL
from tests.xnat_emulator import XnatEmulator
from xnat_container import push_session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adc_objects(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("adc")
    written = derive_adc(corpus / "dcm_qa_xa30" / "In" / "10_DWI_dir80_PA", out)
    return sorted(p for p in written if p.suffix == ".dcm")


def test_derived_objects_are_scans_with_a_dicom_resource(xa30_bids, adc_objects, emulator: XnatEmulator, destination):
    report = push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION, derived=adc_objects)
    assert {"1010", "2010", "4010"} <= set(report.scans)
    with xnat_py.connect(emulator.url, user="admin", password=PASSWORDS["admin"], loglevel="ERROR") as session:
        experiment = session.projects[PROJECT].subjects[SUBJECT_LABEL].experiments[SESSION_LABEL]
        kinds = {scan_id: experiment.scans[scan_id].__xsi_type__ for scan_id in ("1010", "2010", "4010")}
        assert kinds == {"1010": "xnat:otherDicomScanData", "2010": "xnat:segScanData", "4010": "xnat:srScanData"}
        assert experiment.scans["2010"].series_description == "Mask of DWI_dir80_PA"
        for path in adc_objects:
            scan_id = {"pm": "1010", "seg": "2010", "sr": "4010"}[path.stem.rsplit("_", 1)[1]]
            (resource,) = experiment.scans[scan_id].resources.values()
            assert resource.label == "DICOM"
            (listed,) = resource.files.values()
            assert (listed.path, int(listed.size), listed.digest) == (path.name, path.stat().st_size, md5(path))
    again = push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION, derived=adc_objects)
    assert again.files_uploaded == 0 and emulator.duplicate_file_writes == 0
