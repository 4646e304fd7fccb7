"""Fixtures of the converter tests: the XA30 suite of the corpus and one shared conversion of it.

The ``corpus`` fixture (``<repo>/../shared/corpus``) comes from ``tests/conftest.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from converters import SeriesResult, convert_tree


@dataclass(frozen=True)
class Converted:
    root: Path
    results: list[SeriesResult]

    def by_number(self, number: int) -> SeriesResult:
        (found,) = [r for r in self.results if r.series_number == number]
        return found


@pytest.fixture(scope="session")
def xa30(corpus: Path) -> Path:
    """The XA30 suite folder (``In/`` and ``expected/``)."""
    return corpus / "dcm_qa_xa30"


def series_dir(xa30: Path, number: int) -> Path:
    """``In/<number>_*`` of the XA30 suite."""
    (found,) = (xa30 / "In").glob(f"{number}_*")
    return found


@pytest.fixture(scope="session")
def xa30_dataset(xa30: Path, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The whole XA30 session converted once with :func:`convert_tree` (read-only for tests)."""
    root = tmp_path_factory.mktemp("xa30") / "bids"
    return Converted(root, convert_tree(xa30 / "In", root))
