"""The REST handlers (``orthanc_plugin.routes.Routes``) without Orthanc: plain functions of the
request over a real queue and dataset, answering clear HTTP errors."""

from __future__ import annotations

import gzip
import io
import json
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

import orthanc_plugin
from converters import convert_series
from converters.records import SeriesResult
from orthanc_plugin.jobs import ConvertJob, ConvertResult, DatasetConversion, Outcome, SegmentJob, UnchangedResult
from orthanc_plugin.routes import QC_FOLDER, UNIDENTIFIED, Caller, Response, Routes, WritePolicy
from orthanc_plugin.rules.check import CheckContext, load_default_rules
from orthanc_plugin.rules.dry_run import CANDIDATE_SOURCE, DryRunner
from orthanc_plugin.rules.facts import read_orthanc_facts
from orthanc_plugin.sqlite_queue import SqliteJobQueue
from orthanc_plugin.status_page import ASSETS, explorer_extension, ui_asset
from tests.rules.conftest import ORTHANC


@pytest.fixture
def routes(tmp_path: Path) -> Routes:
    queue = SqliteJobQueue(tmp_path / "state")
    known = {"s-1", "s-2"}
    return Routes(queue, tmp_path / "bids", lambda series: series in known, lambda: {"jobs": queue.counts()},
                  uploads_dir=tmp_path / "uploads", rules_status=lambda: {"digest": "sha256:x"})


def _json(response: Response) -> Any:
    return json.loads(response.body)


def test_job_listing_validates_its_arguments(routes: Routes) -> None:
    routes.queue.enqueue("s-1", "stable", ConvertJob())
    assert routes.jobs("POST", {}).status == 405
    assert routes.jobs("GET", {"limit": "x"}).status == 400
    assert routes.jobs("GET", {"state": "bogus"}).status == 400
    listed = _json(routes.jobs("GET", {"state": "queued"}))
    assert isinstance(listed, list) and [job["series"] for job in listed] == ["s-1"]
    assert listed[0]["params"] == {"derive": []}


def test_one_job_and_retry(routes: Routes) -> None:
    job_id = routes.queue.enqueue("s-1", "stable", ConvertJob())
    assert routes.job("GET", "abc", None).status == 400
    assert routes.job("GET", "999", None).status == 404
    assert _json(routes.job("GET", str(job_id), None))["state"] == "queued"
    assert routes.job("POST", str(job_id), "retry").status == 409  # not finished
    routes.queue.claim(1)
    routes.queue.fail(job_id, "boom", permanent=True)
    retried = routes.job("POST", str(job_id), "retry")
    assert retried.status == 202 and _json(retried)["state"] == "queued"


def test_convert_by_hand_with_derivations(routes: Routes) -> None:
    assert routes.series("POST", "s-9", "convert").status == 404
    assert routes.series("POST", "s-1", "convert", body=b"not json").status == 400
    assert routes.series("POST", "s-1", "convert", body=b'{"derive": ["fa"]}').status == 400
    answer = routes.series("POST", "s-1", "convert", body=b'{"derive": ["seg_mask"]}')
    assert answer.status == 202
    job = routes.queue.get(_json(answer)["id"])
    assert job is not None and job.params == ConvertJob(derive=("adc",))  # seg_mask is made by adc


def _label_map() -> bytes:
    buffer = io.BytesIO()
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    buffer.write(image.to_bytes())
    return gzip.compress(buffer.getvalue())


def test_segmentation_uploads(routes: Routes) -> None:
    assert routes.series("POST", "s-1", "segmentations", body=b"").status == 400
    assert routes.series("POST", "s-1", "segmentations", body=b"x" * 400).status == 400
    assert routes.series("POST", "s-1", "segmentations", body=b"x", content_type="multipart/form-data").status == 415
    bad = routes.series("POST", "s-1", "segmentations", body=_label_map(), get={"desc": "no spaces!"})
    assert bad.status == 400
    answer = routes.series("POST", "s-1", "segmentations", body=_label_map(),
                           get={"labels": '{"1": "tumour"}', "desc": "tumour", "segmentation_type": "LABELMAP"})
    assert answer.status == 202
    job = routes.queue.get(_json(answer)["id"])
    assert job is not None and isinstance(job.params, SegmentJob)
    assert (job.params.desc, job.params.segmentation_type) == ("tumour", "LABELMAP")
    assert Path(job.params.labelmap).read_bytes()[:2] == b"\x1f\x8b" and Path(str(job.params.labels)).is_file()


