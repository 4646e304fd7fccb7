"""Plain REST against the emulator: status codes, bodies and listing shapes as XNAT 1.8 answers them."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator

import pytest
import requests

from tests.xnat_emulator import XnatEmulator

from .conftest import USERS

SUBJECT = "/data/projects/P1/subjects/sub-01"
SESSION = f"{SUBJECT}/experiments/ses-01"
SCAN = f"{SESSION}/scans/1"
RESOURCE = f"{SCAN}/resources/NIFTI"


def _put(http: requests.Session, emulator: XnatEmulator, path: str, **params: str) -> requests.Response:
    return http.put(f"{emulator.url}{path}", params=params)


@pytest.fixture
def scan(emulator: XnatEmulator, http: requests.Session) -> str:
    """sub-01 / ses-01 (MR) / scan 1 (T1w) in P1, created over REST; returns the session's accession ID."""
    assert _put(http, emulator, SUBJECT).status_code == 201
    made = _put(http, emulator, SESSION, xsiType="xnat:mrSessionData", date="2024-03-05")
    assert made.status_code == 201
    assert _put(http, emulator, SCAN, xsiType="xnat:mrScanData", type="T1w").status_code == 201
    return made.text


def test_put_answers_ids_as_plain_text_201_then_200(emulator: XnatEmulator, http: requests.Session) -> None:
    created = _put(http, emulator, SUBJECT)
    again = _put(http, emulator, SUBJECT)
    assert (created.status_code, created.text) == (201, "XNAT_S00001")
    assert (again.status_code, again.text) == (200, "XNAT_S00001")
    assert created.headers["Content-Type"].startswith("text/plain")

    session = _put(
        http,
        emulator,
        SESSION,
        xsiType="xnat:petSessionData",
        **{"xnat:petSessionData/date": "20240305", "xnat:petSessionData/time": "091011.500"},
    )
    assert (session.status_code, session.text) == (201, "XNAT_E00001")
    by_id = _put(http, emulator, f"/data/projects/P1/subjects/XNAT_S00001/experiments/{session.text}", note="x")
    assert (by_id.status_code, by_id.text) == (200, "XNAT_E00001")

    scan = _put(http, emulator, f"{SESSION}/scans/4", xsiType="xnat:petScanData", type="PET AC")
    assert (scan.status_code, scan.text) == (201, "4")
    assert _put(http, emulator, f"{SESSION}/scans/4", series_description="later").status_code == 200

    (record,) = emulator.inventory().experiments
    assert (record.xsi_type, record.date, record.time) == ("xnat:petSessionData", "2024-03-05", "09:10:11")
    (scan_record,) = emulator.inventory().scans
    assert (scan_record.type, scan_record.series_description) == ("PET AC", "later")


@pytest.mark.parametrize(
    ("path", "xsi_type"),
    [
        (SESSION, None),
        (SESSION, "xnat:imageSessionData"),
        (SESSION, "xnat:experimentData"),
        (SESSION, "xnat:mrScanData"),
        (SESSION, "xnat:noSuchData"),
        (SCAN, "xnat:imageScanData"),
        (SCAN, "xnat:mrSessionData"),
        (SCAN, None),
    ],
)
def test_missing_unknown_or_abstract_xsi_types_are_refused(
    emulator: XnatEmulator, http: requests.Session, path: str, xsi_type: str | None
) -> None:
    _put(http, emulator, SUBJECT)
    if path == SCAN:
        _put(http, emulator, SESSION, xsiType="xnat:mrSessionData")
    params = {"xsiType": xsi_type} if xsi_type else {}
    assert _put(http, emulator, path, **params).status_code == 400
    assert emulator.inventory().scans == ()
    assert len(emulator.inventory().experiments) == (1 if path == SCAN else 0)


def test_existing_resource_put_answers_409(emulator: XnatEmulator, http: requests.Session, scan: str) -> None:
    assert _put(http, emulator, RESOURCE, format="NIFTI", content="T1w").status_code == 201
    assert _put(http, emulator, RESOURCE).status_code == 409
    assert _put(http, emulator, f"/data/experiments/{scan}/scans/1/resources/NIFTI").status_code == 409
    assert _put(http, emulator, f"{SESSION}/resources/NIFTI").status_code == 201
    levels = {(r.scan, r.label, r.format) for r in emulator.inventory().resources}
    assert levels == {("1", "NIFTI", "NIFTI"), (None, "NIFTI", "")}


