"""The retrying client: backoff with jitter, which statuses are retried, alias tokens."""

from __future__ import annotations

import random

import pytest

from tests.xnat.conftest import PROJECT, make_destination
from tests.xnat_emulator import FaultKind, XnatEmulator
from xnat_container import XnatAuthError, XnatRequestError, XnatUnavailable
from xnat_container.client import XnatClient

PROJECT_PATH = f"/data/projects/{PROJECT}"


def test_backoff_grows_exponentially_with_jitter_and_a_cap(emulator: XnatEmulator):
    destination = make_destination(emulator.url, retries=6, backoff_seconds=0.1, max_backoff_seconds=0.8)
    client = XnatClient(destination, rng=random.Random(7))
    for attempt, ceiling in enumerate((0.1, 0.2, 0.4, 0.8, 0.8, 0.8), 1):
        delays = [client._backoff(attempt) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not fixed


def test_transient_failures_are_retried_then_succeed(emulator: XnatEmulator):
    slept: list[float] = []
    with XnatClient(make_destination(emulator.url, retries=4), sleep=slept.append) as client:
        emulator.clear_request_log()
        emulator.queue_faults(FaultKind.ERROR, FaultKind.DROP, FaultKind.ERROR)
        answer = client.request("GET", PROJECT_PATH, query={"format": "json"}, what="read the project")
        assert answer.status_code == 200
        assert len(slept) == client.retries_done == 3
        assert emulator.count_requests("GET", PROJECT_PATH) == 4


def test_giving_up_after_the_configured_retries(emulator: XnatEmulator):
    slept: list[float] = []
    with XnatClient(make_destination(emulator.url, retries=2), sleep=slept.append) as client:
        emulator.clear_request_log()
        emulator.set_faults(error_rate=1.0, error_statuses=(503,), path_pattern="/projects/")
        with pytest.raises(XnatUnavailable, match=r"after 3 attempt\(s\) \(HTTP 503\)"):
            client.request("GET", PROJECT_PATH, what="read the project")
        assert emulator.count_requests("GET", PROJECT_PATH) == 3 and len(slept) == 2
        emulator.clear_faults()


@pytest.mark.parametrize(
    ("user", "path", "error", "status"),
    [
        ("uploader", "/data/projects/NOPE", XnatRequestError, 404),
        ("outsider", PROJECT_PATH, XnatAuthError, 403),
    ],
)
def test_client_errors_are_not_retried(emulator: XnatEmulator, user, path, error, status):
    slept: list[float] = []
    with XnatClient(make_destination(emulator.url, user=user), sleep=slept.append) as client:
        emulator.clear_request_log()
        with pytest.raises(error) as caught:
            client.request("GET", path, what="read the project")
        assert caught.value.status == status and not caught.value.retryable
        assert slept == [] and emulator.count_requests("GET", path) == 1


def test_a_lost_session_gets_one_fresh_try(emulator: XnatEmulator):
    with XnatClient(make_destination(emulator.url)) as client:
        emulator.queue_faults(FaultKind.UNAUTHORIZED)
        assert client.request("GET", PROJECT_PATH, what="read the project").status_code == 200
        emulator.queue_faults(FaultKind.UNAUTHORIZED, FaultKind.UNAUTHORIZED)
        with pytest.raises(XnatAuthError, match="401"):
            client.request("GET", PROJECT_PATH, what="read the project")


def test_alias_token_is_issued_used_and_invalidated(emulator: XnatEmulator, monkeypatch):
    issued = []
    issue = emulator.accounts.issue_token
    monkeypatch.setattr(emulator.accounts, "issue_token", lambda user: issued.append(issue(user)) or issued[-1])
    client = XnatClient(make_destination(emulator.url, use_alias_token=True))
    with client:
        (token,) = issued
        assert client._http is not None and client._http.auth == (token.alias, token.secret)
        assert client.request("GET", PROJECT_PATH, what="read the project").status_code == 200
        assert emulator.accounts.token(token.alias, token.secret) is not None
    assert emulator.accounts.token(token.alias, token.secret) is None
