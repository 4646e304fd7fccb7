"""Site-level routes: login handshake, sessions, tokens, version, schemas and search elements.

These are the calls ``xnat.connect()`` makes before it touches any data: ``PUT /data/services/auth``,
``GET /data/auth``, ``GET /data/JSESSION``, ``/xapi/siteConfig/buildInfo``, ``/xapi/schemas[/name]`` and
``/data/search/elements[/type]``, then ``DELETE /data/JSESSION`` on disconnect.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from urllib.parse import parse_qs

from ._accounts import Accounts
from ._model import Archive
from ._schema import MINIMAL_XDAT_XSD, SEARCH_ELEMENTS, DataModel
from ._wire import ApiRequest, ApiResponse, error, json_response, result_set, text, xml_response

logger = logging.getLogger(__name__)

#: Requests a client may make without credentials (everything else answers 401 to anonymous requests).
#: Logging out (``DELETE /data/JSESSION``) is allowed with an expired session, so it is idempotent.
ANONYMOUS_REQUESTS = frozenset(
    {("GET", "/"), ("PUT", "/data/services/auth"), ("POST", "/data/services/auth"), ("DELETE", "/data/JSESSION")}
)


class SiteApi:
    """Answers the non-archive routes; returns ``None`` for paths it does not own."""

    def __init__(self, accounts: Accounts, archive: Archive, model: DataModel, version: str) -> None:
        self.accounts = accounts
        self.archive = archive
        self.model = model
        self.version = version

    def handle(self, request: ApiRequest) -> ApiResponse | None:
        path = request.path
        routes: dict[str, Callable[[ApiRequest], ApiResponse]] = {
            "/": self._root,
            "/data/services/auth": self._login,
            "/data/auth": self._whoami,
            "/data/JSESSION": self._jsession,
            "/data/version": self._legacy_version,
            "/xapi/siteConfig/buildInfo": self._build_info,
            "/xapi/siteConfig/buildInfo/version": self._version_only,
            "/xapi/siteConfig/uptime": self._uptime,
            "/xapi/schemas": self._schema_list,
            "/data/search/elements": self._search_elements,
            "/xapi/access/projects": self._access_levels,
            "/data/users": self._users,
            "/data/services/refresh/catalog": self._refresh_catalog,
        }
        route = routes.get(path)
        if route is not None:
            return route(request)
        if path.startswith("/xapi/schemas/"):
            return self._schema(request, path[len("/xapi/schemas/") :])
        if path.startswith("/data/search/elements/"):
            return self._search_fields(request, path[len("/data/search/elements/") :])
        if path.startswith("/data/services/tokens/"):
            return self._tokens(request, path[len("/data/services/tokens/") :].split("/"))
        return None

    # -- login and sessions -----------------------------------------------------------------------------
    def _root(self, request: ApiRequest) -> ApiResponse:
        if request.user is None:
            who = '<span id="user_info">Logged in as: <span style="color:red;">Guest</span></span>'
        else:
            login = html.escape(request.user.login)
            link = f'<a id="username-link" href="/app/template/XDATScreen_UpdateUser.vm">{login}</a>'
            who = f'<span id="user_info">Logged in as: &nbsp;{link}</span>'
        page = f"<!DOCTYPE html>\n<html><head><title>XNAT</title></head><body>{who}</body></html>\n"
        return ApiResponse(200, page.encode("utf-8"), "text/html;charset=UTF-8")

    def _login(self, request: ApiRequest) -> ApiResponse:
        if request.method not in ("PUT", "POST"):
            return error(405, "Method not allowed")
        form = parse_qs(request.body.decode("utf-8", "replace"))
        login = (form.get("username") or [""])[0]
        password = (form.get("password") or [""])[0]
        user = self.accounts.check_password(login, password)
        if user is None:
            logger.info("login refused for %r", login)
            return error(401, "Login attempt failed. Please try again.")
        session_id = self.accounts.open_session(user)
        response = text(200, session_id)
        response.new_session_id = session_id
        return response

    def _whoami(self, request: ApiRequest) -> ApiResponse:
        assert request.user is not None
        return text(200, f"User '{request.user.login}' is logged in")

    def _jsession(self, request: ApiRequest) -> ApiResponse:
        if request.method == "DELETE":
            if request.session_id is not None:
                self.accounts.close_session(request.session_id)
            return text(200, "")
        assert request.user is not None
        if request.session_id is not None:
            return text(200, request.session_id)
        session_id = self.accounts.open_session(request.user)
        response = text(200, session_id)
        response.new_session_id = session_id
        return response

    # -- site information -------------------------------------------------------------------------------
    def _legacy_version(self, request: ApiRequest) -> ApiResponse:
        return error(404, "The requested resource does not exist (XNAT 1.6 /data/version)")

    def _build_info(self, request: ApiRequest) -> ApiResponse:
        return json_response(
            {
                "version": self.version,
                "buildNumber": "emulator",
                "buildDate": "Mon Jan 01 00:00:00 UTC 2024",
                "commit": "0000000",
                "sha": "0000000000000000000000000000000000000000",
                "isDirty": "false",
            }
        )

    def _version_only(self, request: ApiRequest) -> ApiResponse:
        return text(200, self.version)

    def _uptime(self, request: ApiRequest) -> ApiResponse:
        return json_response({"days": 0, "hours": 0, "minutes": 1, "seconds": 0})

    def _schema_list(self, request: ApiRequest) -> ApiResponse:
        return json_response(["xnat", "xdat"])

    def _schema(self, request: ApiRequest, name: str) -> ApiResponse:
        if name in ("xnat", "xnat/xnat.xsd"):
            return xml_response(self.model.xnat_xsd)
        if name in ("xdat", "xdat/xdat.xsd"):
            return xml_response(MINIMAL_XDAT_XSD)
        return error(404, f"No schema named {name}")

    def _search_elements(self, request: ApiRequest) -> ApiResponse:
        rows = [
            {
                "ELEMENT_NAME": name,
                "SINGULAR": singular,
                "PLURAL": plural,
                "COUNT": "0",
                "SECURED": "true",
                "SEARCHABLE": "true",
                "BROWSEABLE": "true",
            }
            for name, (singular, plural, _fields) in SEARCH_ELEMENTS.items()
        ]
        return result_set(rows, request.format, "Elements")

    def _search_fields(self, request: ApiRequest, element: str) -> ApiResponse:
        known = SEARCH_ELEMENTS.get(element)
        if known is None:
            return error(404, f"Unknown element {element}")
        rows = [
            {"FIELD_ID": field_id, "HEADER": field_id.replace("_", " ").title(), "TYPE": "string", "SUMMARY": ""}
            for field_id in known[2]
        ]
        return result_set(rows, request.format, "Fields")

    def _access_levels(self, request: ApiRequest) -> ApiResponse:
        assert request.user is not None
        with self.archive.lock:
            entries = []
            for project in self.archive.projects.values():
                role = "owner" if request.user.admin else project.roles.get(request.user.login)
                if role is not None:
                    entries.append(
                        {
                            "ID": project.project_id,
                            "name": project.name,
                            "secondaryId": project.secondary_id,
                            "description": project.description,
                            "role": role,
                        }
                    )
        return json_response(entries)

    def _users(self, request: ApiRequest) -> ApiResponse:
        rows = [
            {
                "login": user.login,
                "firstname": user.login,
                "lastname": "",
                "email": user.email,
                "enabled": "1",
                "xdat_user_id": str(user.user_id),
            }
            for user in self.accounts.users()
        ]
        return result_set(rows, request.format, "Users")

    def _refresh_catalog(self, request: ApiRequest) -> ApiResponse:
        if request.method != "POST":
            return error(405, "Method not allowed")
        return text(200, "")

    # -- alias tokens -----------------------------------------------------------------------------------
    def _tokens(self, request: ApiRequest, parts: list[str]) -> ApiResponse:
        assert request.user is not None
        if parts[0] == "issue" and request.method == "GET":
            user = request.user
            if len(parts) == 3 and parts[1] == "user":
                if not request.user.admin and parts[2] != request.user.login:
                    return error(403, "Only site administrators can issue tokens for other users")
                other = self.accounts.user(parts[2])
                if other is None:
                    return error(404, f"No user {parts[2]}")
                user = other
            elif len(parts) != 1:
                return error(404, "Unknown token service")
            token = self.accounts.issue_token(user)
            return json_response(
                {
                    "alias": token.alias,
                    "secret": token.secret,
                    "xdatUserId": user.login,
                    "singleUse": False,
                    "enabled": True,
                    "id": token.token_id,
                    "created": token.created_ms,
                    "timestamp": token.created_ms,
                    "estimatedExpirationTime": token.expires_ms,
                    "validForClients": None,
                    "disabled": 0,
                }
            )
        if len(parts) == 3 and parts[0] == "validate" and request.method == "GET":
            valid = self.accounts.token(parts[1], parts[2])
            if valid is None:
                return error(404, "Invalid token")
            return json_response({"valid": valid.login})
        if len(parts) == 3 and parts[0] == "invalidate" and request.method in ("GET", "DELETE"):
            if not self.accounts.invalidate_token(parts[1], parts[2]):
                return error(404, "Invalid token")
            return text(200, "")
        return error(404, "Unknown token service")
