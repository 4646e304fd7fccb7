"""Several worker processes publishing into one dataset at once give exactly what one process
converting the series one after the other gives, byte for byte."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import random
from pathlib import Path

import pytest

from converters import convert_series, convert_tree
from converters.bids.manifests import BOOKKEEPING_DIR, discard_staging, make_staging_dir
from converters.bids.publish import PublishRequest, StagedImage, publish
from converters.records import BidsTarget, DicomSeries
from tests.converters.helpers import Converted


def _tree(root: Path) -> dict[str, bytes]:
    """Every file of the dataset (bookkeeping included, the lock file aside) -> its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root) != Path(BOOKKEEPING_DIR, "lock")
    }


def test_parallel_processes_match_a_sequential_run(xa30: Path, xa30_dataset: Converted, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    folders = sorted((xa30 / "In").iterdir())
    # Every series once, a few twice (the same series published concurrently must not duplicate).
    jobs = folders + [f for f in folders if f.name.split("_")[0] in ("5", "10", "99")]
    random.Random(2).shuffle(jobs)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(convert_series, [(folder, root) for folder in jobs], chunksize=1)

    sequential = {r.series_uid: r for r in xa30_dataset.results}
    assert len(results) == len(jobs)
    for result in results:
        assert result == sequential[result.series_uid]

    parallel_files = _tree(root)
    sequential_files = _tree(xa30_dataset.root)
    assert sorted(parallel_files) == sorted(sequential_files)
    for name, data in sequential_files.items():
        assert parallel_files[name] == data, f"{name} differs between the parallel and the sequential run"
    assert list((root / BOOKKEEPING_DIR / "tmp").iterdir()) == []


def test_convert_tree_with_several_jobs_matches_a_sequential_run(
    xa30: Path, xa30_dataset: Converted, tmp_path: Path
) -> None:
    """``bidsbridge convert -j``: the same results, in the same order, and the same bytes."""
    root = tmp_path / "bids"
    results = convert_tree(xa30 / "In", root, jobs=3)
    assert results == xa30_dataset.results
    parallel_files = _tree(root)
    sequential_files = _tree(xa30_dataset.root)
    assert sorted(parallel_files) == sorted(sequential_files)
    for name, data in sequential_files.items():
        assert parallel_files[name] == data, f"{name} differs between convert -j 3 and a sequential run"


WORKERS = 4
SERIES_PER_WORKER = 12


def _publish_many(root: Path, worker: int, start: multiprocessing.synchronize.Barrier) -> None:
    """Publish small synthetic series as fast as possible (run in a spawned process)."""
    start.wait()
    for index in range(SERIES_PER_WORKER):
        series = DicomSeries(
            series_uid=f"1.2.826.0.1.3680043.10.{worker}.{index}", study_uid="1.2.826.0.1.3680043.10.0",
            patient_id=f"P{worker % 2}", series_number=index, series_description=f"w{worker}n{index}",
            protocol_name="", modality="MR", sop_class_uid="1.2.840.10008.5.1.4.1.1.4", study_date="20240102",
            study_time="090000", acquisition_time=f"2024-01-02T09:{worker:02d}:{index:02d}",
            image_type=("ORIGINAL", "PRIMARY"), has_pixels=True, files=(),
        )  # fmt: skip
        staging = make_staging_dir(root)
        try:
            nifti, sidecar = staging / "image.nii.gz", staging / "image.json"
            nifti.write_bytes(f"{worker}/{index}".encode())
            sidecar.write_text("{}\n")
            target = BidsTarget("anat", "T1w", {"acq": "race"})  # all want the same name
            image = StagedImage(files={".nii.gz": nifti, ".json": sidecar}, target=target)
            request = PublishRequest(series=series, subject=f"P{worker % 2}", session=None, images=(image,))
            publish(root, request, dcm2niix_version="v1.0.20260724")
        finally:
            discard_staging(staging)


def test_racing_publishers_lose_nothing(tmp_path: Path) -> None:
    """The critical section under the dataset lock, hammered by processes starting together, all
    wanting the same file name: each series must end up with its own file (run-1, run-2, ... in
    acquisition order), listed once in scans.tsv, and nobody's file may be overwritten."""
    context = multiprocessing.get_context("spawn")
    root = tmp_path / "bids"
    start = context.Barrier(WORKERS)
    processes = [context.Process(target=_publish_many, args=(root, w, start)) for w in range(WORKERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0

    manifests = [json.loads(p.read_text()) for p in (root / BOOKKEEPING_DIR / "series").iterdir()]
    assert len(manifests) == WORKERS * SERIES_PER_WORKER
    owners: dict[str, str] = {}
    for manifest in manifests:
        worker, index = manifest["series_uid"].split(".")[-2:]
        for path in manifest["outputs"]:
            assert path not in owners, f"{path} claimed by {owners[path]} and {manifest['series_uid']}"
            owners[path] = manifest["series_uid"]
        (nifti,) = [p for p in manifest["outputs"] if p.endswith(".nii.gz")]
        assert (root / nifti).read_bytes() == f"{worker}/{index}".encode(), f"{nifti} was overwritten"
        # True repeats are numbered in acquisition order (09:<worker>:<index>), whatever the arrival.
        rank = (int(worker) // 2) * SERIES_PER_WORKER + int(index) + 1
        assert nifti.endswith(f"_acq-race_run-{rank}_T1w.nii.gz"), (nifti, rank)
    per_subject = SERIES_PER_WORKER * WORKERS // 2
    for subject in ("P0", "P1"):
        session = root / f"sub-{subject}/ses-20240102"
        names = sorted(p.name for p in (session / "anat").glob("*.nii.gz"))
        expected_runs = [f"_run-{n}" for n in range(1, per_subject + 1)]
        assert names == sorted(f"sub-{subject}_ses-20240102_acq-race{run}_T1w.nii.gz" for run in expected_runs)
        rows = (session / f"sub-{subject}_ses-20240102_scans.tsv").read_text().splitlines()[1:]
        assert sorted(row.split("\t")[0] for row in rows) == sorted(f"anat/{name}" for name in names)
    assert (root / "participants.tsv").read_text() == "participant_id\nsub-P0\nsub-P1\n"


@pytest.mark.parametrize("suite", ["dcm_qa_nih", "dcm_qa_fmap"])
def test_repeats_field_map_sets_and_same_day_sessions_do_not_depend_on_arrival(
    suite: str, corpus: Path, tmp_path: Path
) -> None:
    """Runs of true repeats, paired field-map series and same-day sessions are decided from all
    series: 4 workers in random order give the sequential dataset, byte for byte."""
    source = corpus / suite / "In"
    sequential = tmp_path / "sequential"
    convert_tree(source, sequential)
    folders = sorted({path.parent for path in source.rglob("*") if path.is_file() and path.suffix != ".txt"})
    random.Random(5).shuffle(folders)
    parallel = tmp_path / "parallel"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(convert_series, [(folder, parallel) for folder in folders], chunksize=1)
    assert _tree(parallel) == _tree(sequential)
