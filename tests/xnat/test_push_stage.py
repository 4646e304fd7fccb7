"""The plugin's push stage (``orthanc_plugin.push_stage``) against the XNAT emulator: a typed
``PushJob`` in, a report out, and the error tree's retry decision for what goes wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orthanc_plugin.jobs import PushJob
from orthanc_plugin.push_stage import push
from tests.plugin.fake_orthanc import FakeOrthanc
from tests.xnat.conftest import PASSWORDS, PROJECT
from tests.xnat_emulator import XnatEmulator
from xnat_container import XnatAuthError, XnatConfigError


def _job(root: Path) -> PushJob:
    manifest = json.loads(next((root / ".bidsbridge" / "series").glob("*.json")).read_text())
    return PushJob(server="site", project=PROJECT, subject="", session="", dataset_root=str(root),
                   series_uid=manifest["series_uid"], bids_subject=manifest["subject"],
                   bids_session=manifest["session"], outputs=tuple(manifest["outputs"]))


def _destinations(url: str, tmp_path: Path, password: str) -> dict[str, object]:
    secret = tmp_path / "xnat-password"
    secret.write_text(password)
    return {"site": {"Url": url, "Username": "uploader", "PasswordFile": str(secret), "Retries": 1,
                     "BackoffSeconds": 0.01}}


def test_a_push_job_delivers_and_verifies(xa30_bids: Path, emulator: XnatEmulator, tmp_path: Path) -> None:
    job = _job(xa30_bids)
    report = push(job, _destinations(emulator.url, tmp_path, PASSWORDS["uploader"]), FakeOrthanc())
    assert report.files_uploaded == report.files_verified > 0
    assert report.destination == "site" and report.project == PROJECT


def test_a_wrong_password_fails_permanently(xa30_bids: Path, emulator: XnatEmulator, tmp_path: Path) -> None:
    with pytest.raises(XnatAuthError) as caught:
        push(_job(xa30_bids), _destinations(emulator.url, tmp_path, "wrong"), FakeOrthanc())
    assert not caught.value.retryable


def test_a_broken_destination_section_is_a_configuration_error(xa30_bids: Path, tmp_path: Path) -> None:
    with pytest.raises(XnatConfigError) as caught:
        push(_job(xa30_bids), {"site": {"Url": "not a url"}}, FakeOrthanc())
    assert not caught.value.retryable and "BidsBridge.Destinations" in str(caught.value)
