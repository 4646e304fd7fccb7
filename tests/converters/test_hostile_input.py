"""Hostile and broken input: every case gets a clear per-series verdict.

Each case is made here, in the test's temporary folder, from real corpus files changed with pydicom
(one volume of the GE EPI series ``dcm_qa_nih/In/20180918GE/mr_0005``: 15 classic single-frame
slices, 64 x 64) or from pydicom's own broken test files. Every verdict is asserted: the state
(``converted``/``skipped``/``failed``), the reason code of a skip, and a message naming what is wrong
and where (the file or folder). Nothing may escape as a traceback ("TypeError: ...") and nothing may
be written outside the dataset.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from converters import DicomInputError, SeriesResult, convert_series, convert_tree
from tests.hostile_dicom import (
    BASIC_TEXT_SR,
    JPEG2000,
    KEY_OBJECT_SELECTION,
    SLICES,
    UNKNOWN_SYNTAX,
    Mutation,
    dataset,
    set_raw,
    write_absurd,
    write_document,
    write_series,
)

REPO = Path(__file__).resolve().parents[2]
ALNUM = re.compile(r"[A-Za-z0-9]+")
#: One volume (15 slices) of a classic GE EPI series.
GE_SERIES = Path("dcm_qa_nih/In/20180918GE/mr_0005")


# --- making the cases ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume(corpus: Path) -> tuple[bytes, ...]:
    """The bytes of the 15 slices of the first volume (InstanceNumber 1-15)."""
    files = sorted((corpus / GE_SERIES).glob("*.dcm"))[:SLICES]
    assert len(files) == SLICES
    return tuple(file.read_bytes() for file in files)


#: Truncation points of the sweep (bytes kept; negative: bytes cut from the end).
CUTS = (0, 1, 100, 131, 132, 140, 300, 900, 5000, 16000, -8200, -3000, -2, -1)


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@dataclass(frozen=True)
class Hostile:
    tree: Path
    root: Path
    results: list[SeriesResult]

    def verdict(self, description: str) -> SeriesResult:
        (found,) = [r for r in self.results if r.series_description == description]
        return found


@pytest.fixture(scope="module")
def hostile(volume: tuple[bytes, ...], tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    """Every series-level case in one tree (each series in a folder named like its case), converted
    once with :func:`convert_tree`; every series' SeriesDescription is its case id."""
    base = tmp_path_factory.mktemp("hostile")
    tree = base / "in"

    def series(case: str, mutate: Mutation | None = None, **options: object) -> list[Path]:
        return write_series(tree / case, volume, case, mutate, **options)  # type: ignore[arg-type]

    series("control")
    _cut(series("truncated-header")[5], 900)
    files = series("truncated-pixels")
    _cut(files[5], len(files[5].read_bytes()) - 3000)
    series("not-dicom-beside")
    (tree / "not-dicom-beside" / "zz.dcm").write_text("this is not DICOM\n" * 20)

    def no_geometry(_index: int, ds: Dataset) -> None:
        del ds.ImagePositionPatient, ds.ImageOrientationPatient

    def no_orientation(_index: int, ds: Dataset) -> None:
        del ds.ImageOrientationPatient

    def no_position_slice_7(index: int, ds: Dataset) -> None:
        if index == 7:
            del ds.ImagePositionPatient

    def garbage_orientation_slice_3(index: int, ds: Dataset) -> None:
        if index == 3:
            set_raw(ds, "ImageOrientationPatient", b"a\\b\\c\\d\\e\\f")

    def orientation_alternating(index: int, ds: Dataset) -> None:
        if index % 2:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    def orientation_slice_7(index: int, ds: Dataset) -> None:
        if index == 7:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    def small_matrix(ds: Dataset) -> None:
        ds.Rows, ds.Columns = 32, 48
        ds.PixelData = np.full((32, 48), 100, dtype="<i2").tobytes()

    def matrix_alternating(index: int, ds: Dataset) -> None:
        if index % 2:
            small_matrix(ds)

    def matrix_slice_7(index: int, ds: Dataset) -> None:
        if index == 7:
            small_matrix(ds)

    def no_pixels(_index: int, ds: Dataset) -> None:
        del ds.PixelData

    def huge_numbers(index: int, ds: Dataset) -> None:
        set_raw(ds, "SeriesNumber", b"1e400")
        if index == 2:
            set_raw(ds, "InstanceNumber", b"9" * 400)

    series("no-geometry", no_geometry)
    series("no-orientation", no_orientation)
    series("no-position-slice-7", no_position_slice_7)
    series("garbage-orientation-slice-3", garbage_orientation_slice_3)
    series("orientation-alternating", orientation_alternating)
    series("orientation-slice-7", orientation_slice_7)
    series("matrix-alternating", matrix_alternating)
    series("matrix-slice-7", matrix_slice_7)
    series("huge-numbers", huge_numbers)

    files = series("duplicate-sop-other-pixels")
    twin = pydicom.dcmread(files[3])
    twin.PixelData = np.full((64, 64), 1234, dtype="<i2").tobytes()
    twin.save_as(files[3].with_name("003-twin.dcm"))
    files = series("duplicate-file")
    shutil.copyfile(files[3], files[3].with_name("900-copy.dcm"))

    series("declared-jpeg2000-raw-pixels", declared=JPEG2000)
    series("unknown-transfer-syntax", declared=UNKNOWN_SYNTAX)
    write_document(tree / "structured-report", "structured-report", BASIC_TEXT_SR, "SR")
    write_document(tree / "key-object", "key-object", KEY_OBJECT_SELECTION, "KO")
    series("image-without-pixels", no_pixels, count=1)
    (tree / "empty-series").mkdir()

    stray = tree / "stray"
    stray.mkdir()
    (stray / "truncated.dcm").write_bytes(volume[0][:900])
    (stray / "not-dicom.dcm").write_text("this is not DICOM either\n")
    (stray / "garbage-after-marker.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 8)
    for keep in CUTS:
        ds = dataset(volume[0])
        ds.SeriesInstanceUID = generate_uid()
        ds.SeriesDescription = f"cut {keep}"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        (tree / "cuts" / str(keep)).mkdir(parents=True)
        (tree / "cuts" / str(keep) / "x.dcm").write_bytes(buffer.getvalue()[:keep])

    started = time.perf_counter()
    results = convert_tree(tree, base / "bids")
    print(f"hostile tree: {len(results)} records in {time.perf_counter() - started:.1f} s")
    return Hostile(tree, base / "bids", results)


# --- verdicts --------------------------------------------------------------------------------

#: case -> (state, reason code, fragments the reason must hold; ``{dir}`` is the case's folder).
SERIES_CASES: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "truncated-header": ("failed", None, ("{dir}/005.dcm: incomplete DICOM header",)),
    "truncated-pixels": ("failed", None, ("{dir}/005.dcm: truncated: pixel data needs ", " bytes, the file has ")),
    "not-dicom-beside": ("failed", None, ("{dir}/zz.dcm: not a DICOM file (no 'DICM' marker at byte 128)",)),
    "no-geometry": ("failed", None, (
        "15 files ({dir}/000.dcm, {dir}/001.dcm, {dir}/002.dcm and 12 more): MR Image Storage without a usable "
        "ImagePositionPatient or ImageOrientationPatient (required, Type 1): its slice cannot be placed in space",
    )),
    "no-orientation": ("failed", None, ("15 files (", "without a usable ImageOrientationPatient (required")),
    "no-position-slice-7": ("failed", None, ("{dir}/007.dcm: MR Image Storage without a usable ImagePositionPatient",)),
    "garbage-orientation-slice-3": (
        "failed", None, ("{dir}/003.dcm: MR Image Storage without a usable ImageOrientationPatient",),
    ),
    "orientation-alternating": ("skipped", "localizer", ("localizer (2 stacks of at most 12 slices in the ax, sag",)),
    "declared-jpeg2000-raw-pixels": ("skipped", "unreadable", (
        "dcm2niix could not read the image data of {dir} (exit 1)",
        "compressed image without image fragments",
        "(and 14 more files)",
        "Error: OpenJPEG failed to read the header {dir}/000.dcm",
    )),
    "unknown-transfer-syntax": ("skipped", "unreadable", (
        "dcm2niix could not read the image data of {dir} (exit 2)",
        f"Unsupported transfer syntax '{UNKNOWN_SYNTAX}'",
    )),
    "structured-report": ("skipped", "not-an-image", (f"not an image (Modality SR, SOP class {BASIC_TEXT_SR})",)),
    "key-object": ("skipped", "not-an-image", (f"not an image (Modality KO, SOP class {KEY_OBJECT_SELECTION})",)),
    "image-without-pixels": ("failed", None, ("{dir}/000.dcm: MR Image Storage without pixel data",)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SERIES_CASES))
