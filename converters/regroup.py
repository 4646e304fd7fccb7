"""Stage 1b — regroup: series that are parts of one acquisition become one unit to convert.

Classic ("interoperable") exports of enhanced acquisitions put each volume in a series of its own
(Siemens XA: series 7001, 7002, … with ImageType ``MFSPLIT`` and AcquisitionNumber 1, 2, …).
Converted one at a time they give a run of 3D images instead of one 4D run; converted together,
dcm2niix stacks them into one image. :func:`converters.discover.discover` gives each series an
``acquisition_key`` (the enhanced series its instances are Alternate SOP Class copies of, else
the protocol, SeriesTime, ImageType and geometry of an ``MFSPLIT`` series); :func:`regroup`
merges the series of one patient and study that share a key.

A merged unit is filed under :func:`acquisition_uid` of its key, so that it keeps one name (one
manifest, one file set) whichever of its parts arrive, in whatever order; a unit of one part is
left as it is. Every part is listed in :attr:`DicomSeries.parts` so that reports account for
each input series.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from converters.records import DicomSeries, SeriesPart

__all__ = [
    "ALTERNATE_SOP_CLASS_INSTANCE",
    "AcquisitionHints",
    "acquisition_key",
    "acquisition_uid",
    "regroup",
    "sources_digest",
]

#: PurposeOfReferenceCodeSequence code (DCM 121326) of a RelatedSeriesSequence item that names the
#: series an instance is a converted copy of ("Alternate SOP Class instance"): Siemens XA
#: "interoperable" exports point each single-volume series at the enhanced series it came from.
ALTERNATE_SOP_CLASS_INSTANCE = "121326"


@dataclass(frozen=True)
class AcquisitionHints:
    """The header facts of a series' first instance that tie the parts of one acquisition
    together (read from a pydicom dataset by :mod:`converters.discover`, from Orthanc's tags by
    the plugin)."""

    study_uid: str
    image_type: tuple[str, ...] = ()
    #: RelatedSeriesSequence items: (SeriesInstanceUID, PurposeOfReference code values).
    related: tuple[tuple[str, frozenset[str]], ...] = ()
    protocol_name: str = ""
    series_description: str = ""
    series_time: str = ""
    orientation: tuple[float, ...] = ()
    rows: str = ""
    columns: str = ""


def acquisition_key(hints: AcquisitionHints) -> str:
    """What ties the series of one acquisition exported as several series together, or "".

    ``alternate:<study>:<uid>`` when a RelatedSeriesSequence item is an Alternate SOP Class
    instance reference to the series ``<uid>``; else, for ImageType ``MFSPLIT`` (a multi-frame
    acquisition split for export), ``mfsplit:`` + the study, protocol, description, SeriesTime,
    ImageType and geometry the parts share.
    """
    for related, codes in hints.related:
        if related and ALTERNATE_SOP_CLASS_INSTANCE in codes:
            return f"alternate:{hints.study_uid}:{related}"
    if "MFSPLIT" not in hints.image_type:
        return ""
    geometry = ",".join(f"{value:.3f}" for value in hints.orientation)
    shared = [
        hints.study_uid, hints.protocol_name, hints.series_description, hints.series_time,
        "\\".join(hints.image_type), geometry, hints.rows, hints.columns,
    ]  # fmt: skip
    return "mfsplit:" + "|".join(shared)


def sources_digest(parts: Iterable[tuple[str, int]]) -> str:
    """Digest of the input series (SeriesInstanceUID, number of instances) an acquisition is made
    of: the same digest means the same input, so a conversion need not be repeated."""
    digest = hashlib.sha256()
    for series_uid, count in sorted(parts):
        digest.update(f"{series_uid}:{count}\n".encode())
    return digest.hexdigest()[:16]


def acquisition_uid(key: str) -> str:
    """A DICOM UID (``2.25.<decimal>``, UUID-derived form) that names the acquisition ``key``."""
    return f"2.25.{int(hashlib.sha256(key.encode('utf-8')).hexdigest()[:32], 16)}"


def _merge(parts: Sequence[DicomSeries]) -> DicomSeries:
    ordered = sorted(parts, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
    head = ordered[0]
    times = sorted(s.acquisition_time for s in ordered if s.acquisition_time)
    return replace(
        head,
        series_uid=acquisition_uid(head.acquisition_key),
        acquisition_time=times[0] if times else head.acquisition_time,
        has_pixels=any(s.has_pixels for s in ordered),
        files=tuple(sorted(f for s in ordered for f in s.files)),
        problems=tuple(sorted((p for s in ordered for p in s.problems), key=lambda u: str(u.path))),
        parts=tuple(SeriesPart(s.series_uid, s.series_number, s.series_description, len(s.files)) for s in ordered),
    )


def regroup(series: Sequence[DicomSeries]) -> tuple[DicomSeries, ...]:
    """``series`` with the parts of each acquisition merged (at the place of its first part)."""
    groups: dict[tuple[str, str, str], list[DicomSeries]] = {}
    for item in series:
        if item.acquisition_key:
            groups.setdefault((item.patient_id, item.study_uid, item.acquisition_key), []).append(item)
    merged: list[DicomSeries] = []
    emitted: set[tuple[str, str, str]] = set()
    for item in series:
        key = (item.patient_id, item.study_uid, item.acquisition_key)
        members = groups.get(key) if item.acquisition_key else None
        if not members or len(members) == 1:
            merged.append(item)
        elif key not in emitted:
            emitted.add(key)
            merged.append(_merge(members))
    return tuple(merged)
