"""Requests and responses as the REST layer sees them, and the wire formats XNAT answers in.

The HTTP server turns each request into an :class:`ApiRequest` (body already read, user already
authenticated) and writes back the :class:`ApiResponse` the REST layer returns. The helpers here build the
shapes XNAT uses: ``{"ResultSet": {"Result": [...], "totalRecords": "N"}}`` listings whose values are all
strings, Restlet-style HTML status pages for errors, and multipart upload parsing.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from ._accounts import User

logger = logging.getLogger(__name__)

JsonRow = dict[str, str]


@dataclass
class ApiRequest:
    method: str
    #: The path with ``/REST/`` and ``/data/archive/`` normalised to ``/data/``, percent-decoding left to routing.
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    user: User | None = None
    session_id: str | None = None

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() == "true"

    @property
    def format(self) -> str | None:
        value = self.param("format")
        return value.lower() if value else None


@dataclass
class ApiResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain;charset=UTF-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: A JSESSION the server should hand to the client as a cookie.
    new_session_id: str | None = None


def text(status: int, body: str = "") -> ApiResponse:
    return ApiResponse(status, body.encode("utf-8"))


def json_response(payload: Any, status: int = 200) -> ApiResponse:
    return ApiResponse(status, json.dumps(payload).encode("utf-8"), "application/json;charset=UTF-8")


def xml_response(document: str, status: int = 200) -> ApiResponse:
    return ApiResponse(status, document.encode("utf-8"), "text/xml;charset=UTF-8")


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def error(status: int, message: str) -> ApiResponse:
    """An error as XNAT's Restlet layer answers it: an HTML status page with the message in ``<h3>``."""
    reason = _REASONS.get(status, "Error")
    page = (
        "<html>\n<head>\n   <title>Status page</title>\n</head>\n"
        '<body style="font-family: sans-serif;">\n'
        f'<p style="font-size: 1.2em;font-weight: bold;margin: 1em 0px;">{html.escape(reason)}</p>\n'
        f"<h3>{html.escape(message)}</h3>\n"
        "<p>You can get technical details "
        f'<a href="http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html">here</a>.<br>\n'
        'Please continue your visit at our <a href="/">home page</a>.\n</p>\n</body>\n</html>\n'
    )
    response = ApiResponse(status, page.encode("utf-8"), "text/html;charset=UTF-8")
    if status == 401:
        response.headers.append(("WWW-Authenticate", 'Basic realm="XNAT"'))
    return response


def result_set(rows: list[JsonRow], fmt: str | None, title: str | None = None) -> ApiResponse:
    """A listing in the requested format (JSON by default; ``csv`` and ``xml`` as XNAT offers them)."""
    if fmt == "csv":
        columns = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return ApiResponse(200, buffer.getvalue().encode("utf-8"), "text/csv;charset=UTF-8")
    if fmt == "xml":
        columns = list(dict.fromkeys(key for row in rows for key in row))
        head = "".join(f'<column id="{html.escape(c)}">{html.escape(c)}</column>' for c in columns)
        body = "".join(
            "<row>" + "".join(f"<cell>{html.escape(row.get(c, ''))}</cell>" for c in columns) + "</row>" for row in rows
        )
        document = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<results xmlns="http://nrg.wustl.edu/security"><columns>{head}</columns><rows>{body}</rows></results>'
        )
        return xml_response(document)
    payload: dict[str, Any] = {"Result": rows, "totalRecords": str(len(rows))}
    if title is not None:
        payload["title"] = title
    return json_response({"ResultSet": payload})


@dataclass(frozen=True)
class UploadedPart:
    filename: str | None
    data: bytes


def uploaded_parts(request: ApiRequest) -> list[UploadedPart]:
    """The files a PUT/POST carries: the parts of a multipart form, or else the raw body as one part."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/"):
        return [UploadedPart(None, request.body)]
    envelope = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + request.body
    message = BytesParser(policy=HTTP).parsebytes(envelope)
    parts: list[UploadedPart] = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        parts.append(UploadedPart(part.get_filename(), data))
    files = [part for part in parts if part.filename is not None]
    logger.debug("multipart upload with %d parts, %d of them files", len(parts), len(files))
    return files or parts
