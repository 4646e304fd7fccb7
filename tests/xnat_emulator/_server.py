"""The emulator: a real HTTP server on 127.0.0.1 speaking XNAT 1.8's REST API, with fault injection.

:class:`XnatEmulator` owns the archive, the accounts and the fault injector, and runs a threaded
``http.server`` on a free port (or a given one). Each request is authenticated (JSESSION cookie, basic
auth with a password or an alias token), passed through the fault injector, answered by the site or the
archive routes, and logged for the tests' introspection.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import dataclasses
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._accounts import Accounts, User
from ._archive_api import ArchiveApi
from ._faults import FaultDecision, FaultInjector, FaultKind, FaultPlan
from ._model import Archive, FileRecord, Inventory, Project
from ._routes import normalise_path, parse_archive_path
from ._schema import DataModel
from ._site_api import ANONYMOUS_REQUESTS, SiteApi
from ._wire import ApiRequest, ApiResponse, error

logger = logging.getLogger(__name__)

_ROLES = ("owner", "member", "collaborator")


class EmulatorBugError(RuntimeError):
    """The emulator failed on some requests (answered 500): a bug in the emulator, not an injected fault."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__(
            f"the XNAT emulator failed on {len(errors)} request(s), first: {errors[0]!r}; "
            "see the log of tests.xnat_emulator for tracebacks"
        )
        self.errors = errors


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it. ``status`` is ``None`` when no answer was sent."""

    method: str
    #: The path as sent (percent-encoded, without the query string).
    path: str
    query: str
    status: int | None
    fault: FaultKind | None
    login: str | None
    seconds: float


class XnatEmulator:
    """An XNAT 1.8 server for tests. Use as a context manager: ``with XnatEmulator() as xnat: xnat.url``.

    :param users: login -> password of the accounts to create (default ``{"admin": "admin"}``).
    :param admins: logins that are site administrators (default ``{"admin"}``); they see every project.
    :param faults: the initial :class:`FaultPlan` (default: no faults). Change it any time via :attr:`faults`.
    :param seed: seed of the fault injector's random generator, so faults repeat from run to run.
    :param host: address to listen on.
    :param port: port to listen on; 0 picks a free one (kept across :meth:`make_unreachable`).
    :param xsd_path: XNAT's ``xnat.xsd`` (default ``<repo>/../shared/xnat/xnat.xsd``).
    :param version: the XNAT version reported by ``/xapi/siteConfig/buildInfo``.
    :param site_id: prefix of accession numbers (``XNAT_S00001``, ``XNAT_E00001``).
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        admins: Iterable[str] = ("admin",),
        faults: FaultPlan | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        xsd_path: Path | None = None,
        version: str = "1.8.10",
        site_id: str = "XNAT",
    ) -> None:
        self.host = host
        self._port = port
        self.accounts = Accounts()
        admin_logins = set(admins)
        for login, password in (users if users is not None else {"admin": "admin"}).items():
            self.accounts.add_user(login, password, admin=login in admin_logins)
        self.archive = Archive(site_id)
        self.model = DataModel.load(xsd_path)
        self._site = SiteApi(self.accounts, self.archive, self.model, version)
        self._archive_api = ArchiveApi(self.archive, self.model, self.accounts)
        self._faults = FaultInjector(faults, seed)
        self._log_lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._lifecycle = threading.RLock()
        self._stopping = threading.Event()
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._reconnect_timer: threading.Timer | None = None
        self._started = False
        self._internal_errors: list[Exception] = []

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> XnatEmulator:
        with self._lifecycle:
            if self._started:
                return self
            self._stopping.clear()
            self._listen()
            self._started = True
            logger.info("XNAT emulator listening on %s", self.url)
            return self

    def stop(self) -> None:
        with self._lifecycle:
            self._stopping.set()
            if self._reconnect_timer is not None:
                self._reconnect_timer.cancel()
                self._reconnect_timer = None
            self._close_listener()
            self._started = False

    def __enter__(self) -> XnatEmulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.stop()
        if exc_type is None and self._internal_errors:
            raise EmulatorBugError(self._internal_errors)

    @property
    def internal_errors(self) -> list[Exception]:
        """Exceptions the emulator itself raised while handling requests (each was answered with 500)."""
        return list(self._internal_errors)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the server, without a trailing slash (``http://127.0.0.1:PORT``)."""
        return f"http://{self.host}:{self._port}"

    @property
    def reachable(self) -> bool:
        return self._http is not None

    def make_unreachable(self, seconds: float | None = None) -> None:
        """Stop listening (connections are refused, open ones are cut); come back after ``seconds`` if given.

        The server comes back on the same port, with the same data, sessions and tokens.
        """
        with self._lifecycle:
            self._close_listener()
            logger.info("XNAT emulator unreachable%s", f" for {seconds}s" if seconds is not None else "")
            if seconds is not None:
                timer = threading.Timer(seconds, self.make_reachable)
                timer.daemon = True
                self._reconnect_timer = timer
                timer.start()

    def make_reachable(self) -> None:
        """Listen again on the same port (no-op when already listening or stopped)."""
        with self._lifecycle:
            if self._http is None and self._started and not self._stopping.is_set():
                self._listen()
                logger.info("XNAT emulator reachable again on %s", self.url)

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[None]:
        """``with xnat.unreachable(): ...`` -- refuse connections inside the block only."""
        self.make_unreachable()
        try:
            yield
        finally:
            self.make_reachable()

    def _listen(self) -> None:
        http = _HttpServer((self.host, self._port), self)
        self._port = http.server_address[1]
        thread = threading.Thread(
            target=http.serve_forever, kwargs={"poll_interval": 0.05}, name=f"xnat-emulator-{self._port}"
        )
        thread.daemon = True
        thread.start()
        self._http, self._thread = http, thread

    def _close_listener(self) -> None:
        http, thread = self._http, self._thread
        self._http = self._thread = None
        if http is None:
            return
        http.shutdown()
        http.server_close()
        http.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    # -- accounts and projects --------------------------------------------------------------------------
    def add_user(self, login: str, password: str, *, admin: bool = False) -> User:
        return self.accounts.add_user(login, password, admin=admin)

    def add_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        owners: Iterable[str] = (),
        members: Iterable[str] = (),
        collaborators: Iterable[str] = (),
    ) -> None:
        """Create a project directly (no HTTP) and give users their roles in it."""
        with self.archive.lock:
            project = Project(project_id, name or project_id, project_id)
            self.archive.projects[project_id] = project
            for role, logins in (("owner", owners), ("member", members), ("collaborator", collaborators)):
                for login in logins:
                    self.grant(project_id, login, role)

    def grant(self, project_id: str, login: str, role: str) -> None:
        """Give ``login`` a role (``owner``, ``member`` or ``collaborator``) in a project."""
        if role not in _ROLES:
            raise ValueError(f"role must be one of {_ROLES}, got {role!r}")
        if self.accounts.user(login) is None:
            raise KeyError(f"no user {login!r}: add_user() first")
        with self.archive.lock:
            self.archive.projects[project_id].roles[login] = role

    def expire_sessions(self) -> int:
        """Forget every JSESSION, as a session timeout does; clients relying on the cookie get 401."""
        return self.accounts.expire_sessions()

    # -- faults -----------------------------------------------------------------------------------------
    @property
    def faults(self) -> FaultPlan:
        return self._faults.plan

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        self._faults.plan = plan

    def set_faults(self, **changes: Any) -> FaultPlan:
        """Change some fields of the current fault plan, e.g. ``xnat.set_faults(error_rate=0.3)``."""
        plan = dataclasses.replace(self._faults.plan, **changes)
        self._faults.plan = plan
        return plan

    def clear_faults(self) -> None:
        """No faults from now on (empty plan, empty queue)."""
        self._faults.clear()

    def queue_faults(self, *kinds: FaultKind | str) -> None:
        """The next matching requests fail with these faults, in order, whatever the rates."""
        self._faults.queue(*kinds)

    def reseed(self, seed: int) -> None:
        self._faults.reseed(seed)

    # -- introspection ----------------------------------------------------------------------------------
    def inventory(self) -> Inventory:
        """Everything stored: projects, subjects, experiments, scans, resources and files (size, md5)."""
        return self.archive.inventory()

    def file_data(self, record: FileRecord) -> bytes:
        """The stored bytes of a file listed by :meth:`inventory`."""
        with self.archive.lock:
            owner = self.archive.resources_at(record.project, record.subject, record.experiment, record.scan)
            resource = owner.get(record.resource) if owner is not None else None
            if resource is not None and record.path in resource.files:
                return resource.files[record.path].data
        raise KeyError(f"no stored file {record}")

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request served since start (or the last :meth:`clear_request_log`), oldest first."""
        with self._log_lock:
            return list(self._requests)

    def clear_request_log(self) -> None:
        with self._log_lock:
            self._requests.clear()
        with self.archive.lock:
            self._archive_api.duplicate_writes.clear()

    def request_counts(self) -> collections.Counter[tuple[str, str, int | None]]:
        """Number of requests by ``(method, path, status)``; status ``None`` for unanswered ones."""
        return collections.Counter((r.method, r.path, r.status) for r in self.requests)

    def count_requests(
        self,
        method: str | None = None,
        path: str | None = None,
        status: int | Iterable[int] | None = None,
        *,
        answered: bool | None = None,
        fault: FaultKind | None = None,
    ) -> int:
        """Count logged requests matching every filter given.

        :param path: a regular expression searched in the request path.
        :param status: one status or several (any status when ``None``).
        :param answered: ``False`` counts only requests that got no answer (drops, timeouts).
        """
        statuses = {status} if isinstance(status, int) else set(status) if status is not None else None
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (path is None or re.search(path, r.path) is not None)
            and (statuses is None or r.status in statuses)
            and (answered is None or (r.status is not None) == answered)
            and (fault is None or r.fault is fault)
        )

    @property
    def duplicate_file_writes(self) -> int:
        """How many file writes were refused because the file existed and ``overwrite=true`` was missing."""
        with self.archive.lock:
            return len(self._archive_api.duplicate_writes)

    @property
    def duplicate_file_paths(self) -> list[str]:
        with self.archive.lock:
            return list(self._archive_api.duplicate_writes)

    # -- request handling (called from the HTTP handler threads) ----------------------------------------
    def _decide_fault(self, method: str, path: str) -> FaultDecision | None:
        return self._faults.decide(method, path)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _record(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._requests.append(record)

    def _dispatch(self, request: ApiRequest) -> ApiResponse:
        refusal, new_session = self._authenticate(request)
        if refusal is not None:
            return refusal
        if request.user is None and (request.method, request.path) not in ANONYMOUS_REQUESTS:
            return error(401, "Authentication required")
        response = self._site.handle(request)
        if response is None:
            where = parse_archive_path(request.path)
            if where is None:
                response = error(404, f"The requested resource {request.path} does not exist")
            else:
                response = self._archive_api.handle(request, where)
        if new_session is not None and response.new_session_id is None:
            response.new_session_id = new_session
        return response

    def _authenticate(self, request: ApiRequest) -> tuple[ApiResponse | None, str | None]:
        """Set ``request.user``; returns a 401 for bad basic credentials and a JSESSION to hand out."""
        cookie_session = _cookie(request.headers.get("Cookie"), "JSESSIONID")
        authorization = request.headers.get("Authorization") or ""
        if authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return error(401, "Malformed basic authorization"), None
            login, _, password = decoded.partition(":")
            user = self.accounts.check_password(login, password)
            if user is None:
                logger.info("bad credentials for %r", login)
                return error(401, "Login attempt failed. Please try again."), None
            request.user = user
            if cookie_session is not None and self.accounts.session_user(cookie_session) == user:
                request.session_id = cookie_session
                return None, None
            request.session_id = self.accounts.open_session(user)
            return None, request.session_id
        if cookie_session is not None:
            user = self.accounts.session_user(cookie_session)
            if user is not None:
                request.user = user
                request.session_id = cookie_session
        return None, None


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


_Recorder = Callable[[int | None], None]


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], emulator: XnatEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (its worker killed, a timeout) is not a server error; others are."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Cut every open (keep-alive) connection, as a server going away does."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: Headers and body go out in separate writes; without TCP_NODELAY each answer waits for a delayed ACK.
    disable_nagle_algorithm = True
    server_version = "Apache-Coyote/1.1"
    sys_version = ""
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        emulator = self.server.emulator
        started = time.monotonic()
        split = urlsplit(self.path)
        raw_path = split.path or "/"
        path = normalise_path(raw_path)
        method = self.command
        decision = emulator._decide_fault(method, path)
        kind = decision.kind if decision is not None else None
        login: str | None = None

        def record(status: int | None) -> None:
            emulator._record(
                RequestRecord(method, raw_path, split.query, status, kind, login, time.monotonic() - started)
            )

        if decision is not None:
            emulator._wait(decision.delay_seconds)
        if kind is FaultKind.DROP:
            self._hang_up(record)
            return
        try:
            body = self._read_body()
        except (ValueError, OSError) as exc:
            logger.info("unreadable request body: %s", exc)
            self.close_connection = True
            self._answer(error(400, "Unreadable request body"), method, record)
            return
        if kind is FaultKind.TIMEOUT and decision is not None:
            self._stall(decision.timeout_seconds, record)
            return
        if kind in (FaultKind.ERROR, FaultKind.UNAUTHORIZED) and decision is not None and decision.status:
            self._answer(error(decision.status, f"Injected fault: {kind}"), method, record)
            return
        request = ApiRequest(
            "GET" if method == "HEAD" else method,
            path,
            parse_qs(split.query, keep_blank_values=True),
            self.headers,
            body,
        )
        try:
            response = emulator._dispatch(request)
        except Exception as exc:  # an emulator bug: answer 500, and fail the test when the emulator stops
            logger.exception("emulator failed on %s %s", method, self.path)
            emulator._internal_errors.append(exc)
            response = error(500, "Internal emulator error")
        login = request.user.login if request.user is not None else None
        if kind is not None and kind.after_write and decision is not None:
            logger.info("%s %s processed (status %d), then failing with %s", method, raw_path, response.status, kind)
            if kind.base is FaultKind.ERROR and decision.status:
                self._answer(error(decision.status, f"Injected fault: {kind}"), method, record)
            elif kind.base is FaultKind.TIMEOUT:
                self._stall(decision.timeout_seconds, record)
            else:
                self._hang_up(record)
            return
        self._answer(response, method, record)

    # The request is logged *before* the client can see the outcome, so a test that asserts on the log
    # right after its request returned (or failed) finds the record there.
    def _answer(self, response: ApiResponse, method: str, record: _Recorder) -> None:
        record(response.status)
        try:
            self._send(response, head_only=method == "HEAD")
        except OSError as exc:
            logger.debug("client went away before the answer: %s", exc)
            self.close_connection = True

    def _hang_up(self, record: _Recorder | None) -> None:
        if record is not None:
            record(None)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _stall(self, seconds: float, record: _Recorder) -> None:
        record(None)
        self.server.emulator._wait(seconds)
        self._hang_up(None)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                if not size_line:
                    raise ValueError("connection closed inside a chunked body")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError(f"negative Content-Length {length}")
        return self.rfile.read(length) if length else b""

    def _send(self, response: ApiResponse, *, head_only: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        if response.new_session_id is not None:
            self.send_header("Set-Cookie", f"JSESSIONID={response.new_session_id}; Path=/; HttpOnly")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(response.body)
        self.wfile.flush()
