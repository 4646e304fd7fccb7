"""Helpers shared by the converter tests (fixtures live in ``conftest.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters import SeriesResult


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
