"""Who may change state through the REST API (``BidsBridge.Writers``), without Orthanc: the pure
permission check of :mod:`orthanc_plugin.routes`, the caller read from the request's headers
(:func:`orthanc_plugin.plugin.identify_caller`) and the start-up validation of the keys."""

from __future__ import annotations

import base64
import importlib
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.config import ConfigError, parse_config
from orthanc_plugin.jobs import ConvertJob
from orthanc_plugin.routes import UNIDENTIFIED, Caller, Response, Routes, WritePolicy
from orthanc_plugin.sqlite_queue import SqliteJobQueue

ADMIN, VIEWER = Caller("admin", "basic"), Caller("viewer", "basic")
#: A NIfTI-1 header's magic at its place: enough for the upload route to accept the body.
NIFTI = b"\0" * 344 + b"n+1\0" + b"\0" * 4


def _routes(tmp_path: Path, writers: frozenset[str] | None) -> Routes:
    queue = SqliteJobQueue(tmp_path / "state")
    return Routes(queue, tmp_path / "bids", lambda series: series == "s-1", lambda: {"jobs": queue.counts()},
                  uploads_dir=tmp_path / "uploads", rules_status=lambda: {"digest": "sha256:x"},
                  write_policy=WritePolicy(writers))


@pytest.fixture
def routes(tmp_path: Path) -> Routes:
    return _routes(tmp_path, frozenset({"admin"}))


def _finished_job(routes: Routes) -> int:
    job_id = routes.queue.enqueue("s-1", "stable", ConvertJob())
    routes.queue.claim(1)
    routes.queue.fail(job_id, "boom", permanent=True)
    return job_id


def _error(response: Response) -> str:
    answer = json.loads(response.body)
    assert answer["status"] == response.status
    return str(answer["error"])


# Each state-changing route, as a call of the handlers with a caller.
WRITES: dict[str, Callable[[Routes, int, Caller], Response]] = {
    "retry": lambda r, job, caller: r.job("POST", str(job), "retry", caller),
    "convert": lambda r, job, caller: r.series("POST", "s-1", "convert", caller=caller),
    "segmentations": lambda r, job, caller: r.series("POST", "s-1", "segmentations", body=NIFTI, caller=caller),
}


@pytest.mark.parametrize("route", sorted(WRITES))
def test_a_state_changing_route_is_refused_to_a_reader_and_done_for_a_writer(routes: Routes, route: str) -> None:
    job = _finished_job(routes)
    before = routes.queue.counts()
    for caller in (VIEWER, UNIDENTIFIED, Caller("Admin", "basic")):  # user names are case-sensitive
        refused = WRITES[route](routes, job, caller)
        assert refused.status == 403 and refused.content_type == "application/json"
        assert "BidsBridge.Writers" in _error(refused)
    assert "user 'viewer' may not" in _error(WRITES[route](routes, job, VIEWER))
    assert routes.queue.counts() == before  # a refusal changes nothing
    assert WRITES[route](routes, job, ADMIN).status == 202


def test_the_plugins_own_workers_may_write_and_nobody_else_with_an_empty_list(tmp_path: Path) -> None:
    routes = _routes(tmp_path, frozenset())
    job = _finished_job(routes)
    assert routes.job("POST", str(job), "retry", ADMIN).status == 403
    assert routes.job("POST", str(job), "retry", Caller.plugin()).status == 202


def test_without_writers_every_authenticated_caller_may_write(tmp_path: Path) -> None:
    routes = _routes(tmp_path, None)
    job = _finished_job(routes)
    assert routes.job("POST", str(job), "retry", UNIDENTIFIED).status == 202
    assert routes.series("POST", "s-1", "convert", caller=VIEWER).status == 202
    # The default of every handler: no policy given, no caller given = today's behaviour.
    plain = Routes(routes.queue, tmp_path / "bids", lambda series: True, dict)
    assert plain.series("POST", "s-1", "convert").status == 202


