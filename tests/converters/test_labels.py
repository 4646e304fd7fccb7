"""Labels from DICOM are reduced to BIDS alphanumerics before they touch a path."""

from __future__ import annotations

import pytest

from converters import LabelError, sanitize_label
from converters.bids.naming import entity_value, relative_path
from converters.records import BidsTarget


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
