"""Diagnose a destination in one line: reachable? TLS? credentials? project access?

:func:`check_destination` never raises for a server-side problem; it returns a
:class:`CheckResult` whose ``message`` says what is wrong and what to do, e.g.
``cannot reach XNAT at http://xnat:8080: connection refused (check the URL and that XNAT is running)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from converters.jsonform import to_json
from xnat_container.client import XnatClient
from xnat_container.destinations import Destination
from xnat_container.errors import (
    XnatAuthError,
    XnatError,
    XnatRequestError,
    XnatTLSError,
    XnatUnavailable,
)

__all__ = ["CheckResult", "check_destination"]

logger = logging.getLogger(__name__)

#: Retries the check allows itself, so a wrong URL is diagnosed in seconds.
CHECK_RETRIES = 1
_WRITE_ROLES = frozenset({"owner", "member"})


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    #: One line for humans.
    message: str
    #: ``url``, ``tls``, ``credentials``, ``project``, ``server`` or ``""`` when ``ok``.
    problem: str = ""
    xnat_version: str = ""
    role: str = ""

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


def _login(client: XnatClient, destination: Destination) -> CheckResult | None:
    try:
        client.open()
    except XnatTLSError as exc:
        return CheckResult(False, str(exc), "tls")
    except XnatUnavailable as exc:
        reason = str(exc).rsplit("(", 1)[-1].rstrip(")")
        return CheckResult(
            False,
            f"cannot reach XNAT at {destination.url}: {reason} (check the URL and that XNAT is running)",
            "url",
        )
    except XnatAuthError:
        return CheckResult(
            False,
            f"XNAT at {destination.url} refused the credentials of {destination.shown_user}: "
            "wrong username or password (or an expired token)",
            "credentials",
        )
    except XnatRequestError as exc:
        return CheckResult(
            False,
            f"{destination.url} answered HTTP {exc.status} to XNAT's login check (GET /data/auth): "
            "not an XNAT at this URL (check the host, port and path)",
            "url",
        )
    if client.logged_in_user is None:
        return CheckResult(
            False,
            f"{destination.url} answered XNAT's login check (GET /data/auth) without confirming a login: "
            "not an XNAT at this URL (check the host, port and path)",
            "url",
        )
    return None


def _version(client: XnatClient) -> str:
    try:
        return client.request("GET", "/xapi/siteConfig/buildInfo/version", what="read the XNAT version").text.strip()
    except XnatError:
        return ""


def _project_role(client: XnatClient, project: str) -> str | None:
    """The account's role in ``project`` from ``/xapi/access/projects``, or ``None`` without access."""
    entries = client.request("GET", "/xapi/access/projects", what="list accessible projects").json()
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("ID") == project:
            return str(entry.get("role", ""))
    return None


def check_destination(destination: Destination, project: str | None = None) -> CheckResult:
    """Connectivity, TLS, credentials and (with ``project``) write access, diagnosed in one line."""
    quick = replace(destination, retries=min(destination.retries, CHECK_RETRIES))
    client = XnatClient(quick)
    try:
        failed = _login(client, quick)
        if failed is not None:
            return failed
        version = _version(client)
        user = client.logged_in_user or destination.shown_user
        where = f"XNAT {version} at {destination.url}".replace("XNAT  at", "XNAT at")
        if project is None:
            return CheckResult(True, f"OK: {where}, logged in as {user}", xnat_version=version)
        try:
            role = _project_role(client, project)
        except (XnatError, ValueError) as exc:
            return CheckResult(False, f"{where}: cannot list the projects of {user} ({exc})", "server", version)
        if role is None:
            return CheckResult(
                False,
                f"{where}: {user} has no access to project {project} (or it does not exist); "
                "ask a project owner to add the account as a member",
                "project",
                version,
            )
        if role.lower() not in _WRITE_ROLES:
            return CheckResult(
                False,
                f"{where}: {user} can only read project {project} (role {role}); delivery needs member or owner",
                "project",
                version,
                role,
            )
        return CheckResult(True, f"OK: {where}, {user} is {role} of project {project}", "", version, role)
    except XnatError as exc:
        return CheckResult(False, str(exc), "server")
    finally:
        client.close()
