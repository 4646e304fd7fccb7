"""Stage 1 — discover: find DICOM series in a folder of any layout, reading headers only.

Every file under the folder ends up somewhere: in a series, or as an :class:`UnusableFile`
with the reason. A file that claims to be DICOM (``DICM`` marker, or a DICOM-like name such as
``IM0001``, ``x.dcm``, ``1.3.12.2.43``) but cannot be read completely — or is an image without
pixel data, or a classic MR image without the ImagePositionPatient/ImageOrientationPatient that
place its slice — is *damaged* and fails the series it belongs to: by its own SeriesInstanceUID
when its header is readable, else every series with files in the same folder. Files that are
plainly something else (``.txt``, ``.json``, ``.nii``, hidden files, DICOMDIR, duplicate instances)
are *foreign*: reported, never converted. Header values that cannot be read as what they should be
(an InstanceNumber ``1e400``, a StudyDate ``/etc``) count as absent.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from converters.dicom_header import LONG_VRS, PIXEL_TAGS, UNDEFINED_LENGTH, read_header
from converters.records import DicomSeries, Inventory, UnusableFile
from converters.regroup import AcquisitionHints, acquisition_key

__all__ = ["DICOM_EXTENSIONS", "discover"]

logger = logging.getLogger(__name__)

#: File-name extensions (lower case) that DICOM instances commonly carry. Names without an extension
#: or with a purely numeric one (UID-like names) count as DICOM-like too.
DICOM_EXTENSIONS = frozenset({"", ".dcm", ".dicom", ".dic", ".dc3", ".ima"})

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Image Plane attributes a classic (single-frame) MR image must have, and their number of values.
_GEOMETRY = (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6))
_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"[0-9]{2}(?:[0-9]{2}){0,2}(?:\.[0-9]*)?")
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: The sequences discovery reads (RelatedSeriesSequence); others are walked past unread.
_SEQUENCES_READ = frozenset({0x00081250})

#: (PatientID, StudyInstanceUID, SeriesInstanceUID)
_Key = tuple[str, str, str]


@dataclass(frozen=True)
class _Instance:
    """Header facts of one readable DICOM file."""

    path: Path
    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    instance_number: int | None
    series_number: int | None
    series_description: str
    protocol_name: str
    modality: str
    sop_class_uid: str
    study_date: str
    study_time: str
    acquisition_time: str
    image_type: tuple[str, ...]
    has_pixels: bool
    patient_sex: str
    patient_age: str
    contrast_agent: str
    #: Why the file is damaged although its header is readable (e.g. truncated pixel data).
    damage: str | None
    patient_name: str = ""
    acquisition_key: str = ""


def _dicom_like_name(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    return suffix in DICOM_EXTENSIONS or suffix[1:].isdigit()


def _value(ds: Dataset, keyword: str) -> Any:
    """The element's value, or None when it is absent or pydicom cannot convert it (an IS or DS
    such as ``1e400`` or ``abc`` raises on access)."""
    try:
        return ds.get(keyword)
    except (TypeError, ValueError, OverflowError):
        return None


def _text(ds: Dataset, keyword: str) -> str:
    """The element as text; several values joined by ``\\`` as DICOM writes them."""
    value = _value(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _integer(ds: Dataset, keyword: str) -> int | None:
    value = _value(ds, keyword)
    if value is None or str(value).strip() == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _numbers(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    """The element's ``count`` finite numbers, or None when it is absent or holds anything else."""
    value = _value(ds, keyword)
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in (value if isinstance(value, MultiValue | list | tuple) else [value]))
    except (TypeError, ValueError, OverflowError):
        return None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def _study_date(ds: Dataset) -> str:
    """StudyDate as ``YYYYMMDD`` (ASCII digits), or "" for anything else."""
    date = _text(ds, "StudyDate")
    return date if _DATE.fullmatch(date) else ""


def _study_time(ds: Dataset) -> str:
    """StudyTime as ``HH[MM[SS[.ffffff]]]`` (ASCII digits), or "" for anything else."""
    time = _text(ds, "StudyTime")
    return time if _TIME.fullmatch(time) else ""


