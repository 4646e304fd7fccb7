"""Fault injection: each fault really happens, is deterministic for a seed, and never half-writes."""

from __future__ import annotations

import time

import pytest
import requests
from xnat.exceptions import XNATResponseError, XNATUploadError

from tests.xnat_emulator import FaultKind, FaultPlan, XnatEmulator

from .conftest import USERS, Connect

SESSION = "/data/projects/P1/subjects/sub-01/experiments/ses-01"
RESOURCE = f"{SESSION}/resources/BIDS"


@pytest.fixture
def session_url(emulator: XnatEmulator, http: requests.Session) -> str:
    """An MR session in P1 to write into; returns its URL."""
    http.put(f"{emulator.url}/data/projects/P1/subjects/sub-01").raise_for_status()
    http.put(f"{emulator.url}{SESSION}", params={"xsiType": "xnat:mrSessionData"}).raise_for_status()
    return f"{emulator.url}{SESSION}"


def _statuses(url: str, count: int) -> list[int]:
    with requests.Session() as client:
        client.auth = ("admin", USERS["admin"])
        return [client.get(url, params={"format": "json"}).status_code for _ in range(count)]


def test_error_rate_fails_that_fraction_of_requests_deterministically() -> None:
    plan = FaultPlan(error_rate=0.3, path_pattern=r"^/data/projects$")
    runs = []
    for _ in range(2):
        with XnatEmulator(users=USERS, faults=plan, seed=7) as server:
            statuses = _statuses(f"{server.url}/data/projects", 300)
            assert server.count_requests("GET", "^/data/projects$", status=(500, 502, 503)) == sum(
                s >= 500 for s in statuses
            )
            runs.append(statuses)

    first, second = runs
    failures = [s for s in first if s != 200]
    assert 0.24 <= len(failures) / len(first) <= 0.36
    assert set(failures) == {500, 502, 503}
    assert first == second

    with XnatEmulator(users=USERS, faults=plan, seed=8) as other_seed:
        assert _statuses(f"{other_seed.url}/data/projects", 300) != first


def test_injected_errors_before_processing_write_nothing(emulator: XnatEmulator, http: requests.Session) -> None:
    emulator.set_faults(error_rate=0.5, methods=frozenset({"PUT"}))
    answers = {
        label: http.put(f"{emulator.url}/data/projects/P1/subjects/{label}").status_code
        for label in (f"sub-{n:02d}" for n in range(40))
    }

    created = {label for label, status in answers.items() if status == 201}
    assert set(answers.values()) <= {201, 500, 502, 503}
    assert 8 <= len(created) <= 32
    assert {s.label for s in emulator.inventory().subjects} == created


def test_timeout_holds_the_answer_past_the_client_timeout(emulator: XnatEmulator, http: requests.Session) -> None:
    emulator.set_faults(timeout_rate=1.0, timeout_seconds=3.0, path_pattern="/subjects/")
    with pytest.raises(requests.ReadTimeout):  # the client gave up; the emulator held the answer
        http.put(f"{emulator.url}/data/projects/P1/subjects/sub-01", timeout=0.3)
    assert emulator.count_requests(answered=False, fault=FaultKind.TIMEOUT) == 1
    assert emulator.inventory().subjects == ()

    emulator.clear_faults()
    assert http.put(f"{emulator.url}/data/projects/P1/subjects/sub-01", timeout=5).status_code == 201