def test_the_permission_is_checked_before_the_target_is_looked_up(routes: Routes) -> None:
    # A reader learns nothing about which jobs or series exist.
    assert routes.job("POST", "999", "retry", VIEWER).status == 403
    assert routes.series("POST", "no-such-series", "convert", caller=VIEWER).status == 403
    assert routes.job("POST", "999", "retry", ADMIN).status == 404
    assert routes.series("POST", "no-such-series", "convert", caller=ADMIN).status == 404
    running = routes.queue.enqueue("s-1", "stable", ConvertJob())
    assert routes.job("POST", str(running), "retry", VIEWER).status == 403
    assert routes.job("POST", str(running), "retry", ADMIN).status == 409
    # ... but a wrong method or a malformed id is answered as before, to anyone.
    assert routes.job("GET", "1", "retry", VIEWER).status == 405
    assert routes.series("GET", "s-1", "convert", caller=VIEWER).status == 405
    assert routes.job("POST", "x", "retry", VIEWER).status == 400


def test_reads_stay_open_to_every_authenticated_caller(routes: Routes) -> None:
    job = routes.queue.enqueue("s-1", "stable", ConvertJob())
    for caller in (VIEWER, UNIDENTIFIED):
        assert routes.jobs("GET", {}).status == 200
        assert routes.job("GET", str(job), None, caller).status == 200
        assert routes.series("GET", "s-1", "nifti", caller=caller).status == 404  # not converted, not refused
    assert routes.status_route("GET").status == 200 and routes.rules_route("GET").status == 200


def test_a_refusal_names_the_user_but_never_a_token() -> None:
    policy = WritePolicy(frozenset({"admin"}))
    assert policy.allows(ADMIN) and policy.allows(Caller.plugin()) and not policy.allows(VIEWER)
    token = "opaque-7d1c2f"
    header_caller = Caller(token, "header")
    refused = policy.refusal(header_caller, "retry job 1")
    assert refused is not None and token not in refused.body.decode()
    assert policy.allows(Caller("admin", "header"))  # a user header naming a writer
    unidentified = policy.refusal(UNIDENTIFIED, "retry job 1")
    assert unidentified is not None and "not identified" in _error(unidentified)


# -- the caller, from the headers orthanc-python passes (plugin.py) -----------------------------------


@pytest.fixture(scope="module")
def identify_caller() -> Callable[..., Caller]:
    """:func:`orthanc_plugin.plugin.identify_caller`, imported with a stand-in ``orthanc`` module."""
    with pytest.MonkeyPatch.context() as patch:
        if "orthanc" not in sys.modules:
            patch.setitem(sys.modules, "orthanc", types.ModuleType("orthanc"))
        module = importlib.import_module("orthanc_plugin.plugin")
    function: Callable[..., Caller] = module.identify_caller
    return function


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


TOKEN = "Bearer 5f0c6f7e-0d8e-4b59-9d43-2b7c1d0e9a11"


