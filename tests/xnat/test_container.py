"""The Container Service command definition and the entrypoint it runs, against the emulator."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import requests

from tests.xnat.conftest import PASSWORDS, PROJECT
from tests.xnat_emulator import XnatEmulator
from xnat_container import entrypoint

COMMAND = Path(entrypoint.__file__).with_name("command.json")
DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"
SERIES = ("5_anat-T1w_acq-tfl", "8_gre_field_mapping", "9_gre_field_mapping")


def test_command_definition_is_consistent():
    command = json.loads(COMMAND.read_text())
    assert command["type"] == "docker" and command["schema-version"] == "1.0"
    inputs = {i["name"]: i for i in command["inputs"]}
    mounts = {m["name"]: m for m in command["mounts"]}
    outputs = {o["name"]: o for o in command["outputs"]}
    assert {m["path"] for m in mounts.values()} == {"/input", "/output"}
    assert not mounts["dicom-in"]["writable"] and mounts["bidsbridge-out"]["writable"]
    keys = set(re.findall(r"#[A-Z_]+#", command["command-line"]))
    assert keys == {i["replacement-key"] for i in inputs.values()}
    assert all(o["mount"] in mounts for o in outputs.values())
    (wrapper,) = command["xnat"]
    assert wrapper["contexts"] == ["xnat:imageSessionData"]
    wrapper_inputs = {i["name"] for i in wrapper["external-inputs"] + wrapper["derived-inputs"]}
    for item in wrapper["external-inputs"] + wrapper["derived-inputs"]:
        assert item.get("provides-files-for-command-mount", "dicom-in") in mounts
        assert item.get("provides-value-for-command-input", "project") in inputs
        assert item.get("derived-from-wrapper-input", "session") in wrapper_inputs
    provided = {
        i["provides-value-for-command-input"]
        for i in wrapper["derived-inputs"]
        if "provides-value-for-command-input" in i
    }
    assert provided == {name for name, i in inputs.items() if i["required"]}
    for handler in wrapper["output-handlers"]:
        assert handler["accepts-command-output"] in outputs and handler["as-a-child-of"] in wrapper_inputs

    # The command line, filled in as the Container Service does, is one the entrypoint accepts.
    line = command["command-line"]
    for value, key in (("P1", "#PROJECT#"), ("S1", "#SUBJECT#"), ("S1_MR1", "#SESSION#"), ("--no-push", "#PUSH#")):
        line = line.replace(key, value)
    argv = shlex.split(line)
    assert argv[:3] == ["python3", "-m", "xnat_container.entrypoint"]
    args = entrypoint.build_parser().parse_args(argv[3:])
    assert (args.input, args.output, args.project, args.subject, args.session, args.push) == (
        Path("/input"), Path("/output"), "P1", "S1", "S1_MR1", False)  # fmt: skip


def test_dockerfile_installs_the_project_and_runs_the_entrypoint():
    text = DOCKERFILE.read_text()
    assert text.splitlines()[[line.startswith("FROM") for line in text.splitlines()].index(True)] == (
        "FROM debian:bookworm-slim"
    )
    assert "pip install ." in text and "COPY xnat_container" in text and "COPY converters" in text
    assert 'ENTRYPOINT ["python3", "-m", "xnat_container.entrypoint"]' in text


@pytest.fixture
def session_mount(corpus: Path, tmp_path: Path) -> Path:
    """A session's files as XNAT mounts them: SCANS/<id>/DICOM/*.dcm."""
    mount = tmp_path / "input"
    for name in SERIES:
        scan_id = name.split("_", 1)[0]
        shutil.copytree(corpus / "dcm_qa_xa30" / "In" / name, mount / "SCANS" / scan_id / "DICOM")
    return mount


def test_entrypoint_converts_and_delivers_into_the_session(
    session_mount: Path, emulator: XnatEmulator, tmp_path: Path, monkeypatch
):
    # The session as XNAT archived it: scan 5 with its DICOM resource.
    admin = requests.Session()
    admin.auth = ("admin", PASSWORDS["admin"])
    base = f"{emulator.url}/data/projects/{PROJECT}/subjects/SUBJ01"
    assert admin.put(base).status_code == 201
    assert admin.put(f"{base}/experiments/SUBJ01_MR1", params={"xsiType": "xnat:mrSessionData"}).status_code == 201
    scan = f"{base}/experiments/SUBJ01_MR1/scans/5"
    assert admin.put(scan, params={"xsiType": "xnat:mrScanData", "type": "T1"}).status_code == 201
    assert admin.put(f"{scan}/resources/DICOM/files/placeholder.dcm", data=b"dicom").status_code == 200

    monkeypatch.setenv("XNAT_HOST", emulator.url)
    monkeypatch.setenv("XNAT_USER", "uploader")
    monkeypatch.setenv("XNAT_PASS", PASSWORDS["uploader"])
    output = tmp_path / "output"
    subject_id = emulator.inventory().subjects[0].subject_id  # the Container Service passes the ID
    assert subject_id != "SUBJ01"
    argv = ["--input", str(session_mount), "--output", str(output), "--project", PROJECT,
            "--subject", subject_id, "--session", "SUBJ01_MR1"]  # fmt: skip
    assert entrypoint.main(argv) == 0

    conversion = json.loads((output / "reports" / "conversion.json").read_text())
    assert {r["state"] for r in conversion} <= {"converted", "skipped"}
    (delivery,) = json.loads((output / "reports" / "delivery.json").read_text())["delivered"]
    assert (delivery["subject_label"], delivery["session_label"]) == ("SUBJ01", "SUBJ01_MR1")
    inventory = emulator.inventory()
    assert [e.label for e in inventory.experiments] == ["SUBJ01_MR1"]
    assert [s.label for s in inventory.subjects] == ["SUBJ01"]
    files = {(f.scan, f.resource, f.path) for f in inventory.files}
    assert ("5", "DICOM", "placeholder.dcm") in files  # XNAT's own resource is left alone
    assert {p for s, r, p in files if s == "5" and r == "QC"} == {  # the QC pictures drawn in the container
        "sub-SUBJ01_ses-SUBJ01MR1_acq-tfl_desc-mosaic_T1w.png", "sub-SUBJ01_ses-SUBJ01MR1_acq-tfl_desc-ortho_T1w.png"}
    nifti = {(scan, path) for scan, resource, path in files if resource == "NIFTI"}
    assert ("5", "sub-SUBJ01_ses-SUBJ01MR1_acq-tfl_T1w.nii.gz") in nifti
    assert any(r == "BIDS" and s is None and p == "dataset_description.json" for s, r, p in files)
    assert delivery["files_verified"] == delivery["files_uploaded"] > 0

    # Run again (XNAT relaunching the container): nothing new is uploaded.
    assert entrypoint.main(argv) == 0
    (again,) = json.loads((output / "reports" / "delivery.json").read_text())["delivered"]
    assert again["files_uploaded"] == 0 and emulator.duplicate_file_writes == 0


def test_entrypoint_without_xnat_host_fails(session_mount: Path, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("XNAT_HOST", raising=False)
    argv = ["--input", str(session_mount), "--output", str(tmp_path / "out"), "--project", "P", "--subject", "S",
            "--session", "S_1"]  # fmt: skip
    assert entrypoint.main(argv) == 1
    assert entrypoint.main([*argv, "--no-push"]) == 0
    assert (tmp_path / "out" / "bids" / "dataset_description.json").is_file()
