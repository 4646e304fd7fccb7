"""The admin status page: static files under ``/bidsbridge/ui/`` and its link in Orthanc Explorer.

The page (``ui/index.html``, ``ui/app.js``, ``ui/style.css``, shipped as package data) is plain
HTML, JavaScript and CSS: no build step, no CDN, no request leaving Orthanc. It reads the
plugin's own REST routes (:mod:`orthanc_plugin.routes`) with same-origin ``fetch`` calls, so
Orthanc's authentication applies as to any other route (the browser sends its HTTP Basic
credentials along). ``ui/explorer.js`` is what :func:`explorer_extension` hands to
``orthanc.ExtendOrthancExplorer``: a button on Orthanc Explorer's start page and on each series.
"""

from __future__ import annotations

from importlib import resources

from .routes import Response

__all__ = ["ASSETS", "explorer_extension", "ui_asset"]

#: The files the page is made of, and their content types; nothing else is served.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def _read(name: str) -> bytes:
    return resources.files("orthanc_plugin").joinpath("ui").joinpath(name).read_bytes()


def ui_asset(method: str, name: str | None) -> Response:
    """``GET /bidsbridge/ui/{name}`` (None or empty: ``index.html``)."""
    if method != "GET":
        return Response(405, b"", allow="GET")
    name = name or "index.html"
    if name not in ASSETS:
        return Response.error(404, f"the status page has no file {name!r}")
    return Response(200, _read(name), ASSETS[name])


def explorer_extension() -> str:
    """The JavaScript Orthanc Explorer runs to link to the status page."""
    return _read("explorer.js").decode("utf-8")
