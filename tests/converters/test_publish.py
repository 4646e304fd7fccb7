"""Publishing into a dataset that already holds things: re-conversion, name clashes, sessions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from converters import DatasetError, Labels, Override, convert_series, series_outputs
from converters.bids.manifests import BOOKKEEPING_DIR, STALE_STAGING_SECONDS, manifest_path
from converters.bids.naming import STUDY_INDEX
from converters.bids.publish import _rename_all
from tests.converters.helpers import Converted, series_dir
from tests.validator import validate

SUB = "sub-12343hucheng"
SES = "ses-20220711"
ANAT = f"{SUB}/{SES}/anat"
SCANS = f"{SUB}/{SES}/{SUB}_{SES}_scans.tsv"


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every published file (bookkeeping excluded) -> (inode, mtime_ns)."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and BOOKKEEPING_DIR not in p.relative_to(root).parts
    }


def _scans(root: Path) -> list[str]:
    return [line.split("\t")[0] for line in (root / SCANS).read_text().splitlines()[1:]]


def test_reconverting_a_series_replaces_only_its_files(xa30: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    t1 = convert_series(series_dir(xa30, 5), root)
    norm = convert_series(series_dir(xa30, 6), root)
    assert t1.state == norm.state == "converted"
    plain = f"{ANAT}/{SUB}_{SES}_acq-tfl_T1w"
    rec_norm = f"{ANAT}/{SUB}_{SES}_acq-tfl_rec-norm_T1w"
    assert t1.outputs == (f"{plain}.json", f"{plain}.nii.gz")
    assert norm.outputs == (f"{rec_norm}.json", f"{rec_norm}.nii.gz")
    before = _files(root)
    norm_files = {k: v for k, v in before.items() if k.startswith(rec_norm)}
    nifti_bytes = (root / f"{plain}.nii.gz").read_bytes()

    # Same series again: same names (it does not clash with itself), same bytes, nothing added.
    again = convert_series(series_dir(xa30, 5), root)
    assert again.outputs == t1.outputs
    after = _files(root)
    assert sorted(after) == sorted(before)
    assert (root / f"{plain}.nii.gz").read_bytes() == nifti_bytes
    assert {k: after[k] for k in norm_files} == norm_files  # the other series was not touched
    assert _scans(root) == sorted(
        [f"anat/{SUB}_{SES}_acq-tfl_T1w.nii.gz", f"anat/{SUB}_{SES}_acq-tfl_rec-norm_T1w.nii.gz"]
    )

    # Re-converted under another name: the old files go, the manifest follows.
    renamed = convert_series(
        series_dir(xa30, 5), root, overrides=[Override(series_uid=t1.series_uid, entities={"acq": "mprage"})]
    )
    mprage = f"{ANAT}/{SUB}_{SES}_acq-mprage_T1w"
    assert renamed.outputs == (f"{mprage}.json", f"{mprage}.nii.gz")
    assert not (root / f"{plain}.nii.gz").exists() and not (root / f"{plain}.json").exists()
    assert series_outputs(root, t1.series_uid) == list(renamed.outputs)
    assert {k: v for k, v in _files(root).items() if k.startswith(rec_norm)} == norm_files
    assert _scans(root) == [f"anat/{SUB}_{SES}_acq-mprage_T1w.nii.gz", f"anat/{SUB}_{SES}_acq-tfl_rec-norm_T1w.nii.gz"]

    # Re-converted as skipped: everything it owned is removed, with its manifest.
    skipped = convert_series(
        series_dir(xa30, 5), root, overrides=[Override(series_uid=t1.series_uid, skip="operator: motion")]
    )
    assert skipped.state == "skipped" and skipped.reason == "operator: motion" and skipped.outputs == ()
    assert series_outputs(root, t1.series_uid) == []
    assert not manifest_path(root, t1.series_uid).exists()
    assert sorted(p for p in _files(root) if p.startswith(ANAT)) == sorted(norm.outputs)
    assert _scans(root) == [f"anat/{SUB}_{SES}_acq-tfl_rec-norm_T1w.nii.gz"]
    assert validate(root) == []


def test_true_repeats_are_numbered_in_acquisition_order_and_foreign_files_kept(xa30: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    # Force series 6 onto series 5's name, converting 6 first: both become true repeats, numbered
    # in acquisition order (same time, so by series number: 5 is run-1), whatever the arrival.
    clash = Override(description="anat-T1w_acq-tfl", entities={"rec": None})
    norm = convert_series(series_dir(xa30, 6), root, overrides=[clash])
    plain = f"{ANAT}/{SUB}_{SES}_acq-tfl_T1w"
    assert norm.outputs == (f"{plain}.json", f"{plain}.nii.gz")
    t1 = convert_series(series_dir(xa30, 5), root)
    run1, run2 = (f"{ANAT}/{SUB}_{SES}_acq-tfl_run-{n}_T1w" for n in (1, 2))
    assert t1.outputs == (f"{run1}.json", f"{run1}.nii.gz")
    assert series_outputs(root, norm.series_uid) == [f"{run2}.json", f"{run2}.nii.gz"]
    assert not (root / f"{plain}.nii.gz").exists()
    assert _scans(root) == [f"anat/{SUB}_{SES}_acq-tfl_run-1_T1w.nii.gz", f"anat/{SUB}_{SES}_acq-tfl_run-2_T1w.nii.gz"]
    # Re-converting either keeps the names (stable, no run-3).
    assert convert_series(series_dir(xa30, 5), root).outputs == t1.outputs
    assert convert_series(series_dir(xa30, 6), root, overrides=[clash]).outputs == (f"{run2}.json", f"{run2}.nii.gz")
    # The repeat gone (series 6 skipped), series 5 is alone again and loses its run.
    convert_series(series_dir(xa30, 6), root, overrides=[Override(description="anat-T1w_acq-tfl", skip="bad")])
    assert series_outputs(root, t1.series_uid) == [f"{plain}.json", f"{plain}.nii.gz"]
    # A file nobody owns (put there by hand) is not overwritten.
    (root / f"{ANAT}/{SUB}_{SES}_acq-tfl_rec-norm_T1w.json").write_text("{}\n")
    third = convert_series(series_dir(xa30, 6), root)
    assert third.outputs[0].endswith("_acq-tfl_rec-norm_run-2_T1w.json")
    assert (root / f"{ANAT}/{SUB}_{SES}_acq-tfl_rec-norm_T1w.json").read_text() == "{}\n"


def _copy_as_new_study(source: Path, folder: Path, study_time: str) -> Path:
    """A copy of a one-file series that claims to be another study (new UIDs) on the same date."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["bidsbridge test study", study_time])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["bidsbridge test series", study_time])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["bidsbridge test instance", study_time])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyTime = study_time
    folder.mkdir(parents=True)
    ds.save_as(folder / "copy.dcm")
    return folder


