"""Hostile series through a real Orthanc and the plugin: each gets its verdict as a job, with the
reason; Orthanc keeps answering; nothing is written outside the dataset; the workers' memory stays
far below what the headers claim (and under ``WorkerMemoryMB``).

The converter-level cases (every kind, every message) are in ``tests/converters/test_hostile_input.py``;
this one checks that the same input, arriving in Orthanc, ends the same way through the plugin.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset

from tests.hostile_dicom import (
    BASIC_TEXT_SR,
    JPEG2000,
    SLICES,
    set_raw,
    write_absurd,
    write_document,
    write_series,
)
from tests.orthanc.conftest import Harness

pytestmark = pytest.mark.orthanc

GE_SERIES = Path("dcm_qa_nih/In/20180918GE/mr_0005")
MEMORY_MB = 2048


def _no_geometry(_index: int, ds: Dataset) -> None:
    del ds.ImagePositionPatient, ds.ImageOrientationPatient


def _climbing_labels(_index: int, ds: Dataset) -> None:
    ds.PatientID = "../../../../outside"
    ds.SeriesDescription = "func-bold_task-../../../../outside"
    ds.ProtocolName = "/etc/passwd"
    set_raw(ds, "StudyDate", b"../..")


def _control_characters(_index: int, ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = "\x1b[31mred\x07\r\n"
    ds.SeriesDescription = "anat-T1w_acq-\x1b]0;x\x07rest\t"


#: Cases Orthanc itself refuses (400 "Bad file format"): they never reach the plugin.
REFUSED_BY_ORTHANC = ("declared-jpeg2000-raw-pixels",)
#: case -> (job state, fragments of the job's reason).
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "control": ("done", ()),
    "no-geometry": ("failed", ("15 files (Orthanc instance ", " and 12 more): MR Image Storage without a "
                               "usable ImagePositionPatient or ImageOrientationPatient",
                               "its slice cannot be placed in space")),
    "structured-report": ("skipped", ("not an image (Modality SR",)),
    "absurd-65535x65535x10000": ("failed", ("Orthanc instance ", ": pixel data holds 8192 bytes but Rows x Columns x "
                                            "frames needs 85896724500000",)),
    "climbing-labels": ("done", ()),
    "control-characters": ("done", ()),
}


def _build(tree: Path, corpus: Path) -> None:
    volume = tuple(p.read_bytes() for p in sorted((corpus / GE_SERIES).glob("*.dcm"))[:SLICES])
    write_series(tree / "control", volume, "control")
    write_series(tree / "no-geometry", volume, "no-geometry", _no_geometry)
    write_series(tree / "declared-jpeg2000-raw-pixels", volume, "declared-jpeg2000-raw-pixels", declared=JPEG2000)
    write_document(tree / "structured-report", "structured-report", BASIC_TEXT_SR, "SR")
    write_absurd(tree / "absurd-65535x65535x10000", volume, 65535, 10000, None)
    write_series(tree / "climbing-labels", volume, "climbing-labels", _climbing_labels, count=3)
    write_series(tree / "control-characters", volume, "control-characters", _control_characters, count=3)


def _upload(harness: Harness, tree: Path) -> dict[str, str]:
    """Every file through Orthanc's REST API (it stores what DCMTK parses); case -> Orthanc series id."""
    series: dict[str, str] = {}
    for folder in sorted(tree.iterdir()):
        for path in sorted(folder.iterdir()):
            answer = requests.post(f"{harness.url}/instances", data=path.read_bytes(), timeout=60)
            if folder.name in REFUSED_BY_ORTHANC:
                assert answer.status_code == 400 and "Bad file format" in answer.text, answer.text[:300]
                continue
            assert answer.status_code == 200, f"Orthanc refused {path}: {answer.status_code} {answer.text[:300]}"
            series[folder.name] = answer.json()["ParentSeries"]
    return series


def _keep_asking(url: str, stop: threading.Event, answers: list[int]) -> None:
    while not stop.wait(0.25):
        try:
            answers.append(requests.get(f"{url}/system", timeout=10).status_code)
        except requests.RequestException:
            answers.append(0)


def _workers(state_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if b"orthanc_plugin.worker" in cmdline and str(state_dir).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def _peak_kib(pid: int) -> int:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def _reason(job: dict[str, Any]) -> str:
    result = job.get("result") or {}
    return " ".join(str(part) for part in (job.get("error"), result.get("reason"), result.get("notes")) if part)


def test_hostile_series_each_get_a_verdict_and_harm_nothing(
    orthanc_factory: Callable[..., Harness], corpus: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "hostile"
    _build(tree, corpus)
    harness = orthanc_factory(workers=2, bidsbridge={"WorkerMemoryMB": MEMORY_MB, "MaxAttempts": 1})
    answers: list[int] = []
    stop = threading.Event()
    asker = threading.Thread(target=_keep_asking, args=(harness.url, stop, answers), daemon=True)
    asker.start()
    try:
        ids = _upload(harness, tree)
        jobs = harness.wait_all_finished(len(EXPECTED), timeout=240)
    finally:
        stop.set()
        asker.join()

    assert set(ids) == set(EXPECTED)
    for case, (state, fragments) in EXPECTED.items():
        job = jobs[ids[case]]
        reason = _reason(job)
        print(f"{case}: {job['state']}: {reason[:200]}")
        assert job["state"] == state, (case, job)
        for fragment in fragments:
            assert fragment in reason, (case, reason)
        assert "Traceback" not in reason and "TypeError" not in reason, (case, reason)
        assert "/tmp" not in reason and "/state/" not in reason, (case, reason)  # no scratch path: Orthanc's ids

    # Orthanc kept answering, every time, while the plugin worked through all of it.
    assert answers and set(answers) == {200}, answers

    # Nothing outside the dataset: the run's folders hold only what they should.
    root = harness.server.bids_root.resolve()
    for job in jobs.values():
        for output in job["outputs"]:
            assert (root / output).resolve().is_relative_to(root), output
    written = {p.resolve() for p in tmp_path.rglob("*")}
    assert not [p for p in written if p.name in ("outside", "passwd") or "outside" in p.parts[:-1]]
    labels = [j["result"] for j in jobs.values() if j["state"] == "done"]
    assert all(r["subject"].isalnum() for r in labels), labels

    # The workers' memory: the headers claimed 85 TB; the limit held and the peak stayed small.
    pids = _workers(harness.server.state_dir)
    assert pids
    for pid in pids:
        limit = next(line for line in (Path("/proc") / str(pid) / "limits").read_text().splitlines()
                     if line.startswith("Max address space"))
        assert str(MEMORY_MB << 20) in limit, limit
        assert _peak_kib(pid) < 1 << 20  # KiB: under 1 GiB
