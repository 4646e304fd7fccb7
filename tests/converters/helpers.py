"""Helpers shared by the converter tests (fixtures live in ``conftest.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters import SeriesResult
from converters.records import DicomSeries


@dataclass(frozen=True)
class Converted:
    """A dataset converted by a test fixture and the results that produced it."""

    root: Path
    results: list[SeriesResult]

    def by_number(self, number: int) -> SeriesResult:
        (found,) = [r for r in self.results if r.series_number == number]
        return found


def series_dir(xa30: Path, number: int) -> Path:
    """``In/<number>_*`` of the XA30 suite."""
    (found,) = (xa30 / "In").glob(f"{number}_*")
    return found


def series_tree(xa30: Path, folder: Path, numbers: list[int]) -> Path:
    """A folder ``folder/in`` of links to the files of some XA30 series (``In/<number>_*``)."""
    tree = folder / "in"
    for number in numbers:
        source = series_dir(xa30, number)
        (tree / source.name).mkdir(parents=True)
        for file in source.iterdir():
            (tree / source.name / file.name).symlink_to(file)
    return tree


def make_series(**changes: object) -> DicomSeries:
    """A synthetic MR series record for classifier tests; ``changes`` replace its header facts."""
    fields: dict[str, object] = {
        "series_uid": "1.2.3", "study_uid": "1.2", "patient_id": "P", "series_number": 3,
        "series_description": "", "protocol_name": "", "modality": "MR",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4", "study_date": "20240102", "study_time": "101010",
        "acquisition_time": "", "image_type": ("ORIGINAL", "PRIMARY", "M"), "has_pixels": True,
        "files": (Path("x.dcm"),),
    }  # fmt: skip
    fields.update(changes)
    return DicomSeries(**fields)  # type: ignore[arg-type]
