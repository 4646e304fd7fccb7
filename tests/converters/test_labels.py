"""Labels from DICOM are reduced to BIDS alphanumerics before they touch a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from converters import LabelError, Labels, convert_series, sanitize_label
from converters.bids.dataset import participant_facts
from converters.bids.manifests import BOOKKEEPING_DIR
from converters.bids.naming import entity_value, relative_path
from converters.labels import read_subject_map
from converters.records import BidsTarget, DicomSeries
from tests.converters.helpers import series_dir


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("12343@hucheng", "12343hucheng"),
        ("Müller-2", "Muller2"),
        ("  sub 01_a.b/../c ", "sub01abc"),
        ("José\tGarcía", "JoseGarcia"),
        ("ﬁrst", "first"),  # compatibility ligature decomposes
        ("20220711", "20220711"),
    ],
)
def test_sanitize_keeps_ascii_letters_and_digits(text: str, label: str) -> None:
    assert sanitize_label(text) == label


@pytest.mark.parametrize("text", ["", "   ", "-_-", "../", "日本語"])
def test_sanitize_refuses_what_leaves_nothing(text: str) -> None:
    with pytest.raises(LabelError, match="cannot be a BIDS label"):
        sanitize_label(text)


def test_label_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        sanitize_label("@@")


def test_entity_values() -> None:
    assert entity_value("acq", "t1-mprage") == "t1mprage"
    assert entity_value("run", "01") == "01"
    with pytest.raises(LabelError, match="non-negative integer"):
        entity_value("run", "1a")
    with pytest.raises(LabelError, match="non-negative integer"):
        entity_value("echo", "-1")
    with pytest.raises(LabelError, match="unknown"):
        entity_value("colour", "red")
    with pytest.raises(LabelError, match="misplaced"):
        entity_value("sub", "01")


def test_relative_path_puts_entities_in_bids_order() -> None:
    target = BidsTarget("func", "bold", {"run": "2", "echo": "1", "task": "rest", "acq": "mb", "dir": "AP"})
    assert relative_path("01", "20220711", target, ".nii.gz") == (
        "sub-01/ses-20220711/func/sub-01_ses-20220711_task-rest_acq-mb_dir-AP_run-2_echo-1_bold.nii.gz"
    )
    assert relative_path("01", None, BidsTarget("anat", "T1w"), ".json") == "sub-01/anat/sub-01_T1w.json"


def _series(**changes: object) -> DicomSeries:
    fields: dict[str, object] = {
        "series_uid": "1.2.3", "study_uid": "1.2", "patient_id": "12343@hucheng", "series_number": 3,
        "series_description": "", "protocol_name": "", "modality": "MR",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4", "study_date": "20220711", "study_time": "120427.5",
        "acquisition_time": "", "image_type": (), "has_pixels": True, "files": (),
    }  # fmt: skip
    fields.update(changes)
    return DicomSeries(**fields)  # type: ignore[arg-type]


def test_label_templates() -> None:
    labels = Labels(subject="site1-{PatientID}", session="{StudyDate}{StudyTime}")
    assert labels.subject_label(_series()) == "site112343hucheng"
    assert labels.session_label(_series()) == "202207111204275"
    assert Labels().session_label(_series(study_date="")) is None  # the publisher derives one
    with pytest.raises(LabelError, match="unknown placeholder"):
        Labels(subject="{PatientName}")


def test_keyed_hash_pseudonyms_are_stable_per_key() -> None:
    key = b"0123456789abcdef-site-secret"
    first = Labels(pseudonym_key=key).subject_label(_series())
    assert first == Labels(pseudonym_key=key).subject_label(_series(study_uid="9.9"))
    assert len(first) == 12 and first.isalnum() and "hucheng" not in first
    assert Labels(pseudonym_key=b"another-site-secret-key").subject_label(_series()) != first
    with pytest.raises(LabelError, match="16 bytes"):
        Labels(pseudonym_key=b"short")


def test_mapping_table(tmp_path: Path) -> None:
    table = tmp_path / "map.tsv"
    table.write_text("source\tlabel\n12343@hucheng\tsub-001\nother\t002\n")
    labels = Labels(subject_map=read_subject_map(table))
    assert labels.subject_label(_series()) == "001"
    with pytest.raises(LabelError, match="not in the subject mapping table"):
        labels.subject_label(_series(patient_id="unknown"))
    table.write_text("a\t1\na\t2\n")
    with pytest.raises(LabelError, match="mapped twice"):
        read_subject_map(table)


def test_pseudonymised_conversion_leaks_no_patient_id(xa30: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    result = convert_series(series_dir(xa30, 7), root, labels=Labels(pseudonym_key=b"0123456789abcdef0123"))
    assert result.subject is not None and "hucheng" not in result.subject
    for path in root.rglob("*"):
        if path.is_file() and BOOKKEEPING_DIR not in path.parts:
            assert "hucheng" not in str(path.relative_to(root))
            assert b"hucheng" not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("sex", "age", "facts"),
    [
        ("M", "031Y", {"sex": "M", "age": "31"}),
        ("O", "006M", {"sex": "O", "age": "0.50"}),
        ("", "000Y", {}),  # what anonymisers leave behind
        ("X", "095Y", {"age": "89"}),  # capped for privacy
        ("F", "", {"sex": "F"}),
    ],
)
def test_participant_facts(sex: str, age: str, facts: dict[str, str]) -> None:
    assert participant_facts(sex, age) == facts


def _resolve(labels: Labels, given: str | None = None, **changes: object) -> tuple[str, str, str | None]:
    found = labels.resolve_subject(_series(**changes), given=given, secret=lambda: b"dataset-secret-0123456789abcdef")
    return found.label, found.source, found.note


def test_a_template_never_merges_anonymised_patients_into_its_fixed_text() -> None:
    # "site1-{PatientID}" with no PatientID would give "site1" for everyone: the fallback is used.
    label, source, note = _resolve(Labels(subject="site1-{PatientID}"), patient_id="***", patient_name="Doe^Jane")
    assert label.startswith("pn") and source == "PatientName hash"
    assert note is not None and "PatientID is a placeholder ('***')" in note
    other, _, _ = _resolve(Labels(subject="site1-{PatientID}"), patient_id="", patient_name="Roe^Richard")
    assert other != label and other.startswith("pn")
    kept, source, note = _resolve(Labels(subject="site1-{PatientID}"), patient_id="0042")
    assert (kept, source, note) == ("site10042", "template", None)


def test_one_person_name_gives_one_label_whatever_its_padding() -> None:
    labels = Labels()
    padded, _, _ = _resolve(labels, patient_id="", patient_name="Doe^John^^^")
    plain, _, _ = _resolve(labels, patient_id="", patient_name="DOE^JOHN")
    assert padded == plain
    assert _resolve(labels, patient_id="", patient_name="Doe^Johnny")[0] != plain


@pytest.mark.parametrize("placeholder", ["", "***", "-", "0000", "XXXXXX", "ANONYMOUS", "Removed"])
def test_placeholders_are_not_labels(placeholder: str) -> None:
    label, source, note = _resolve(Labels(), patient_id=placeholder, patient_name="")
    assert label.startswith("st") and len(label) == 14 and source == "StudyInstanceUID hash"
    assert note is not None and "no usable PatientName" in note
    # A rule's label that renders a placeholder is not used either.
    given, _, given_note = _resolve(Labels(), patient_id="P01", given=placeholder)
    assert given == "P01" and given_note is not None and "given subject label" in given_note