def test_series_verdict(hostile: Hostile, case: str) -> None:
    state, code, fragments = SERIES_CASES[case]
    result = hostile.verdict(case)
    assert (result.state, result.reason_code, result.outputs) == (state, code, ()), result
    assert result.reason is not None
    for fragment in fragments:
        assert fragment.format(dir=hostile.tree / case) in result.reason, result.reason
    if state == "failed":
        assert result.series_uid and f"{case!r}" in result.reason  # which series, by UID and name
    assert ".bidsbridge" not in result.reason  # dcm2niix's staged links are never shown


def test_control_converts(hostile: Hostile) -> None:
    result = hostile.verdict("control")
    assert result.state == "converted", result
    assert [Path(p).name for p in result.outputs] == [
        "sub-DEV_ses-20180918_task-control_bold.json", "sub-DEV_ses-20180918_task-control_bold.nii.gz",
    ]  # fmt: skip


@pytest.mark.parametrize(("case", "images"), [("orientation-slice-7", ("dir-AP", "dir-SI")),
                                               ("matrix-slice-7", ("run-1", "run-2")),
                                               ("matrix-alternating", ("run-1", "run-2"))])
def test_mixed_geometry_is_split_into_images(hostile: Hostile, case: str, images: tuple[str, str]) -> None:
    """dcm2niix writes one image per orientation / matrix size; each is classified on its own
    (README "Series dcm2niix splits"), and a stack missing a slice says so in the notes."""
    result = hostile.verdict(case)
    assert result.state == "converted", result
    names = [Path(p).name for p in result.outputs if p.endswith(".nii.gz")]
    assert len(names) == 2 and all(any(entity in n for n in names) for entity in images), names
    if case.endswith("slice-7"):
        assert any("Found 14 images, expected 15 slices" in note for note in result.notes), result.notes


