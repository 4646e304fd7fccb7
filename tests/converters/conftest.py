"""Fixtures of the converter tests: the XA30 suite of the corpus and one shared conversion of it.

The ``corpus`` fixture (``<repo>/../shared/corpus``) comes from ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from converters import convert_tree
from tests.converters.helpers import Converted


@pytest.fixture(scope="session")
def xa30(corpus: Path) -> Path:
    """The XA30 suite folder (``In/`` and ``expected/``)."""
    return corpus / "dcm_qa_xa30"


@pytest.fixture(scope="session")
def xa30_dataset(xa30: Path, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The whole XA30 session converted once with :func:`convert_tree` (read-only for tests)."""
    root = tmp_path_factory.mktemp("xa30") / "bids"
    return Converted(root, convert_tree(xa30 / "In", root))
