"""``rules test --orthanc``/:func:`facts_from_orthanc` against a real Orthanc that received C-STORE.

Proves the metadata names (``RemoteAET``, ``CalledAET``, ``RemoteIP``) and the simplified-tags
shape the facts adapter relies on, on the Orthanc the project runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from orthanc_plugin.dicom_send import send_files
from orthanc_plugin.embedded import ORTHANC_AET, EmbeddedOrthanc, free_port
from orthanc_plugin.rules.cli import main

pytestmark = pytest.mark.orthanc

RULES = """version: 1
rules:
  - name: from-storescu-on-loopback
    match:
      source.calling_aet: STORESCU
      source.called_aet: {equals: BIDSBRIDGE_PACS}
      source.remote_ip: 127.0.0.1
      series.instance_count: {ge: 1}
      '0008,0060': MR
    actions:
      - convert: {session: 'S{StudyDate}'}
      - push_xnat: {server: main, project: 'P_{source.calling_aet}'}
    stop: true
  - name: anything-else
    match: {}
    actions: [{skip: 'calling AET {source.calling_aet}'}]
"""


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Iterator[tuple[str, str]]:
    server = EmbeddedOrthanc(tmp_path_factory.mktemp("orthanc"), http_port=free_port(), dicom_port=free_port(),
                             plugin_enabled=False)
    server.start()
    try:
        files = sorted((corpus / "dcm_qa_xa30" / "In" / "5_anat-T1w_acq-tfl").iterdir())
        report = send_files(files, "127.0.0.1", server.dicom_port, called_aet=ORTHANC_AET, calling_aet="STORESCU")
        assert report.sent == len(files) and not report.failed
        (series_id,) = requests.get(f"{server.url}/series", timeout=10).json()
        yield server.url, series_id
    finally:
        server.stop()


def test_rules_test_reads_where_the_series_came_from(orthanc: tuple[str, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url, series_id = orthanc
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    assert main(["rules", "test", str(rules), "--orthanc", url, "--series", series_id, "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["orthanc_id"] == series_id
    assert record["matched"] == ["from-storescu-on-loopback"], record["trace"]
    assert record["series_description"] == "anat-T1w_acq-tfl"
    convert, push = record["actions"]
    assert convert["session"] == "S20220711"
    assert push["project"] == "P_STORESCU"
    assert convert["bids_preview"]["path"] == (
        "sub-12343hucheng/ses-S20220711/anat/sub-12343hucheng_ses-S20220711_acq-tfl_T1w.nii.gz"
    )


def test_default_rules_on_the_orthanc_series(orthanc: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    url, series_id = orthanc
    assert main(["rules", "test", "--orthanc", url, "--series", series_id]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#5 anat-T1w_acq-tfl [")
    assert "matched      mr-pet-ct-images (line 19)" in out
    assert "1 series (1 convert) by <defaults>" in out
