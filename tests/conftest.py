"""Shared fixtures: the real-data corpus beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (CORPUS / "dcm_qa_xa30" / "In").is_dir():
        pytest.fail(f"the test corpus is missing: expected {CORPUS} (shared/ beside the repository)")
    return CORPUS
