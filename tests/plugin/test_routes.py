"""The REST handlers (``orthanc_plugin.routes.Routes``) without Orthanc: plain functions of the
request over a real queue and dataset, answering clear HTTP errors."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from converters import convert_series
from converters.records import SeriesResult
from orthanc_plugin.jobs import ConvertJob, ConvertResult, DatasetConversion, Outcome, SegmentJob
from orthanc_plugin.routes import Response, Routes
from orthanc_plugin.sqlite_queue import SqliteJobQueue


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