@pytest.mark.parametrize(
    ("headers", "options", "expected"),
    [
        ({"authorization": _basic("viewer", "pw:with:colons")}, {}, Caller("viewer", "basic")),
        # Orthanc does not check passwords: a Basic user name proves nothing, so it is not read.
        ({"authorization": _basic("admin", "anything")}, {"basic_auth": False}, UNIDENTIFIED),
        ({"authorization": TOKEN}, {}, Caller.plugin()),
        ({"authorization": TOKEN + "0"}, {}, UNIDENTIFIED),
        ({"authorization": "Bearer " + TOKEN.split()[1]}, {"plugin_token": None}, UNIDENTIFIED),
        ({"authorization": "Basic !!not-base64!!"}, {}, UNIDENTIFIED),
        ({"authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, {}, UNIDENTIFIED),
        ({"authorization": "basic " + _basic("admin", "x").split()[1]}, {}, Caller("admin", "basic")),
        ({}, {}, UNIDENTIFIED),
        ({"token": "admin"}, {}, UNIDENTIFIED),  # no UserHeader: the header is not read
        ({"token": "admin"}, {"user_header": "token"}, Caller("admin", "header")),
        ({"token": "  "}, {"user_header": "token"}, UNIDENTIFIED),
        # Orthanc checked the Basic user: it wins over the authorization plugin's header.
        ({"authorization": _basic("viewer", "x"), "token": "admin"}, {"user_header": "token"},
         Caller("viewer", "basic")),
    ],
)
def test_the_caller_is_read_from_the_request_headers(
    identify_caller: Callable[..., Caller], headers: dict[str, str], options: dict[str, Any], expected: Caller
) -> None:
    settings: dict[str, Any] = {"plugin_token": TOKEN, "basic_auth": True, "user_header": None}
    settings.update(options)
    caller = identify_caller(headers, **settings)
    assert caller == expected
    assert "pw" not in repr(caller) and "5f0c6f7e" not in repr(caller)


# -- start-up validation (config.py) --------------------------------------------------------------------


def _config(tmp_path: Path, section: dict[str, Any], **orthanc: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"BidsRoot": str(tmp_path / "bids"), "StateDirectory": str(tmp_path / "state"),
                            "Python": sys.executable}
    base.update(section)
    return {"HttpPort": 8123, "BidsBridge": base, **orthanc}


USERS = {"AuthenticationEnabled": True, "RegisteredUsers": {"admin": "a", "viewer": "v"}}
AUTHORIZATION_PLUGIN = {"Authorization": {"WebService": "http://127.0.0.1:8000/", "TokenHttpHeaders": ["Token"]}}


def test_writers_and_the_user_header_are_read(tmp_path: Path) -> None:
    default = parse_config(_config(tmp_path, {}))
    assert (default.writers, default.user_header, default.basic_auth) == (None, None, False)
    config = parse_config(_config(tmp_path, {"Writers": ["admin", "admin"]}, **USERS))
    assert (config.writers, config.basic_auth) == (("admin",), True)
    assert parse_config(_config(tmp_path, {"Writers": []})).writers == ()  # read-only: needs no login
    # Orthanc >= 1.5.8: remote access turns authentication on unless AuthenticationEnabled says otherwise.
    remote = {"RemoteAccessAllowed": True, "RegisteredUsers": {"admin": "a"}}
    assert parse_config(_config(tmp_path, {"Writers": ["admin"]}, **remote)).basic_auth
    header = parse_config(_config(tmp_path, {"Writers": ["alice"], "UserHeader": "TOKEN"}, **AUTHORIZATION_PLUGIN))
    assert (header.writers, header.user_header, header.basic_auth) == (("alice",), "token", False)


@pytest.mark.parametrize(
    ("section", "orthanc", "message"),
    [
        ({"Writers": "admin"}, USERS, r"BidsBridge\.Writers must be a list of Orthanc user names"),
        ({"Writers": ["admin", ""]}, USERS, r"BidsBridge\.Writers must be a list"),
        ({"Writers": [1]}, USERS, r"BidsBridge\.Writers must be a list"),
        ({"Writers": ["admin", "root"]}, USERS, r"BidsBridge\.Writers: 'root' is not one of RegisteredUsers \(admin, "
                                                r"viewer\)"),
        ({"Writers": ["admin"]}, {}, r"BidsBridge\.Writers names users, but Orthanc authenticates nobody"),
        ({"Writers": ["admin"]}, {**USERS, "AuthenticationEnabled": False}, r"authenticates nobody"),
        ({"Writers": ["admin"]}, {"AuthenticationEnabled": True}, r"authenticates nobody"),  # no users at all
        ({"UserHeader": "x-remote-user"}, {}, r"BidsBridge\.UserHeader: 'x-remote-user' must be the token header "
                                              r"of Orthanc's authorization plugin"),
        ({"UserHeader": "token"}, {"Authorization": {"TokenHttpHeaders": ["token", "auth"]}},
         r"BidsBridge\.UserHeader: 'token' must be the authorization plugin's only token"),
        ({"UserHeader": "token"}, {"Authorization": {"TokenHttpHeaders": ["token"], "TokenGetArguments": ["t"]}},
         r"only token"),
        ({"UserHeader": "Authorization"}, USERS, r"BidsBridge\.UserHeader: Authorization is Orthanc's own"),
        ({"UserHeader": "bad header"}, USERS, r"BidsBridge\.UserHeader must be an HTTP header name"),
        ({"UserHeader": 3}, USERS, r"BidsBridge\.UserHeader must be a non-empty string"),
    ],
)
def test_bad_access_settings_stop_start_up_naming_the_key(
    tmp_path: Path, section: dict[str, Any], orthanc: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_config(tmp_path, section, **orthanc))
