"""`bidsbridge demo` and `bidsbridge serve`: the embedded default, driven as a user would."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from orthanc_plugin.dicom_send import send_files
from orthanc_plugin.embedded import ORTHANC_AET, free_port

pytestmark = pytest.mark.orthanc

BIDSBRIDGE = Path(sys.executable).parent / "bidsbridge"


def test_demo_sends_the_bundled_sample_and_reports(tmp_path: Path) -> None:
    completed = subprocess.run(
        [str(BIDSBRIDGE), "demo", "--workdir", str(tmp_path / "demo"), "--no-keep",
         "--http-port", str(free_port()), "--dicom-port", str(free_port())],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "Sent 45 DICOM files (5 series)" in out
    assert "Series converted: 5 of 5 (skipped 0, failed 0)" in out
    assert f"BIDS dataset:     {tmp_path / 'demo' / 'bids'}" in out
    assert list((tmp_path / "demo" / "bids").glob("sub-*/ses-*/dwi/*_dir-PA_dwi.nii.gz"))


def test_serve_runs_orthanc_in_the_foreground_until_interrupted(tmp_path: Path, corpus: Path) -> None:
    http, dicom = free_port(), free_port()
    process = subprocess.Popen(
        [str(BIDSBRIDGE), "serve", "--workdir", str(tmp_path / "w"), "--http-port", str(http),
         "--dicom-port", str(dicom), "--workers", "1", "--stable-age", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/bidsbridge/status", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        t1w = corpus / "dcm_qa_xa30" / "In" / "5_anat-T1w_acq-tfl"
        send_files(sorted(t1w.iterdir()), "127.0.0.1", dicom, called_aet=ORTHANC_AET, calling_aet="STORESCU")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = requests.get(f"{url}/bidsbridge/jobs", timeout=5).json()
            if jobs and jobs[0]["state"] == "done":
                break
            time.sleep(0.2)
        assert jobs and jobs[0]["state"] == "done", jobs
        assert list((tmp_path / "w" / "bids").glob("sub-*/ses-*/anat/*_T1w.nii.gz"))
        assert list((tmp_path / "w" / "orthanc").iterdir())  # Orthanc's own storage lives in DIR/orthanc
    finally:
        process.send_signal(2)  # SIGINT, as Ctrl-C
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    assert "BIDS dataset:" in out


def test_demo_stopped_by_sigterm_stops_its_orthanc(tmp_path: Path) -> None:
    """A demo ended by SIGTERM (a service manager, `timeout`) leaves no Orthanc behind."""
    http = free_port()
    process = subprocess.Popen(
        [str(BIDSBRIDGE), "demo", "--workdir", str(tmp_path / "w"), "--http-port", str(http),
         "--dicom-port", str(free_port()), "--keep"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/system", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    assert requests.get(f"{url}/system", timeout=5).ok
    process.send_signal(15)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + 15, out
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/system", timeout=5)
