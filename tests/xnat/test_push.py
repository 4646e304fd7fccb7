"""Delivery of the converted XA30 session to the XNAT emulator: layout, verification, re-push, errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import xnat as xnat_py

import xnat_container.push as push_module
from tests.xnat.conftest import PASSWORDS, PROJECT, make_destination, md5
from tests.xnat_emulator import XnatEmulator
from xnat_container import (
    XnatAuthError,
    XnatRequestError,
    XnatUnavailable,
    XnatVerificationError,
    push_dataset,
    push_session,
)
from xnat_container.destinations import Destination

SUBJECT, SESSION = "12343hucheng", "20220711"
SUBJECT_LABEL, SESSION_LABEL = SUBJECT, f"{SUBJECT}_{SESSION}"


def expected_files(root: Path) -> set[tuple[str | None, str, str, int, str]]:
    """(scan, resource, path, size, md5) the layout promises, computed from the manifests directly."""
    expected: set[tuple[str | None, str, str, int, str]] = set()
    for manifest_path in (root / ".bidsbridge" / "series").glob("*.json"):
        manifest = json.loads(manifest_path.read_text())
        scan = str(manifest["series_number"])
        for name in manifest["outputs"]:
            path = root / name
            expected.add((scan, "NIFTI", path.name, path.stat().st_size, md5(path)))
            if name.endswith(".json"):
                expected.add((scan, "BIDS", path.name, path.stat().st_size, md5(path)))
    session_dir = root / f"sub-{SUBJECT}" / f"ses-{SESSION}"
    for path in session_dir.rglob("*"):
        if path.is_file():
            expected.add((None, "BIDS", path.relative_to(root).as_posix(), path.stat().st_size, md5(path)))
    description = root / "dataset_description.json"
    expected.add((None, "BIDS", "dataset_description.json", description.stat().st_size, md5(description)))
    return expected


def stored_files(emulator: XnatEmulator) -> set[tuple[str | None, str, str, int, str]]:
    return {(f.scan, f.resource, f.path, f.size, f.md5) for f in emulator.inventory().files}


def test_xa30_session_layout_listed_back_through_xnatpy(xa30_bids: Path, emulator: XnatEmulator, destination):
    report = push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    expected = expected_files(xa30_bids)
    print(f"delivered {report.files_uploaded} files, {report.bytes_uploaded} bytes, {report.requests} requests")
    assert report.files_uploaded == report.files_verified == len(expected) >= 35
    assert stored_files(emulator) == expected

    manifests = [json.loads(p.read_text()) for p in (xa30_bids / ".bidsbridge" / "series").glob("*.json")]
    series = {str(m["series_number"]): m["series_description"] for m in manifests}
    with xnat_py.connect(emulator.url, user="admin", password=PASSWORDS["admin"], loglevel="ERROR") as session:
        subject = session.projects[PROJECT].subjects[SUBJECT_LABEL]
        experiment = subject.experiments[SESSION_LABEL]
        assert experiment.__xsi_type__ == "xnat:mrSessionData"
        assert str(experiment.date) == "2022-07-11"
        assert set(experiment.scans.keys()) == set(series) >= {"5", "6", "7", "10", "17"}
        listed: set[tuple[str | None, str, str, int, str]] = set()
        for scan_id, scan in experiment.scans.items():
            assert scan.__xsi_type__ == "xnat:mrScanData"
            assert scan.type == scan.series_description == series[scan_id]
            labels = {resource.label for resource in scan.resources.values()}
            assert labels <= {"NIFTI", "BIDS"} and "NIFTI" in labels
            for resource in scan.resources.values():
                for file in resource.files.values():
                    listed.add((scan_id, resource.label, file.path, int(file.size), file.digest))
        for file in experiment.resources["BIDS"].files.values():
            listed.add((None, "BIDS", file.path, int(file.size), file.digest))
    assert listed == expected


def test_repush_is_a_noop(xa30_bids: Path, emulator: XnatEmulator, destination):
    first = push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    before = stored_files(emulator)
    uploads_before = emulator.count_requests("PUT", r"/files/")
    second = push_dataset(destination, PROJECT, xa30_bids)
    assert len(second) == 1
    again = second[0]
    print(f"re-push: {again.files_uploaded} uploaded, {again.files_skipped_identical} skipped, {again.requests} req.")
    assert again.files_uploaded == 0 and again.bytes_uploaded == 0
    assert again.files_skipped_identical == again.files_verified == first.files_uploaded
    assert emulator.count_requests("PUT", r"/files/") == uploads_before
    assert stored_files(emulator) == before
    assert emulator.duplicate_file_writes == 0
    inventory = emulator.inventory()
    assert len(inventory.subjects) == 1 and len(inventory.experiments) == 1
    assert again.experiment_id == first.experiment_id


def test_one_series_then_the_rest_gives_the_same_state(xa30_bids: Path, emulator: XnatEmulator, destination):
    manifest = json.loads(next((xa30_bids / ".bidsbridge" / "series").glob("*.json")).read_text())
    one = push_session(
        destination, PROJECT, xa30_bids, SUBJECT, SESSION, series_outputs={manifest["series_uid"]: manifest["outputs"]}
    )
    assert one.scans == (str(manifest["series_number"]),)
    push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    assert stored_files(emulator) == expected_files(xa30_bids)


def test_changed_local_file_is_uploaded_again(xa30_bids: Path, emulator: XnatEmulator, destination, tmp_path):
    copy = tmp_path / "bids"
    shutil.copytree(xa30_bids, copy)
    push_session(destination, PROJECT, copy, SUBJECT, SESSION)
    sidecar = next((copy / f"sub-{SUBJECT}" / f"ses-{SESSION}" / "anat").glob("*.json"))
    sidecar.write_text(sidecar.read_text().replace("{", '{"Edited": true,', 1))
    report = push_session(destination, PROJECT, copy, SUBJECT, SESSION)
    assert report.files_uploaded == 3  # NIFTI, scan BIDS and session BIDS copies of that sidecar
    assert stored_files(emulator) == {(s, r, p, size, digest) for s, r, p, size, digest in expected_files(copy)}
    assert emulator.duplicate_file_writes == 0


def test_labels_from_templates_are_sanitized(xa30_bids: Path, emulator: XnatEmulator):
    destination = make_destination(emulator.url, subject_label="site A/{subject}", session_label="{session}.MR")
    report = push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    assert (report.subject_label, report.session_label) == (f"site_A_{SUBJECT}", f"{SESSION}_MR")
    assert {e.label for e in emulator.inventory().experiments} == {f"{SESSION}_MR"}


def test_wrong_password_fails_fast(xa30_bids: Path, emulator: XnatEmulator):
    destination = make_destination(emulator.url, password="not-the-password")
    with pytest.raises(XnatAuthError, match="refused the credentials") as caught:
        push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    assert not caught.value.retryable
    assert "not-the-password" not in str(caught.value)
    assert len(emulator.requests) <= 3  # the login, one fresh retry, the logout: no backoff loop


def test_no_role_in_project_is_an_auth_error(xa30_bids: Path, emulator: XnatEmulator):
    with pytest.raises(XnatAuthError, match="403"):
        push_session(make_destination(emulator.url, user="outsider"), PROJECT, xa30_bids, SUBJECT, SESSION)
    with pytest.raises(XnatAuthError, match="403"):
        push_session(make_destination(emulator.url, user="reader"), PROJECT, xa30_bids, SUBJECT, SESSION)
    assert emulator.inventory().files == ()


def test_unknown_session_delivers_nothing(xa30_bids: Path, emulator: XnatEmulator, destination):
    with pytest.raises(XnatRequestError, match="nothing to deliver: no converted series of sub-nobody"):
        push_session(destination, PROJECT, xa30_bids, "nobody", SESSION)
    assert emulator.requests == [] and emulator.inventory().subjects == ()


def test_missing_project_is_a_request_error(xa30_bids: Path, emulator: XnatEmulator):
    admin = make_destination(emulator.url, user="admin")
    with pytest.raises(XnatRequestError, match="404") as caught:
        push_session(admin, "NO_SUCH_PROJECT", xa30_bids, SUBJECT, SESSION)
    assert not caught.value.retryable


def test_unreachable_xnat_is_retryable(xa30_bids: Path, emulator: XnatEmulator):
    destination = make_destination(emulator.url, retries=2)
    emulator.make_unreachable()
    with pytest.raises(XnatUnavailable, match="connection refused") as caught:
        push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    assert caught.value.retryable


def test_duplicates_answer_is_a_failure(xa30_bids: Path, emulator: XnatEmulator, destination: Destination, monkeypatch):
    """A server that ignores overwrite=true answers {"duplicates": [...]}; that must not pass as delivered."""
    push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    request = push_module.XnatClient.request

    def dropping_overwrite(self, method, path, *, query=None, **kwargs):
        if query and query.get("overwrite") == "true":
            query = {k: v for k, v in query.items() if k != "overwrite"}
        return request(self, method, path, query=query, **kwargs)

    monkeypatch.setattr(push_module.XnatClient, "request", dropping_overwrite)
    monkeypatch.setattr(push_module, "_matches", lambda *args: False)  # pretend every file changed
    with pytest.raises(XnatRequestError, match="kept its existing copy"):
        push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    assert emulator.duplicate_file_writes == 1


def test_without_listed_digests_files_are_verified_by_download(
    xa30_bids: Path, emulator: XnatEmulator, destination, monkeypatch
):
    """An XNAT with checksums switched off lists no digest: each file is then downloaded and hashed."""
    listing = push_module.XnatClient.list_files

    def without_digests(self, resource_path):
        return {path: replace(remote, digest="") for path, remote in listing(self, resource_path).items()}

    monkeypatch.setattr(push_module.XnatClient, "list_files", without_digests)
    report = push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    downloads = emulator.count_requests("GET", r"/files/.+", status=200)
    assert downloads == report.files_verified == len(expected_files(xa30_bids))
    assert stored_files(emulator) == expected_files(xa30_bids)


def test_a_file_stored_wrong_fails_verification_and_the_next_push_repairs_it(
    xa30_bids: Path, emulator: XnatEmulator, destination, monkeypatch, tmp_path
):
    upload = push_module._upload
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"not the file")

    def corrupting(client, path, local, remote):
        return upload(client, path, wrong if remote.endswith("_scans.tsv") else local, remote)

    monkeypatch.setattr(push_module, "_upload", corrupting)
    with pytest.raises(XnatVerificationError, match=r"_scans\.tsv .* does not match the local file") as caught:
        push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    assert caught.value.retryable
    monkeypatch.setattr(push_module, "_upload", upload)
    report = push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
    assert report.files_uploaded == 1  # only the damaged file is sent again
    assert stored_files(emulator) == expected_files(xa30_bids)