def test_unreadable_numbers_count_as_absent(hostile: Hostile) -> None:
    """SeriesNumber ``1e400`` and a 400-digit InstanceNumber (once: OverflowError out of discover,
    which stopped the whole tree) are read as absent."""
    result = hostile.verdict("huge-numbers")
    assert (result.state, result.series_number) == ("converted", None), result


def test_duplicate_sop_instance_with_other_pixels(hostile: Hostile) -> None:
    result = hostile.verdict("duplicate-sop-other-pixels")
    assert result.state == "converted", result
    folder = hostile.tree / "duplicate-sop-other-pixels"
    assert f"dcm2niix: dcm2niix used 15 of the 16 DICOM files of {folder} (1 images have identical time, series, " \
           "acquisition and instance values. DUPLICATES REMOVED.)" in result.notes, result.notes


def test_exact_duplicate_file(hostile: Hostile) -> None:
    folder = hostile.tree / "duplicate-file"
    assert hostile.verdict("duplicate-file").state == "converted"
    copy = hostile.verdict("duplicate-file/900-copy.dcm")
    assert (copy.series_uid, copy.state, copy.reason_code) == ("", "skipped", "duplicate")
    assert copy.reason == f"{folder}/900-copy.dcm: duplicate of instance {folder}/003.dcm"


@pytest.mark.parametrize(("name", "message"), [
    ("truncated.dcm", "incomplete DICOM header: no StudyInstanceUID/SeriesInstanceUID (truncated?)"),
    ("not-dicom.dcm", "not a DICOM file (no 'DICM' marker at byte 128)"),
    ("garbage-after-marker.dcm", "incomplete DICOM header"),
])  # fmt: skip
def test_stray_damaged_file(hostile: Hostile, name: str, message: str) -> None:
    result = hostile.verdict(f"stray/{name}")
    assert (result.series_uid, result.state, result.reason_code) == ("", "failed", None)
    assert result.reason is not None and result.reason.startswith(f"{hostile.tree / 'stray' / name}: {message}")


@pytest.mark.parametrize("keep", CUTS)
def test_truncated_anywhere_fails_naming_the_file(hostile: Hostile, keep: int) -> None:
    """Cut anywhere, before the marker, in the file meta, in the header, in the pixel data: the
    file's series (or the file, when no header is left) fails and the reason names the file."""
    path = hostile.tree / "cuts" / str(keep) / "x.dcm"
    (result,) = [r for r in hostile.results if r.reason is not None and f"{path}:" in r.reason]
    assert result.state == "failed" and result.outputs == (), result
    assert re.search(r"not a DICOM file|incomplete DICOM header|truncated|without pixel data", result.reason)


