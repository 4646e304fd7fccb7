"""A small XNAT REST client on xnat-py's session, with retries and error classification.

xnat-py (``xnat``) provides the HTTP session plumbing (URI building, timeouts, its
``get``/``put``/``delete``); this module adds what delivery needs and xnat-py leaves out:

* every request is retried on connection errors, timeouts and 5xx with exponential backoff and
  jitter (``Destination.retries``, ``BackoffSeconds``, ``MaxBackoffSeconds``), then raises
  :class:`~xnat_container.errors.XnatUnavailable`;
* 401 and 403 fail fast with :class:`~xnat_container.errors.XnatAuthError` (a 401 is retried
  once with a fresh session first, as after a session timeout); other 4xx raise
  :class:`~xnat_container.errors.XnatRequestError`; TLS failures raise
  :class:`~xnat_container.errors.XnatTLSError`;
* credentials travel only in the ``Authorization`` header (HTTP basic auth on every request, so
  an expired JSESSION never interrupts a long delivery) and never appear in logs or messages.

xnat-py's own login (``xnat.connect``) is not used: it reports any non-200 answer of the login
page, a 503 included, as a login failure, which would turn a passing outage into a permanent error.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests
import xnat.exceptions
from xnat.session import BaseXNATSession

from xnat_container.destinations import Destination
from xnat_container.errors import (
    XnatAuthError,
    XnatError,
    XnatRequestError,
    XnatTLSError,
    XnatUnavailable,
)

__all__ = ["RemoteFile", "XnatClient", "file_md5", "quote_path"]

logger = logging.getLogger(__name__)

#: Statuses worth retrying besides 5xx: request timeout and "too many requests".
_RETRY_STATUSES = frozenset({408, 429})
_MD5_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of an XNAT resource as XNAT lists it."""

    #: Path inside the resource (``anat/sub-01_T1w.nii.gz``).
    path: str
    size: int
    #: MD5 hex digest, or ``""`` when XNAT does not compute checksums.
    digest: str


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_MD5_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def quote_path(path: str) -> str:
    """Percent-encode one URL path (``/`` kept)."""
    return quote(path, safe="/")


