"""The workers' Orthanc REST client, against a minimal HTTP server that records requests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from orthanc_plugin.rest_client import OrthancRestClient


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        body = b'{"Instances": ["i1"]}' if self.path.startswith("/series/") else b"DICM-bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_downloads_ask_orthanc_not_to_compress(server: str, tmp_path: Path) -> None:
    """Orthanc gzips for clients that accept it, which costs more than the bytes it saves nearby."""
    _Recorder.seen.clear()
    client = OrthancRestClient(server)
    try:
        (path,) = client.download_series("s1", tmp_path)
    finally:
        client.close()
    assert path.read_bytes() == b"DICM-bytes"
    assert len(_Recorder.seen) == 2
    assert all(headers.get("Accept-Encoding") == "identity" for headers in _Recorder.seen)


def test_an_instance_fetched_already_is_moved_in_not_fetched_again(server: str, tmp_path: Path) -> None:
    """The first instance is fetched for its tags (routing); the conversion uses that file."""
    _Recorder.seen.clear()
    client = OrthancRestClient(server)
    try:
        first = client.download_instance("i1", tmp_path / "first" / "i1.dcm")
        assert len(_Recorder.seen) == 1 and first.read_bytes() == b"DICM-bytes"
        (path,) = client.download_series("s1", tmp_path / "dicom", have={"i1": first})
    finally:
        client.close()
    assert path == tmp_path / "dicom" / "i1.dcm" and path.read_bytes() == b"DICM-bytes" and not first.exists()
    assert len(_Recorder.seen) == 2  # the instance, then only the series document
