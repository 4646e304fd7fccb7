"""A minimal Orthanc REST stand-in (real socket, Orthanc-shaped JSON) for ``rules test --orthanc``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

#: What Orthanc 1.10 answers for a series received over C-STORE from PRISMA_NEURO.
ORTHANC = {
    "/series/s-1": {"ID": "s-1", "Instances": ["i-2", "i-1"], "MainDicomTags": {"Modality": "MR"}},
    "/instances/i-1/simplified-tags": {
        "PatientID": "12343@hucheng", "StudyDate": "20220711", "Modality": "MR", "Rows": "256",
        "SeriesDescription": "anat-T1w_acq-tfl", "ProtocolName": "anat-T1w_acq-tfl",
        "SeriesInstanceUID": "1.2.3.4", "ImageType": "ORIGINAL\\PRIMARY\\M\\NONE", "SeriesNumber": "5",
        "0019,100c": "1000", "ReferencedImageSequence": [{"ReferencedSOPInstanceUID": "1.2"}],
    },
    "/instances/i-1/metadata?expand": {
        "RemoteAET": "PRISMA_NEURO", "CalledAET": "BIDSBRIDGE_PACS", "RemoteIP": "10.0.0.7",
        "Origin": "DicomProtocol", "IndexInSeries": "1",
    },
}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ORTHANC.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def orthanc_stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cached_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read each DICOM folder's headers once per test session (the CLI path is otherwise unchanged)."""
    from orthanc_plugin.rules import cli  # noqa: PLC0415

    original = _CACHE.setdefault("original", cli.facts_from_folder)

    def cached(folder, *, source=None):
        key = str(folder)
        if key not in _CACHE:
            _CACHE[key] = original(folder)
        found, unreadable = _CACHE[key]
        return [replace(item, facts=replace(item.facts, source=source)) for item in found], unreadable

    monkeypatch.setattr(cli, "facts_from_folder", cached)


_CACHE: dict = {}
