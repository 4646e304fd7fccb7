"""The worker stages on their own, over the fake Orthanc: routing (facts, decision, forwards),
acquisitions exported as several series, derivations stored back into Orthanc."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_plugin.acquisition_stage import find_acquisition, hints_from_tags
from orthanc_plugin.derive_stage import derive
from orthanc_plugin.jobs import ForwardRecord
from orthanc_plugin.routing_stage import ForwardError, RulesSnapshot, decide, fetch_series_info, forward
from tests.plugin.fake_orthanc import FakeOrthanc


def _folder(corpus: Path, suite: str, prefix: str) -> Path:
    (found,) = (corpus / suite / "In").glob(f"{prefix}*")
    return found


def test_series_facts_and_the_default_decision(corpus: Path, tmp_path: Path) -> None:
    orthanc = FakeOrthanc(calling_aet="PRISMA")
    (t1,) = orthanc.add_folder(_folder(corpus, "dcm_qa_xa30", "5_"))
    (report,) = orthanc.add_folder(_folder(corpus, "dcm_qa_xa30", "99_"))
    info = fetch_series_info(orthanc, t1, tmp_path / "first")
    assert info.instance_count == 1 and info.study_id == orthanc.study_of[t1]
    assert list(info.downloaded) == [orthanc.series[t1][0]] and info.downloaded[orthanc.series[t1][0]].is_file()
    assert info.facts.source.calling_aet == "PRISMA" and info.facts.attributes["Modality"] == "MR"
    rules = RulesSnapshot(tmp_path, None, None)
    assert decide(rules, info).outcome == "convert"
    assert decide(rules, fetch_series_info(orthanc, report, tmp_path / "first")).outcome == "skip"


def test_forwards_run_as_orthanc_jobs_and_a_failed_one_is_retryable(corpus: Path) -> None:
    orthanc = FakeOrthanc()
    (t1,) = orthanc.add_folder(_folder(corpus, "dcm_qa_xa30", "5_"))
    assert forward(orthanc, t1, "peer", "archive") == ForwardRecord("peer", "archive", "job-1", "Success")
    assert orthanc.forwards == [("/peers/archive/store", {"Resources": [t1], "Asynchronous": True})]
    orthanc.job_state = "Failure"
    with pytest.raises(ForwardError) as caught:
        forward(orthanc, t1, "modality", "pacs")
    assert caught.value.retryable and "peer unreachable" in str(caught.value)


def test_the_parts_of_an_acquisition_are_found_with_their_stability(corpus: Path, tmp_path: Path) -> None:
    orthanc = FakeOrthanc()
    ids = [s for part in sorted((corpus / "dcm_qa_xa30i_bold" / "In").iterdir()) for s in orthanc.add_folder(part)]
    (other,) = orthanc.add_folder(_folder(corpus, "dcm_qa_xa30", "5_"))
    orthanc.unstable = {ids[2]}
    info = fetch_series_info(orthanc, ids[0], tmp_path)
    found = find_acquisition(orthanc, ids[0], info.tags, info.study_id, tmp_path)
    assert found is not None and [m.series_number for m in found.members] == list(range(7001, 7007))
    assert [m.orthanc_id for m in found.unstable] == [ids[2]]
    assert found.uid.startswith("2.25.") and "6 series" in found.describe()
    # Another series (a whole enhanced acquisition) is no part of any.
    t1 = fetch_series_info(orthanc, other, tmp_path)
    assert find_acquisition(orthanc, other, t1.tags, t1.study_id, tmp_path) is None
    hints = hints_from_tags(info.tags)
    assert "MFSPLIT" in hints.image_type and any("121326" in codes for _uid, codes in hints.related)


def test_the_adc_derivation_stores_its_objects_and_files_the_maps(corpus: Path, tmp_path: Path) -> None:
    from converters import convert_series  # noqa: PLC0415 - the dataset the derivation files into

    folder = _folder(corpus, "dcm_qa_xa30", "10_")
    root = tmp_path / "bids"
    series = convert_series(folder, root)
    orthanc = FakeOrthanc()
    made = derive("adc", folder, root, series.series_uid, orthanc)
    assert len(made.orthanc_instances) == len(orthanc.stored) == 3  # Parametric Map, SEG, SR
    assert any(path.endswith("_ADC.nii.gz") for path in made.outputs)
    assert all((root / "derivatives" / "bidsbridge" / path).is_file() or (root / path).is_file()
               for path in made.outputs)