def test_second_study_on_the_same_date_gets_its_own_session(xa30: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    (original_file,) = series_dir(xa30, 5).iterdir()
    later = _copy_as_new_study(original_file, tmp_path / "later", "153000")
    first = convert_series(series_dir(xa30, 5), root)
    second = convert_series(later, root)
    assert (first.session, second.session) == ("20220711", "20220711T153000")
    assert second.outputs[1] == (f"{SUB}/ses-20220711T153000/anat/{SUB}_ses-20220711T153000_acq-tfl_T1w.nii.gz")
    # Each study keeps its label when converted again, whatever the order.
    assert convert_series(later, root).session == "20220711T153000"
    assert convert_series(series_dir(xa30, 5), root).session == "20220711"
    assert (root / f"{SUB}/ses-20220711T153000/{SUB}_ses-20220711T153000_scans.tsv").is_file()
    assert validate(root) == []


def test_same_day_sessions_do_not_depend_on_arrival_order(xa30: Path, tmp_path: Path) -> None:
    (original_file,) = series_dir(xa30, 5).iterdir()
    earlier = _copy_as_new_study(original_file, tmp_path / "earlier", "080000")
    later = _copy_as_new_study(original_file, tmp_path / "later", "153000")
    trees = {}
    for order in ([earlier, series_dir(xa30, 5), later], [later, series_dir(xa30, 5), earlier]):
        root = tmp_path / f"bids{len(trees)}"
        results = {folder: convert_series(folder, root) for folder in order}
        # The earliest study of the day keeps the plain date, whatever arrived first.
        assert series_outputs(root, results[earlier].series_uid)[1] == (
            f"{SUB}/ses-20220711/anat/{SUB}_ses-20220711_acq-tfl_T1w.nii.gz"
        )
        for folder, clock in ((series_dir(xa30, 5), "120427"), (later, "153000")):
            session = f"ses-20220711T{clock}"
            assert series_outputs(root, results[folder].series_uid)[1] == (
                f"{SUB}/{session}/anat/{SUB}_{session}_acq-tfl_T1w.nii.gz"
            )
        assert validate(root) == []
        empty = [d for d in root.rglob("*") if d.is_dir() and not any(d.iterdir()) and BOOKKEEPING_DIR not in d.parts]
        assert empty == []
        trees[len(trees)] = {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and BOOKKEEPING_DIR not in p.relative_to(root).parts
        }
    assert trees[0] == trees[1]


def test_explicit_labels_and_user_columns(xa30: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    result = convert_series(series_dir(xa30, 5), root, subject="Pilot 01", session="pre-op")
    assert (result.subject, result.session) == ("Pilot01", "preop")
    assert result.outputs[1] == "sub-Pilot01/ses-preop/anat/sub-Pilot01_ses-preop_acq-tfl_T1w.nii.gz"
    # Age and sex come from the headers; a column the user added survives later publishing.
    assert (root / "participants.tsv").read_text() == "participant_id\tage\tsex\nsub-Pilot01\t31\tM\n"
    (root / "participants.tsv").write_text("participant_id\tage\tsex\thand\nsub-Pilot01\t31\tM\tleft\n")
    convert_series(series_dir(xa30, 6), root, subject="Pilot 01", session="pre-op")
    convert_series(series_dir(xa30, 6), root, subject="Pilot02", session="pre-op")
    assert (root / "participants.tsv").read_text() == (
        "participant_id\tage\tsex\thand\nsub-Pilot01\t31\tM\tleft\nsub-Pilot02\t31\tM\tn/a\n"
    )
    described = json.loads((root / "participants.json").read_text())
    assert described["age"]["Units"] == "year" and "M" in described["sex"]["Levels"]
    # A given label without letters or digits is not a label: the series still lands, under the
    # PatientID, and the result says why.
    fallback = convert_series(series_dir(xa30, 5), root, subject="@@")
    assert fallback.subject == "12343hucheng" and "given subject label" in fallback.notes[0]


def test_no_staging_leftovers(xa30: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    convert_series(series_dir(xa30, 99), root)  # skipped, before dcm2niix
    convert_series(series_dir(xa30, 28), root)  # skipped, after dcm2niix
    assert os.listdir(root / BOOKKEEPING_DIR / "tmp") == []
    manifests = root / BOOKKEEPING_DIR / "series"
    assert not manifests.exists() or list(manifests.iterdir()) == []
    assert sorted(p.name for p in root.iterdir() if p.name != BOOKKEEPING_DIR) == [
        "CHANGES",
        "README.md",
        "dataset_description.json",
    ]


def test_file_names_and_layout_do_not_change_the_output(xa30: Path, xa30_dataset: Converted, tmp_path: Path) -> None:
    """The plugin downloads instances under its own names: the published bytes must not care."""
    folder = tmp_path / "download"
    sources = sorted(series_dir(xa30, 7).iterdir())
    for index, source in enumerate(reversed(sources)):
        target = folder / f"part{index % 3}" / f"{source.stem[-12:]}-{index:03d}"  # other names, nested
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    root = tmp_path / "bids"
    result = convert_series(folder, root)
    assert result == xa30_dataset.by_number(7)
    for path in result.outputs:
        ours, theirs = (root / path).read_bytes(), (xa30_dataset.root / path).read_bytes()
        if path.endswith(".json"):  # the full session links the run to its field map
            ours, theirs = json.loads(ours), json.loads(theirs)
            assert theirs.pop("B0FieldSource")
        assert ours == theirs, path


def test_a_crashed_conversion_staging_folder_is_swept(xa30: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    stale = root / BOOKKEEPING_DIR / "tmp" / "0123abcd"
    (stale / "dicom").mkdir(parents=True)
    (stale / "dicom" / "000000.dcm").write_bytes(b"x")
    fresh = root / BOOKKEEPING_DIR / "tmp" / "4567ef01"
    fresh.mkdir()
    old = time.time() - STALE_STAGING_SECONDS - 60
    os.utime(stale, (old, old))
    convert_series(series_dir(xa30, 99), root)
    assert not stale.exists()
    assert fresh.is_dir()  # another process may still be using it


def test_renames_never_overwrite_and_break_cycles(tmp_path: Path) -> None:
    for name, text in (("a", "A"), ("b", "B"), ("c", "C")):
        (tmp_path / name).write_text(text)
    # a and c swap names (a cycle: one goes through a holding folder); b moves into a new folder.
    _rename_all(tmp_path, [("a", "c"), ("b", "x/d"), ("c", "a")])
    assert {p.name: p.read_text() for p in tmp_path.rglob("*") if p.is_file()} == {"c": "A", "d": "B", "a": "C"}
    (tmp_path / "e").write_text("E")
    with pytest.raises(DatasetError, match="no series owns"):
        _rename_all(tmp_path, [("e", "a")])
    assert (tmp_path / "a").read_text() == "C" and (tmp_path / "e").read_text() == "E"


def test_a_study_with_nothing_placed_takes_no_session_label(xa30: Path, tmp_path: Path) -> None:
    report = sorted(series_dir(xa30, 99).iterdir())[0]
    early_report = _copy_as_new_study(report, tmp_path / "report", "080000")
    for order in ([early_report, series_dir(xa30, 5)], [series_dir(xa30, 5), early_report]):
        root = tmp_path / f"bids{order[0].name}"
        results = [convert_series(folder, root) for folder in order]
        t1 = next(r for r in results if r.state == "converted")
        # The report's study is earlier that day but has no files: the T1w keeps the plain date.
        assert series_outputs(root, t1.series_uid)[1].startswith(f"{SUB}/ses-20220711/anat/")


def test_study_index_sessions_carry_no_date_and_follow_study_order(xa30: Path, tmp_path: Path) -> None:
    (original_file,) = series_dir(xa30, 5).iterdir()
    earlier = _copy_as_new_study(original_file, tmp_path / "earlier", "080000")
    labels = Labels(session=STUDY_INDEX, pseudonym_key=b"0123456789abcdef0123")
    root = tmp_path / "bids"
    later = convert_series(series_dir(xa30, 5), root, labels=labels)
    assert later.session == "1"
    first = convert_series(earlier, root, labels=labels)  # an earlier study arrives: it becomes 1
    assert first.session == "1"
    assert series_outputs(root, later.series_uid)[1].split("/")[1] == "ses-2"
    assert validate(root) == []
    for path in root.rglob("*"):
        assert "20220711" not in path.name