def test_dropped_connection_and_forced_401(emulator: XnatEmulator, http: requests.Session) -> None:
    emulator.set_faults(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        http.get(f"{emulator.url}/data/projects")
    assert emulator.count_requests(answered=False, fault=FaultKind.DROP) == 1

    emulator.faults = FaultPlan(unauthorized_rate=1.0)
    assert http.get(f"{emulator.url}/data/projects").status_code == 401
    emulator.clear_faults()
    assert http.get(f"{emulator.url}/data/projects").status_code == 200


def test_forced_401_reaches_xnat_py(emulator: XnatEmulator, connect: Connect) -> None:
    session = connect("alice")
    emulator.set_faults(unauthorized_rate=1.0, path_pattern=r"^/data/projects")
    with pytest.raises(XNATResponseError) as refused:
        session.get("/data/projects")
    assert refused.value.status_code == 401


def test_slow_responses(emulator: XnatEmulator, http: requests.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    real_wait = emulator._wait
    monkeypatch.setattr(emulator, "_wait", lambda seconds: (waits.append(seconds), real_wait(seconds))[1])
    emulator.set_faults(delay_seconds=0.25)
    assert http.get(f"{emulator.url}/data/projects").status_code == 200
    assert 0.25 in waits  # the answer was held back by the slow-server delay


@pytest.mark.parametrize(
    ("kind", "raised"),
    [
        (FaultKind.DROP_AFTER_WRITE, requests.ConnectionError),
        (FaultKind.TIMEOUT_AFTER_WRITE, requests.ReadTimeout),
        (FaultKind.ERROR_AFTER_WRITE, None),
    ],
)
def test_fail_after_write_commits_the_write(
    emulator: XnatEmulator,
    http: requests.Session,
    session_url: str,
    kind: FaultKind,
    raised: type[Exception] | None,
) -> None:
    emulator.set_faults(fail_after_write_rate=1.0, fail_after_write_as=kind, timeout_seconds=3.0)
    url = f"{emulator.url}{RESOURCE}/files/dataset_description.json"
    if raised is None:
        assert http.put(url, data=b"{}", timeout=0.5).status_code >= 500
    else:
        with pytest.raises(raised):
            http.put(url, data=b"{}", timeout=0.5)
    assert [f.path for f in emulator.inventory().files] == ["dataset_description.json"]

    assert http.get(url, timeout=2).content == b"{}"  # reads are not "writes": they are not failed
    emulator.clear_faults()
    assert http.put(url, data=b"{}").json() == {"duplicates": ["dataset_description.json"]}


def test_queued_faults_hit_the_next_requests_in_order(emulator: XnatEmulator, http: requests.Session) -> None:
    emulator.queue_faults(FaultKind.ERROR, "drop")
    assert http.get(f"{emulator.url}/data/projects").status_code in (500, 502, 503)
    with pytest.raises(requests.ConnectionError):
        http.get(f"{emulator.url}/data/projects")
    assert http.get(f"{emulator.url}/data/projects").status_code == 200


def test_xnat_py_upload_fails_then_retries_through_queued_errors(
    emulator: XnatEmulator, connect: Connect, session_url: str
) -> None:
    session = connect("alice")
    resource = session.create_object(SESSION).create_resource("BIDS")
    emulator.set_faults(error_rate=1.0, path_pattern="/files/")
    with pytest.raises(XNATUploadError):
        resource.upload_data(b"payload", "a.txt", verbose=False)
    assert emulator.inventory().files == ()

    emulator.clear_faults()
    emulator.queue_faults(FaultKind.ERROR)
    resource.upload_data(b"payload", "a.txt", retries=2, verbose=False)
    assert [f.path for f in emulator.inventory().files] == ["a.txt"]


def test_unreachable_refuses_then_recovers_on_the_same_port(emulator: XnatEmulator, http: requests.Session) -> None:
    url, port = emulator.url, emulator.port
    assert http.get(f"{url}/data/projects").status_code == 200  # leaves a keep-alive connection open

    emulator.make_unreachable()
    assert not emulator.reachable
    with pytest.raises(requests.ConnectionError):  # refused at once, not a timeout (ReadTimeout)
        http.get(f"{url}/data/projects", timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/data/projects", timeout=5)

    emulator.make_reachable()
    assert (emulator.url, emulator.port) == (url, port)
    assert http.get(f"{url}/data/projects").status_code == 200


def test_unreachable_stretch_ends_by_itself_and_xnat_py_session_survives(
    emulator: XnatEmulator, connect: Connect
) -> None:
    session = connect("alice")
    emulator.make_unreachable(seconds=0.5)
    with pytest.raises(requests.ConnectionError):
        session.get("/data/projects")

    deadline = time.monotonic() + 5
    while not emulator.reachable and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emulator.reachable
    assert session.get("/data/auth").text == "User 'alice' is logged in"


@pytest.mark.parametrize(
    "changes",
    [
        {"error_rate": 0.6, "drop_rate": 0.6},
        {"timeout_rate": -0.1},
        {"error_statuses": (404,)},
        {"fail_after_write_as": FaultKind.DROP},
    ],
)
def test_invalid_fault_plans_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**changes)  # type: ignore[arg-type]