def test_every_record_is_a_clear_verdict(hostile: Hostile) -> None:
    """No traceback text, no staging paths; every record names its series or file."""
    for result in hostile.results:
        assert result.state in ("converted", "skipped", "failed")
        if result.state != "converted":
            assert result.reason, result
            assert not re.match(r"[A-Z]\w*(Error|Exception):", result.reason), result.reason
            assert ".bidsbridge/tmp" not in result.reason
        if result.state == "skipped":
            assert result.reason_code is not None
        for note in result.notes:
            assert ".bidsbridge/tmp" not in note


def test_empty_series_folder(hostile: Hostile, tmp_path: Path) -> None:
    """An empty folder holds no series and no file: convert_tree has nothing to report for it, and
    converting it as a series is refused naming the folder."""
    folder = hostile.tree / "empty-series"
    assert not any(str(folder) in (r.reason or "") or r.series_description.startswith("empty-series")
                   for r in hostile.results)
    with pytest.raises(DicomInputError, match=re.escape(f"no DICOM instances found ({folder})")):
        convert_series(folder, tmp_path / "bids")
    assert convert_tree(folder, tmp_path / "bids") == []


#: pydicom's broken (or non-MR) test files -> (state, reason code, message the reason holds).
PYDICOM_FILES: dict[str, tuple[str, str | None, str]] = {
    "MR_truncated.dcm": ("failed", None, "MR_truncated.dcm: truncated: pixel data needs 9692 bytes, the file has 9630"),
    "rtplan_truncated.dcm": ("skipped", "not-an-image", "not an image (Modality RTPLAN"),
    "badVR.dcm": ("skipped", "no-bids-datatype", "modality RTDOSE: only MR is placed in BIDS so far"),
    "no_meta.dcm": ("failed", None, "no_meta.dcm: not a DICOM file (no 'DICM' marker at byte 128)"),
    "ExplVR_BigEndNoMeta.dcm": ("failed", None, "ExplVR_BigEndNoMeta.dcm: not a DICOM file (no 'DICM' marker"),
    "ExplVR_LitEndNoMeta.dcm": ("failed", None, "ExplVR_LitEndNoMeta.dcm: not a DICOM file (no 'DICM' marker"),
    "no_meta_group_length.dcm": ("failed", None, "no_meta_group_length.dcm: incomplete DICOM header"),
    "meta_missing_tsyntax.dcm": ("failed", None, "meta_missing_tsyntax.dcm: incomplete DICOM header"),
    "empty_charset_LEI.dcm": ("failed", None, "empty_charset_LEI.dcm: incomplete DICOM header"),
    "reportsi_with_empty_number_tags.dcm": ("skipped", "not-an-image", "not an image (Modality SR"),
    "J2K_pixelrep_mismatch.dcm": ("skipped", "no-bids-datatype", "CT: BIDS 1.11.1 defines no raw datatype"),
    "JPEG2000-embedded-sequence-delimiter.dcm": ("skipped", "no-bids-datatype", "modality NM"),
    "DICOMDIR-empty.dcm": ("skipped", "not-an-image", "DICOMDIR-empty.dcm: DICOMDIR (a media index"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PYDICOM_FILES))
def test_pydicom_broken_test_files(name: str, tmp_path: Path) -> None:
    source = get_testdata_file(name, download=False)
    assert isinstance(source, str), f"pydicom {pydicom.__version__} no longer ships {name}"
    (tmp_path / "in").mkdir()
    shutil.copyfile(source, tmp_path / "in" / name)
    (result,) = convert_tree(tmp_path / "in", tmp_path / "bids")
    state, code, message = PYDICOM_FILES[name]
    assert (result.state, result.reason_code, result.outputs) == (state, code, ()), result
    assert result.reason is not None and message in result.reason, result.reason


# --- absurd dimensions: the verdict without the memory ---------------------------------------

