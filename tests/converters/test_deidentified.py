"""De-identified exports: a small XA30 session rewritten by this module into studies whose
identifiers are missing or placeholders, converted with convert_tree.

The session (real Enhanced MR files of ``dcm_qa_xa30``): series 5 (T1w, one file), 7 (BOLD, its
first three volumes), 8 and 9 (GRE field map magnitudes and phase difference) and 10 (DWI, the
b=0 volume and three diffusion directions). Each variant is a study of its own: every
StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID is replaced by a fresh one, everywhere it
occurs in the file (references too) and in the file meta.

Expectations follow the fallback order documented in :mod:`converters.labels`: a usable
PatientID, else ``pn`` + a keyed hash of a usable PatientName, else ``st`` + a keyed hash of the
StudyInstanceUID; the key is the configured pseudonym key, else the dataset's own secret.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from converters import Labels, SeriesResult, convert_tree
from converters.bids.manifests import BOOKKEEPING_DIR, SECRET_NAME
from tests.converters.helpers import series_dir
from tests.validator import validate

#: Series number -> how many of its files (sorted by name) make the variant; None: all.
SERIES: Mapping[int, int | None] = {5: None, 7: 3, 8: None, 9: None, 10: 4}
#: The datatype folder each series lands in (the same with or without names).
DATATYPES: Mapping[int, str] = {5: "anat", 7: "func", 8: "fmap", 9: "fmap", 10: "dwi"}
#: The original PatientID ``12343@hucheng`` and PatientName ``XAtest_sub-July11``, and the forms
#: sanitizing would give them (compared in lower case).
IDENTIFYING = ("12343@hucheng", "12343hucheng", "hucheng", "xatest", "july11")
PSEUDONYM_KEY = b"site-secret-for-the-deidentified-tests"
HASHED = {"pn": re.compile(r"pn[0-9a-f]{12}"), "st": re.compile(r"st[0-9a-f]{12}")}

Change = Callable[[Dataset], None]


def _no_patient_id(ds: Dataset) -> None:
    ds.PatientID = ""


def _stars(ds: Dataset) -> None:
    ds.PatientID = "***"
    ds.PatientName = "***"


def _zeros_no_date_no_names(ds: Dataset) -> None:
    ds.PatientID = "0000"
    for keyword in ("StudyDate", "SeriesDescription", "ProtocolName", "StudyDescription"):
        if keyword in ds:
            delattr(ds, keyword)


def _patient_id_deleted(ds: Dataset) -> None:
    del ds.PatientID
    ds.PatientName = "-"


#: Variant -> how its headers are changed. "e" is "a" again, converted with a pseudonym key.
CHANGES: Mapping[str, Change] = {
    "a": _no_patient_id,
    "b": _stars,
    "c": _zeros_no_date_no_names,
    "d": _patient_id_deleted,
    "e": _no_patient_id,
}


@dataclass(frozen=True)
class Variant:
    """One rewritten study: its folder (``<number>/`` per series) and its new UIDs."""

    folder: Path
    study_uid: str
    #: Series number -> the new SeriesInstanceUID.
    series_uids: Mapping[int, str]

    def number_of(self, result: SeriesResult) -> int | None:
        return next((number for number, uid in self.series_uids.items() if uid == result.series_uid), None)


def _source_files(xa30: Path) -> dict[int, list[Path]]:
    picked: dict[int, list[Path]] = {}
    for number, count in SERIES.items():
        files = sorted(series_dir(xa30, number).iterdir())
        picked[number] = files[:count] if count is not None else files
    return picked


def make_variant(sources: Mapping[int, list[Path]], folder: Path, change: Change) -> Variant:
    """Copy ``sources`` into ``folder`` with fresh Study/Series/SOP Instance UIDs (one new study
    for all), every reference to them updated, and ``change`` applied to each header."""
    keywords = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    fresh: dict[str, str] = {}
    for files in sources.values():
        for path in files:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(keywords))
            for keyword in keywords:
                fresh.setdefault(str(header[keyword].value), generate_uid())

    def renumber(_ds: Dataset, element: DataElement) -> None:
        if element.VR == "UI" and isinstance(element.value, str) and element.value in fresh:
            element.value = fresh[element.value]

    series_uids: dict[int, str] = {}
    study_uids: set[str] = set()
    for number, files in sources.items():
        target = folder / str(number)
        target.mkdir(parents=True)
        for path in files:
            ds = pydicom.dcmread(path)
            ds.walk(renumber)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            change(ds)
            ds.save_as(target / path.name, enforce_file_format=True)
            series_uids[number] = str(ds.SeriesInstanceUID)
            study_uids.add(str(ds.StudyInstanceUID))
    (study_uid,) = study_uids
    return Variant(folder, study_uid, series_uids)


@dataclass(frozen=True)
class Study:
    """Variants a-d converted together into one dataset."""

    root: Path
    variants: Mapping[str, Variant]
    results: list[SeriesResult]

    def of(self, name: str) -> dict[int, SeriesResult]:
        """Series number -> result, for the series of variant ``name``."""
        variant = self.variants[name]
        found: dict[int, SeriesResult] = {}
        for result in self.results:
            number = variant.number_of(result)
            if number is not None:
                found[number] = result
        return found


@pytest.fixture(scope="module")
def variants(xa30: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Variant]:
    base = tmp_path_factory.mktemp("deidentified")
    sources = _source_files(xa30)
    # a-d under one folder (converted together); e apart (converted with a pseudonym key).
    return {
        name: make_variant(sources, base / ("together" if name != "e" else "apart") / name, change)
        for name, change in CHANGES.items()
    }


@pytest.fixture(scope="module")
def study(variants: dict[str, Variant], tmp_path_factory: pytest.TempPathFactory) -> Study:
    root = tmp_path_factory.mktemp("deidentified-bids") / "bids"
    together = {name: variant for name, variant in variants.items() if name != "e"}
    (folder,) = {variant.folder.parent for variant in together.values()}
    return Study(root, together, convert_tree(folder, root))


def test_each_variant_is_a_study_of_its_own_with_fresh_uids(variants: dict[str, Variant], xa30: Path) -> None:
    original = pydicom.dcmread(next(series_dir(xa30, 9).iterdir()), stop_before_pixels=True)
    assert len({v.study_uid for v in variants.values()}) == len(variants)
    assert original.StudyInstanceUID not in {v.study_uid for v in variants.values()}
    all_series = [uid for v in variants.values() for uid in v.series_uids.values()]
    assert len(set(all_series)) == len(all_series) == len(variants) * len(SERIES)
    for variant in variants.values():
        for number in SERIES:
            for path in sorted((variant.folder / str(number)).iterdir()):
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                assert ds.StudyInstanceUID == variant.study_uid
                assert ds.SeriesInstanceUID == variant.series_uids[number]
                assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    changed = pydicom.dcmread(next((variants["d"].folder / "9").iterdir()), stop_before_pixels=True)
    assert "PatientID" not in changed and str(changed.PatientName) == "-"
    nameless = pydicom.dcmread(next((variants["c"].folder / "7").iterdir()), stop_before_pixels=True)
    assert not {"StudyDate", "SeriesDescription", "ProtocolName", "StudyDescription"} & set(nameless.dir())


def test_every_series_of_every_variant_is_converted(study: Study) -> None:
    assert all(result.series_uid for result in study.results), "stray files reported"
    assert len(study.results) == len(study.variants) * len(SERIES)
    for name in study.variants:
        results = study.of(name)
        assert sorted(results) == sorted(SERIES), name
        for number, result in results.items():
            assert result.state == "converted", (name, result)
            assert result.reason is None and result.reason_code is None
            assert result.outputs and all(f"/{DATATYPES[number]}/" in path for path in result.outputs), result
            assert all((study.root / path).is_file() for path in result.outputs)


#: Variant -> (label kind, what its notes must say), from the documented order.
FALLBACKS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    # PatientID empty, PatientName usable: 3.
    "a": ("pn", ("PatientID is empty", "keyed hash of the PatientName")),
    # PatientID and PatientName "***" (nothing left after sanitizing): 4.
    "b": ("st", ("PatientID is a placeholder ('***')", "no usable PatientName", "keyed hash of the StudyInstanceUID")),
    # PatientID "0000" is a placeholder, but the PatientName is kept and usable: 3, not 4.
    "c": ("pn", ("PatientID is a placeholder ('0000')", "keyed hash of the PatientName")),
    # No PatientID attribute at all, PatientName "-": 4.
    "d": ("st", ("PatientID", "no usable PatientName", "keyed hash of the StudyInstanceUID")),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_subject_labels_follow_the_documented_fallback_order(study: Study, name: str) -> None:
    kind, said = FALLBACKS[name]
    results = study.of(name)
    (label,) = {result.subject for result in results.values()}  # one subject for the whole study
    assert label is not None and HASHED[kind].fullmatch(label), label
    for result in results.values():
        assert all(f"sub-{label}/" in path for path in result.outputs), result.outputs
        fallback = [note for note in result.notes if "subject labelled by" in note]
        assert len(fallback) == 1, result.notes
        for words in said:
            assert words in fallback[0], fallback[0]


def test_hashed_labels_are_one_per_patient_name_and_one_per_study(study: Study) -> None:
    labels = {name: {r.subject for r in study.of(name).values()}.pop() for name in study.variants}
    # a and c share the PatientName (and the dataset's key): one patient, two sessions.
    assert labels["a"] == labels["c"]
    # b and d have no usable name: each study is a subject of its own.
    assert labels["b"] != labels["d"]
    assert len({labels["a"], labels["b"], labels["d"]}) == 3
    participants = (study.root / "participants.tsv").read_text().splitlines()[1:]
    assert sorted(line.split("\t")[0] for line in participants) == sorted(f"sub-{labels[n]}" for n in "abd")


def _published_bytes(path: Path) -> bytes:
    """What a published file says in text: its bytes, or a NIfTI's header and extensions."""
    if not path.name.endswith(".nii.gz"):
        return path.read_bytes()
    with gzip.open(path, "rb") as handle:
        header = handle.read(348)
        (vox_offset,) = struct.unpack("<f", header[108:112])
        return header + handle.read(max(int(vox_offset) - 348, 0))


