"""Each job kind's handler, without Orthanc: a fake of its REST API over real corpus files, real
conversions into a temporary dataset, a real queue. What the handler returns or raises is what
the worker records (see test_worker.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from converters.errors import BidsBridgeError, Dcm2niixError
from orthanc_plugin import handlers
from orthanc_plugin.handlers import handle_convert, handle_push
from orthanc_plugin.jobs import ConvertJob, ConvertResult, Deferred, Outcome, PushJob
from orthanc_plugin.routing_stage import RoutingError, RulesSnapshot
from tests.plugin.conftest import Plant
from xnat_container import XnatConfigError

Run = Callable[..., object]


def _series(corpus: Path, suite: str, prefix: str) -> Path:
    (found,) = (corpus / suite / "In").glob(f"{prefix}*")
    return found


def test_a_series_is_converted_into_the_dataset(plant: Plant, run: Run, corpus: Path) -> None:
    (series_id,) = plant.orthanc.add_folder(_series(corpus, "dcm_qa_xa30", "5_"))
    outcome = run(handle_convert, plant.claim(series_id))
    assert isinstance(outcome, Outcome) and outcome.state == "done"
    result = outcome.result
    assert isinstance(result, ConvertResult) and result.decision is not None
    assert result.series.state == "converted" and result.dataset_root == str(plant.root)
    assert [p for p in outcome.outputs if p.endswith(".nii.gz")] == [
        "sub-12343hucheng/ses-20220711/anat/sub-12343hucheng_ses-20220711_acq-tfl_T1w.nii.gz"
    ]
    assert all((plant.root / p).is_file() for p in outcome.outputs)
    assert plant.orthanc.downloads == [series_id]
    assert plant.orthanc.fetched == plant.orthanc.series[series_id]  # read for its tags, then converted: once
    # The stored form reads back as the same record (what the nifti route relies on).
    assert ConvertResult.from_json(result.to_json()).filed_as == result.series.series_uid


def test_a_non_image_series_is_skipped_by_the_rules_without_download(plant: Plant, run: Run, corpus: Path) -> None:
    (series_id,) = plant.orthanc.add_folder(_series(corpus, "dcm_qa_xa30", "99_"))
    outcome = run(handle_convert, plant.claim(series_id))
    assert isinstance(outcome, Outcome) and outcome.state == "skipped"
    assert isinstance(outcome.result, ConvertResult) and outcome.result.series.reason_code == "rule"
    assert outcome.reason is not None and "not an image" in outcome.reason
    assert plant.orthanc.downloads == []


def test_a_derivation_that_does_not_apply_is_recorded_and_the_conversion_stands(
    plant: Plant, run: Run, corpus: Path
) -> None:
    (series_id,) = plant.orthanc.add_folder(_series(corpus, "dcm_qa_xa30", "5_"))
    outcome = run(handle_convert, plant.claim(series_id, ConvertJob(derive=("adc",))))
    assert isinstance(outcome, Outcome) and outcome.state == "done"
    assert isinstance(outcome.result, ConvertResult)
    record = outcome.result.derived["adc"]
    assert record.made is None and record.error is not None
    assert outcome.reason is not None and outcome.reason.startswith("derivation 'adc' not made")
    assert plant.orthanc.stored == []  # nothing half-made was stored


def test_rules_that_cannot_apply_raise_a_permanent_routing_error(
    plant: Plant, run: Run, corpus: Path, tmp_path: Path
) -> None:
    rules = tmp_path / "state" / "rules-active.yaml"
    rules.write_text("version: 1\nrules:\n  - name: r\n    match: {}\n    actions:\n"
                     "      - convert: {entities: {acq: '{ImageComments}'}}\n", encoding="utf-8")
    plant.rules = RulesSnapshot(tmp_path / "state", str(rules), None)
    (series_id,) = plant.orthanc.add_folder(_series(corpus, "dcm_qa_xa30", "5_"))
    with pytest.raises(RoutingError) as caught:
        run(handle_convert, plant.claim(series_id))
    assert not caught.value.retryable and "ImageComments" in str(caught.value)


def test_parts_of_an_acquisition_wait_then_convert_once(plant: Plant, run: Run, corpus: Path) -> None:
    parts = sorted((corpus / "dcm_qa_xa30i_bold" / "In").iterdir())
    ids = [series for part in parts for series in plant.orthanc.add_folder(part)]
    plant.orthanc.unstable = {ids[-1]}
    waiting = run(handle_convert, plant.claim(ids[0]))
    assert isinstance(waiting, Deferred) and "waiting for series 7006" in waiting.note
    plant.queue.defer(plant.queue.list(state="running")[0].id, waiting)
    plant.orthanc.unstable = set()
    plant.queue._db.execute("UPDATE jobs SET not_before = 0")
    first = plant.queue.claim(os.getpid())
    assert first is not None and first.waiting_since == waiting.waiting_since  # the wait is remembered
    converted = run(handle_convert, first)
    assert isinstance(converted, Outcome) and converted.state == "done"
    assert isinstance(converted.result, ConvertResult) and converted.result.series.acquisition is not None
    assert sorted(plant.orthanc.downloads) == sorted(ids)  # every part, once
    plant.queue.finish(first.id, converted)
    again = run(handle_convert, plant.claim(ids[3]))
    assert isinstance(again, Outcome) and isinstance(again.result, ConvertResult)
    assert again.result.note is not None and "already converted" in again.result.note
    assert again.outputs == converted.outputs and len(plant.orthanc.downloads) == len(ids)


def test_a_push_to_an_unknown_destination_fails_permanently(plant: Plant, run: Run) -> None:
    push = PushJob(server="nowhere", project="P", subject="", session="", dataset_root=str(plant.root),
                   series_uid="1.2", bids_subject="01", bids_session=None, outputs=())
    with pytest.raises(XnatConfigError) as caught:
        run(handle_push, plant.claim("s", push))
    assert isinstance(caught.value, BidsBridgeError) and not caught.value.retryable


def test_a_dcm2niix_failure_names_orthanc_not_the_scratch_copy_and_stays_retryable(
    plant: Plant, run: Run, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(dicom_dir: Path, *_args: object, **_kwargs: object) -> None:
        raise Dcm2niixError(dicom_dir, 2, f"Error: unable to write {dicom_dir}/out.nii (disk full)")

    monkeypatch.setattr(handlers, "convert_series", failing)
    (series_id,) = plant.orthanc.add_folder(_series(corpus, "dcm_qa_xa30", "5_"))
    with pytest.raises(Dcm2niixError) as raised:
        run(handle_convert, plant.claim(series_id))
    assert raised.value.retryable and "Orthanc series" in str(raised.value)
    assert "/dicom" not in str(raised.value)


def test_a_conversion_lists_its_qc_pictures(plant: Plant, run: Run, corpus: Path) -> None:
    (series_id,) = plant.orthanc.add_folder(_series(corpus, "dcm_qa_xa30", "5_"))
    outcome = run(handle_convert, plant.claim(series_id))
    assert isinstance(outcome, Outcome) and outcome.state == "done"
    result = outcome.result
    assert isinstance(result, ConvertResult)
    stem = "derivatives/bidsbridge-qc/sub-12343hucheng/ses-20220711/anat/sub-12343hucheng_ses-20220711_acq-tfl"
    assert result.qc == (f"{stem}_desc-mosaic_T1w.png", f"{stem}_desc-ortho_T1w.png")
    assert result.qc_problems == ()
    for picture in result.qc:
        assert (plant.root / picture).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    stored = result.to_json()
    assert stored["qc"] == list(result.qc) and stored["dataset_root"] == str(plant.root)
    assert ConvertResult.from_json(stored).qc == result.qc
    assert not any(p.endswith(".png") for p in outcome.outputs)  # the job's files stay the image's


def test_a_qc_failure_is_recorded_and_the_conversion_stands(
    plant: Plant, run: Run, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(handlers, "write_series_qc", broken)
    (series_id,) = plant.orthanc.add_folder(_series(corpus, "dcm_qa_xa30", "5_"))
    outcome = run(handle_convert, plant.claim(series_id))
    assert isinstance(outcome, Outcome) and outcome.state == "done" and outcome.reason is None
    assert isinstance(outcome.result, ConvertResult) and outcome.result.series.state == "converted"
    assert outcome.result.qc == ()
    assert len(outcome.result.qc_problems) == 1 and "matplotlib exploded" in outcome.result.qc_problems[0]
    assert outcome.result.to_json()["qc_problems"] == list(outcome.result.qc_problems)
