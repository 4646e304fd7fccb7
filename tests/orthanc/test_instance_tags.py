"""The worker reads an instance's tags from its file (:mod:`orthanc_plugin.instance_tags`);
what the rules and the acquisition stage see must be what Orthanc's own simplified-tags say."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from pydicom.datadict import tag_for_keyword

from orthanc_plugin.acquisition_stage import hints_from_tags
from orthanc_plugin.instance_tags import instance_tags
from orthanc_plugin.rules.facts import facts_from_orthanc
from tests.orthanc.conftest import Harness

pytestmark = pytest.mark.orthanc

#: Names Orthanc gives private GE elements from DCMTK's private dictionary (standard-looking).
DCMTK_PRIVATE_NAMES = {"PulseSequenceName", "AcquisitionDuration", "ImagesInSeries", "CenterFrequency",
                       "ContentQualification", "ImageLocation", "AcquisitionContextSequence"}


def test_tags_read_from_the_file_are_orthancs_for_every_public_attribute(
    orthanc_factory: Callable[..., Harness], corpus: Path
) -> None:
    harness = orthanc_factory(plugin_enabled=False)
    checked = 0
    with requests.Session() as session:
        for suite in sorted(p for p in corpus.iterdir() if (p / "In").is_dir()):
            files = sorted(p for p in (suite / "In").rglob("*") if p.is_file())
            for path in files[:: max(1, len(files) // 6)]:
                answer = session.post(f"{harness.url}/instances", data=path.read_bytes(), timeout=60)
                if answer.status_code != 200:
                    continue  # not DICOM
                instance = answer.json()["ID"]
                theirs = session.get(f"{harness.url}/instances/{instance}/simplified-tags", timeout=60).json()
                data = session.get(f"{harness.url}/instances/{instance}/file", timeout=60).content
                ours = instance_tags(data)
                a = facts_from_orthanc(theirs, {}, instance_count=1).attributes
                b = facts_from_orthanc(ours, {}, instance_count=1).attributes
                public = {k for k in set(a) | set(b) if tag_for_keyword(k) is not None} - DCMTK_PRIVATE_NAMES
                # Orthanc shows some empty retired attributes (StudyComments) as null: absent for the rules.
                public = {k for k in public if (a.get(k) or "") != "" or (b.get(k) or "") != ""}
                assert {k: a.get(k) for k in public} == {k: b.get(k) for k in public}, path
                assert hints_from_tags(ours) == hints_from_tags(theirs), path
                checked += 1
    assert checked > 40
