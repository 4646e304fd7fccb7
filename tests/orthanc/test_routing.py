"""Routing rules decide the plugin's behaviour end to end, in a real Orthanc.

Two scanners (calling AETs) are routed to two BIDS datasets, a third sender is skipped with a
recorded reason, one route derives the ADC (Parametric Map, SEG, SR stored into the study) and
forwards to a second Orthanc, and another pushes to XNAT (the emulator) through the durable queue.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import xnat as xnat_py

from orthanc_plugin.dicom_send import send_files
from orthanc_plugin.embedded import ORTHANC_AET
from tests.orthanc.conftest import Harness, series_uid
from tests.xnat_emulator import FaultKind, FaultPlan, XnatEmulator

pytestmark = pytest.mark.orthanc

PM, SEG, SR = "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"

ROUTES = """\
version: 1
rules:
  - name: non-images
    match:
      any:
        - Modality: {in: [SR, PR, KO, DOC]}
        - Rows: {missing: true}
    actions:
      - skip: "not an image (Modality {Modality})"
  - name: neuro
    match:
      source.calling_aet: NEURO_SCU
      Modality: MR
    actions:
      - convert: {dataset: neuro}
      - derive: adc
    stop: true
  - name: cardiac
    match:
      all:
        - source.calling_aet: {in: [CARDIO_SCU]}
        - Modality: MR
    actions:
      - convert: {dataset: cardiac, subject: "c{PatientID|hash}"}
      - forward: {peer: mirror}
    stop: true
  - name: unknown-sender
    match: {}
    actions:
      - skip: "calling AET {source.calling_aet} has no route"
"""


def _send_as(harness: Harness, directory: Path, aet: str) -> None:
    report = send_files(sorted(p for p in directory.iterdir() if p.is_file()), "127.0.0.1",
                        harness.server.dicom_port, called_aet=ORTHANC_AET, calling_aet=aet)
    assert not report.failed, report.failed


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.nii.gz") if ".bidsbridge" not in p.parts)


def test_two_senders_two_datasets_a_skip_a_derivation_and_a_forward(
    orthanc_factory: Callable[..., Harness], corpus: Path, tmp_path: Path
) -> None:
    mirror = orthanc_factory(workdir=tmp_path / "mirror", plugin_enabled=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text(ROUTES)
    harness = orthanc_factory(
        workdir=tmp_path / "main",
        calling_aets=("NEURO_SCU", "CARDIO_SCU"),
        bidsbridge={"Rules": str(rules), "Datasets": {"neuro": str(tmp_path / "neuro"),
                                                     "cardiac": str(tmp_path / "cardiac")}},
        orthanc={"OrthancPeers": {"mirror": [mirror.url]}},
    )
    status = harness.get("/bidsbridge/rules")
    assert status["path"] == str(rules) and status["last_error"] is None

    xa30 = corpus / "dcm_qa_xa30" / "In"
    _send_as(harness, xa30 / "5_anat-T1w_acq-tfl", "NEURO_SCU")
    _send_as(harness, xa30 / "10_DWI_dir80_PA", "NEURO_SCU")
    _send_as(harness, xa30 / "99_Phoenix_Document", "NEURO_SCU")
    _send_as(harness, xa30 / "7_func-bold_task-fa_run-1", "CARDIO_SCU")
    _send_as(harness, xa30 / "9_gre_field_mapping", "STORESCU")
    # 5 series + the 3 derived ones the ADC stores back into the study.
    jobs = harness.wait_all_finished(8, timeout=180)
    by_uid = {j["result"]["series_uid"]: j for j in jobs.values() if j["result"] and "series_uid" in j["result"]}

    t1w, dwi, bold = (by_uid[series_uid(xa30 / n)] for n in
                      ("5_anat-T1w_acq-tfl", "10_DWI_dir80_PA", "7_func-bold_task-fa_run-1"))
    assert t1w["state"] == dwi["state"] == bold["state"] == "done"
    # The rule asks for an ADC of every neuro MR series: the T1w has no diffusion data, so its
    # conversion stands and the job says why no ADC was made.
    assert "no diffusion information" in t1w["error"] and "adc" in t1w["result"]["derived"]
    assert t1w["result"]["decision"]["trace"][1]["status"] == "matched"  # rule "neuro", explained
    neuro, cardiac = _files(tmp_path / "neuro"), _files(tmp_path / "cardiac")
    assert any(f.endswith("_acq-tfl_T1w.nii.gz") for f in neuro)
    assert any(f.endswith("_dir-PA_dwi.nii.gz") for f in neuro)
    assert not any("bold" in f for f in neuro)
    assert [f for f in cardiac if "derivatives" not in f] == [f for f in cardiac if f.endswith("_bold.nii.gz")]
    assert all(f.startswith("sub-c") for f in cardiac)  # the rule's subject template
    assert _files(harness.server.bids_root) == []  # nothing went to the default dataset

    fmap = by_uid[series_uid(xa30 / "9_gre_field_mapping")]
    assert fmap["state"] == "skipped" and fmap["error"] == "calling AET STORESCU has no route"
    assert fmap["outputs"] == [] and fmap["result"]["decision"]["skip"]["rule"] == "unknown-sender"
    phoenix = by_uid[series_uid(xa30 / "99_Phoenix_Document")]
    assert phoenix["state"] == "skipped" and phoenix["error"] == "not an image (Modality SR)"

    # derive: adc -> Parametric Map, SEG and SR in the study, NIfTI in the neuro dataset's derivatives
    assert set(dwi["result"]["derived"]["adc"]["orthanc_instances"])
    study = harness.get(f"/series/{dwi['series']}")["ParentStudy"]
    classes = {harness.get(f"/instances/{s['Instances'][0]}/simplified-tags")["SOPClassUID"]
               for s in harness.get(f"/studies/{study}/series")}
    assert {PM, SEG, SR} <= classes
    assert list((tmp_path / "neuro").glob("derivatives/bidsbridge/sub-*/ses-*/dwi/*_ADC.nii.gz"))

    # forward: the cardiac series is now also in the mirror Orthanc
    assert bold["result"]["forwards"][0]["state"] == "Success"
    mirrored = requests.post(f"{mirror.url}/tools/lookup", data=series_uid(xa30 / "7_func-bold_task-fa_run-1"),
                             timeout=10).json()
    assert [m["Type"] for m in mirrored] == ["Series"]


def test_broken_rules_edit_is_refused_and_previous_rules_stay(
    orthanc_factory: Callable[..., Harness], corpus: Path, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(ROUTES)
    harness = orthanc_factory(calling_aets=("NEURO_SCU", "CARDIO_SCU"),
                              bidsbridge={"Rules": str(rules), "Datasets": {"neuro": str(tmp_path / "neuro"),
                                                                           "cardiac": str(tmp_path / "cardiac")}},
                              orthanc={"OrthancPeers": {"mirror": ["http://127.0.0.1:9"]}})
    digest = harness.get("/bidsbridge/rules")["digest"]
    rules.write_text(ROUTES.replace("source.calling_aet: NEURO_SCU", "source.calling_aet: {regex: '(a+)+'}"))
    harness.wait_for(lambda: harness.get("/bidsbridge/rules")["last_error"] is not None, 10, "the refusal")
    status = harness.get("/bidsbridge/rules")
    assert status["digest"] == digest and "rules.yaml:" in status["last_error"]
    _send_as(harness, corpus / "dcm_qa_xa30" / "In" / "5_anat-T1w_acq-tfl", "NEURO_SCU")
    (job,) = harness.wait_all_finished(1).values()
    assert job["state"] == "done" and job["result"]["decision"]["rules"] == {"source": str(rules), "digest": digest}


def _push_rules(project: str) -> str:
    return f"""\