def _bids_datetime(date: str, time: str) -> str:
    """``YYYYMMDD`` + ``HHMMSS[.ffffff]`` -> ``YYYY-MM-DDThh:mm:ss[.ffffff]``, or "" if unusable."""
    date = date.strip()
    time = time.strip()
    if not _DATE.fullmatch(date):
        return ""
    whole, _, fraction = time.partition(".")
    if len(whole) < 6 or not whole[:6].isascii() or not whole[:6].isdigit():
        return ""
    fraction = "".join(ch for ch in fraction if "0" <= ch <= "9")[:6]
    stamp = f"{date[:4]}-{date[4:6]}-{date[6:8]}T{whole[:2]}:{whole[2:4]}:{whole[4:6]}"
    return f"{stamp}.{fraction}" if fraction else stamp


def _acquisition_time(ds: Dataset) -> str:
    stamp = _text(ds, "AcquisitionDateTime")
    if stamp:
        # DT: YYYYMMDDHHMMSS.FFFFFF&ZZXX; the offset, if any, is dropped.
        core = stamp.split("+")[0].split("-")[0]
        found = _bids_datetime(core[:8], core[8:])
        if found:
            return found
    time = _text(ds, "AcquisitionTime")
    date = _text(ds, "AcquisitionDate") or _text(ds, "SeriesDate") or _text(ds, "StudyDate")
    return _bids_datetime(date, time) if time else ""


def _hints(ds: Dataset, study_uid: str, image_type: tuple[str, ...]) -> AcquisitionHints:
    related = tuple(
        (
            str(item.get("SeriesInstanceUID", "")).strip(),
            frozenset(str(code.get("CodeValue", "")) for code in item.get("PurposeOfReferenceCodeSequence") or ()),
        )
        for item in ds.get("RelatedSeriesSequence") or ()
    )
    return AcquisitionHints(
        study_uid=study_uid,
        image_type=image_type,
        related=related,
        protocol_name=_text(ds, "ProtocolName"),
        series_description=_text(ds, "SeriesDescription"),
        series_time=_text(ds, "SeriesTime"),
        orientation=_numbers(ds, "ImageOrientationPatient", 6) or (),
        rows=_text(ds, "Rows"),
        columns=_text(ds, "Columns"),
    )


def _pixel_damage(fp: BinaryIO, ds: Dataset, size: int) -> tuple[bool, str | None]:
    """Check the pixel data element that follows the header at ``fp.tell()``.

    Returns ``(has_pixels, damage)``: ``damage`` says why the file is incomplete, or is None.
    """
    position = fp.tell()
    transfer_syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "")) if ds.file_meta else ""
    if transfer_syntax == _DEFLATED:
        # The body was inflated into memory; the file offset says nothing. dcm2niix will judge.
        return "PixelData" in ds or "Rows" in ds, None
    implicit_vr, little_endian = ds.original_encoding
    if implicit_vr is None or little_endian is None:
        return False, None
    head = fp.read(12)
    if len(head) < 8:
        return False, None
    order = "<" if little_endian else ">"
    group, element = struct.unpack(f"{order}HH", head[:4])
    if (group << 16 | element) not in PIXEL_TAGS:
        return False, None
    if implicit_vr:
        (length,) = struct.unpack(f"{order}L", head[4:8])
        header_length = 8
    elif head[4:6] in LONG_VRS:
        if len(head) < 12:
            return True, "truncated inside the pixel data element header"
        (length,) = struct.unpack(f"{order}L", head[8:12])
        header_length = 12
    else:
        (length,) = struct.unpack(f"{order}H", head[6:8])
        header_length = 8
    start = position + header_length
    if length == UNDEFINED_LENGTH:
        delimiter = struct.pack(f"{order}HHL", 0xFFFE, 0xE0DD, 0)
        fp.seek(max(start, size - 8))
        if fp.read(8) != delimiter:
            return True, "encapsulated pixel data has no sequence delimiter at the end of the file (truncated?)"
        return True, None
    if start + length > size:
        return True, f"truncated: pixel data needs {start + length} bytes, the file has {size}"
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        needed = (
            int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * frames * int(ds.BitsAllocated) // 8
        )
    except (AttributeError, TypeError, ValueError, OverflowError):
        return True, None
    if group == 0x7FE0 and element == 0x0010 and length + 1 < needed:
        return True, f"pixel data holds {length} bytes but Rows x Columns x frames needs {needed}"
    return True, None


