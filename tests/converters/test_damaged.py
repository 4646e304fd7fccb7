"""Damaged input: truncated DICOM, garbage and stray files. The series concerned fails and says
which file is at fault; every other series still converts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from converters import DicomInputError, convert_series, convert_tree, series_outputs
from tests.converters.helpers import series_dir


def _link_series(source: Path, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    links = []
    for file in sorted(source.iterdir()):
        (folder / file.name).symlink_to(file)
        links.append(folder / file.name)
    return links


def _truncate_copy(link: Path, fraction: float) -> Path:
    """Replace a symlink by a truncated copy of its target."""
    data = link.resolve().read_bytes()
    link.unlink()
    link.write_bytes(data[: int(len(data) * fraction)])
    return link


@pytest.fixture
def damaged_tree(xa30: Path, tmp_path: Path) -> Path:
    tree = tmp_path / "in"
    bold = _link_series(series_dir(xa30, 7), tree / "bold")
    _truncate_copy(bold[3], 0.6)  # header intact, pixel data cut short
    _link_series(series_dir(xa30, 8), tree / "fmap")
    (tree / "fmap" / "IM_9999").write_bytes(random.Random(7).randbytes(4096))  # garbage, DICOM-like name
    (phase,) = series_dir(xa30, 9).iterdir()
    (tree / "fmap" / "IM_9998").write_bytes(phase.read_bytes()[:1000])  # cut inside a header element
    _link_series(series_dir(xa30, 5), tree / "t1")
    (tree / "t1" / "notes.txt").write_text("scanned twice, second one is better\n")
    (t1,) = series_dir(xa30, 5).iterdir()
    (tree / "stub.dcm").write_bytes(t1.read_bytes()[:300])  # cut between header elements
    return tree


def test_damaged_series_fail_and_name_the_file(damaged_tree: Path, xa30: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    # A good earlier conversion of the BOLD series must survive a failed re-conversion.
    earlier = convert_series(series_dir(xa30, 7), root)
    assert earlier.state == "converted"

    results = convert_tree(damaged_tree, root)
    by_description = {r.series_description: r for r in results}
    assert len(results) == 5, results

    bold = by_description["func-bold_task-fa_run-1"]
    assert bold.state == "failed" and bold.outputs == ()
    assert bold.reason is not None
    assert "0004_" in bold.reason and "truncated" in bold.reason and str(damaged_tree / "bold") in bold.reason

    fmap = by_description["gre_field_mapping"]
    assert fmap.state == "failed"
    assert fmap.reason is not None
    assert str(damaged_tree / "fmap" / "IM_9999") in fmap.reason and "not a DICOM file" in fmap.reason
    assert str(damaged_tree / "fmap" / "IM_9998") in fmap.reason and "unreadable DICOM header" in fmap.reason

    t1 = by_description["anat-T1w_acq-tfl"]
    assert t1.state == "converted" and len(t1.outputs) == 2
    assert all((root / path).is_file() for path in t1.outputs)

    notes = by_description["t1/notes.txt"]
    assert (notes.series_uid, notes.state) == ("", "skipped")
    assert notes.reason is not None and "not a DICOM file" in notes.reason
    stub = by_description["stub.dcm"]
    assert (stub.series_uid, stub.state) == ("", "failed")
    assert stub.reason is not None and "stub.dcm" in stub.reason and "incomplete DICOM header" in stub.reason

    assert series_outputs(root, bold.series_uid) == list(earlier.outputs)
    assert all((root / path).is_file() for path in earlier.outputs)


def test_convert_series_refuses_damaged_input(damaged_tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    with pytest.raises(DicomInputError, match=r"0004_.*truncated") as caught:
        convert_series(damaged_tree / "bold", root)
    assert caught.value.path is not None and caught.value.path.name.startswith("0004_")
    with pytest.raises(DicomInputError, match="IM_9999"):
        convert_series(damaged_tree / "fmap", root)
    with pytest.raises(DicomInputError, match="expected one series, found 3"):
        convert_series(_only_good(damaged_tree), root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DicomInputError, match="no DICOM instances"):
        convert_series(empty, root)
    # A stray text file next to the instances is reported but does not fail the series.
    assert convert_series(damaged_tree / "t1", root).state == "converted"


def _only_good(tree: Path) -> Path:
    """The tree without its damaged files: several good series in one folder."""
    for path in (tree / "bold").iterdir():
        if not path.is_symlink():
            path.unlink()
    (tree / "fmap" / "IM_9999").unlink()
    (tree / "fmap" / "IM_9998").unlink()
    (tree / "stub.dcm").unlink()
    return tree
