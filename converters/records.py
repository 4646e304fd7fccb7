"""Typed records passed between the pipeline stages (discover -> convert -> classify -> publish)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from converters.jsonform import to_json

__all__ = [
    "SKIP_CODES",
    "BidsTarget",
    "Classification",
    "ConvertedImage",
    "Dcm2niixRun",
    "DicomSeries",
    "Inventory",
    "Placement",
    "SeriesPart",
    "SeriesResult",
    "SeriesState",
    "Skip",
    "SkipCode",
    "UnusableFile",
    "UnusableKind",
]

SeriesState = Literal["converted", "skipped", "failed"]

#: Why a series (or one image of it) is not in the raw dataset: one code from this short list.
SkipCode = Literal[
    "not-an-image",
    "no-bids-datatype",
    "scanner-derived",
    "localizer",
    "duplicate",
    "rule",
    "unreadable",
    "missing-metadata",
    "unrecognised",
]
#: Every :data:`SkipCode` and what it means (the README's table is this one).
SKIP_CODES: Mapping[SkipCode, str] = {
    "not-an-image": "a document, report, key object, overlay or screenshot, not an acquisition",
    "no-bids-datatype": "an image BIDS has no raw datatype for (CT, PET without tracer fields, uncombined coil images)",
    "scanner-derived": "a map or copy the scanner computed that raw BIDS has no file for (the source series is kept)",
    "localizer": "a localizer/scout: positioning images, not data",
    "duplicate": "voxel-identical to another image of the same acquisition, which is kept",
    "rule": "refused by a routing rule or a site override",
    "unreadable": "the image data could not be decoded (dcm2niix's message is given)",
    "missing-metadata": "recognised, but the headers lack fields BIDS requires for it (they are named)",
    "unrecognised": "no rule recognised it; the reason names the evidence that was missing",
}

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
class SeriesPart:
    """One input series that :mod:`converters.regroup` merged with others into one acquisition."""

    series_uid: str
    series_number: int | None
    series_description: str
    file_count: int


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
    #: PatientName as the header gives it (only ever hashed for a label fallback; never logged).
    patient_name: str = field(default="", repr=False)
    #: Key of the acquisition this series is one part of (classic "interoperable" exports put each
    #: volume of an enhanced acquisition in a series of its own), or "" — see :mod:`converters.regroup`.
    acquisition_key: str = ""
    #: The input series merged into this one by :mod:`converters.regroup` (empty: a series as found).
    parts: tuple[SeriesPart, ...] = ()


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
    #: The JSON sidecar, or None when dcm2niix wrote none for this image (``metadata`` is then {}).
    sidecar: Path | None
    bval: Path | None
    bvec: Path | None
    #: The parsed JSON sidecar ({} without one).
    metadata: dict[str, Any] = field(hash=False, compare=False)
    #: dcm2niix's file-name postfix, e.g. "" or "_e2" or "_e2_ph".
    postfix: str = ""
    #: NIfTI image shape and voxel-to-RAS affine (row-major 4x4), read from the header.
    shape: tuple[int, ...] = ()
    affine: tuple[tuple[float, ...], ...] = ()
    #: The b-values dcm2niix wrote (empty without a .bval file).
    bvalues: tuple[float, ...] = ()


@dataclass(frozen=True)
class Dcm2niixRun:
    """The outcome of one successful dcm2niix run on a series (:func:`converters.conversion.run_dcm2niix`)."""

    #: The images written, sorted by file name; never empty.
    images: tuple[ConvertedImage, ...]
    #: dcm2niix's ``Warning:``/``Error:`` lines and bidsbridge's own remarks on the run (partial
    #: conversion, missing sidecars, ignored files), without duplicates, in order of appearance.
    warnings: tuple[str, ...]
    #: dcm2niix's exit code: 0, or 1 / 8 when it wrote images nonetheless.
    exit_code: int
    #: DICOM files dcm2niix says it converted (the sum of its "Convert N DICOM as" lines).
    files_used: int


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
    #: What the rule wants the report to say although it decided (e.g. a fallback task label).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skip:
    """The series (or one image of it) is deliberately not placed in the dataset, and why."""

    reason: str
    rule: str = ""
    #: The category of the reason, one of :data:`SKIP_CODES`.
    code: SkipCode = "unrecognised"


Classification = BidsTarget | Skip


@dataclass(frozen=True)
class Placement:
    """One converted image together with its final BIDS target (entities per image, e.g. echo)."""

    image: ConvertedImage
    target: BidsTarget
    #: Which acquisition of its series the image belongs to (:func:`converters.split.partition`):
    #: images of one unit are named together, different units of one series apart.
    unit: int = 0


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
    #: For a skipped series: the category of ``reason`` (one of :data:`SKIP_CODES`).
    reason_code: SkipCode | None = None
    #: What a curator should know although nothing failed: label fallbacks, duplicates written
    #: once, images of the series left out (with their reason), dcm2niix's warnings.
    notes: tuple[str, ...] = ()
    #: The SeriesInstanceUID under which an acquisition spread over several series is filed
    #: (see :mod:`converters.regroup`), and every input series converted with it.
    acquisition: str | None = None
    members: tuple[str, ...] = ()
    #: QC pictures of the series' images (relative to the dataset root, under
    #: ``derivatives/bidsbridge-qc/``), when the QC step ran; why any is missing is in ``notes``.
    qc: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)
