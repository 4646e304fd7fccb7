"""End to end in a real Orthanc: C-STORE in, stable series, worker processes, BIDS out."""

from __future__ import annotations

import gzip
import io
import os
import signal
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests

from converters import convert_tree
from orthanc_plugin.embedded import EmbeddedOrthanc, free_port
from tests.orthanc.conftest import Harness, series_uid
from tests.validator import validate

pytestmark = pytest.mark.orthanc

XA30_REFERENCE = {
    # series folder -> (glob of the BIDS NIfTI, expected/ file stem)
    "5_anat-T1w_acq-tfl": ("sub-*/ses-*/anat/*_acq-tfl_T1w.nii.gz", "5_anat-T1w_acq-tfl"),
    "7_func-bold_task-fa_run-1": ("sub-*/ses-*/func/*_task-fa_run-1_bold.nii.gz", "7_func-bold_task-fa_run-1"),
    "10_DWI_dir80_PA": ("sub-*/ses-*/dwi/*_dir-PA_dwi.nii.gz", "10_DWI_dir80_PA"),
    "17_DWI_dir80_AP": ("sub-*/ses-*/dwi/*_dir-AP_dwi.nii.gz", "17_DWI_dir80_AP"),
}


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, f"{pattern}: expected one file, found {found}"
    return found[0]


def _assert_same_image(ours: Path, reference: Path) -> None:
    a, b = nib.load(ours), nib.load(reference)
    assert a.shape == b.shape, (ours, a.shape, b.shape)
    assert np.array_equal(a.affine, b.affine), (ours, a.affine, b.affine)
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)), ours


