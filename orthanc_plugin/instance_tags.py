"""An instance's tags in the form of Orthanc's ``/instances/{id}/simplified-tags``, read by the
worker from the instance's file instead of asked of Orthanc.

Orthanc renders every element of the file as JSON, the per-frame functional groups of an
enhanced instance included: 27-48 ms for one XA30 instance against 1-8 ms to fetch the file
(``benchmarks/README.md``). The worker's stages use the top-level attributes (rules facts,
acquisition hints) and one sequence, RelatedSeriesSequence; :func:`instance_tags` reads just
those (:func:`converters.dicom_header.read_header` walks past the rest) and renders them as
Orthanc does: dictionary keywords, values as text with several values joined by ``\\``,
sequences as lists of objects; binary values and the file meta group are left out. One
difference: a private element is keyed by its tag (``0019,109c``), where Orthanc may show a
name from DCMTK's private dictionary that can collide with a standard keyword (GE's
``PulseSequenceName``, ``ImagesInSeries``); the rules name private elements by tag anyway.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from converters.dicom_header import read_header
from converters.errors import DicomInputError

from .rest_client import OrthancApi

__all__ = ["SEQUENCES", "file_tags", "instance_tags", "read_tags"]

#: Sequences rendered (RelatedSeriesSequence: how the parts of an acquisition find each other).
SEQUENCES = frozenset({0x00081250})
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_ALL_GROUPS = 0x7FDF


def _text(value: Any) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(v) for v in value)
    if type(value) is float:  # FD/FL as Orthanc writes them (17 digits: 4.6799999999999997; 1)
        return f"{value:.17g}"
    return "" if value is None else str(value)


def _render(ds: Dataset) -> dict[str, Any]:
    rendered: dict[str, Any] = {}
    for element in ds:
        if element.tag.group in (0x0002, 0x7FE0) or element.VR in _BINARY_VRS:
            continue
        key = element.keyword or f"{element.tag.group:04x},{element.tag.element:04x}"
        try:
            if element.VR == "SQ":
                rendered[key] = [_render(item) for item in element.value]
            else:
                rendered[key] = _text(element.value).strip()
        except (TypeError, ValueError, OverflowError):  # an unconvertible value: Orthanc shows it raw
            continue
    return rendered


def instance_tags(data: bytes, *, sequences: Collection[int] = SEQUENCES) -> dict[str, Any]:
    """The simplified tags of the DICOM file ``data`` (see the module docstring); raises
    ``pydicom`` or :class:`~converters.dicom_header.HeaderTruncated` errors on damaged files."""
    ds = read_header(io.BytesIO(data), len(data), sequences=sequences, private=True, last_group=_ALL_GROUPS,
                     walk_sequences=True)
    return _render(ds)


def file_tags(path: Path, *, sequences: Collection[int] = SEQUENCES) -> dict[str, Any]:
    """:func:`instance_tags` of a file on disk (read up to its pixel data, never into memory whole)."""
    with path.open("rb") as fp:
        ds = read_header(fp, path.stat().st_size, sequences=sequences, private=True, last_group=_ALL_GROUPS,
                         walk_sequences=True)
    return _render(ds)


def read_tags(client: OrthancApi, instance: str, folder: Path) -> tuple[dict[str, Any], Path]:
    """The simplified tags of Orthanc's instance ``instance`` and its file, downloaded into
    ``folder`` (kept: the conversion uses it instead of fetching it again)."""
    path = folder / f"{instance}.dcm"
    if not path.is_file():  # fetched already by this job (early completion's look)
        client.download_instance(instance, path)
    try:
        return file_tags(path), path
    except Exception as exc:  # pydicom raises many types on damaged files
        raise DicomInputError(f"Orthanc instance {instance}: unreadable DICOM header ({type(exc).__name__}: {exc})") \
            from exc
