"""What tests can see of the emulator: the inventory at every level, request counts, duplicate writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests

from tests.xnat_emulator import EmulatorBugError, FileRecord, XnatEmulator

from .conftest import USERS, Connect


def test_inventory_lists_every_level_with_sizes_and_md5(emulator: XnatEmulator, http: requests.Session) -> None:
    base = f"{emulator.url}/data/projects/P1"
    http.put(f"{base}/resources/DOCS/files/readme.txt", data=b"project level")
    http.put(f"{base}/subjects/sub-01").raise_for_status()
    http.put(f"{base}/subjects/sub-01/resources/NOTES/files/n.txt", data=b"subject level")
    session = f"{base}/subjects/sub-01/experiments/ses-01"
    http.put(session, params={"xsiType": "xnat:ctSessionData", "date": "2023-12-31"}).raise_for_status()
    http.put(f"{session}/scans/2", params={"xsiType": "xnat:ctScanData", "type": "HEAD"}).raise_for_status()
    http.put(f"{session}/scans/2/resources/DICOM/files/1.dcm", data=b"scan level")

    inventory = emulator.inventory()
    assert [(p.project, p.roles) for p in inventory.projects] == [("P1", {"alice": "member", "carol": "collaborator"})]
    assert [(e.label, e.xsi_type, e.date) for e in inventory.experiments] == [
        ("ses-01", "xnat:ctSessionData", "2023-12-31")
    ]
    assert [(s.scan_id, s.xsi_type, s.type) for s in inventory.scans] == [("2", "xnat:ctScanData", "HEAD")]
    assert set(inventory.files) == {
        FileRecord("P1", None, None, None, "DOCS", "readme.txt", 13, hashlib.md5(b"project level").hexdigest()),
        FileRecord("P1", "sub-01", None, None, "NOTES", "n.txt", 13, hashlib.md5(b"subject level").hexdigest()),
        FileRecord("P1", "sub-01", "ses-01", "2", "DICOM", "1.dcm", 10, hashlib.md5(b"scan level").hexdigest()),
    }
    assert {r.label: (r.file_count, r.file_size) for r in inventory.resources} == {
        "DOCS": (1, 13),
        "NOTES": (1, 13),
        "DICOM": (1, 10),
    }
    assert emulator.file_data(inventory.file("n.txt")) == b"subject level"


def test_request_counts_and_duplicate_writes(emulator: XnatEmulator, http: requests.Session) -> None:
    url = f"{emulator.url}/data/projects/P1/resources/DOCS/files/a.txt"
    for _ in range(3):
        http.put(url, data=b"same")
    http.get(url)
    http.get(f"{emulator.url}/data/projects/NOPE")

    counts = emulator.request_counts()
    assert counts[("PUT", "/data/projects/P1/resources/DOCS/files/a.txt", 200)] == 3
    assert counts[("GET", "/data/projects/P1/resources/DOCS/files/a.txt", 200)] == 1
    assert counts[("GET", "/data/projects/NOPE", 404)] == 1
    assert emulator.count_requests("PUT", r"/files/") == 3
    assert emulator.duplicate_file_writes == 2
    assert emulator.duplicate_file_paths == ["a.txt", "a.txt"]

    emulator.clear_request_log()
    assert emulator.requests == []
    assert emulator.duplicate_file_writes == 0


def test_xnat_py_download_dir_unpacks_the_resource_zip(
    emulator: XnatEmulator, connect: Connect, tmp_path: Path
) -> None:
    session = connect("alice")
    subject = session.classes.SubjectData(parent=session.projects["P1"], label="sub-01")
    mr = session.classes.MrSessionData(parent=subject, label="ses-01")
    resource = session.classes.MrScanData(parent=mr, id="5", type="dwi").create_resource("NIFTI")
    resource.upload_data(b"bvals", "dwi.bval", verbose=False)
    resource.upload_data(b"image", "nested/dwi.nii.gz", verbose=False)

    resource.download_dir(tmp_path, verbose=False)
    files = tmp_path / "ses-01" / "scans" / "5-dwi" / "resources" / "NIFTI" / "files"
    assert (files / "dwi.bval").read_bytes() == b"bvals"
    assert (files / "nested" / "dwi.nii.gz").read_bytes() == b"image"
    assert emulator.count_requests("GET", r"/resources/NIFTI/files$", status=200) == 1


def test_emulator_bugs_fail_the_test_instead_of_passing_as_injected_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("bug in a route")

    server = XnatEmulator(users=USERS)
    with pytest.raises(EmulatorBugError) as raised, server:
        monkeypatch.setattr(server._archive_api, "handle", broken)
        answer = requests.get(f"{server.url}/data/projects", auth=("admin", USERS["admin"]))
        assert answer.status_code == 500
    assert [str(e) for e in raised.value.errors] == ["bug in a route"]