#: Address space the conversion may use (the headers below claim terabytes).
ADDRESS_SPACE = 2 << 30

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from pathlib import Path
    from converters import convert_tree
    results = convert_tree(Path(sys.argv[1]), Path(sys.argv[2]))
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(json.dumps({{"peak_kib": peak, "results": [r.to_dict() for r in results]}}))
    """
)


def _run_limited(tree: Path, root: Path) -> dict[str, object]:
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.format(limit=ADDRESS_SPACE), str(tree), str(root)],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    found: dict[str, object] = json.loads(child.stdout.strip().splitlines()[-1])
    found["seconds"] = time.perf_counter() - started
    return found


def test_absurd_dimensions_get_a_verdict_without_the_memory(volume: tuple[bytes, ...], tmp_path: Path) -> None:
    tree = tmp_path / "in"
    write_absurd(tree / "native-65535x65535x10000", volume, 65535, 10000, None)
    claimed = write_absurd(tree / "native-length-claims-4GiB", volume, 64, 1, None)
    data = bytearray(claimed.read_bytes())
    element = data.rindex(b"\xe0\x7f\x10\x00OW\x00\x00")  # (7FE0,0010) OW, reserved, 4-byte length
    data[element + 8 : element + 12] = (0xFFFFFFF0).to_bytes(4, "little")
    claimed.write_bytes(bytes(data))
    write_absurd(tree / "jpeg2000-65535x65535x10000", volume, 65535, 10000, JPEG2000)
    write_absurd(tree / "jpeg2000-30000x30000x30000", volume, 30000, 30000, JPEG2000)
    assert all(path.stat().st_size < 64 << 10 for path in tree.rglob("*.dcm"))

    found = _run_limited(tree, tmp_path / "bids")
    results = {r["series_description"]: r for r in found["results"]}  # type: ignore[attr-defined]
    expected = {
        "native-65535x65535x10000": (
            "failed", None, "absurd.dcm: pixel data holds 8192 bytes but Rows x Columns x frames needs 85896724500000",
        ),
        "native-length-claims-4GiB": ("failed", None, "absurd.dcm: truncated: pixel data needs 4294984"),
        "jpeg2000-65535x65535x10000": (
            "skipped", "unreadable", "DICOM too large for NIfTI1 65535\u00d765535\u00d710000",  # (x: U+00D7)
        ),
        "jpeg2000-30000x30000x30000": ("skipped", "unreadable", "Number of frames 30000 does not match offset table"),
    }  # fmt: skip
    assert set(results) == set(expected), results
    for name, (state, code, message) in expected.items():
        result = results[name]
        assert (result["state"], result["reason_code"], result["outputs"]) == (state, code, []), result
        assert message in result["reason"] and str(tree / name) in result["reason"], result["reason"]
    print(f"absurd dimensions: {found['seconds']:.1f} s, peak RSS {found['peak_kib']} KiB")
    assert found["peak_kib"] < 1 << 20  # KiB: under 1 GiB, far below what the headers claim


# --- labels that try to leave the dataset ----------------------------------------------------

#: case -> header values (StudyDate and StudyTime as raw bytes: pydicom will not encode them).
LABEL_CASES: dict[str, dict[str, str | bytes]] = {
    "dot-dot": {"PatientID": "../../../../outside", "SeriesDescription": "func-bold_task-../../../../outside",
                "ProtocolName": "../x", "StudyDate": b"../.."},
    "absolute": {"PatientID": "/etc/passwd", "SeriesDescription": "anat-T1w_acq-/etc/passwd",
                 "ProtocolName": "/etc/passwd", "StudyDate": b"/etc"},
    "nul": {"PatientID": "ab\x00cd", "SeriesDescription": "func-bold_task-a\x00b", "ProtocolName": "p\x00q",
            "StudyDate": b"2018\x000918"},
    "unicode": {"PatientID": "Müller-Ø-李", "SeriesDescription": "func-bold_task-répos☃",  # fullwidth digits:
                "ProtocolName": "протокол", "StudyDate": "\uff12\uff10\uff11\uff18\uff10\uff19\uff11\uff18".encode()},
    "control": {"PatientID": "\x1b[31mred\x07\r\n", "SeriesDescription": "func-bold_task-\x1b]0;x\x07rest\t",
                "ProtocolName": "\x7f\x08", "StudyDate": b"2018\n0918"},
    "backslash": {"PatientID": "..\\..\\win", "SeriesDescription": "func-bold_task-..\\..\\x",
                  "ProtocolName": "a\\b", "StudyDate": b"2018\\0918"},
    "only-dots": {"PatientID": "..", "SeriesDescription": "..", "ProtocolName": "..", "StudyDate": b".."},
    "reproin-dir": {"PatientID": "P1", "SeriesDescription": "fmap-epi_dir-../../AP", "ProtocolName": "x"},
    "reproin-run": {"PatientID": "P2", "SeriesDescription": "func-bold_task-rest_run-../1", "ProtocolName": "x"},
    # A second study of P3 on the same day gets T<StudyTime>: superscript digits once made it
    # ses-20180918T²²²²²² (str.isdigit() accepts them).
    "time-first": {"PatientID": "P3", "StudyTime": b"101010"},
    "time-superscript": {"PatientID": "P3", "StudyTime": b"\xb2" * 6},
}  # fmt: skip


def _labels_tree(tree: Path, volume: tuple[bytes, ...]) -> None:
    for case, values in LABEL_CASES.items():
        study_uid = generate_uid()

        def mutate(_index: int, ds: Dataset, values: dict[str, str | bytes] = values, study_uid: str = study_uid
                   ) -> None:
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.StudyInstanceUID = study_uid
            for keyword, value in values.items():
                if isinstance(value, bytes):
                    set_raw(ds, keyword, value)
                else:
                    setattr(ds, keyword, value)

        write_series(tree / case, volume, case, mutate, count=3)


def test_hostile_labels_stay_inside_thedataset(volume: tuple[bytes, ...], tmp_path: Path) -> None:
    tree, root = tmp_path / "in", tmp_path / "bids"
    _labels_tree(tree, volume)
    around = sorted(tmp_path.parent.iterdir())
    results = convert_tree(tree, root)

    assert sorted(tmp_path.iterdir()) == [root, tree]  # nothing beside the dataset
    assert sorted(tmp_path.parent.iterdir()) == around  # nor above it
    inside = root.resolve()
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            assert (Path(directory) / name).resolve().is_relative_to(inside), Path(directory) / name

    assert len(results) == 11 and all(r.state != "failed" for r in results), results
    for result in results:
        assert result.subject is not None and ALNUM.fullmatch(result.subject), result
        assert result.session is None or ALNUM.fullmatch(result.session), result
        for output in result.outputs:
            parts = Path(output).parts
            assert not Path(output).is_absolute() and ".." not in parts, output
            assert (root / output).resolve().is_relative_to(inside) and (root / output).is_file()
            stem = parts[-1].split(".")[0]
            for entity in stem.split("_")[:-1]:  # key-value pairs; the suffix is last
                key, _, value = entity.partition("-")
                assert key.isalpha() and ALNUM.fullmatch(value), output

    # dcm2niix copies control characters into its JSON unescaped: once "failed: unreadable sidecar".
    control = next(r for r in results if r.series_description.startswith("func-bold_task-\x1b"))
    assert control.state == "converted" and control.subject == "31mred", control
    # The header text as DICOM writes it (values joined by "\\"), not a Python list.
    assert "func-bold_task-..\\..\\x" in {r.series_description for r in results}
    # A StudyDate that is no date gives the documented UID session, not "ses-etc".
    absolute = next(r for r in results if r.series_description == "anat-T1w_acq-/etc/passwd")
    assert absolute.session is not None and absolute.session.startswith("uid"), absolute
    assert any("no usable StudyDate" in note for note in absolute.notes)
    run = next(r for r in results if r.series_description == "func-bold_task-rest_run-../1")
    assert (run.state, run.reason_code) == ("skipped", "unrecognised")
    assert run.reason == "ReproIn SeriesDescription 'func-bold_task-rest_run-../1': BIDS entity 'run' needs a " \
                         "non-negative integer, got '../1'"
    sessions = {r.session for r in results if r.series_description in ("time-first", "time-superscript")}
    assert len(sessions) == 2 and "20180918" in sessions, sessions


# --- 50,000 instances ------------------------------------------------------------------------

BIG = 50_000
#: Slices per volume of the big series (500 volumes of 100 slices, 2 x 2 pixels).
BIG_SLICES = 100


def _big_template() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.Modality, ds.Manufacturer, ds.PatientPosition = "MR", "SIEMENS", "HFS"
    ds.PatientID, ds.PatientName = "BIG", "Big^Series"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber = "20240102", "101010", 7
    ds.SeriesDescription = "func-bold_task-big"  # a ReproIn name: a 4D GRE series is not guessed
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SP", "2D"
    ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = 100, 5, 20
    ds.SliceThickness, ds.PixelSpacing = 1, [1, 1]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _write_big(folder: Path, count: int) -> None:
    """``count`` distinct 2 x 2 MR instances of one series: one template encoded by pydicom's
    ``dcmwrite``, each file's SOP Instance UID, InstanceNumber, slice position and pixels filled
    into fixed-width fields of its bytes (``dcmwrite`` per file takes ~2 ms: 100 s for 50,000)."""
    ds = _big_template()
    prefix = generate_uid()[:40]
    width = 6
    marks = {b"uid": b"7" * width, b"num": b"8" * width, b"pos": b"9" * width}
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{prefix}.1{'7' * width}"
    ds.InstanceNumber = "8" * width
    ds.ImagePositionPatient = ["0", "0", "9" * width]
    ds.PixelData = b"\xaa\xbb" * 4
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    encoded = buffer.getvalue()
    assert encoded.endswith(ds.PixelData) and encoded.count(marks[b"uid"]) == 2
    template = encoded[: -len(ds.PixelData)].replace(b"%", b"%%")
    for name, mark in marks.items():
        assert template.count(mark) == (2 if name == b"uid" else 1)
        template = template.replace(mark, b"%(" + name + b")s")
    folder.mkdir(parents=True)
    for index in range(count):
        header = template % {b"uid": b"%06d" % index, b"num": b"%06d" % (index + 1),
                             b"pos": b"%06d" % (index % BIG_SLICES)}  # fmt: skip
        (folder / f"{index:05d}.dcm").write_bytes(header + (index % 65536).to_bytes(2, "little") * 4)


@pytest.fixture(scope="module")
def big_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big") / "in" / "big"
    started = time.perf_counter()
    _write_big(folder, BIG)
    took = time.perf_counter() - started
    print(f"generated {BIG} instances in {took:.1f} s")
    assert took < 60
    samples = [pydicom.dcmread(folder / f"{i:05d}.dcm") for i in (0, 12345, BIG - 1)]
    assert len({s.SOPInstanceUID for s in samples}) == 3
    assert [int(s.InstanceNumber) for s in samples] == [1, 12346, BIG]
    assert [s.pixel_array[0, 0] for s in samples] == [0, 12345, (BIG - 1) % 65536]
    return folder


_BIG_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    import converters.pipeline as pipeline

    measured = {}
    discover = pipeline.discover

    def peak_kib():
        # This process's own high-water mark (VmHWM). Not ru_maxrss: after a vfork + exec that
        # starts from the parent's peak (pytest's, hundreds of MB late in the suite).
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def timed(root):
        started = time.perf_counter()
        inventory = discover(root)
        measured.update(
            seconds=time.perf_counter() - started,
            peak_kib=peak_kib(),
            series=[len(s.files) for s in inventory.series],
            problems=sum(len(s.problems) for s in inventory.series) + len(inventory.unattributed),
            foreign=len(inventory.foreign),
        )
        return inventory

    pipeline.discover = timed  # convert_tree discovers once: measure that one
    started = time.perf_counter()
    results = pipeline.convert_tree(Path(sys.argv[1]), Path(sys.argv[2]))
    measured["total_seconds"] = time.perf_counter() - started
    measured["results"] = [r.to_dict() for r in results]
    print(json.dumps(measured))
    """
)