def _payload(path: Path) -> bytes:
    """File content; for .gz the uncompressed bytes (gzip headers carry a time stamp)."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


# -- the XA30 session through the plugin (one Orthanc for the module) ----------------------------


class Xa30Run:
    harness: Harness
    jobs: dict[str, dict[str, Any]]
    probes: int
    probe_failures: list[str]
    series_dirs: list[Path]


@pytest.fixture(scope="module")
def xa30(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Iterator[Xa30Run]:
    server = EmbeddedOrthanc(
        workdir=tmp_path_factory.mktemp("xa30"), http_port=free_port(), dicom_port=free_port(),
        workers=4, stable_age=2,  # parallel arrival: 4 workers, compared with a sequential offline run
    )
    server.start()
    run = Xa30Run()
    run.harness = Harness(server)
    run.series_dirs = sorted(p for p in (corpus / "dcm_qa_xa30" / "In").iterdir() if p.is_dir())
    run.probes = 0
    run.probe_failures = []
    stop = threading.Event()

    def probe() -> None:  # Orthanc must keep answering while the workers convert (how fast: benchmarks/)
        while not stop.is_set():
            try:
                requests.get(f"{server.url}/system", timeout=30).raise_for_status()
            except requests.RequestException as exc:
                run.probe_failures.append(f"{type(exc).__name__}: {exc}")
            run.probes += 1
            time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        run.harness.send(run.series_dirs)
        run.jobs = run.harness.wait_all_finished(len(run.series_dirs), timeout=180)
    finally:
        stop.set()
        prober.join()
    yield run
    server.stop()


def test_every_xa30_series_is_accounted_for(xa30: Xa30Run) -> None:
    assert len(xa30.jobs) == len(xa30.series_dirs)
    for job in xa30.jobs.values():
        assert job["state"] in ("done", "skipped"), job
        if job["state"] == "skipped":
            assert job["error"], f"skipped without a reason: {job}"
        else:
            assert job["outputs"], job
        assert job["result"]["series_uid"]


def test_xa30_images_equal_the_reference_conversion(xa30: Xa30Run, corpus: Path) -> None:
    bids = xa30.harness.server.bids_root
    expected = corpus / "dcm_qa_xa30" / "expected"
    for pattern, stem in XA30_REFERENCE.values():
        ours = _one(bids, pattern)
        _assert_same_image(ours, expected / f"{stem}.nii.gz")
        if "_dwi" in ours.name:
            for ext in (".bval", ".bvec"):
                mine = np.loadtxt(str(ours).replace(".nii.gz", ext))
                ref = np.loadtxt(expected / f"{stem}{ext}")
                assert np.allclose(mine, ref), ext
    rec_norm = _one(bids, "sub-*/ses-*/anat/*_acq-tfl_rec-norm_T1w.nii.gz")
    _assert_same_image(rec_norm, expected / "6_anat-T1w_acq-tfl.nii.gz")


def test_xa30_dataset_is_bids_valid(xa30: Xa30Run) -> None:
    errors = validate(xa30.harness.server.bids_root)
    assert errors == [], errors


def test_orthanc_stays_responsive_while_converting(xa30: Xa30Run) -> None:
    # Conversion runs in worker processes: the REST API answers every request throughout (its
    # latency is measured in benchmarks/, not asserted here).
    assert xa30.probes > 10
    assert xa30.probe_failures == []


def test_offline_cli_gives_the_same_files_as_the_plugin(xa30: Xa30Run, corpus: Path, tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    results = convert_tree(corpus / "dcm_qa_xa30" / "In", offline, qc=True)  # the plugin draws QC pictures too
    assert {r.series_uid for r in results} == {j["result"]["series_uid"] for j in xa30.jobs.values()}
    plugin_root = xa30.harness.server.bids_root

    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): _payload(p)
            for p in sorted(root.rglob("*"))
            if p.is_file() and ".bidsbridge" not in p.relative_to(root).parts
        }

    ours, theirs = files(plugin_root), files(offline)
    assert sorted(ours) == sorted(theirs)
    different = [name for name in ours if ours[name] != theirs[name]]
    assert different == []


def test_rest_routes(xa30: Xa30Run) -> None:
    harness = xa30.harness
    dwi = harness.orthanc_series_id(series_uid(next(d for d in xa30.series_dirs if d.name == "10_DWI_dir80_PA")))
    job = xa30.jobs[dwi]
    one = harness.get(f"/bidsbridge/jobs/{job['id']}")
    assert one["id"] == job["id"] and one["series"] == dwi and one["state"] == "done"
    for key in ("attempts", "error", "outputs", "created_at", "finished_at"):
        assert key in one
    # zip of the series' NIfTI and sidecars
    response = requests.get(f"{harness.url}/bidsbridge/series/{dwi}/nifti", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert sorted(names) == sorted(job["outputs"])
    assert {Path(n).suffix for n in names} >= {".gz", ".json", ".bval", ".bvec"}
    # errors are JSON with a status
    missing = requests.get(f"{harness.url}/bidsbridge/jobs/999999", timeout=10)
    assert missing.status_code == 404 and "999999" in missing.json()["error"]
    bad = requests.get(f"{harness.url}/bidsbridge/jobs/abc", timeout=10)
    assert bad.status_code == 400
    assert requests.post(f"{harness.url}/bidsbridge/jobs", timeout=10).status_code == 405
    unknown = requests.post(f"{harness.url}/bidsbridge/series/nope/convert", timeout=10)
    assert unknown.status_code == 404
    # filter by state
    done = harness.get("/bidsbridge/jobs", state="done")
    assert done and all(j["state"] == "done" for j in done)
    # manual trigger: a new job that converts the series again, replacing its outputs
    before = sorted(p.relative_to(harness.server.bids_root) for p in harness.server.bids_root.rglob("*_dwi.*"))
    queued = requests.post(f"{harness.url}/bidsbridge/series/{dwi}/convert", timeout=10)
    assert queued.status_code == 202
    new_id = queued.json()["id"]
    assert new_id != job["id"]
    harness.wait_for(lambda: harness.get(f"/bidsbridge/jobs/{new_id}")["state"] == "done", 60, "manual job")
    after = sorted(p.relative_to(harness.server.bids_root) for p in harness.server.bids_root.rglob("*_dwi.*"))
    assert after == before


# -- failure and recovery, each with its own Orthanc ----------------------------------------------


def _xa30_dir(corpus: Path, name: str) -> Path:
    return corpus / "dcm_qa_xa30" / "In" / name


def test_worker_killed_mid_job_is_retried(orthanc_factory: Callable[..., Harness], corpus: Path) -> None:
    harness = orthanc_factory(workers=1)
    dwi = _xa30_dir(corpus, "10_DWI_dir80_PA")
    for attempt in range(5):
        # Freeze the only worker, queue work, let it claim, then kill it in the middle of the job.
        pid = harness.get("/bidsbridge/status")["workers"][0]
        os.kill(pid, signal.SIGSTOP)
        if attempt == 0:
            harness.send([dwi])
            orthanc_id = harness.orthanc_series_id(series_uid(dwi))
            harness.wait_for(lambda: bool(harness.jobs()), 30, "the job to be queued")
        else:
            requests.post(f"{harness.url}/bidsbridge/series/{orthanc_id}/convert", timeout=10).raise_for_status()
        os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while harness.jobs()[0]["state"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        job = harness.jobs()[0]
        if job["state"] == "running":
            break
        # The job finished before the kill landed: wait for a fresh worker and try again.
        harness.wait_for(lambda p=pid: harness.get("/bidsbridge/status")["workers"] not in ([], [p]), 30,
                         "a replacement worker")
    else:
        pytest.fail("could not catch the worker mid-job")
    harness.wait_for(lambda: harness.get(f"/bidsbridge/jobs/{job['id']}")["state"] == "done", 60, "the retry")
    final = harness.get(f"/bidsbridge/jobs/{job['id']}")
    assert final["attempts"] == 2
    # The supervisor saw the death and put exactly this job back (its log line says so).
    assert f"worker {pid} ended (signal 9); jobs put back: [{job['id']}]" in harness.server.log_path.read_text()
    new_pids = harness.get("/bidsbridge/status")["workers"]
    assert len(new_pids) == 1 and new_pids[0] != pid
    assert len(list(harness.server.bids_root.rglob("*_dwi.nii.gz"))) == 1


def test_orthanc_stopped_with_jobs_pending_resumes_after_restart(
    orthanc_factory: Callable[..., Harness], corpus: Path
) -> None:
    names = ["5_anat-T1w_acq-tfl", "7_func-bold_task-fa_run-1", "10_DWI_dir80_PA", "17_DWI_dir80_AP"]
    harness = orthanc_factory(workers=1)
    worker = harness.get("/bidsbridge/status")["workers"][0]
    os.kill(worker, signal.SIGSTOP)  # hold the only worker so that work is surely pending at the stop
    harness.send([_xa30_dir(corpus, n) for n in names])
    harness.wait_for(lambda: len(harness.jobs()) == len(names), 60, "all series to be queued")
    assert harness.get("/bidsbridge/status")["jobs"] == {"queued": len(names)}
    workdir = harness.server.workdir
    os.kill(worker, signal.SIGCONT)
    harness.server.stop()
    restarted = orthanc_factory(workdir=workdir, workers=2)
    jobs = restarted.wait_all_finished(len(names), timeout=120)
    assert {j["state"] for j in jobs.values()} == {"done"}
    assert len(restarted.jobs()) == len(names)  # resumed, not duplicated
    for pattern, _ in (XA30_REFERENCE[n] for n in names if n in XA30_REFERENCE):
        _one(restarted.server.bids_root, pattern)


def test_series_arriving_while_plugin_disabled_are_caught_up(
    orthanc_factory: Callable[..., Harness], corpus: Path
) -> None:
    # First start with the plugin (it records where it is in Orthanc's change log) ...
    first = orthanc_factory(bidsbridge={"CatchUp": "since-last-run"})
    t1w = _xa30_dir(corpus, "5_anat-T1w_acq-tfl")
    first.send([t1w])
    t1w_id = first.orthanc_series_id(series_uid(t1w))
    first.wait_for(  # stable too: a conversion (with its QC pictures) may outlast StableAge, and then
        # STABLE_SERIES queues a second job, which finds the series already converted
        lambda: requests.get(f"{first.url}/series/{t1w_id}", timeout=10).json()["IsStable"], 30, "stability"
    )
    first.wait_all_finished(1)
    before = len(first.jobs())
    workdir = first.server.workdir
    first.server.stop()
    # ... then Orthanc runs without it while a series arrives and becomes stable ...
    disabled = orthanc_factory(workdir=workdir, plugin_enabled=False, bidsbridge={"CatchUp": "since-last-run"})
    bold = _xa30_dir(corpus, "7_func-bold_task-fa_run-1")
    disabled.send([bold])
    bold_id = disabled.orthanc_series_id(series_uid(bold))
    disabled.wait_for(
        lambda: requests.get(f"{disabled.url}/series/{bold_id}", timeout=10).json()["IsStable"], 30, "stability"
    )
    assert requests.get(f"{disabled.url}/bidsbridge/jobs", timeout=10).status_code == 404  # plugin off
    disabled.server.stop()
    # ... and the plugin, back, converts what it missed, without redoing the T1w.
    back = orthanc_factory(workdir=workdir, bidsbridge={"CatchUp": "since-last-run"})
    jobs = back.wait_all_finished(2, timeout=90)
    assert jobs[bold_id]["state"] == "done" and jobs[bold_id]["trigger"] == "catch-up"
    assert len(back.jobs()) == before + 1  # the bold's job only: the T1w is not converted again
    _one(back.server.bids_root, XA30_REFERENCE["7_func-bold_task-fa_run-1"][0])


def test_series_receiving_when_orthanc_is_killed_is_converted_by_the_next_orthanc(
    orthanc_factory: Callable[..., Harness], corpus: Path
) -> None:
    # Orthanc dies (SIGKILL) after the instances are stored but before the series is stable: the
    # next Orthanc never reports it stable (that list lives in memory); the catch-up queues it.
    # (Early completion off: a T1w's one enhanced instance would be converted at once.)
    first = orthanc_factory(stable_age=600, bidsbridge={"CatchUp": "since-last-run", "EarlyCompletion": False})
    t1w = _xa30_dir(corpus, "5_anat-T1w_acq-tfl")
    first.send([t1w])
    series_id = first.orthanc_series_id(series_uid(t1w))
    assert first.jobs() == []  # not stable yet
    first.server.kill()
    back = orthanc_factory(workdir=first.server.workdir, stable_age=1, bidsbridge={"CatchUp": "since-last-run"})
    jobs = back.wait_all_finished(1, timeout=90)
    assert jobs[series_id]["state"] == "done" and jobs[series_id]["trigger"] == "catch-up"
    _one(back.server.bids_root, XA30_REFERENCE["5_anat-T1w_acq-tfl"][0])


def test_series_updated_after_conversion_is_reconverted(
    orthanc_factory: Callable[..., Harness], corpus: Path
) -> None:
    harness = orthanc_factory()
    dwi = _xa30_dir(corpus, "10_DWI_dir80_PA")
    files = sorted(p for p in dwi.iterdir() if p.is_file())
    harness.send(files[:8])
    first = harness.wait_all_finished(1)
    (job,) = first.values()
    assert job["state"] == "done"
    nifti = _one(harness.server.bids_root, "sub-*/ses-*/dwi/*_dwi.nii.gz")
    assert nib.load(nifti).shape[-1] == 8
    harness.send(files[8:])
    def reconverted() -> bool:  # a STABLE_SERIES of the first 8 may have found them converted already
        newest = harness.jobs()[0]
        note = str((newest.get("result") or {}).get("note") or "")
        return newest["id"] != job["id"] and newest["state"] == "done" and "already converted" not in note

    harness.wait_for(reconverted, 90, "the re-conversion")
    nifti = _one(harness.server.bids_root, "sub-*/ses-*/dwi/*_dwi.nii.gz")
    assert nib.load(nifti).shape[-1] == len(files)
    bvals = np.loadtxt(str(nifti).replace(".nii.gz", ".bval"))
    assert bvals.size == len(files)


def _corrupt_copy(source: Path, target: Path) -> None:
    """A DICOM whose pixel data is cut short: valid header, truncated payload."""
    ds = pydicom.dcmread(source)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(target, enforce_file_format=True)


def test_broken_series_fails_with_reason_while_others_convert(
    orthanc_factory: Callable[..., Harness], corpus: Path, tmp_path: Path
) -> None:
    harness = orthanc_factory(bidsbridge={"MaxAttempts": 2})
    bold = _xa30_dir(corpus, "7_func-bold_task-fa_run-1")
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    _corrupt_copy(next(p for p in sorted(_xa30_dir(corpus, "5_anat-T1w_acq-tfl").iterdir())), broken_dir / "t1.dcm")
    harness.send([broken_dir, bold])
    jobs = harness.wait_all_finished(2, timeout=120)
    broken_uid = series_uid(_xa30_dir(corpus, "5_anat-T1w_acq-tfl"))
    broken = jobs[harness.orthanc_series_id(broken_uid)]
    good = jobs[harness.orthanc_series_id(series_uid(bold))]
    assert good["state"] == "done"
    assert broken["state"] == "failed", broken
    assert broken["error"] and len(broken["error"]) > 20, broken
    assert not list(harness.server.bids_root.rglob("*_T1w.nii.gz"))


def test_bad_configuration_stops_startup_naming_the_key(
    orthanc_factory: Callable[..., Harness]
) -> None:
    harness = orthanc_factory(start=False, bidsbridge={"Workers": 0})
    with pytest.raises(Exception, match=r"exited|did not answer"):
        harness.server.start(timeout=30)
    assert "BidsBridge.Workers" in harness.server.log_path.read_text(errors="replace")
