"""xnat-py's object API against the emulator: create, navigate, upload, list, download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from xnat.exceptions import XNATResponseError
from xnat.session import BaseXNATSession

from tests.xnat_emulator import XnatEmulator

from .conftest import Connect


def _make_session(session: BaseXNATSession) -> object:
    project = session.projects["P1"]
    subject = session.classes.SubjectData(parent=project, label="sub-01")
    return session.classes.MrSessionData(parent=subject, label="ses-01", date="2024-03-05", time="09:10:11")


def test_classes_create_subject_session_and_scans(emulator: XnatEmulator, connect: Connect) -> None:
    session = connect("alice")
    project = session.projects["P1"]
    subject = session.classes.SubjectData(parent=project, label="sub-01")
    mr = session.classes.MrSessionData(parent=subject, label="ses-mr", date="2024-03-05", time="09:10:11")
    pet = session.classes.PetSessionData(parent=subject, label="ses-pet", date="2024-03-06")
    ct = session.classes.CtSessionData(parent=subject, label="ses-ct", date="2024-03-07")
    t1 = session.classes.MrScanData(parent=mr, id="1", type="T1w", series_description="t1_mprage_sag")
    seg = session.classes.SegScanData(parent=mr, id="1001", type="SEG", series_description="tumour seg")
    session.classes.CtScanData(parent=ct, id="2", type="CT", series_description="head")
    session.classes.PetScanData(parent=pet, id="3", type="PET", series_description="fdg")

    assert subject.id == "XNAT_S00001"
    assert mr.id.startswith("XNAT_E")
    assert (t1.type, t1.series_description) == ("T1w", "t1_mprage_sag")
    assert seg.__xsi_type__ == "xnat:segScanData"

    session.clearcache()
    experiments = session.projects["P1"].subjects["sub-01"].experiments
    assert sorted(e.label for e in experiments.values()) == ["ses-ct", "ses-mr", "ses-pet"]
    fetched = experiments["ses-mr"]
    assert fetched.__xsi_type__ == "xnat:mrSessionData"
    assert str(fetched.date) == "2024-03-05"
    assert str(fetched.time) == "09:10:11"
    assert fetched.subject_id == subject.id
    assert {s.id: s.__xsi_type__ for s in fetched.scans.values()} == {
        "1": "xnat:mrScanData",
        "1001": "xnat:segScanData",
    }
    assert fetched.scans["1"].series_description == "t1_mprage_sag"
    assert experiments["ses-pet"].__xsi_type__ == "xnat:petSessionData"

    stored = {(e.label, e.xsi_type, e.date) for e in emulator.inventory().experiments}
    assert ("ses-ct", "xnat:ctSessionData", "2024-03-07") in stored


def test_abstract_image_scan_type_is_refused(emulator: XnatEmulator, connect: Connect) -> None:
    session = connect("alice")
    mr = _make_session(session)

    with pytest.raises(XNATResponseError) as refused:
        session.classes.ImageScanData(parent=mr, id="7", type="anything")
    assert refused.value.status_code == 400
    assert emulator.inventory().scans == ()


def test_upload_list_and_download_scan_files(emulator: XnatEmulator, connect: Connect, tmp_path: Path) -> None:
    session = connect("alice")
    mr = _make_session(session)
    scan = session.classes.MrScanData(parent=mr, id="1", type="T1w", series_description="t1")
    resource = scan.create_resource("NIFTI", format="NIFTI")
    image = tmp_path / "image.nii.gz"
    image.write_bytes(bytes(range(256)) * 40)
    sidecar = tmp_path / "image.json"
    sidecar.write_text('{"RepetitionTime": 2.3}')

    resource.upload(image, "sub-01_T1w.nii.gz", verbose=False)
    resource.upload(sidecar, "extra/sub-01_T1w.json", verbose=False)

    files = session.projects["P1"].subjects["sub-01"].experiments["ses-01"].scans["1"].resources["NIFTI"].files
    assert sorted(files.keys()) == ["extra/sub-01_T1w.json", "sub-01_T1w.nii.gz"]
    listed = files["sub-01_T1w.nii.gz"]
    assert int(listed.file_size) == image.stat().st_size
    assert int(listed.size) == image.stat().st_size
    assert listed.digest == hashlib.md5(image.read_bytes()).hexdigest()
    assert files["extra/sub-01_T1w.json"].name == "sub-01_T1w.json"

    target = tmp_path / "download.nii.gz"
    listed.download(target, verbose=False)
    assert target.read_bytes() == image.read_bytes()
    with files["extra/sub-01_T1w.json"].open() as handle:
        assert handle.read() == sidecar.read_bytes()

    record = emulator.inventory().file("sub-01_T1w.nii.gz")
    assert (record.scan, record.resource, record.size) == ("1", "NIFTI", image.stat().st_size)


def test_session_level_resource_and_duplicate_upload_without_overwrite(
    emulator: XnatEmulator, connect: Connect, tmp_path: Path
) -> None:
    session = connect("alice")
    mr = _make_session(session)
    resource = mr.create_resource("BIDS")
    first = tmp_path / "dataset_description.json"
    first.write_text('{"Name": "first"}')
    resource.upload(first, "dataset_description.json", verbose=False)

    second = tmp_path / "second.json"
    second.write_text('{"Name": "second, longer"}')
    resource.upload(second, "dataset_description.json", verbose=False)

    assert emulator.duplicate_file_writes == 1
    stored = emulator.inventory().file("dataset_description.json", resource="BIDS")
    assert stored.experiment == "ses-01"
    assert stored.scan is None
    assert emulator.file_data(stored) == first.read_bytes()

    resource.upload(second, "dataset_description.json", overwrite=True, verbose=False)
    replaced = emulator.inventory().file("dataset_description.json", resource="BIDS")
    assert emulator.file_data(replaced) == second.read_bytes()
    assert resource.files["dataset_description.json"].digest == hashlib.md5(second.read_bytes()).hexdigest()


def test_delete_through_the_object_api(emulator: XnatEmulator, connect: Connect) -> None:
    session = connect("admin")
    mr = _make_session(session)
    session.classes.MrSessionData(parent=mr.subject, label="ses-02")
    resource = session.classes.MrScanData(parent=mr, id="1", type="T1w").create_resource("DICOM")
    resource.upload_data(b"dicom bytes", "1.dcm", verbose=False)
    resource.upload_data(b"more dicom", "2.dcm", verbose=False)

    # xnat-py only deletes cleanly objects it fetched through listings (objects made with the classes'
    # constructors are missing from its cache), and after a delete it re-lists every live listing.
    session.clearcache()
    subject = session.projects["P1"].subjects["sub-01"]
    subject.experiments["ses-02"].delete()
    assert [e.label for e in emulator.inventory().experiments] == ["ses-01"]

    scan = subject.experiments["ses-01"].scans["1"]
    scan.resources["DICOM"].files["1.dcm"].delete()
    assert [f.path for f in emulator.inventory().files] == ["2.dcm"]

    session.delete(f"{scan.uri}/resources/DICOM", query={"removeFiles": "true"})
    assert emulator.inventory().resources == ()
    session.delete(scan.uri)
    assert emulator.inventory().scans == ()
    assert emulator.count_requests("DELETE", r"^/data/", status=200) == 4
