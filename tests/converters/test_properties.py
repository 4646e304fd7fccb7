"""Properties, checked with hypothesis: header reading never raises and never hands on a value that
is unsafe in a path; the label sanitizers give only their allowed characters, are idempotent and
raise only their documented errors."""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shutil
import struct
from pathlib import Path

import pydicom
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from converters import LabelError, Labels
from converters.bids.naming import label_characters, relative_path, sanitize_label
from converters.classify import parse_reproin, screen
from converters.discover import discover
from converters.labels import usable_label
from converters.records import BidsTarget
from xnat_container.errors import XnatLabelError
from xnat_container.labels import sanitize_xnat_label, xnat_label_characters

BIDS_LABEL = re.compile(r"[A-Za-z0-9]+")
XNAT_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?")
SETTINGS = settings(max_examples=150, deadline=None)

#: Any text, lone surrogates and control characters included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()) | st.characters(categories=["Cs"]), max_size=40)
HOSTILE_TEXT = st.one_of(
    ANY_TEXT,
    st.sampled_from(["", "..", "../..", "/etc/passwd", "a/../../b", "\x00", "  ", "***", "0000", "XXXX", "Anonymous",
                     "Müller-2", "ﬁrst", "\u202e", "\uff12\uff10\uff11\uff18", "²²", "C:\\x", "~root"]),
)  # fmt: skip


# --- label sanitizers ------------------------------------------------------------------------


@SETTINGS
@given(HOSTILE_TEXT)
def test_label_characters(text: str) -> None:
    label = label_characters(text)
    assert label == "" or BIDS_LABEL.fullmatch(label)
    assert label_characters(label) == label


@SETTINGS
@given(HOSTILE_TEXT)
def test_sanitize_label(text: str) -> None:
    try:
        label = sanitize_label(text)
    except LabelError:
        assert label_characters(text) == ""
        return
    assert BIDS_LABEL.fullmatch(label) and sanitize_label(label) == label


@SETTINGS
@given(HOSTILE_TEXT)
def test_usable_label(text: str) -> None:
    label = usable_label(text)
    if label is not None:
        assert BIDS_LABEL.fullmatch(label) and usable_label(label) == label


@SETTINGS
@given(HOSTILE_TEXT, st.sampled_from(["label", "project", "subject", "session"]))
def test_sanitize_xnat_label(text: str, what: str) -> None:
    assert xnat_label_characters(xnat_label_characters(text)) == xnat_label_characters(text)
    try:
        label = sanitize_xnat_label(text, what)
    except XnatLabelError as exc:
        assert what in str(exc)
        return
    assert XNAT_LABEL.fullmatch(label), label
    assert sanitize_xnat_label(label, what) == label


# --- header reading --------------------------------------------------------------------------

#: String attributes (text and the IS/DS/DA/TM/DT numbers and dates, which DICOM writes as text)
#: that discover reads.
STRING_ATTRIBUTES = (
    "PatientID", "PatientName", "PatientSex", "PatientAge", "SeriesDescription", "ProtocolName", "Modality",
    "StudyDate", "StudyTime", "SeriesTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime",
    "ImageType", "SeriesNumber", "InstanceNumber", "NumberOfFrames", "ImagePositionPatient",
    "ImageOrientationPatient", "SpecificCharacterSet", "ContrastBolusAgent", "SOPInstanceUID",
)  # fmt: skip
VALUES = st.one_of(
    st.binary(max_size=64),
    ANY_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"../..", b"/etc/passwd", b"1e400", b"-1", b"nan", b"inf", b"\\\\\\", b"a\\b\\c\\d\\e\\f",
                     b"ISO_IR 192", b"ISO 2022 IR 87", b"ISO_IR 9999", b"\xb2" * 6, b"20240102", b"101010.123",
                     b"\xef\xbc\x92" * 8, b"\x00" * 8]),
)  # fmt: skip
HEADERS = st.dictionaries(st.sampled_from(STRING_ATTRIBUTES), VALUES, max_size=6)
#: The record's documented forms (records.DicomSeries).
DATE = re.compile(r"[0-9]{8}")
TIME = re.compile(r"[0-9]{2,6}(?:\.[0-9]*)?")


@pytest.fixture(scope="module")
def template(corpus: Path) -> Path:
    """One classic MR slice of the corpus (GE EPI, 64 x 64)."""
    return min((corpus / "dcm_qa_nih" / "In" / "20180918GE" / "mr_0005").glob("*.dcm"))


@functools.cache
def _bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("headers")


_CHARSET = b"\x08\x00\x05\x00CS"  # (0008,0005) CS, explicit VR little endian


def _write(folder: Path, template: Path, headers: dict[str, bytes]) -> None:
    """The template with ``headers`` as the elements' raw bytes (nothing re-encoded)."""
    ds = pydicom.dcmread(io.BytesIO(_bytes(template)))
    charset = headers.pop("SpecificCharacterSet", None)
    for keyword, value in headers.items():
        tag = Tag(tag_for_keyword(keyword))
        ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)  # the template's character set: raw values kept
    data = buffer.getvalue()
    if charset is not None:  # replaced afterwards, else pydicom would re-encode every text value
        start = data.index(_CHARSET, 132 + 12)
        end = start + 8 + struct.unpack("<H", data[start + 6 : start + 8])[0]
        data = data[:start] + _CHARSET + struct.pack("<H", len(charset)) + charset + data[end:]
    shutil.rmtree(folder / "in", ignore_errors=True)
    (folder / "in").mkdir()
    (folder / "in" / "x.dcm").write_bytes(data)


@SETTINGS
@given(headers=HEADERS)
@example(headers={"InstanceNumber": b"9" * 400})  # once OverflowError out of discover
@example(headers={"ImageOrientationPatient": b"a\\b\\c\\d\\e\\f"})  # once ValueError out of discover
@example(headers={"StudyTime": b"\xb2" * 6})  # superscript digits: once a session "T²²²²²²"
@example(headers={"StudyDate": b"/etc"})  # once the session "etc"
@example(headers={"PatientID": b"..\\..\\x", "SeriesDescription": b"a\\b"})  # once a Python list's repr
def test_discover_never_raises_nor_yields_unsafe_values(
    template: Path, folder: Path, headers: dict[str, bytes]
) -> None:
    _write(folder, template, dict(headers))
    inventory = discover(folder / "in")
    assert len(inventory.series) + len(inventory.unattributed) + len(inventory.foreign) >= 1
    for series in inventory.series:
        assert series.study_date == "" or DATE.fullmatch(series.study_date), series.study_date
        assert series.study_time == "" or TIME.fullmatch(series.study_time), series.study_time
        assert not any(isinstance(v, list) or str(v).startswith("['") for v in (series.patient_id,
                                                                                series.series_description))
        subject = Labels().resolve_subject(series, secret=lambda: b"k" * 32)
        assert BIDS_LABEL.fullmatch(subject.label), subject
        session = Labels().session_label(series)
        assert session is None or BIDS_LABEL.fullmatch(session), session
        screen(series)  # the header-only rules decide without raising
        for name in (series.series_description, series.protocol_name):
            with contextlib.suppress(LabelError):  # an unusable ReproIn entity: skipped, saying so
                parse_reproin(name)
            acq = label_characters(name)
            target = BidsTarget("anat", "T1w", {"acq": acq} if acq else {})
            path = Path(relative_path(subject.label, session, target, ".nii.gz"))
            assert not path.is_absolute() and ".." not in path.parts and path.parts[0] == f"sub-{subject.label}"