def _published(root: Path) -> list[Path]:
    """The dataset's files outside the bookkeeping folder."""
    return [
        path for path in sorted(root.rglob("*"))
        if path.is_file() and BOOKKEEPING_DIR not in path.relative_to(root).parts
    ]  # fmt: skip


def _leaks(root: Path, results: list[SeriesResult]) -> list[tuple[str, str]]:
    """(identifying text, where) for every original PatientName/PatientID text found in a path,
    a published file or the report of the conversion."""
    found: list[tuple[str, str]] = []
    for path in _published(root):
        where = str(path.relative_to(root))
        content = _published_bytes(path).lower()
        found.extend((text, where) for text in IDENTIFYING if text in where.lower() or text.encode() in content)
    for result in results:  # the notes say why a fallback was used, never the value
        report = json.dumps(result.to_dict()).lower()
        found.extend((text, f"report of {result.series_uid}") for text in IDENTIFYING if text in report)
    return found


def test_no_patient_name_or_id_in_any_path_or_published_file(study: Study) -> None:
    published = _published(study.root)
    assert len([p for p in published if p.name.endswith(".nii.gz")]) == len(study.variants) * 6
    assert any(p.name == "participants.tsv" for p in published)
    assert _leaks(study.root, study.results) == []


def test_the_dataset_is_bids_valid(study: Study) -> None:
    assert validate(study.root) == []


