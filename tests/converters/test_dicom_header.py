"""converters.dicom_header reads what pydicom reads, positioned where pydicom leaves the file."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from converters.dicom_header import LAST_GROUP, HeaderTruncated, read_header

#: Attributes discovery reads (groups up to 0028) and the one sequence it reads.
FACTS = ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
         "SeriesNumber", "InstanceNumber", "SeriesDescription", "ProtocolName", "ImageType", "Modality",
         "StudyDate", "StudyTime", "SeriesTime", "AcquisitionTime", "ImagePositionPatient",
         "ImageOrientationPatient", "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "SamplesPerPixel",
         "RelatedSeriesSequence")
RELATED = {0x00081250}


def _pydicom(path: Path) -> tuple[int, dict[str, str]]:
    with path.open("rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        return fp.tell(), {k: str(ds.get(k)) for k in FACTS}


def _ours(path: Path) -> tuple[int, dict[str, str]]:
    with path.open("rb") as fp:
        ds = read_header(fp, path.stat().st_size, sequences=RELATED)
        return fp.tell(), {k: str(ds.get(k)) for k in FACTS}


def test_same_facts_and_position_as_pydicom_on_every_corpus_suite(corpus: Path) -> None:
    """Every suite (vendors, enhanced and classic, nine transfer syntaxes): its first files."""
    checked = 0
    for suite in sorted(p for p in corpus.iterdir() if (p / "In").is_dir()):
        files = sorted(p for p in (suite / "In").rglob("*") if p.is_file())
        for path in files[:: max(1, len(files) // 25)]:
            try:
                expected = _pydicom(path)
            except Exception:  # not DICOM (a README, a text file): pydicom's verdict is not ours to match
                continue
            assert _ours(path) == expected, path
            checked += 1
    assert checked > 200


def _related(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).RelatedSeriesSequence[0].SeriesInstanceUID)


def _file(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    return buffer.getvalue()


def _enhanced_like() -> Dataset:
    """Nested undefined-length sequences past group 0028, an icon with its own pixel data inside
    an item, a private sequence before it, and the pixel data at the end."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID = "P1"
    related = Dataset()
    related.SeriesInstanceUID = generate_uid()
    ds.RelatedSeriesSequence = Sequence([related])
    ds.add_new(0x00210010, "LO", "SIEMENS MR SDS 01")
    private_item = Dataset()
    private_item.add_new(0x00211001, "LO", "inside")
    ds.add_new(0x00211010, "SQ", Sequence([private_item]))
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 2, 2, 16, 1
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 1, 1, 8
    icon.PixelData = b"\x01\x02"
    ds.IconImageSequence = Sequence([icon])
    frame = Dataset()
    frame.FrameContentSequence = Sequence([Dataset()])
    frame.FrameContentSequence[0].StackID = "1"
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame, frame])
    for tag in (0x00081250, 0x00211010, 0x00880200, 0x52009230):
        ds[tag].is_undefined_length = True
    ds.PerFrameFunctionalGroupsSequence[0][0x00209111].is_undefined_length = True
    icon[0x7FE00010].VR = "OB"
    ds.PixelData = b"\0" * 8
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("padded", [False, True])
def test_sequences_walked_past_leave_the_file_at_the_pixel_data(tmp_path: Path, syntax: str, padded: bool) -> None:
    """Found at the end of the file from the image attributes, or (trailing padding after it,
    so not at the end) by walking every element before it."""
    ds = _enhanced_like()
    if padded:
        ds.add_new(0xFFFCFFFC, "OB", b"\0" * 6)  # DataSetTrailingPadding
    path = tmp_path / "x.dcm"
    path.write_bytes(_file(ds, syntax))
    with path.open("rb") as fp:
        ds = read_header(fp, path.stat().st_size, sequences=RELATED)
        at = fp.tell()
        assert fp.read(4) == b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
    assert at == _pydicom(path)[0]
    assert str(ds.RelatedSeriesSequence[0].SeriesInstanceUID) == str(_related(path))
    assert "PerFrameFunctionalGroupsSequence" not in ds and 0x00211010 not in ds and ds.PatientID == "P1"
    assert all((int(element.tag) >> 16) <= LAST_GROUP for element in ds)


def test_a_file_cut_past_the_groups_read_ends_its_header_there(tmp_path: Path) -> None:
    data = _file(_enhanced_like())
    cut = data.index(b"\x00\x52\x30\x92")  # (5200,9230) PerFrameFunctionalGroupsSequence
    path = tmp_path / "x.dcm"
    path.write_bytes(data[: cut + 20])
    with path.open("rb") as fp:
        ds = read_header(fp, path.stat().st_size, sequences=RELATED)
        assert fp.tell() == path.stat().st_size and ds.PatientID == "P1"


def test_a_file_cut_inside_a_sequence_it_walks_past_in_the_groups_read_is_truncated(tmp_path: Path) -> None:
    data = _file(_enhanced_like())
    cut = data.index(b"\x21\x00\x10\x10")  # (0021,1010): the private sequence
    path = tmp_path / "x.dcm"
    path.write_bytes(data[: cut + 24])
    with path.open("rb") as fp, pytest.raises(HeaderTruncated, match=r"past the end of the file|ends inside"):
        read_header(fp, path.stat().st_size, sequences=RELATED)