def test_nifti_zip_of_a_converted_series(routes: Routes, corpus: Path, tmp_path: Path) -> None:
    assert routes.series("GET", "s-1", "nifti").status == 404  # nothing converted yet
    (source,) = (corpus / "dcm_qa_xa30" / "In").glob("5_*")
    series = convert_series(source, tmp_path / "bids")
    job_id = routes.queue.enqueue("s-1", "stable", ConvertJob())
    routes.queue.claim(1)
    result = ConvertResult(series, conversions={"default": DatasetConversion(str(tmp_path / "bids"), series)})
    routes.queue.finish(job_id, Outcome("done", result, series.outputs))
    answer = routes.series("GET", "s-1", "nifti")
    assert answer.status == 200 and answer.content_type == "application/zip"
    names = sorted(zipfile.ZipFile(io.BytesIO(answer.body)).namelist())
    assert names == sorted(series.outputs)
    # A job whose files are gone says so.
    other = routes.queue.enqueue("s-2", "stable", ConvertJob())
    routes.queue.claim(1)
    routes.queue.finish(other, Outcome("done", ConvertResult(SeriesResult("9.9", "x", "skipped"))))
    assert routes.series("GET", "s-2", "nifti").status == 404


def test_status_and_rules_routes(routes: Routes) -> None:
    assert _json(routes.status_route("GET")) == {"jobs": {}}
    assert _json(routes.rules_route("GET")) == {"digest": "sha256:x"}
    assert routes.rules_route("POST").status == 405
    assert routes.series("GET", "s-1", "bogus").status == 404


# -- the status page's routes ----------------------------------------------------------------------


def _png(width: int = 3, height: int = 2) -> bytes:
    """A real (tiny, grey) PNG file, written with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _done_conversion(routes: Routes, series: str, root: Path, qc: list[str] | None) -> int:
    """A done convert job whose stored result carries ``qc`` (the key the QC stage adds)."""
    record = SeriesResult("1.2.3", "anat-T1w", "converted", outputs=("sub-01/anat/sub-01_T1w.nii.gz",), subject="01")
    stored = ConvertResult(record, conversions={"default": DatasetConversion(str(root), record)}).to_json()
    if qc is not None:
        stored["qc"] = qc
    job_id = routes.queue.enqueue(series, "stable", ConvertJob())
    claimed = routes.queue.claim(1)
    assert claimed is not None and claimed.id == job_id
    routes.queue.finish(job_id, Outcome("done", UnchangedResult(stored, "built by the test"), record.outputs))
    return job_id


def test_qc_pictures_of_the_latest_conversion(routes: Routes, tmp_path: Path) -> None:
    root = tmp_path / "bids"
    qc = root / QC_FOLDER / "sub-01"
    qc.mkdir(parents=True)
    picture = _png()
    (qc / "sub-01_T1w_qc.png").write_bytes(picture)
    (qc / "not-a-png.png").write_bytes(b"GIF89a....")
    secret = tmp_path / "outside.png"
    secret.write_bytes(picture)
    (qc / "link.png").symlink_to(secret)
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-01" / "anat" / "image.png").write_bytes(picture)  # in the dataset, not a QC picture
    assert routes.qc("GET", "s-1").status == 404  # no conversion yet
    listed = [f"{QC_FOLDER}/sub-01/sub-01_T1w_qc.png", f"{QC_FOLDER}/sub-01/not-a-png.png", "../outside.png",
              f"{QC_FOLDER}/sub-01/link.png", f"{QC_FOLDER}/../../sub-01/anat/image.png", str(secret),
              f"{QC_FOLDER}/sub-01/gone.png"]
    _done_conversion(routes, "s-1", root, listed)
    assert _json(routes.qc("GET", "s-1")) == [
        {"path": path, "url": f"/bidsbridge/series/s-1/qc/{index}"} for index, path in enumerate(listed)
    ]
    answer = routes.qc("GET", "s-1", "0")
    assert (answer.status, answer.content_type, answer.body) == (200, "image/png", picture)
    assert routes.qc("GET", "s-1", "1").status == 404  # not a PNG
    for index in ("2", "3", "4", "5"):  # outside the dataset, through a symlink, elsewhere in it, absolute
        refused = routes.qc("GET", "s-1", index)
        assert refused.status == 403 and b"resolves outside" in refused.body, index
    assert routes.qc("GET", "s-1", "6").status == 404  # listed but gone
    assert routes.qc("GET", "s-1", "7").status == 404
    assert routes.qc("GET", "s-1", "-1").status == 404
    assert routes.qc("POST", "s-1").status == 405
    # A newer conversion without pictures (e.g. from before the QC stage) is the one shown.
    _done_conversion(routes, "s-1", root, None)
    assert _json(routes.qc("GET", "s-1")) == []
    assert routes.qc("GET", "s-1", "0").status == 404


def test_whoami_says_who_may_write(tmp_path: Path) -> None:
    queue = SqliteJobQueue(tmp_path / "state")
    routes = Routes(queue, tmp_path / "bids", lambda _: True, dict, write_policy=WritePolicy(frozenset({"admin"})))
    assert _json(routes.whoami("GET", Caller("admin", "basic"))) == {"user": "admin", "source": "basic",
                                                                      "can_write": True}
    assert _json(routes.whoami("GET", Caller("viewer", "basic")))["can_write"] is False
    # The authorization plugin's header value is a token: it is never repeated.
    assert _json(routes.whoami("GET", Caller("admin", "header"))) == {"user": None, "source": "header",
                                                                       "can_write": True}
    assert _json(routes.whoami("GET", UNIDENTIFIED))["can_write"] is False
    assert routes.whoami("POST", UNIDENTIFIED).status == 405


@pytest.fixture
def dry_routes(tmp_path: Path) -> Routes:
    """Routes whose dry runs read the facts of ``s-1`` as Orthanc's REST API answers them."""
    runner = DryRunner(active=load_default_rules, context=CheckContext(destinations=frozenset()),
                       facts=lambda series: read_orthanc_facts(ORTHANC.__getitem__, series))
    return Routes(SqliteJobQueue(tmp_path / "state"), tmp_path / "bids", lambda series: series == "s-1", dict,
                  dry_runner=runner)