def test_a_study_without_date_gets_a_session_label_and_a_note(study: Study) -> None:
    dateless = study.of("c")
    (session,) = {result.session for result in dateless.values()}
    assert session is not None and re.fullmatch(r"uid[0-9a-f]+", session), session
    for result in dateless.values():
        assert all(f"/ses-{session}/" in path for path in result.outputs), result.outputs
        assert [note for note in result.notes if "no usable StudyDate" in note and session in note], result.notes
    for name in ("a", "b", "d"):
        for result in study.of(name).values():
            assert result.session == "20220711", result
            assert not [note for note in result.notes if "StudyDate" in note], result.notes


def test_a_nameless_bold_run_lands_in_func_with_a_task_label(study: Study) -> None:
    bold = study.of("c")[7]
    (nifti,) = [path for path in bold.outputs if path.endswith(".nii.gz")]
    found = re.fullmatch(r"sub-\w+/ses-\w+/func/sub-\w+_ses-\w+_task-([A-Za-z0-9]+)_bold\.nii\.gz", nifti)
    assert found is not None, nifti
    sidecar = json.loads((study.root / nifti.replace(".nii.gz", ".json")).read_text())
    assert sidecar["TaskName"] == found.group(1)
    assert [note for note in bold.notes if "task label" in note], bold.notes
    # With its name, the same run keeps the task its ReproIn name gives.
    named = study.of("a")[7]
    assert [path for path in named.outputs if path.endswith("_task-fa_run-1_bold.nii.gz")], named.outputs


