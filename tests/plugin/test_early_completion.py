"""Early completion in the convert handler, without Orthanc: an ``early`` job waits until its
series holds the instance count its headers announce, converts, and a later ``stable`` job
converts again only when the instances changed (one file set, never two)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import pydicom

from orthanc_plugin.handlers import handle_convert
from orthanc_plugin.jobs import ConvertResult, Deferred, Outcome, UnchangedResult
from tests.plugin.conftest import Plant

Run = Callable[..., object]


def _bold(corpus: Path) -> list[Path]:
    (folder,) = (corpus / "dcm_qa_xa30" / "In").glob("7_*")
    return sorted(folder.iterdir())


def _bold_runs(root: Path) -> list[Path]:
    return sorted(root.rglob("*_bold.nii.gz"))


def _finish(plant: Plant, outcome: object) -> None:
    assert isinstance(outcome, Outcome)
    (running,) = plant.queue.list(state="running")
    plant.queue.finish(running.id, outcome)


def test_an_early_job_waits_for_the_announced_count_then_converts_once(
    plant: Plant, run: Run, corpus: Path
) -> None:
    files = _bold(corpus)
    (series_id,) = plant.orthanc.add(files[:12])
    plant.orthanc.unstable = {series_id}
    waiting = run(handle_convert, plant.claim(series_id, trigger="early"))
    assert isinstance(waiting, Deferred) and "12 of 20 instance(s)" in waiting.note
    assert "NumberOfTemporalPositions 20" in waiting.note and plant.orthanc.downloads == []
    plant.queue.defer(plant.queue.list(state="running")[0].id, waiting)

    plant.orthanc.add(files[12:])  # complete, and still not stable in Orthanc
    plant.queue._db.execute("UPDATE jobs SET not_before = 0")
    job = plant.queue.claim(os.getpid())
    assert job is not None and job.trigger == "early"
    converted = run(handle_convert, job)
    assert isinstance(converted, Outcome) and converted.state == "done"
    assert isinstance(converted.result, ConvertResult) and converted.result.instances_digest
    (bold,) = _bold_runs(plant.root)
    assert nib.load(bold).shape[3] == 20
    _finish(plant, converted)

    # Orthanc's STABLE_SERIES later: nothing changed, nothing is converted again.
    plant.orthanc.unstable = set()
    again = run(handle_convert, plant.claim(series_id))
    assert isinstance(again, Outcome) and again.state == "done"
    assert isinstance(again.result, UnchangedResult)
    assert "already converted from these 20 instance(s)" in again.result.note
    assert again.result.to_json()["outputs"] == converted.result.to_json()["outputs"]
    assert again.outputs == converted.outputs and plant.orthanc.downloads == [series_id]


def test_a_series_whose_headers_claimed_too_few_is_converted_again_into_one_file_set(
    plant: Plant, run: Run, corpus: Path, tmp_path: Path
) -> None:
    """Headers that announce 10 volumes of a 20-volume run: converted at 10, then again from
    all 20 when Orthanc calls the series stable, replacing the first file set."""
    copies = tmp_path / "copies"
    copies.mkdir()
    for path in _bold(corpus):
        ds = pydicom.dcmread(path)
        ds.NumberOfTemporalPositions = 10
        ds.save_as(copies / path.name)
    files = sorted(copies.iterdir())
    (series_id,) = plant.orthanc.add(files[:10])
    plant.orthanc.unstable = {series_id}
    early = run(handle_convert, plant.claim(series_id, trigger="early"))
    assert isinstance(early, Outcome) and early.state == "done"
    (bold,) = _bold_runs(plant.root)
    assert nib.load(bold).shape[3] == 10
    _finish(plant, early)

    plant.orthanc.add(files[10:])
    plant.orthanc.unstable = set()
    stable = run(handle_convert, plant.claim(series_id))
    assert isinstance(stable, Outcome) and stable.state == "done"
    assert isinstance(stable.result, ConvertResult) and stable.result.note is None
    assert plant.orthanc.downloads == [series_id, series_id]
    (bold,) = _bold_runs(plant.root)  # one run, replaced
    assert nib.load(bold).shape[3] == 20
    assert sorted(stable.outputs) == sorted(early.outputs)


def test_an_early_job_for_a_series_no_header_can_prove_waits_for_stable(
    plant: Plant, run: Run, corpus: Path
) -> None:
    folder = sorted((corpus / "dcm_qa_xa30i_bold" / "In").iterdir())[0]
    (series_id,) = plant.orthanc.add_folder(folder)
    plant.orthanc.unstable = {series_id}
    waiting = run(handle_convert, plant.claim(series_id, trigger="early"))
    assert isinstance(waiting, Deferred) and "waiting for StableAge" in waiting.note


def test_a_conversion_by_hand_after_an_early_one_always_converts(plant: Plant, run: Run, corpus: Path) -> None:
    (folder,) = (corpus / "dcm_qa_xa30" / "In").glob("5_*")
    (series_id,) = plant.orthanc.add_folder(folder)
    plant.orthanc.unstable = {series_id}
    _finish(plant, run(handle_convert, plant.claim(series_id, trigger="early")))
    by_hand = run(handle_convert, plant.claim(series_id, trigger="manual"))
    assert isinstance(by_hand, Outcome) and isinstance(by_hand.result, ConvertResult)
    assert by_hand.result.note is None and plant.orthanc.downloads == [series_id, series_id]


def test_stable_series_after_a_conversion_by_hand_of_the_same_instances_converts_nothing(
    plant: Plant, run: Run, corpus: Path
) -> None:
    (folder,) = (corpus / "dcm_qa_xa30" / "In").glob("5_*")
    (series_id,) = plant.orthanc.add_folder(folder)
    _finish(plant, run(handle_convert, plant.claim(series_id, trigger="manual")))
    stable = run(handle_convert, plant.claim(series_id))
    assert isinstance(stable, Outcome) and isinstance(stable.result, UnchangedResult)
    assert plant.orthanc.downloads == [series_id]
    _finish(plant, stable)
    again = run(handle_convert, plant.claim(series_id, trigger="catch-up"))
    assert isinstance(again, Outcome) and isinstance(again.result, ConvertResult)  # other triggers convert