def test_rules_dry_run_of_the_active_rules(dry_routes: Routes) -> None:
    assert dry_routes.rules_test("GET", b"").status == 405
    for body in (b"", b"not json", b"[]", b'{"rules": "x"}', b'{"series": 5}', b'{"series": "s-1", "rules": 1}'):
        assert dry_routes.rules_test("POST", body).status == 400, body
    assert dry_routes.rules_test("POST", b'{"series": "s-9"}').status == 404
    answer = _json(dry_routes.rules_test("POST", b'{"series": "s-1"}'))
    assert answer["rules"]["candidate"] is False and answer["rules"]["source"] == "<defaults>"
    assert answer["decision"]["orthanc_id"] == "s-1" and answer["decision"]["outcome"] == "convert"
    lines = answer["text"].splitlines()
    assert lines[0] == "#5 anat-T1w_acq-tfl [1.2.3.4]: CONVERT"
    assert "  not matched  non-image-objects: " in answer["text"]
    assert "  matched      mr-pet-ct-images (line 19)" in lines
    assert "  -> convert into dataset 'default': sub-12343hucheng/ses-20220711/anat/" in answer["text"]
    (convert,) = [a for a in answer["decision"]["actions"] if a["action"] == "convert"]
    assert convert["bids_preview"]["path"].endswith("_T1w.nii.gz")


def test_rules_dry_run_of_a_candidate_text(dry_routes: Routes) -> None:
    candidate = (
        "version: 1\nrules:\n"
        "  - name: from-the-neuro-prisma\n    match: {source.calling_aet: PRISMA_NEURO}\n"
        "    actions:\n      - skip: \"test scans of {SeriesDescription}\"\n"
    )
    body = json.dumps({"series": "s-1", "rules": candidate}).encode()
    answer = _json(dry_routes.rules_test("POST", body))
    assert answer["rules"]["candidate"] is True and answer["rules"]["source"] == CANDIDATE_SOURCE
    assert answer["decision"]["outcome"] == "skip"
    assert "  -> skip: test scans of anat-T1w_acq-tfl (rule from-the-neuro-prisma)" in answer["text"]
    # A candidate that fails its checks: 422 with positioned diagnostics, nothing evaluated.
    broken = json.dumps({"series": "s-1", "rules": candidate.replace("skip:", "skp:")})
    refused = dry_routes.rules_test("POST", broken.encode())
    assert refused.status == 422
    diagnostics = _json(refused)["diagnostics"]
    assert diagnostics and diagnostics[0]["file"] == CANDIDATE_SOURCE and diagnostics[0]["line"] == 6
    assert "skp" in diagnostics[0]["message"]
    # An unknown destination is refused in a candidate as in the rule file (the context is the same).
    push = candidate.replace('skip: "test scans of {SeriesDescription}"', "push_xnat: {server: nowhere, project: P}")
    unknown = dry_routes.rules_test("POST", json.dumps({"series": "s-1", "rules": push}).encode())
    assert unknown.status == 422 and "nowhere" in _json(unknown)["error"]


def test_status_page_files(tmp_path: Path) -> None:
    index = ui_asset("GET", None)
    assert index.status == 200 and index.content_type.startswith("text/html")
    assert ui_asset("GET", "index.html").body == index.body
    for name in ("app.js", "style.css"):
        assert ui_asset("GET", name).status == 200 and name.encode() in index.body
    assert ui_asset("GET", "app.js").content_type.startswith("text/javascript")
    assert ui_asset("GET", "../routes.py").status == 404
    assert ui_asset("GET", "explorer.js").status == 404  # handed to Orthanc Explorer, not served
    assert ui_asset("POST", None).status == 405
    assert "../bidsbridge/ui/index.html" in explorer_extension()
    # No request leaves Orthanc: no absolute URL anywhere in the page (no CDN, no fonts, no analytics).
    for name in (*ASSETS, "explorer.js"):
        text = (Path(orthanc_plugin.__file__).parent / "ui" / name).read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