def _read_instance(path: Path) -> _Instance | UnusableFile:
    """Read the header of one file; return its facts, or why it cannot be used."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fp:
            preamble = fp.read(132)
            if preamble[128:132] != b"DICM":
                if _dicom_like_name(path):
                    return UnusableFile(path, "not a DICOM file (no 'DICM' marker at byte 128)", "damaged")
                return UnusableFile(path, f"not a DICOM file ({path.suffix or 'hidden'} file)", "foreign")
            fp.seek(0)
            try:
                ds = read_header(fp, size, sequences=_SEQUENCES_READ)
            except Exception as exc:  # pydicom raises many types on damaged input
                return UnusableFile(
                    path, f"unreadable DICOM header ({type(exc).__name__}: {exc}) - truncated?", "damaged"
                )
            has_pixels, damage = _pixel_damage(fp, ds, size)
    except OSError as exc:
        return UnusableFile(path, f"cannot read file ({exc.strerror or exc})", "damaged")

    sop_class = _text(ds, "SOPClassUID") or str(getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
    if sop_class == _MEDIA_STORAGE_DIRECTORY:
        return UnusableFile(path, "DICOMDIR (a media index, not an instance)", "foreign")
    series_uid = _text(ds, "SeriesInstanceUID")
    study_uid = _text(ds, "StudyInstanceUID")
    if not series_uid or not study_uid:
        return UnusableFile(
            path, "incomplete DICOM header: no StudyInstanceUID/SeriesInstanceUID (truncated?)", "damaged"
        )
    if not has_pixels and damage is None and "Image Storage" in UID(sop_class).name:
        damage = f"{UID(sop_class).name} without pixel data (truncated?)"
    if damage is None and sop_class == _MR_IMAGE_STORAGE:
        unplaced = [keyword for keyword, count in _GEOMETRY if _numbers(ds, keyword, count) is None]
        if unplaced:
            damage = (
                f"MR Image Storage without a usable {' or '.join(unplaced)} (required, Type 1): "
                "its slice cannot be placed in space"
            )
    image_type = ds.get("ImageType")
    if image_type is None:
        types: tuple[str, ...] = ()
    elif isinstance(image_type, str):
        types = (image_type.strip().upper(),)
    else:
        types = tuple(str(v).strip().upper() for v in image_type)
    return _Instance(
        path=path,
        patient_id=_text(ds, "PatientID"),
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        instance_number=_integer(ds, "InstanceNumber"),
        series_number=_integer(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        modality=_text(ds, "Modality"),
        sop_class_uid=sop_class,
        study_date=_study_date(ds),
        study_time=_study_time(ds),
        acquisition_time=_acquisition_time(ds),
        image_type=types,
        has_pixels=has_pixels,
        patient_sex=_text(ds, "PatientSex"),
        patient_age=_text(ds, "PatientAge"),
        contrast_agent=_text(ds, "ContrastBolusAgent"),
        damage=damage,
        patient_name=_text(ds, "PatientName"),
        acquisition_key=acquisition_key(_hints(ds, study_uid, types)),
    )


def _same_bytes(first: Path, second: Path) -> bool:
    """The two files hold the same bytes (sizes first, then content)."""
    try:
        if first.stat().st_size != second.stat().st_size:
            return False
        with first.open("rb") as one, second.open("rb") as two:
            while True:
                a, b = one.read(1 << 20), two.read(1 << 20)
                if a != b:
                    return False
                if not a:
                    return True
    except OSError:
        return False


def _instance_order(instance: _Instance) -> tuple[int, int, str]:
    number = instance.instance_number
    return (0 if number is not None else 1, number or 0, instance.sop_instance_uid)


def _walk(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM input folder does not exist: {root}")
    found: list[Path] = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(Path(directory) / name for name in sorted(filenames))
    return found


def discover(root: Path) -> Inventory:
    """Group every DICOM file under ``root`` by PatientID -> StudyInstanceUID -> SeriesInstanceUID.

    Series come back sorted by patient, study date/time, study, series number and UID.
    """
    instances: dict[_Key, list[_Instance]] = defaultdict(list)
    problems: dict[_Key, list[UnusableFile]] = defaultdict(list)
    damaged_heads: dict[_Key, _Instance] = {}
    orphans: list[UnusableFile] = []
    foreign: list[UnusableFile] = []
    seen_sop: dict[str, list[Path]] = {}
    for path in _walk(root):
        found = _read_instance(path)
        if isinstance(found, UnusableFile):
            (foreign if found.kind == "foreign" else orphans).append(found)
            continue
        key = (found.patient_id, found.study_uid, found.series_uid)
        if found.damage is not None:
            problems[key].append(UnusableFile(path, found.damage, "damaged"))
            damaged_heads.setdefault(key, found)
            continue
        earlier = seen_sop.setdefault(found.sop_instance_uid, []) if found.sop_instance_uid else []
        # A second copy of one file is a duplicate; a file that reuses a SOP Instance UID for other
        # content (test exports, broken anonymisers) is an image of its own.
        same = next((other for other in earlier if _same_bytes(other, path)), None)
        if same is not None:
            foreign.append(UnusableFile(path, f"duplicate of instance {same}", "foreign"))
            continue
        earlier.append(path)
        instances[key].append(found)

    # Header-less damaged files belong to whichever series share their folder.
    keys_by_dir: dict[Path, set[_Key]] = defaultdict(set)
    for key, members in instances.items():
        for instance in members:
            keys_by_dir[instance.path.parent].add(key)
    for key, damaged in problems.items():
        for item in damaged:
            keys_by_dir[item.path.parent].add(key)
    unattributed: list[UnusableFile] = []
    for item in orphans:
        owners = keys_by_dir.get(item.path.parent)
        if not owners:
            unattributed.append(item)
            continue
        for key in owners:
            problems[key].append(item)

    series: list[DicomSeries] = []
    for key in set(instances) | set(damaged_heads):
        members = instances.get(key, [])
        # A series of which only damaged files were found is kept so that it fails visibly.
        # Header facts come from the first instance in acquisition order, not in path order, so
        # that file names and folder layout (offline tree vs Orthanc download) cannot change them.
        head = min(members, key=_instance_order) if members else damaged_heads[key]
        acquired = sorted(m.acquisition_time for m in members if m.acquisition_time)
        series.append(
            DicomSeries(
                series_uid=head.series_uid,
                study_uid=head.study_uid,
                patient_id=head.patient_id,
                series_number=head.series_number,
                series_description=head.series_description,
                protocol_name=head.protocol_name,
                modality=head.modality,
                sop_class_uid=head.sop_class_uid,
                study_date=head.study_date,
                study_time=head.study_time,
                acquisition_time=acquired[0] if acquired else head.acquisition_time,
                image_type=head.image_type,
                has_pixels=any(m.has_pixels for m in members) or head.has_pixels,
                files=tuple(sorted(m.path for m in members)),
                problems=tuple(sorted(problems.get(key, []), key=lambda u: str(u.path))),
                patient_sex=head.patient_sex,
                patient_age=head.patient_age,
                contrast_agent=head.contrast_agent,
                patient_name=head.patient_name,
                acquisition_key=head.acquisition_key,
            )
        )
    series.sort(
        key=lambda s: (
            s.patient_id,
            s.study_date,
            s.study_time,
            s.study_uid,
            s.series_number if s.series_number is not None else -1,
            s.series_uid,
        )
    )
    for item in foreign:
        logger.info("ignoring %s", item.describe())
    for item in unattributed:
        logger.warning("damaged file outside any series: %s", item.describe())
    return Inventory(series=tuple(series), unattributed=tuple(unattributed), foreign=tuple(foreign))
