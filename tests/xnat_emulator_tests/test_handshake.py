"""xnat.connect() against the emulator: login, version, object model, sessions, tokens, 401s."""

from __future__ import annotations

import pytest
import requests
import xnat
from xnat.exceptions import XNATLoginFailedError, XNATResponseError

from tests.xnat_emulator import XnatEmulator

from .conftest import USERS, Connect


def test_connect_builds_the_object_model_from_the_served_schema(emulator: XnatEmulator, connect: Connect) -> None:
    session = connect("alice")

    assert session.logged_in_user == "alice"
    assert session.xnat_version.startswith("1.8.")
    assert session.classes.MrSessionData.__xsi_type__ == "xnat:mrSessionData"
    assert session.classes.SegScanData.__xsi_type__ == "xnat:segScanData"
    assert list(session.projects.keys()) == ["P1"]
    handshake = [(r.method, r.path) for r in emulator.requests]
    for step in [
        ("PUT", "/data/services/auth"),
        ("GET", "/data/auth"),
        ("GET", "/xapi/siteConfig/buildInfo"),
        ("GET", "/xapi/schemas/xnat"),
        ("GET", "/xapi/schemas/xdat"),
        ("GET", "/data/search/elements"),
    ]:
        assert step in handshake


def test_bad_password_makes_xnat_py_raise(emulator: XnatEmulator) -> None:
    with pytest.raises(XNATLoginFailedError):
        xnat.connect(emulator.url, user="alice", password="wrong", loglevel="ERROR")
    assert emulator.count_requests("PUT", "^/data/services/auth$", 401) == 1


def test_bad_basic_credentials_and_anonymous_requests_get_401(emulator: XnatEmulator) -> None:
    with requests.Session() as client:
        assert client.get(f"{emulator.url}/data/projects", auth=("alice", "nope")).status_code == 401
        assert client.get(f"{emulator.url}/data/projects").status_code == 401
        good = client.get(f"{emulator.url}/data/projects", auth=("alice", USERS["alice"]))
    assert good.status_code == 200


def test_basic_auth_hands_out_a_jsession_that_disconnect_closes(emulator: XnatEmulator) -> None:
    with requests.Session() as client:
        first = client.get(f"{emulator.url}/data/JSESSION", auth=("alice", USERS["alice"]))
        session_id = first.text
        assert first.cookies.get("JSESSIONID") == session_id

        cookie_only = requests.get(f"{emulator.url}/data/auth", cookies={"JSESSIONID": session_id})
        assert cookie_only.status_code == 200
        assert cookie_only.text == "User 'alice' is logged in"

        assert client.delete(f"{emulator.url}/data/JSESSION").status_code == 200
        after_logout = requests.get(f"{emulator.url}/data/auth", cookies={"JSESSIONID": session_id})
    assert after_logout.status_code == 401


def test_expired_sessions_answer_401_to_xnat_py(emulator: XnatEmulator, connect: Connect) -> None:
    session = connect("alice")
    assert session.get("/data/auth").status_code == 200

    assert emulator.expire_sessions() >= 1
    with pytest.raises(XNATResponseError) as refused:
        session.get("/data/auth")
    assert refused.value.status_code == 401


def test_alias_token_logs_in_with_xnat_py_and_basic_auth(emulator: XnatEmulator, connect: Connect) -> None:
    token = connect("alice").services.issue_token()
    assert token.alias != "alice"
    assert len(token.secret) > 20

    via_token = xnat.connect(emulator.url, user=token.alias, password=token.secret, loglevel="ERROR")
    try:
        assert via_token.logged_in_user == "alice"
        assert list(via_token.projects.keys()) == ["P1"]
    finally:
        via_token.disconnect()

    basic = requests.get(f"{emulator.url}/data/auth", auth=(token.alias, token.secret))
    assert basic.text == "User 'alice' is logged in"
    assert requests.get(f"{emulator.url}/data/auth", auth=(token.alias, "not-the-secret")).status_code == 401


def test_invalidated_token_no_longer_logs_in(emulator: XnatEmulator) -> None:
    issued = requests.get(f"{emulator.url}/data/services/tokens/issue", auth=("bob", USERS["bob"])).json()
    credentials = (issued["alias"], issued["secret"])
    assert requests.get(f"{emulator.url}/data/auth", auth=credentials).status_code == 200

    validate = requests.get(
        f"{emulator.url}/data/services/tokens/validate/{issued['alias']}/{issued['secret']}",
        auth=("bob", USERS["bob"]),
    )
    assert validate.json() == {"valid": "bob"}
    invalidate = requests.get(
        f"{emulator.url}/data/services/tokens/invalidate/{issued['alias']}/{issued['secret']}",
        auth=("bob", USERS["bob"]),
    )
    assert invalidate.status_code == 200
    assert requests.get(f"{emulator.url}/data/auth", auth=credentials).status_code == 401
