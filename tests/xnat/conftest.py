"""Fixtures: the XA30 session converted once, a fresh XNAT emulator per test, destinations on it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from converters import convert_tree
from tests.xnat_emulator import XnatEmulator
from xnat_container.destinations import Destination, Secret

PROJECT = "BIDSBRIDGE_P1"
#: Distinctive secrets, so a grep of logs and records for them cannot match by accident.
PASSWORDS = {
    "admin": "adm1n-Pw-4b9e21",
    "uploader": "upl0ader-Pw-77c3d0",
    "reader": "rEader-Pw-19ab55",
    "outsider": "0utsider-Pw-e5d6f7",
}


@pytest.fixture(scope="session")
def xa30_bids(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("xa30") / "bids"  # read-only for the tests: they copy it to change it
    results = convert_tree(corpus / "dcm_qa_xa30" / "In", root)
    assert sum(r.state == "converted" for r in results) >= 5
    return root


@pytest.fixture
def emulator() -> Iterator[XnatEmulator]:
    """uploader is a member of the project, reader a collaborator, outsider has no role."""
    with XnatEmulator(users=PASSWORDS, admins={"admin"}, seed=20261125) as server:
        server.add_project(PROJECT, members=["uploader"], collaborators=["reader"])
        yield server


def make_destination(url: str, user: str = "uploader", password: str | None = None, **options: object) -> Destination:
    settings: dict[str, object] = {
        "retries": 6,
        "backoff_seconds": 0.02,
        "max_backoff_seconds": 0.3,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
    }
    settings.update(options)
    return Destination(
        alias="test",
        url=url,
        username=user,
        password=Secret(PASSWORDS[user] if password is None else password),
        **settings,  # type: ignore[arg-type]
    )


@pytest.fixture
def destination(emulator: XnatEmulator) -> Destination:
    return make_destination(emulator.url)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()
