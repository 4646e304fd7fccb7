"""Worker stage: find the other series of an acquisition exported as several series.

Classic exports of enhanced acquisitions put each volume in a series of its own; in Orthanc each
arrives and becomes stable separately. The converters tie them together by an acquisition key
(:func:`converters.regroup.acquisition_key`); this stage computes the key of the job's series
from Orthanc's tags of its first instance, finds the study's series with the same key (only
those with the same SeriesDescription are looked at), and says whether all are stable. The
worker then converts the set once, when its last member is stable (:mod:`orthanc_plugin.worker`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.regroup import AcquisitionHints, acquisition_key, acquisition_uid, sources_digest

from .instance_tags import read_tags
from .rest_client import OrthancApi, SeriesNotFound

__all__ = ["Acquisition", "Member", "find_acquisition", "hints_from_tags"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One series of the acquisition as Orthanc has it."""

    orthanc_id: str
    series_uid: str
    series_number: int | None
    stable: bool
    instances: int


@dataclass(frozen=True)
class Acquisition:
    """The series of one acquisition present in Orthanc, by SeriesNumber."""

    key: str
    members: tuple[Member, ...]

    @property
    def uid(self) -> str:
        """The SeriesInstanceUID the converters file the acquisition under."""
        return acquisition_uid(self.key)

    @property
    def unstable(self) -> tuple[Member, ...]:
        return tuple(member for member in self.members if not member.stable)

    @property
    def sources(self) -> str:
        """Digest of the members and their instance counts (:func:`converters.regroup.sources_digest`)."""
        return sources_digest((member.series_uid, member.instances) for member in self.members)

    def describe(self) -> str:
        numbers = ", ".join(str(m.series_number) if m.series_number is not None else "?" for m in self.members)
        return f"acquisition of {len(self.members)} series ({numbers})"


def _values(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(v).strip() for v in value)
    return tuple(part.strip() for part in str(value or "").split("\\") if part.strip())


def hints_from_tags(tags: Mapping[str, Any]) -> AcquisitionHints:
    """:class:`AcquisitionHints` from Orthanc's ``simplified-tags`` of an instance."""
    related: list[tuple[str, frozenset[str]]] = []
    for item in tags.get("RelatedSeriesSequence") or ():
        if not isinstance(item, Mapping):
            continue
        purposes = item.get("PurposeOfReferenceCodeSequence") or ()
        codes = frozenset(str(code.get("CodeValue", "")) for code in purposes if isinstance(code, Mapping))
        related.append((str(item.get("SeriesInstanceUID", "")).strip(), codes))
    orientation: tuple[float, ...] = ()
    try:
        orientation = tuple(float(v) for v in _values(tags.get("ImageOrientationPatient")))
    except ValueError:
        orientation = ()
    return AcquisitionHints(
        study_uid=str(tags.get("StudyInstanceUID", "")).strip(),
        image_type=tuple(v.upper() for v in _values(tags.get("ImageType"))),
        related=tuple(related),
        protocol_name=str(tags.get("ProtocolName", "")).strip(),
        series_description=str(tags.get("SeriesDescription", "")).strip(),
        series_time=str(tags.get("SeriesTime", "")).strip(),
        orientation=orientation,
        rows=str(tags.get("Rows", "")).strip(),
        columns=str(tags.get("Columns", "")).strip(),
    )


def _number(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def find_acquisition(
    client: OrthancApi, series_id: str, tags: Mapping[str, Any], study_id: str, folder: Path
) -> Acquisition | None:
    """The acquisition the series ``series_id`` (first instance's ``tags``) is a part of, with
    every part in Orthanc's study ``study_id``; None when the series is no such part. The other
    candidates' first instances are downloaded into ``folder`` (and used again if converted)."""
    key = acquisition_key(hints_from_tags(tags))
    if not key:
        return None
    description = str(tags.get("SeriesDescription", "")).strip()
    members: list[Member] = []
    for series in client.get_json(f"/studies/{study_id}/series"):
        main = series.get("MainDicomTags") or {}
        instances = sorted(series.get("Instances") or ())
        if not instances:
            continue
        if series["ID"] != series_id:
            if str(main.get("SeriesDescription", "")).strip() != description:
                continue
            try:
                other, _ = read_tags(client, instances[0], folder)
            except SeriesNotFound:  # deleted meanwhile
                continue
            if acquisition_key(hints_from_tags(other)) != key:
                continue
        members.append(
            Member(
                orthanc_id=str(series["ID"]),
                series_uid=str(main.get("SeriesInstanceUID", "")),
                series_number=_number(main.get("SeriesNumber")),
                stable=bool(series.get("IsStable", True)),
                instances=len(instances),
            )
        )
    members.sort(key=lambda m: (m.series_number is None, m.series_number or 0, m.series_uid))
    return Acquisition(key, tuple(members))
