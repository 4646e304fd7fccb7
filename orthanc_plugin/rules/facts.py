"""Build :class:`~.model.SeriesFacts` from what the caller has: pydicom datasets or Orthanc's REST JSON.

Two small adapters, so the plugin's worker and ``bidsbridge rules test`` see the same facts:

* :func:`facts_from_dataset` — a pydicom dataset of the series' first instance (headers only);
  :func:`facts_from_folder` reads a folder, groups files by SeriesInstanceUID and uses each
  series' first instance (lowest InstanceNumber, then file name) plus the file count.
* :func:`facts_from_orthanc` — the JSON Orthanc answers for one instance:
  ``/instances/{id}/simplified-tags`` (or ``/tags?simplify``) and ``/instances/{id}/metadata?expand``
  (``RemoteAET``, ``CalledAET``, ``RemoteIP``), plus the series' instance count.
  :func:`read_orthanc_facts` does those requests through a given GET function (the plugin's
  ``orthanc.RestApiGet``), :func:`fetch_orthanc_facts` with ``requests``.

Values are text: several values joined by ``\\`` (as Orthanc's simplified tags show them), each
capped at :data:`MAX_VALUE` characters; sequences and binary values are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .fields import tag_key
from .model import SeriesFacts, SourceFacts

__all__ = [
    "MAX_VALUE",
    "FolderSeries",
    "facts_from_dataset",
    "facts_from_folder",
    "facts_from_orthanc",
    "fetch_orthanc_facts",
    "read_orthanc_facts",
]

logger = logging.getLogger(__name__)

#: Longest attribute value kept (longer values are cut).
MAX_VALUE = 1024
_GROUPING = ["SeriesInstanceUID", "InstanceNumber"]
_BINARY_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})


def _text(value: object) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(v) for v in value)
    return "" if value is None else str(value).strip()


def _attributes(dataset: Dataset) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for tag in list(dataset.keys()):
        try:
            element = dataset[tag]
            if element.VR in _BINARY_VRS or element.tag.group in (0x0002, 0x7FE0):
                continue
            value = _text(element.value)
        except Exception:
            continue
        key = element.keyword or tag_key(element.tag.group, element.tag.element)
        attributes[key] = value[:MAX_VALUE]
    return attributes


def facts_from_dataset(dataset: Dataset, *, instance_count: int = 1, source: SourceFacts | None = None) -> SeriesFacts:
    """Facts of a series from its first instance's dataset (top-level attributes only)."""
    attributes = _attributes(dataset)
    return SeriesFacts(
        series_uid=attributes.get("SeriesInstanceUID", ""),
        attributes=attributes,
        source=source or SourceFacts(),
        instance_count=instance_count,
    )


def _simplified(tags: Mapping[str, Any]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for name, value in tags.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and not all(isinstance(v, str | int | float) for v in value)
        ):
            continue  # sequences, binary placeholders
        if value is None:
            continue
        key = str(name)
        if "," in key:
            group, _, element = key.partition(",")
            try:
                key = tag_key(int(group, 16), int(element, 16))
            except ValueError:
                continue
        attributes[key] = _text(value)[:MAX_VALUE]
    return attributes


def facts_from_orthanc(
    tags: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    instance_count: int,
    orthanc_id: str | None = None,
) -> SeriesFacts:
    """Facts of a series from Orthanc's JSON for one of its instances.

    ``tags``: ``/instances/{id}/simplified-tags``; ``metadata``: ``/instances/{id}/metadata?expand``
    (missing keys are fine: a series uploaded over REST has no ``CalledAET``).
    """
    attributes = _simplified(tags)

    def meta(name: str) -> str | None:
        value = metadata.get(name)
        return value.strip() or None if isinstance(value, str) else None

    source = SourceFacts(calling_aet=meta("RemoteAET"), called_aet=meta("CalledAET"), remote_ip=meta("RemoteIP"))
    return SeriesFacts(
        series_uid=attributes.get("SeriesInstanceUID", ""),
        attributes=attributes,
        source=source,
        instance_count=instance_count,
        orthanc_id=orthanc_id,
    )


def read_orthanc_facts(get_json: Callable[[str], Any], series_id: str) -> SeriesFacts:
    """Facts of an Orthanc series through ``get_json`` (a GET of Orthanc's REST API, answering
    the decoded JSON): the series, its first instance's simplified tags and metadata. Shared by
    ``rules test --orthanc`` (over HTTP) and the plugin's dry-run route (inside Orthanc)."""
    series = get_json(f"/series/{series_id}")
    instances = sorted(str(i) for i in series.get("Instances") or [])
    if not instances:
        raise ValueError(f"Orthanc series {series_id} has no instances")
    first = instances[0]
    tags = get_json(f"/instances/{first}/simplified-tags")
    metadata = get_json(f"/instances/{first}/metadata?expand")
    return facts_from_orthanc(tags, metadata, instance_count=len(instances), orthanc_id=series_id)


def fetch_orthanc_facts(url: str, series_id: str, *, auth: tuple[str, str] | None = None,
                        timeout: float = 30.0) -> SeriesFacts:
    """:func:`read_orthanc_facts` over HTTP with ``requests``; raise ``requests`` errors."""
    import requests  # noqa: PLC0415 - only the --orthanc path needs it

    base = url.rstrip("/")
    with requests.Session() as session:
        session.auth = auth

        def get(path: str) -> Any:
            response = session.get(f"{base}{path}", timeout=timeout)
            response.raise_for_status()
            return response.json()

        return read_orthanc_facts(get, series_id)


@dataclass(frozen=True)
class FolderSeries:
    """One series found in a folder: its facts and its files (sorted)."""

    facts: SeriesFacts
    files: tuple[Path, ...]


def _order(item: tuple[Path, Dataset]) -> tuple[int, str]:
    number = item[1].get("InstanceNumber")
    try:
        return (int(number), item[0].name)
    except (TypeError, ValueError):
        return (1 << 30, item[0].name)


def facts_from_folder(folder: Path, *, source: SourceFacts | None = None) -> tuple[list[FolderSeries], list[Path]]:
    """Read DICOM headers under ``folder`` (any layout); return the series and unreadable files."""
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    unreadable: list[Path] = []
    paths: Iterable[Path] = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    for path in paths:
        try:
            # Only what grouping needs: Enhanced MR headers hold large per-frame sequences.
            dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_GROUPING)
            uid = str(dataset.SeriesInstanceUID)
        except Exception:  # pydicom raises many types on non-DICOM or damaged files
            unreadable.append(path)
            continue
        groups.setdefault(uid, []).append((path, dataset))
    found: list[FolderSeries] = []
    for members in groups.values():
        members.sort(key=_order)
        first: Dataset
        try:
            first = pydicom.dcmread(members[0][0], stop_before_pixels=True)
        except Exception:  # damaged further on: keep the grouping attributes
            first = members[0][1]
        facts = facts_from_dataset(first, instance_count=len(members), source=source)
        found.append(FolderSeries(facts, tuple(sorted(path for path, _ in members))))

    def series_order(item: FolderSeries) -> tuple[int, str]:
        number = item.facts.attributes.get("SeriesNumber", "")
        return (int(number) if number.isdigit() else 1 << 30, item.facts.series_uid)

    found.sort(key=series_order)
    return found, unreadable