class _XnatPyLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """xnat-py calls ``logger.verbose(...)``, a level it normally patches into :mod:`logging`."""

    def verbose(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.debug(message, *args, **kwargs)


class _Session(BaseXNATSession):  # type: ignore[misc]
    """xnat-py's session without heartbeats: every request carries basic auth, so the JSESSION
    may expire without harm, and a heartbeat failing in a background thread helps nobody."""

    def heartbeat(self) -> None:
        return None


def _body_excerpt(response: requests.Response) -> str:
    text = response.text.strip()
    if "<" in text[:20]:  # an HTML error page: keep its title or heading only
        match = re.search(r"<(?:h3|title)>(.*?)</", text, re.S)
        text = match.group(1).strip() if match else ""
    return text[:200]


class XnatClient:
    """Authenticated, retrying access to one XNAT. Use as a context manager::

        with XnatClient(destination) as client:
            client.request("PUT", "/data/projects/P/subjects/S", accepted=(200, 201), what="create subject S")

    :param sleep: the function that waits between attempts (tests pass a fast one).
    :param rng: random generator for the jitter.
    """

    def __init__(
        self,
        destination: Destination,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.destination = destination
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._http: requests.Session | None = None
        self._session: _Session | None = None
        self._token: tuple[str, str] | None = None
        #: The login XNAT confirmed, once connected.
        self.logged_in_user: str | None = None
        #: Requests sent, and how many of them were retries (for reports).
        self.requests_sent = 0
        self.retries_done = 0

    # -- lifecycle ------------------------------------------------------------------------------------
    def __enter__(self) -> XnatClient:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return self.destination.url

    def open(self) -> None:
        """Check the credentials (``GET /data/auth``) and, with ``UseAliasToken``, swap them for a token."""
        if self._session is not None:
            return
        destination = self.destination
        http = requests.Session()
        http.auth = (destination.username, destination.password.reveal())
        # requests lets REQUESTS_CA_BUNDLE override a session's CA bundle; the destination decides
        # instead (the environment's bundle is used only when the destination names none).
        http.trust_env = False
        http.proxies = requests.utils.get_environ_proxies(destination.url)
        if isinstance(destination.verify, Path):
            http.verify = str(destination.verify)
        elif destination.verify:
            http.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        else:
            http.verify = False
        http.headers["User-Agent"] = "bidsbridge-xnat"
        self._http = http
        self._session = _Session(
            server=destination.url,
            logger=_XnatPyLog(logging.getLogger(f"{__name__}.xnatpy"), {}),
            interface=http,
            keepalive=False,
            default_timeout=destination.timeout,
        )
        self._session.skip_response_check = True  # statuses are classified here, not by xnat-py
        try:
            answer = self.request("GET", "/data/auth", what="log in")
            match = re.search(r"User '([^']+)' is logged in", answer.text)
            self.logged_in_user = match.group(1) if match else None
            if destination.use_alias_token:
                issued = self.request("GET", "/data/services/tokens/issue", what="issue an alias token").json()
                alias, secret = str(issued["alias"]), str(issued["secret"])
                self._token = (alias, secret)
                http.auth = self._token
                http.cookies.clear()
                logger.info("%s: using an alias token for this delivery", destination.url)
        except (ValueError, KeyError, TypeError) as exc:
            self.close()
            raise XnatRequestError(f"XNAT at {destination.url} answered the token request unexpectedly") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Invalidate an alias token we issued and end the session (best effort, never raises)."""
        http, session, token = self._http, self._session, self._token
        self._http, self._session, self._token = None, None, None
        if http is None:
            return
        base = self.destination.url
        try:
            if token is not None:
                self._invalidate_token(http, *token)
            http.delete(f"{base}/data/JSESSION", timeout=self.destination.timeout)
        except requests.RequestException as exc:
            logger.debug("%s: closing the session failed (%s)", base, type(exc).__name__)
        finally:
            if session is not None:
                session.disconnect()
            http.close()

    def _invalidate_token(self, http: requests.Session, alias: str, secret: str) -> None:
        """``GET /data/services/tokens/invalidate/{alias}/{secret}`` with ``http.client``: XNAT puts the
        secret in the path, and requests/urllib3 and xnat-py log request paths at debug level."""
        parts = urlsplit(self.destination.url)
        path = f"{parts.path}/data/services/tokens/invalidate/{quote(alias, safe='')}/{quote(secret, safe='')}"
        timeout = self.destination.connect_timeout + self.destination.read_timeout
        connection: HTTPConnection
        if parts.scheme == "https":
            verify = self.destination.verify
            context = ssl.create_default_context(cafile=str(verify) if isinstance(verify, Path) else None)
            if verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            connection = HTTPSConnection(parts.netloc, timeout=timeout, context=context)
        else:
            connection = HTTPConnection(parts.netloc, timeout=timeout)
        cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies if c.name == "JSESSIONID")
        credentials = base64.b64encode(f"{alias}:{secret}".encode()).decode("ascii")
        headers = {"Authorization": f"Basic {credentials}", **({"Cookie": cookie} if cookie else {})}
        try:
            connection.request("GET", path, headers=headers)
            status = connection.getresponse().status
        except (OSError, HTTPException) as exc:
            logger.info("%s: could not invalidate the alias token (%s)", self.url, type(exc).__name__)
            return
        finally:
            connection.close()
        if status != 200:
            logger.info("%s: invalidating the alias token answered HTTP %d", self.url, status)

    # -- requests -------------------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (1-based): exponential, capped, with "equal jitter"."""
        destination = self.destination
        ceiling = min(destination.max_backoff_seconds, destination.backoff_seconds * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _send(
        self, method: str, path: str, query: Mapping[str, str] | None, body: Path | bytes | None
    ) -> requests.Response:
        session = self._session
        if session is None:
            raise XnatError("the XNAT client is not open")
        self.requests_sent += 1
        params = dict(query or {})
        timeout = self.destination.timeout
        if method == "GET":
            return session.get(path, query=params, timeout=timeout)  # type: ignore[no-any-return]
        if method == "DELETE":
            return session.delete(path, query=params, timeout=timeout)  # type: ignore[no-any-return]
        if method != "PUT":
            raise ValueError(f"unsupported method {method}")
        if isinstance(body, Path):
            with body.open("rb") as handle:
                return session.put(  # type: ignore[no-any-return]
                    path,
                    data=handle,
                    query=params,
                    timeout=timeout,
                    headers={"Content-Type": "application/octet-stream"},
                )
        return session.put(path, data=body, query=params, timeout=timeout)  # type: ignore[no-any-return]

    def _tls_error(self, exc: BaseException) -> XnatTLSError:
        # xnat-py re-raises requests' SSLError as its own generic XNATSSLError: read the whole chain.
        parts: list[str] = []
        cause: BaseException | None = exc
        while cause is not None and len(parts) < 5:
            parts.append(str(cause))
            cause = cause.__cause__ or cause.__context__
        text = " | ".join(parts)
        if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text or "record layer failure" in text:
            hint = "the server does not speak TLS on this port (should the URL start with http://?)"
        elif "mismatch" in text.lower() or "doesn't match" in text.lower():
            hint = "the server's certificate is not valid for the host name of the URL"
        elif "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            reason = re.search(r"certificate verify failed: ([^(')\"]+)", text)
            detail = reason.group(1).strip() if reason else "untrusted certificate"
            hint = f"certificate verification failed ({detail}); set CaBundle to the CA that signed it"
        else:
            hint = "TLS handshake failed"
        return XnatTLSError(f"TLS failure talking to {self.url}: {hint}")

    @staticmethod
    def _connection_problem(exc: requests.RequestException) -> str:
        text = str(exc)
        if isinstance(exc, requests.Timeout):
            return "timed out"
        if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo failed" in text:
            return "host name not found"
        if "Connection refused" in text or "Errno 111" in text:
            return "connection refused"
        if "RemoteDisconnected" in text or "Connection aborted" in text or "reset by peer" in text:
            return "connection closed without an answer"
        return type(exc).__name__

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Path | bytes | None = None,
        accepted: tuple[int, ...] = (200,),
        what: str,
    ) -> requests.Response:
        """Send one request, retried as described in the module docstring.

        :param path: the path under the server URL, already percent-encoded (``/data/...``).
        :param accepted: statuses that count as success (returned as they are).
        :param what: what the request does, for messages ("upload anat/x.nii.gz").
        """
        attempts = self.destination.retries + 1
        reauthenticated = False
        problem = ""
        attempt = 0
        while attempt < attempts:
            if attempt:
                self._wait_to_retry(attempt, what, problem)
            attempt += 1
            try:
                response = self._send(method, path, query, body)
            except (requests.exceptions.SSLError, xnat.exceptions.XNATSSLError) as exc:
                raise self._tls_error(exc) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = self._connection_problem(exc)
                continue
            if response.status_code in accepted:
                return response
            if response.status_code == 401 and not reauthenticated and self._http is not None:
                reauthenticated = True  # a lost session: one fresh try, not counted as an attempt
                self._http.cookies.clear()
                attempt -= 1
                problem = "401, retrying with a fresh session"
                continue
            problem = self._retry_reason(response, what)
        raise XnatUnavailable(
            f"XNAT at {self.url} unavailable: could not {what} after {attempts} attempt(s) ({problem})"
        )

    def _wait_to_retry(self, attempt: int, what: str, problem: str) -> None:
        """Count, log and sleep the backoff before retry ``attempt``."""
        self.retries_done += 1
        delay = self._backoff(attempt)
        logger.info("%s: retrying to %s in %.1fs (%s)", self.url, what, delay, problem)
        self._sleep(delay)

    def _retry_reason(self, response: requests.Response, what: str) -> str:
        """Why an answer that is not accepted is worth retrying (``HTTP 503``); raise when it is not.

        A 401 here is final (the one fresh-session retry is spent or impossible); 403 and other 4xx fail fast.
        """
        destination = self.destination
        status = response.status_code
        if status == 401:
            raise XnatAuthError(
                f"XNAT at {self.url} refused the credentials of {destination.shown_user} (401): "
                "check the username and the password or token",
                status=status,
            )
        if status == 403:
            raise XnatAuthError(
                f"XNAT at {self.url}: {destination.shown_user} may not {what} (403): {_body_excerpt(response)}",
                status=status,
            )
        if status >= 500 or status in _RETRY_STATUSES:
            return f"HTTP {status}"
        raise XnatRequestError(
            f"XNAT at {self.url} refused to {what}: HTTP {status} {_body_excerpt(response)}".rstrip(),
            status=status,
        )

    def get_json(self, path: str, *, query: Mapping[str, str] | None = None, what: str) -> Any:
        response = self.request("GET", path, query={"format": "json", **(query or {})}, what=what)
        try:
            return response.json()
        except ValueError as exc:
            raise XnatRequestError(f"XNAT at {self.url} answered non-JSON to {what}") from exc

    def result_rows(self, path: str, *, what: str) -> list[dict[str, Any]]:
        """The rows of an XNAT listing (``{"ResultSet": {"Result": [...]}}``)."""
        data = self.get_json(path, what=what)
        try:
            rows = data["ResultSet"]["Result"]
        except (KeyError, TypeError) as exc:
            raise XnatRequestError(f"XNAT at {self.url} answered an unexpected listing to {what}") from exc
        if not isinstance(rows, list):
            raise XnatRequestError(f"XNAT at {self.url} answered an unexpected listing to {what}")
        return [row for row in rows if isinstance(row, dict)]

    def list_files(self, resource_path: str) -> dict[str, RemoteFile]:
        """Files of one resource (``.../resources/NIFTI``) by path inside it; ``{}`` if the resource
        does not exist yet."""
        try:
            rows = self.result_rows(f"{resource_path}/files", what=f"list {resource_path}")
        except XnatRequestError as exc:
            if exc.status == 404:
                return {}
            raise
        files: dict[str, RemoteFile] = {}
        marker = "/files/"
        for row in rows:
            uri = str(row.get("URI", ""))
            path = uri.split(marker, 1)[1] if marker in uri else str(row.get("Name", ""))
            try:
                size = int(row.get("Size", -1))
            except (TypeError, ValueError):
                size = -1
            files[unquote(path)] = RemoteFile(path, size, str(row.get("digest") or "").lower())
        return files

    def download_md5(self, file_path: str) -> str:
        """MD5 of a stored file, downloaded (when XNAT lists no digest)."""
        response = self.request("GET", file_path, what=f"download {file_path}")
        return hashlib.md5(response.content, usedforsecurity=False).hexdigest()

    def subject_label(self, project: str, subject: str) -> str:
        """The label of ``subject`` (an ID such as ``XNAT_S00001``, or already a label) in ``project``."""
        data = self.get_json(
            f"/data/projects/{quote(project, safe='')}/subjects/{quote(subject, safe='')}",
            what=f"read subject {subject}",
        )
        try:
            return str(data["items"][0]["data_fields"]["label"])
        except (KeyError, IndexError, TypeError) as exc:
            raise XnatRequestError(f"XNAT at {self.url} answered an unexpected record for subject {subject}") from exc