def _subjects(results: list[SeriesResult]) -> set[str | None]:
    return {result.subject for result in results}


def test_a_pseudonym_key_keys_the_fallback_label(variants: dict[str, Variant], study: Study, tmp_path: Path) -> None:
    labels = Labels(pseudonym_key=PSEUDONYM_KEY)
    keyed = convert_tree(variants["e"].folder, tmp_path / "one", labels=labels)
    assert len(keyed) == len(SERIES) and all(result.state == "converted" for result in keyed), keyed
    (label,) = _subjects(keyed)
    assert label is not None and HASHED["pn"].fullmatch(label), label
    assert all("keyed hash of the PatientName" in " ".join(result.notes) for result in keyed)
    assert _leaks(tmp_path / "one", keyed) == []
    # The same name hashed with the dataset's secret (variant a) gives another label.
    assert label != study.of("a")[5].subject
    # Keyed by the configured key, not by the dataset: another dataset, the same label ...
    again = convert_tree(variants["e"].folder / "9", tmp_path / "two", labels=labels)
    assert _subjects(again) == {label}
    # ... and another key, another label.
    other = convert_tree(
        variants["e"].folder / "9", tmp_path / "three", labels=Labels(pseudonym_key=b"another-site-secret-key!")
    )
    (other_label,) = _subjects(other)
    assert other_label != label and other_label is not None and HASHED["pn"].fullmatch(other_label)


def test_hashed_labels_are_stable_in_a_dataset_and_differ_across_datasets(
    variants: dict[str, Variant], tmp_path: Path
) -> None:
    def labels_of(root: Path) -> dict[str, set[str | None]]:
        return {name: _subjects(convert_tree(variants[name].folder, root)) for name in ("a", "b")}

    first_root, second_root = tmp_path / "first", tmp_path / "second"
    first = labels_of(first_root)
    secret = (first_root / BOOKKEEPING_DIR / SECRET_NAME).read_bytes()
    assert all(len(labels) == 1 for labels in first.values()), first
    assert labels_of(first_root) == first  # converted again: the same labels
    assert (first_root / BOOKKEEPING_DIR / SECRET_NAME).read_bytes() == secret
    second = labels_of(second_root)  # a fresh dataset has its own secret
    assert (second_root / BOOKKEEPING_DIR / SECRET_NAME).read_bytes() != secret
    for name, kind in (("a", "pn"), ("b", "st")):
        (label,), (other,) = first[name], second[name]
        assert label is not None and other is not None
        assert HASHED[kind].fullmatch(label) and HASHED[kind].fullmatch(other), (label, other)
        assert other != label, name
