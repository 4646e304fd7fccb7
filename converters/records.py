"""Typed records passed between the pipeline stages (discover -> convert -> classify -> publish)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BidsTarget",
    "Classification",
    "ConvertedImage",
    "DicomSeries",
    "Inventory",
    "Placement",
    "SeriesResult",
    "SeriesState",
    "Skip",
    "UnusableFile",
    "UnusableKind",
]

SeriesState = Literal["converted", "skipped", "failed"]

#: ``damaged``: the file claims to be DICOM (name or ``DICM`` marker) but cannot be read completely;
#: it makes the series it belongs to fail. ``foreign``: a file that is plainly something else
#: (``.txt``, ``.json``, ``.nii``, hidden files, a DICOMDIR, a duplicate instance); it is reported
#: and left out, and fails nothing.
UnusableKind = Literal["damaged", "foreign"]


@dataclass(frozen=True)
class UnusableFile:
    """A file found while discovering DICOM that cannot be part of any conversion."""

    path: Path
    reason: str
    kind: UnusableKind

    def describe(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series as found on disk: header facts of its first instance plus all its files."""

    series_uid: str
    study_uid: str
    patient_id: str
    series_number: int | None
    series_description: str
    protocol_name: str
    modality: str
    sop_class_uid: str
    #: StudyDate as ``YYYYMMDD`` or ``""``; StudyTime as ``HHMMSS[.ffffff]`` or ``""``.
    study_date: str
    study_time: str
    #: Earliest acquisition date-time of the series in BIDS form (``YYYY-MM-DDThh:mm:ss[.ffffff]``),
    #: or ``""`` when the headers do not say.
    acquisition_time: str
    #: DICOM ImageType (0008,0008) of the first instance, upper case.
    image_type: tuple[str, ...]
    #: True when the instances carry pixel data (an image), False for SR, KO, PR, ...
    has_pixels: bool
    files: tuple[Path, ...]
    #: Damaged files that belong (or may belong) to this series; a series with any fails.
    problems: tuple[UnusableFile, ...] = ()
    #: PatientSex and PatientAge (``034Y``) as the header gives them, or "".
    patient_sex: str = ""
    patient_age: str = ""
    #: ContrastBolusAgent (0018,0010), or "" when no contrast agent is recorded.
    contrast_agent: str = ""


@dataclass(frozen=True)
class Inventory:
    """What :func:`converters.discover.discover` found under one folder."""

    series: tuple[DicomSeries, ...]
    #: Unusable files that could not be attributed to any series.
    unattributed: tuple[UnusableFile, ...] = ()
    #: Foreign files next to series (reported, harmless).
    foreign: tuple[UnusableFile, ...] = ()


@dataclass(frozen=True)
class ConvertedImage:
    """One NIfTI image dcm2niix wrote for a series (a series may yield several)."""

    nifti: Path
    sidecar: Path
    bval: Path | None
    bvec: Path | None
    #: The parsed JSON sidecar.
    metadata: dict[str, Any] = field(hash=False, compare=False)
    #: dcm2niix's file-name postfix, e.g. "" or "_e2" or "_e2_ph".
    postfix: str = ""
    #: NIfTI image shape and voxel-to-RAS affine (row-major 4x4), read from the header.
    shape: tuple[int, ...] = ()
    affine: tuple[tuple[float, ...], ...] = ()
    #: The b-values dcm2niix wrote (empty without a .bval file).
    bvalues: tuple[float, ...] = ()


@dataclass(frozen=True)
class BidsTarget:
    """Where a series belongs in a raw BIDS dataset, apart from subject and session.

    ``entities`` maps short BIDS entity keys (``acq``, ``task``, ``dir``, ``run``, ...) to
    already-sanitized values; ``metadata`` holds sidecar fields to add (e.g. ``TaskName``).
    """

    datatype: str
    suffix: str
    entities: Mapping[str, str] = field(default_factory=dict, hash=False)
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: Name of the rule (or override) that decided, for logs and reports.
    rule: str = ""
    #: Files that accompany the image under another suffix, keyed by ``_<suffix><extension>``
    #: (e.g. ``_aslcontext.tsv``), with their text.
    companions: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Skip:
    """The series is deliberately not placed in the dataset, and why."""

    reason: str
    rule: str = ""


Classification = BidsTarget | Skip


@dataclass(frozen=True)
class Placement:
    """One converted image together with its final BIDS target (entities per image, e.g. echo)."""

    image: ConvertedImage
    target: BidsTarget


@dataclass(frozen=True)
class SeriesResult:
    """What happened to one input series. The plugin stores this record in its job."""

    series_uid: str
    series_description: str
    state: SeriesState
    reason: str | None = None
    #: Files written, relative to the dataset root, sorted.
    outputs: tuple[str, ...] = ()
    subject: str | None = None
    session: str | None = None
    series_number: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid,
            "series_description": self.series_description,
            "series_number": self.series_number,
            "state": self.state,
            "reason": self.reason,
            "outputs": list(self.outputs),
            "subject": self.subject,
            "session": self.session,
        }
