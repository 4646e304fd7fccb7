"""How XNAT shows stored objects: listing rows, single-item JSON, XML documents, catalogs and zips.

Listing rows follow XNAT 1.8's column names and, as XNAT does, carry every value as a string. Single
objects (``?format=json``) come as ``{"items": [{"data_fields": ..., "meta": ..., "children": [...]}]}``,
the shape xnat-py's object API reads. A resource URL answers with its catalog XML even when JSON is asked
for, as XNAT does (xnat-py knows and falls back to the resources listing).
"""

from __future__ import annotations

import datetime as dt
import html
import io
import logging
import posixpath
import tarfile
import zipfile
from typing import Any

from ._model import Experiment, Project, Resource, Scan, StoredFile, Subject
from ._wire import JsonRow

logger = logging.getLogger(__name__)

XNAT_NAMESPACE = "http://nrg.wustl.edu/xnat"


def listing_date(moment: dt.datetime) -> str:
    """``insert_date`` as XNAT lists it: ``2024-01-02 10:11:12.345``."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def meta_date(moment: dt.datetime) -> str:
    """``meta.start_date`` as XNAT writes it: ``Tue Jan 02 10:11:12 UTC 2024``."""
    return moment.astimezone(dt.UTC).strftime("%a %b %d %H:%M:%S UTC %Y")


def _meta(xsi_type: str, created: dt.datetime, event_id: int = 1) -> dict[str, Any]:
    return {"create_event_id": event_id, "xsi:type": xsi_type, "isHistory": False, "start_date": meta_date(created)}


def _with_columns(row: JsonRow, extras: dict[str, str], columns: list[str] | None) -> JsonRow:
    """Default columns, plus the extra ones a ``columns=`` query asks for (unknown ones are left out)."""
    if columns:
        for column in columns:
            if column not in row and column in extras:
                row[column] = extras[column]
    return row


# -- listing rows ---------------------------------------------------------------------------------------
def project_row(project: Project, columns: list[str] | None = None) -> JsonRow:
    row = {
        "ID": project.project_id,
        "secondary_ID": project.secondary_id,
        "name": project.name,
        "description": project.description,
        "pi_firstname": "",
        "pi_lastname": "",
        "URI": f"/data/projects/{project.project_id}",
    }
    extras = {"insert_date": listing_date(project.created), "insert_user": project.insert_user, **project.fields}
    return _with_columns(row, extras, columns)


def subject_row(subject: Subject, columns: list[str] | None = None) -> JsonRow:
    row = {
        "project": subject.project,
        "insert_user": subject.insert_user,
        "ID": subject.subject_id,
        "insert_date": listing_date(subject.created),
        "label": subject.label,
        "URI": f"/data/subjects/{subject.subject_id}",
    }
    return _with_columns(row, dict(subject.fields), columns)


def experiment_row(experiment: Experiment, subject: Subject, columns: list[str] | None = None) -> JsonRow:
    row = {
        "date": experiment.fields.get("date", ""),
        "xsiType": experiment.xsi_type,
        "xnat:subjectassessordata/id": experiment.experiment_id,
        "insert_date": listing_date(experiment.created),
        "project": experiment.project,
        "ID": experiment.experiment_id,
        "label": experiment.label,
        "URI": f"/data/experiments/{experiment.experiment_id}",
    }
    extras = {
        "subject_ID": subject.subject_id,
        "subject_label": subject.label,
        "subject_project": subject.project,
        "insert_user": experiment.insert_user,
        "time": "",
        **experiment.fields,
    }
    return _with_columns(row, extras, columns)


def scan_row(experiment: Experiment, scan: Scan) -> JsonRow:
    return {
        "xsiType": scan.xsi_type,
        "xnat_imagescandata_id": str(scan.row_id),
        "note": scan.fields.get("note", ""),
        "series_description": scan.fields.get("series_description", ""),
        "ID": scan.scan_id,
        "type": scan.fields.get("type", ""),
        "URI": f"/data/experiments/{experiment.experiment_id}/scans/{scan.scan_id}",
        "quality": scan.fields.get("quality", ""),
    }


def resource_row(resource: Resource, scan: Scan | None = None) -> JsonRow:
    return {
        "xnat_abstractresource_id": str(resource.resource_id),
        "label": resource.label,
        "element_name": "xnat:resourceCatalog",
        "category": "scans" if scan is not None else "resources",
        "cat_id": scan.scan_id if scan is not None else "",
        "cat_desc": resource.description,
        "format": resource.format,
        "content": resource.content,
        "tags": resource.tags,
        "file_count": str(len(resource.files)),
        "file_size": str(resource.file_size),
    }


def file_row(resource: Resource, stored: StoredFile, resource_uri: str) -> JsonRow:
    """``resource_uri`` is the canonical URL of the resource (by numeric ID) the ``URI`` column builds on."""
    return {
        "Name": stored.name,
        "Size": str(stored.size),
        "URI": f"{resource_uri}/files/{stored.path}",
        "collection": resource.label,
        "file_tags": stored.tags,
        "file_format": stored.format,
        "file_content": stored.content,
        "cat_ID": str(resource.resource_id),
        "digest": stored.md5,
    }


# -- single items (?format=json) ------------------------------------------------------------------------
def resource_item(resource: Resource) -> dict[str, Any]:
    return {
        "children": [],
        "meta": {"xsi:type": "xnat:resourceCatalog", "isHistory": False},
        "data_fields": {
            "label": resource.label,
            "format": resource.format,
            "content": resource.content,
            "description": resource.description,
            "tags": resource.tags,
            "xnat_abstractresource_id": resource.resource_id,
            "file_count": len(resource.files),
            "file_size": resource.file_size,
        },
    }


def _resources_child(field_name: str, resources: dict[str, Resource]) -> list[dict[str, Any]]:
    if not resources:
        return []
    return [{"field": field_name, "items": [resource_item(r) for r in resources.values()]}]


def project_item(project: Project) -> dict[str, Any]:
    return {
        "children": _resources_child("resources/resource", project.resources),
        "meta": _meta("xnat:projectData", project.created),
        "data_fields": {
            "ID": project.project_id,
            "secondary_ID": project.secondary_id,
            "name": project.name,
            "description": project.description,
            **project.fields,
        },
    }


def subject_item(subject: Subject) -> dict[str, Any]:
    return {
        "children": _resources_child("resources/resource", subject.resources),
        "meta": _meta("xnat:subjectData", subject.created),
        "data_fields": {
            "ID": subject.subject_id,
            "label": subject.label,
            "project": subject.project,
            **subject.fields,
        },
    }


def scan_item(scan: Scan) -> dict[str, Any]:
    return {
        "children": _resources_child("file", scan.resources),
        "meta": _meta(scan.xsi_type, scan.created),
        "data_fields": {
            "ID": scan.scan_id,
            "image_session_ID": scan.image_session_id,
            "xnat_imagescandata_id": scan.row_id,
            **scan.fields,
        },
    }


def experiment_item(experiment: Experiment) -> dict[str, Any]:
    children = []
    if experiment.scans:
        children.append({"field": "scans/scan", "items": [scan_item(s) for s in experiment.scans.values()]})
    children.extend(_resources_child("resources/resource", experiment.resources))
    return {
        "children": children,
        "meta": _meta(experiment.xsi_type, experiment.created),
        "data_fields": {
            "ID": experiment.experiment_id,
            "label": experiment.label,
            "project": experiment.project,
            "subject_ID": experiment.subject_id,
            **experiment.fields,
        },
    }


def items(item: dict[str, Any]) -> dict[str, Any]:
    return {"items": [item]}


# -- XML ------------------------------------------------------------------------------------------------
def item_xml(element: str, attributes: dict[str, str], fields: dict[str, str]) -> str:
    """A flat XML document for one object (``?format=xml``); nested fields (``a/b``) are left out."""
    attrs = "".join(f' {key}="{html.escape(value)}"' for key, value in attributes.items() if value)
    body = "".join(
        f"\n\t<xnat:{key}>{html.escape(value)}</xnat:{key}>" for key, value in fields.items() if "/" not in key
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<xnat:{element}{attrs} xmlns:xnat="{XNAT_NAMESPACE}" '
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">{body}\n</xnat:{element}>\n'
    )


def catalog_xml(resource: Resource) -> str:
    """The resource's catalog, as XNAT answers ``GET .../resources/R`` in any format."""
    entries = "".join(
        f'\n<cat:entry URI="{html.escape(f.path)}" ID="{html.escape(f.path)}" name="{html.escape(f.name)}" '
        f'digest="{f.md5}" format="{html.escape(f.format)}" content="{html.escape(f.content)}"/>'
        for f in resource.files.values()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<cat:Catalog ID="{html.escape(resource.label)}" xmlns:arc="http://nrg.wustl.edu/arc" '
        'xmlns:cat="http://nrg.wustl.edu/catalog" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        f"<cat:entries>{entries}\n</cat:entries>\n</cat:Catalog>\n"
    )


# -- archives -------------------------------------------------------------------------------------------
def build_zip(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(_ARCHIVE_SUFFIXES)


def _safe_member(name: str) -> str | None:
    cleaned = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
    if cleaned in ("", ".") or cleaned.startswith(".."):
        return None
    return cleaned


def extract_archive(name: str, data: bytes) -> list[tuple[str, bytes]]:
    """The files inside an uploaded zip/tar(.gz), for ``?extract=true`` (unsafe member paths skipped)."""
    members: list[tuple[str, bytes]] = []
    if name.lower().endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                path = _safe_member(info.filename)
                if path is not None and not info.is_dir():
                    members.append((path, archive.read(info)))
        return members
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        for member in archive.getmembers():
            path = _safe_member(member.name)
            extracted = archive.extractfile(member) if member.isfile() else None
            if path is not None and extracted is not None:
                members.append((path, extracted.read()))
    return members
