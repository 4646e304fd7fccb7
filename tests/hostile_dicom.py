"""Hostile DICOM made from real files: the builders shared by the hostile-input tests of the
converters (``tests/converters/test_hostile_input.py``) and of the plugin in a real Orthanc
(``tests/orthanc/test_hostile_series.py``).

A case starts from real slices (bytes of corpus files) changed with pydicom — including headers
pydicom itself would refuse to encode (:func:`set_raw`) and files whose meta header lies about
the transfer syntax (:func:`lying_bytes`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SLICES = 15
JPEG2000 = "1.2.840.10008.1.2.4.90"
UNKNOWN_SYNTAX = "1.2.3.4.5.6.7.8"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"

Mutation = Callable[[int, Dataset], None]


def dataset(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def set_raw(ds: Dataset, keyword: str, value: bytes) -> None:
    """Store ``value`` as the element's bytes, bypassing pydicom's checks (hostile headers)."""
    tag = Tag(tag_for_keyword(keyword))
    value += b" " * (len(value) % 2)
    ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)


def lying_bytes(ds: Dataset, declared: str) -> bytes:
    """``ds`` encoded explicit VR little endian (raw pixels) under a file meta declaring ``declared``."""
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, Dataset(ds))
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    file_meta = FileMetaDataset(ds.file_meta)
    file_meta.TransferSyntaxUID = declared
    write_file_meta_info(meta, file_meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + meta.getvalue() + body.getvalue()


def write_series(
    folder: Path,
    volume: tuple[bytes, ...],
    description: str,
    mutate: Mutation | None = None,
    *,
    count: int = SLICES,
    declared: str | None = None,
) -> list[Path]:
    """A copy of the volume as a series of its own (new Series/SOP UIDs), changed by ``mutate``."""
    folder.mkdir(parents=True)
    series_uid = generate_uid()
    files = []
    for index in range(count):
        ds = dataset(volume[index])
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if mutate is not None:
            mutate(index, ds)
        path = folder / f"{index:03d}.dcm"
        if declared is None:
            ds.save_as(path, enforce_file_format=False)
        else:
            path.write_bytes(lying_bytes(ds, declared))
        files.append(path)
    return files


def write_document(folder: Path, description: str, sop_class: str, modality: str) -> None:
    """A non-image object (SR, KO) built with pydicom: no pixel data."""
    folder.mkdir(parents=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.StudyTime = "DOC1", "Doc^Ument", "20240102", "101010"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 99, 1
    ds.SeriesDescription = description
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "113000", "DCM", "Of Interest"
    ds.ConceptNameCodeSequence = [concept]
    text = Dataset()
    text.RelationshipType, text.ValueType, text.TextValue = "CONTAINS", "TEXT", "nothing to see"
    ds.ContentSequence = [text]
    ds.save_as(folder / "doc.dcm", enforce_file_format=True)


def write_absurd(folder: Path, volume: tuple[bytes, ...], rows: int, frames: int, syntax: str | None) -> Path:
    """One tiny file whose header claims ``rows`` x ``rows`` x ``frames`` pixels."""
    folder.mkdir(parents=True)
    ds = dataset(volume[0])
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = folder.name
    ds.Rows = ds.Columns = rows
    ds.NumberOfFrames = frames
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 60])  # a J2K marker, then nothing
        ds["PixelData"].VR = "OB"
    path = folder / "absurd.dcm"
    ds.save_as(path, enforce_file_format=False)
    return path