def test_file_put_without_overwrite_reports_duplicates_and_writes_nothing(
    emulator: XnatEmulator, http: requests.Session, scan: str
) -> None:
    url = f"{emulator.url}{RESOURCE}/files/anat/image.nii.gz"
    first = http.put(url, data=b"first version", headers={"Content-Type": "application/octet-stream"})
    assert first.status_code == 200

    duplicate = http.put(url, data=b"second version")
    assert duplicate.status_code == 200
    assert duplicate.json() == {"duplicates": ["anat/image.nii.gz"]}
    assert emulator.duplicate_file_writes == 1
    stored = emulator.inventory().file("anat/image.nii.gz")
    assert emulator.file_data(stored) == b"first version"

    replaced = http.put(url, params={"overwrite": "true"}, data=b"second version")
    assert replaced.status_code == 200
    assert http.get(url).content == b"second version"
    assert emulator.inventory().file("anat/image.nii.gz").md5 == hashlib.md5(b"second version").hexdigest()
    assert emulator.duplicate_file_writes == 1


def test_multipart_chunked_and_extracted_uploads(emulator: XnatEmulator, http: requests.Session, scan: str) -> None:
    files_url = f"{emulator.url}{RESOURCE}/files"
    named = http.put(f"{files_url}/a.json", files={"file": ("ignored.json", b'{"a": 1}')})
    assert named.status_code == 200
    collection = http.post(files_url, files={"file": ("b.json", b'{"b": 2}')})
    assert collection.status_code == 200

    def chunks() -> Iterator[bytes]:
        yield b"chunk one, "
        yield b"chunk two"

    assert http.put(f"{files_url}/chunked.txt", data=chunks()).status_code == 200

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("dwi/dwi.bval", "0 1000")
        bundle.writestr("dwi/dwi.bvec", "1 0 0")
    extracted = http.put(f"{files_url}/upload.zip", params={"extract": "true"}, data=archive.getvalue())
    assert extracted.status_code == 200

    stored = {f.path: emulator.file_data(f) for f in emulator.inventory().files}
    assert stored == {
        "a.json": b'{"a": 1}',
        "b.json": b'{"b": 2}',
        "chunked.txt": b"chunk one, chunk two",
        "dwi/dwi.bval": b"0 1000",
        "dwi/dwi.bvec": b"1 0 0",
    }


def test_listings_use_xnat_columns_and_string_values(emulator: XnatEmulator, http: requests.Session, scan: str) -> None:
    http.put(f"{emulator.url}{SCAN}", params={"series_description": "t1_mprage"})
    http.put(f"{emulator.url}{RESOURCE}/files/sub/x.nii.gz", data=b"12345")

    def result(path: str) -> list[dict[str, str]]:
        payload = http.get(f"{emulator.url}{path}", params={"format": "json"}).json()["ResultSet"]
        assert payload["totalRecords"] == str(len(payload["Result"]))
        for row in payload["Result"]:
            assert all(isinstance(value, str) for value in row.values()), row
        return payload["Result"]

    (project,) = result("/data/projects")
    assert (project["ID"], project["URI"]) == ("P1", "/data/projects/P1")
    (subject,) = result("/data/projects/P1/subjects")
    assert (subject["label"], subject["ID"], subject["project"]) == ("sub-01", "XNAT_S00001", "P1")
    (experiment,) = result(f"{SUBJECT}/experiments")
    assert experiment["xsiType"] == "xnat:mrSessionData"
    assert (experiment["ID"], experiment["label"], experiment["date"]) == (scan, "ses-01", "2024-03-05")
    assert experiment["URI"] == f"/data/experiments/{scan}"
    assert result("/data/experiments") == result("/data/projects/P1/experiments")
    (scan_row,) = result(f"{SESSION}/scans")
    assert {k: scan_row[k] for k in ("ID", "type", "series_description", "xsiType", "URI")} == {
        "ID": "1",
        "type": "T1w",
        "series_description": "t1_mprage",
        "xsiType": "xnat:mrScanData",
        "URI": f"/data/experiments/{scan}/scans/1",
    }
    (resource,) = result(f"{SCAN}/resources")
    assert (resource["label"], resource["file_count"], resource["file_size"]) == ("NIFTI", "1", "5")
    (file_row,) = result(f"{RESOURCE}/files")
    assert file_row == {
        "Name": "x.nii.gz",
        "Size": "5",
        "URI": f"/data/experiments/{scan}/scans/1/resources/{resource['xnat_abstractresource_id']}/files/sub/x.nii.gz",
        "collection": "NIFTI",
        "file_tags": "",
        "file_format": "",
        "file_content": "",
        "cat_ID": resource["xnat_abstractresource_id"],
        "digest": hashlib.md5(b"12345").hexdigest(),
    }
    assert http.get(f"{emulator.url}{file_row['URI']}").content == b"12345"
    assert result(f"/data/experiments/{scan}/scans/ALL/files") == [file_row]