@pytest.mark.slow
def test_fifty_thousand_instances(big_series: Path, tmp_path: Path) -> None:
    """discover() reads 50,000 headers with bounded memory; the series gets its verdict."""
    child = subprocess.run(
        [sys.executable, "-c", _BIG_CHILD, str(big_series.parent), str(tmp_path / "bids")],
        capture_output=True, text=True, timeout=900, check=False, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    found = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        f"50,000 instances: discover {found['seconds']:.1f} s, peak RSS {found['peak_kib'] // 1024} MiB; "
        f"convert_tree {found['total_seconds']:.1f} s"
    )
    assert (found["series"], found["problems"], found["foreign"]) == ([BIG], 0, 0)
    assert found["peak_kib"] < 768 << 10  # KiB: ~3 KiB per instance plus the interpreter
    (result,) = found["results"]
    assert result["state"] == "converted", result
    assert result["outputs"] == ["sub-BIG/ses-20240102/func/sub-BIG_ses-20240102_task-big_bold.json",
                                 "sub-BIG/ses-20240102/func/sub-BIG_ses-20240102_task-big_bold.nii.gz"], result
    assert nib.load(tmp_path / "bids" / result["outputs"][1]).shape == (2, 2, BIG_SLICES, BIG // BIG_SLICES)