version: 1
rules:
  - name: images
    match: {{Modality: MR}}
    actions:
      - convert: {{}}
      - push_xnat: {{server: emu, project: {project}, subject: "{{PatientID|alnum}}", session: "S{{StudyDate}}"}}
"""


def test_results_are_pushed_to_xnat_exactly_once_through_faults_and_an_outage(
    orthanc_factory: Callable[..., Harness], corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-xnat-password"
    monkeypatch.setenv("BB_TEST_XNAT_PASS", secret)
    rules = tmp_path / "rules.yaml"
    rules.write_text(_push_rules("NEURO"))
    with XnatEmulator(users={"pusher": secret}, admins=()) as xnat:
        xnat.add_project("NEURO", owners=["pusher"])
        harness = orthanc_factory(bidsbridge={
            "Rules": str(rules),
            "Destinations": {"emu": {"Url": xnat.url, "Username": "pusher", "PasswordEnv": "BB_TEST_XNAT_PASS",
                                     "Retries": 2, "BackoffSeconds": 0.05, "MaxBackoffSeconds": 0.2,
                                     "ReadTimeout": 2}},
        })
        xnat.faults = FaultPlan(error_rate=0.15, drop_rate=0.1, timeout_rate=0.03, timeout_seconds=3,
                                fail_after_write_rate=0.05, fail_after_write_as=FaultKind.TIMEOUT_AFTER_WRITE)
        outage_done = threading.Event()

        def outage() -> None:  # XNAT goes away for a stretch in the middle of the deliveries
            deadline = time.monotonic() + 120
            while len(xnat.requests) < 60 and time.monotonic() < deadline:
                time.sleep(0.02)
            xnat.make_unreachable(seconds=3)
            outage_done.set()

        threading.Thread(target=outage, daemon=True).start()
        xa30 = corpus / "dcm_qa_xa30" / "In"
        names = ["5_anat-T1w_acq-tfl", "7_func-bold_task-fa_run-1", "10_DWI_dir80_PA"]
        harness.send([xa30 / n for n in names])

        def pushes() -> list[dict[str, Any]]:
            return [j for j in harness.jobs() if j["kind"] == "push"]

        harness.wait_for(lambda: len(pushes()) == 3 and all(j["state"] in ("done", "failed") for j in pushes()),
                         240, "the three pushes")
        assert outage_done.is_set()
        done = pushes()
        assert [j["state"] for j in done] == ["done"] * 3, [(j["state"], j["error"]) for j in done]
        retried = sum(j["attempts"] - 1 for j in done)

        # Everything the conversions produced is in XNAT, byte-identical, exactly once.
        bids = harness.server.bids_root
        local = {Path(o).name: bids / o for j in done for o in j["outputs"]}
        stored = [f for f in xnat.inventory().files if f.resource == "NIFTI"]
        names_in_xnat = [Path(f.path).name for f in stored]
        missing = set(local) - set(names_in_xnat)
        duplicates = len(names_in_xnat) - len(set(names_in_xnat))
        print(f"\npush through faults: {len(xnat.requests)} requests, "
              f"{sum(1 for r in xnat.requests if r.fault)} faulted, {retried} job retries, "
              f"{len(local)} files, {len(missing)} missing, {duplicates} duplicates, "
              f"{xnat.duplicate_file_writes} duplicate writes refused")
        assert missing == set() and duplicates == 0
        for record in stored:
            assert record.md5 == hashlib.md5(local[Path(record.path).name].read_bytes()).hexdigest()
        experiments = xnat.inventory().experiments
        assert {e.label for e in experiments} == {"S20220711"}
        # Listed back through xnat-py, as an XNAT user sees it: one scan per series, files intact.
        xnat.clear_faults()
        with xnat_py.connect(xnat.url, user="pusher", password=secret, loglevel="ERROR") as session:
            experiment = session.projects["NEURO"].subjects["12343hucheng"].experiments["S20220711"]
            assert experiment.__xsi_type__ == "xnat:mrSessionData"
            assert set(experiment.scans.keys()) == {"5", "7", "10"}
            listed = {file.path: (int(file.size), file.digest)
                      for scan in experiment.scans.values() for file in scan.resources["NIFTI"].files.values()}
        assert listed == {name: (path.stat().st_size, hashlib.md5(path.read_bytes()).hexdigest())
                          for name, path in local.items()}
        harness.server.stop()
    # The password never reaches a job record or a log.
    logs = [harness.server.log_path, *harness.server.state_dir.joinpath("logs").glob("*.log")]
    assert all(secret not in p.read_text(errors="replace") for p in logs)
    assert secret not in (harness.server.state_dir / "queue.sqlite3").read_bytes().decode("latin-1")


def test_push_without_project_access_fails_fast_and_retry_delivers_after_the_fix(
    orthanc_factory: Callable[..., Harness], corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BB_TEST_XNAT_PASS", "another-s3cret")
    rules = tmp_path / "rules.yaml"
    rules.write_text(_push_rules("LOCKED"))
    with XnatEmulator(users={"pusher": "another-s3cret", "owner": "owner-pw"}, admins=()) as xnat:
        xnat.add_project("LOCKED", owners=["owner"])  # the pusher has no role in it yet
        harness = orthanc_factory(bidsbridge={
            "Rules": str(rules),
            "Destinations": {"emu": {"Url": xnat.url, "Username": "pusher", "PasswordEnv": "BB_TEST_XNAT_PASS"}},
        })
        harness.send([corpus / "dcm_qa_xa30" / "In" / "5_anat-T1w_acq-tfl"])

        def push_job() -> dict[str, Any] | None:
            return next((j for j in harness.jobs() if j["kind"] == "push"), None)

        harness.wait_for(lambda: (push_job() or {}).get("state") == "failed", 60, "the push to fail")
        failed = push_job()
        assert failed is not None and failed["attempts"] == 1  # no pointless retries of a refusal
        assert "LOCKED" in failed["error"] and "another-s3cret" not in failed["error"]
        conversion = next(j for j in harness.jobs() if j["kind"] == "convert" and j["trigger"] == "early")
        assert conversion["state"] == "done"

        xnat.grant("LOCKED", "pusher", "member")
        retried = requests.post(f"{harness.url}/bidsbridge/jobs/{failed['id']}/retry", timeout=10)
        assert retried.status_code == 202 and retried.json()["state"] in ("queued", "running")  # workers wake at once
        harness.wait_for(lambda: (push_job() or {}).get("state") == "done", 60, "the retried push")
        # Not redone: any other convert job of the series (STABLE_SERIES after its early
        # conversion) found it already converted from these instances.
        others = [j for j in harness.jobs() if j["kind"] == "convert" and j["id"] != conversion["id"]]
        assert all("already converted" in str((j["result"] or {}).get("note")) for j in others), others
        assert any(f.resource == "NIFTI" for f in xnat.inventory().files)