def test_single_objects_as_items_json_and_shortcut_urls(
    emulator: XnatEmulator, http: requests.Session, scan: str
) -> None:
    item = http.get(f"{emulator.url}/data/experiments/{scan}", params={"format": "json"}).json()["items"][0]
    assert item["meta"]["xsi:type"] == "xnat:mrSessionData"
    assert item["meta"]["isHistory"] is False
    assert item["data_fields"]["label"] == "ses-01"
    assert item["data_fields"]["subject_ID"] == "XNAT_S00001"
    assert item["data_fields"]["date"] == "2024-03-05"
    (scans,) = [child for child in item["children"] if child["field"] == "scans/scan"]
    assert scans["items"][0]["data_fields"]["type"] == "T1w"

    via_archive = http.get(
        emulator.url + SESSION.replace("/data/", "/data/archive/", 1), params={"format": "json"}
    ).json()
    assert via_archive["items"][0]["data_fields"]["ID"] == scan
    subject = http.get(f"{emulator.url}/data/subjects/XNAT_S00001", params={"format": "json"}).json()
    assert subject["items"][0]["data_fields"]["label"] == "sub-01"
    xml = http.get(f"{emulator.url}{SESSION}", params={"format": "xml"})
    assert xml.text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<xnat:MRSession ')
    assert http.get(f"{emulator.url}/data/experiments/XNAT_E99999").status_code == 404


def test_downloads_head_and_resource_zip(emulator: XnatEmulator, http: requests.Session, scan: str) -> None:
    payload = bytes(range(256)) * 3
    http.put(f"{emulator.url}{RESOURCE}/files/a.nii.gz", data=payload)
    http.put(f"{emulator.url}{RESOURCE}/files/sub/b.json", data=b"{}")

    assert http.get(f"{emulator.url}{RESOURCE}/files/a.nii.gz").content == payload
    head = http.head(f"{emulator.url}{RESOURCE}/files/a.nii.gz")
    assert (head.status_code, head.headers["Content-Length"], head.content) == (200, str(len(payload)), b"")

    archive = http.get(f"{emulator.url}{RESOURCE}/files", params={"format": "zip"})
    with zipfile.ZipFile(io.BytesIO(archive.content)) as bundle:
        names = sorted(bundle.namelist())
        assert names == [
            "ses-01/scans/1-T1w/resources/NIFTI/files/a.nii.gz",
            "ses-01/scans/1-T1w/resources/NIFTI/files/sub/b.json",
        ]
        assert bundle.read(names[0]) == payload


def test_deletes(emulator: XnatEmulator, http: requests.Session, scan: str) -> None:
    file_url = f"{emulator.url}{RESOURCE}/files/a.txt"
    http.put(file_url, data=b"a")
    http.put(f"{emulator.url}{RESOURCE}/files/b.txt", data=b"b")

    assert http.delete(file_url).status_code == 200
    assert http.get(file_url).status_code == 404
    assert http.delete(file_url).status_code == 404
    assert http.delete(f"{emulator.url}{RESOURCE}").status_code == 200
    assert emulator.inventory().files == ()
    assert http.delete(f"{emulator.url}/data/experiments/{scan}/scans/1").status_code == 200
    assert http.get(f"{emulator.url}{SCAN}").status_code == 404
    assert http.delete(f"{emulator.url}{SESSION}").status_code == 200
    assert emulator.inventory().experiments == ()
    assert [s.label for s in emulator.inventory().subjects] == ["sub-01"]


def test_project_access_follows_roles(emulator: XnatEmulator, http: requests.Session, scan: str) -> None:
    url = emulator.url

    def as_user(login: str) -> requests.Session:
        client = requests.Session()
        client.auth = (login, USERS[login])
        return client

    with as_user("bob") as bob, as_user("carol") as carol, as_user("alice") as alice:
        assert bob.get(f"{url}/data/projects", params={"format": "json"}).json()["ResultSet"]["Result"] == []
        assert bob.get(f"{url}/data/projects/P1", params={"format": "json"}).status_code == 403
        assert bob.get(f"{url}/data/experiments/{scan}", params={"format": "json"}).status_code == 403
        assert bob.put(f"{url}/data/projects/P1/subjects/sub-bob").status_code == 403
        assert bob.get(f"{url}/data/projects/NOPE", params={"format": "json"}).status_code == 404

        assert carol.get(f"{url}{SESSION}", params={"format": "json"}).status_code == 200
        assert carol.put(f"{url}/data/projects/P1/subjects/sub-carol").status_code == 403
        assert carol.put(f"{url}{RESOURCE}/files/c.txt", data=b"c").status_code == 403

        assert alice.put(f"{url}/data/projects/P1/subjects/sub-alice").status_code == 201
        assert alice.put(f"{url}{RESOURCE}/files/a.txt", data=b"a").status_code == 200
        assert alice.delete(f"{url}{RESOURCE}/files/a.txt").status_code == 403

        assert http.put(f"{url}/data/projects/P1/users/Owners/bob").status_code == 200
        assert bob.delete(f"{url}{RESOURCE}/files/a.txt").status_code == 200

    assert {s.label for s in emulator.inventory().subjects} == {"sub-01", "sub-alice"}
    assert emulator.inventory().files == ()
