"""Fixtures: a fresh emulator per test, a requests session on it, and xnat-py connections that close cleanly."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
import xnat
from xnat.session import BaseXNATSession

from tests.xnat_emulator import XnatEmulator

USERS = {"admin": "admin-pw", "alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
PROJECT = "P1"

Connect = Callable[..., BaseXNATSession]


@pytest.fixture
def emulator() -> Iterator[XnatEmulator]:
    """admin is site admin; alice is a member of P1, carol a collaborator, bob has no role."""
    with XnatEmulator(users=USERS, admins={"admin"}, seed=1234) as server:
        server.add_project(PROJECT, members=["alice"], collaborators=["carol"])
        yield server


@pytest.fixture
def http(emulator: XnatEmulator) -> Iterator[requests.Session]:
    """A plain REST client authenticated as the site admin."""
    with requests.Session() as session:
        session.auth = ("admin", USERS["admin"])
        yield session


@pytest.fixture
def connect(emulator: XnatEmulator) -> Iterator[Connect]:
    """``connect(user="alice")`` opens an xnat-py session; all are disconnected while the server still runs."""
    opened: list[BaseXNATSession] = []

    def _connect(user: str = "admin", password: str | None = None, **kwargs: object) -> BaseXNATSession:
        session = xnat.connect(emulator.url, user=user, password=password or USERS[user], loglevel="ERROR", **kwargs)
        opened.append(session)
        return session

    yield _connect
    emulator.clear_faults()
    emulator.make_reachable()
    for session in opened:
        session.disconnect()
