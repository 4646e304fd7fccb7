"""How :func:`converters.conversion.run_dcm2niix` reads dcm2niix's outcome: exit code plus files written.

Real dcm2niix runs on corpus files (damaged copies made in ``tmp_path``) wherever real data can
produce the case; the real binary behind a small wrapper that breaks its folders for the
environment failures (exit 5, 6, 7); a fake dcm2niix (a script printing given lines, writing given
files, exiting with a given code) for what neither can produce (exit 3, 4, 9, undocumented codes,
signals, timeouts, missing sidecars, unknown files).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

import converters.conversion as conversion
from converters import (
    ConversionError,
    Dcm2niixError,
    DicomInputError,
    UnreadableDataError,
    convert_series,
    series_outputs,
)
from converters.conversion import dcm2niix_binary, dcm2niix_version, run_dcm2niix
from converters.records import Dcm2niixRun
from tests.converters.helpers import series_dir

MPEG2 = "1.2.840.10008.1.2.4.100"
RLE = "1.2.840.10008.1.2.5"
PARTIAL = (
    "dcm2niix exited with code 8 (converted some but not all of the input DICOMs) converting {}, "
    "but wrote 1 image(s), which are used"
)


# --- inputs ------------------------------------------------------------------------------------------


def _only_file(folder: Path) -> Path:
    (found,) = folder.iterdir()
    return found


def _truncated(source: Path, target: Path, fraction: float = 0.6) -> Path:
    """A copy of ``source`` whose pixel data is cut short (the header stays intact)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def _recoded(corpus: Path, target: Path, transfer_syntax: str) -> Path:
    """The uncompressed test image of ``dcm_qa_ts`` relabelled as ``transfer_syntax`` with garbage
    fragments: a well-formed file whose pixel data nothing can decode."""
    ds = pydicom.dcmread(corpus / "dcm_qa_ts" / "In" / "1.dcm")
    ds.PixelData = encapsulate([bytes(range(256)) * 8])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture
def t1(xa30: Path) -> Path:
    """The single enhanced file of the XA30 T1w series (one good image)."""
    return _only_file(series_dir(xa30, 5))


@pytest.fixture
def cut_phase(xa30: Path, tmp_path: Path) -> Path:
    """A truncated copy of the XA30 field-map phase image (another series than ``t1``)."""
    return _truncated(_only_file(series_dir(xa30, 9)), tmp_path / "cut" / "phase.dcm")


# --- real dcm2niix -----------------------------------------------------------------------------------


def test_clean_series_has_no_warnings(t1: Path, tmp_path: Path) -> None:
    run = run_dcm2niix([t1], tmp_path / "work", source=t1.parent)
    assert isinstance(run, Dcm2niixRun)
    assert (run.exit_code, run.files_used, run.warnings) == (0, 1, ())
    (image,) = run.images
    assert image.nifti.name == "series.nii.gz"
    assert image.sidecar is not None and image.sidecar.name == "series.json"
    assert image.metadata["Modality"] == "MR" and image.shape == (96, 128, 128)


def test_repeated_dcm2niix_warning_is_reported_once(corpus: Path, tmp_path: Path) -> None:
    # GE pepolar: both polarities in one series, two images, the same warning printed for each.
    folder = corpus / "dcm_qa_polar" / "In" / "6_FM_cv12_2_3mm"
    run = run_dcm2niix(sorted(folder.iterdir()), tmp_path / "work", source=folder)
    assert [image.nifti.name for image in run.images] == ["series.nii.gz", "seriesa.nii.gz"]
    assert (run.exit_code, run.files_used) == (0, 240)
    assert run.warnings == ("Warning: GE ABCD pepolar research sequence handling is experimental",)


def test_partial_conversion_exit_8_succeeds_with_warnings(t1: Path, cut_phase: Path, tmp_path: Path) -> None:
    source = tmp_path / "mixed"
    run = run_dcm2niix([t1, cut_phase], tmp_path / "work", source=source)
    assert (run.exit_code, run.files_used) == (8, 1)
    (image,) = run.images
    assert image.metadata["SeriesNumber"] == 5
    assert run.warnings == (
        # dcm2niix names the series' own file, not the staged link
        f"Warning: File not large enough to store image data: {cut_phase}",
        "Error: Converted 1 of 2 files",
        PARTIAL.format(source),
        f"dcm2niix used 1 of the 2 DICOM files of {source}",
    )


def test_truncated_file_exit_1_without_image_is_unreadable(cut_phase: Path, tmp_path: Path) -> None:
    with pytest.raises(UnreadableDataError) as caught:
        run_dcm2niix([cut_phase], tmp_path / "work", source=cut_phase.parent)
    error = caught.value
    assert isinstance(error, DicomInputError) and not isinstance(error, ConversionError)
    assert (error.returncode, error.series_dir, error.path) == (1, cut_phase.parent, cut_phase.parent)
    assert error.details == (
        f"Warning: File not large enough to store image data: {cut_phase}",
        "dcm2niix wrote no NIfTI image",
    )
    assert str(error) == (
        f"dcm2niix could not read the image data of {cut_phase.parent} (exit 1): "
        f"Warning: File not large enough to store image data: {cut_phase}; dcm2niix wrote no NIfTI image"
    )


def test_folder_without_dicom_exit_2_is_unreadable(tmp_path: Path) -> None:
    notes = tmp_path / "in" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("scanned twice, second one is better\n")
    with pytest.raises(UnreadableDataError) as caught:
        run_dcm2niix([notes], tmp_path / "work", source=notes.parent)
    assert caught.value.returncode == 2
    # the staging folder dcm2niix searched is reported as the series' folder
    assert caught.value.details == (f"Error: Unable to find any DICOM images in {notes.parent} (or subfolders 5 deep)",)


def test_unsupported_transfer_syntax_exit_2_is_unreadable(corpus: Path, tmp_path: Path) -> None:
    mpeg = _recoded(corpus, tmp_path / "in" / "mpeg2.dcm", MPEG2)
    with pytest.raises(UnreadableDataError) as caught:
        run_dcm2niix([mpeg], tmp_path / "work", source=mpeg.parent)
    assert caught.value.returncode == 2
    (detail,) = caught.value.details
    assert detail.startswith(f"Warning: Unsupported transfer syntax '{MPEG2}'")


def test_undecodable_pixel_data_exit_1_is_unreadable(corpus: Path, tmp_path: Path) -> None:
    rle = _recoded(corpus, tmp_path / "in" / "rle.dcm", RLE)
    with pytest.raises(UnreadableDataError) as caught:
        run_dcm2niix([rle], tmp_path / "work", source=rle.parent)
    assert caught.value.returncode == 1
    (corrupted, no_image) = caught.value.details
    assert corrupted.startswith("Error: RLE header corrupted") and no_image == "dcm2niix wrote no NIfTI image"


def test_pipeline_skips_a_series_dcm2niix_cannot_read(corpus: Path, tmp_path: Path) -> None:
    mpeg = _recoded(corpus, tmp_path / "in" / "mpeg2.dcm", MPEG2)
    root = tmp_path / "bids"
    result = convert_series(mpeg.parent, root, subject="01")
    assert (result.state, result.outputs) == ("skipped", ())
    assert result.reason is not None
    # (a one-file series is named by its file)
    assert result.reason == (
        f"unreadable image data: dcm2niix could not read the image data of {mpeg} (exit 2): "
        f"Warning: Unsupported transfer syntax '{MPEG2}' (see www.nitrc.org/plugins/mwiki/index.php/dcm2nii:MainPage)"
    )
    assert series_outputs(root, result.series_uid) == []
    assert not list(root.glob("sub-*/**/*.nii.gz"))


# --- real dcm2niix in a broken environment -------------------------------------------------------------


def _wrapper(tmp_path: Path, prepare: str) -> Path:
    """A script that runs ``prepare`` (shell, with ``$out`` and ``$stage``) and then the real dcm2niix.

    As root, the real binary runs without the capability to override file permissions, so that a
    read-only folder is read-only to it as well."""
    real = str(dcm2niix_binary())
    launch = f'"{real}" "$@"'
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permissions cannot be enforced on dcm2niix")
        caps = "-dac_override,-dac_read_search"
        launch = f'"{setpriv}" --inh-caps={caps} --bounding-set={caps} -- {launch}'
    script = tmp_path / "dcm2niix-wrapper"
    script.write_text(
        "#!/bin/sh\n"
        'prev=""; for arg; do [ "$prev" = "-o" ] && out="$arg"; prev="$arg"; stage="$arg"; done\n'
        f"{prepare}\n"
        f"exec {launch}\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    ("prepare", "code", "message"),
    [
        ('rm -r "$stage"', 5, "Error: Input folder invalid"),
        ('rmdir "$out"', 6, "Error: Output folder invalid"),
        ('chmod 555 "$out"', 7, "Error: Unable to write to output folder"),
    ],
    ids=["input-folder-gone", "output-folder-gone", "output-folder-read-only"],
)
def test_broken_folders_are_worth_retrying(
    prepare: str, code: int, message: str, t1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _wrapper(tmp_path, prepare)
    monkeypatch.setattr(conversion, "dcm2niix_binary", lambda: script)
    with pytest.raises(Dcm2niixError) as caught:
        run_dcm2niix([t1], tmp_path / "work", source=t1.parent)
    error = caught.value
    assert not isinstance(error, DicomInputError)
    assert error.returncode == code and error.series_dir == t1.parent
    assert message in error.output
    assert str(error).startswith(f"dcm2niix exited with code {code} converting {t1.parent}: ")
    assert error.output.endswith(f"(exit {code}: {conversion._EXIT_MEANINGS[code]})")


# --- fake dcm2niix -----------------------------------------------------------------------------------

_FAKE = """\
import json, os, shutil, sys, time
from pathlib import Path

args = sys.argv[1:]
if args == ["--version"]:
    print("Chris Rorden's dcm2niiX version v1.0.20990101 (fake)")
    sys.exit(3)
spec = json.loads(Path(__file__).with_suffix(".json").read_text())
out, stage = Path(args[args.index("-o") + 1]), args[-1]
for line in spec["lines"]:
    line = line.replace("{stage}", stage)
    print(line, file=sys.stderr if line.startswith("Error:") else sys.stdout, flush=True)
for name, content in spec["files"].items():
    if content.startswith("copy:"):
        shutil.copyfile(content[len("copy:"):], out / name)
    else:
        (out / name).write_text(content)
time.sleep(spec["sleep"])
if spec["signal"]:
    os.kill(os.getpid(), spec["signal"])
sys.exit(spec["exit"])
"""


@dataclass(frozen=True)
class FakeDcm2niix:
    script: Path
    #: A small valid NIfTI image; ``NIFTI`` in ``files`` stands for a copy of it.
    template: Path

    def program(
        self,
        *,
        lines: Sequence[str] = (),
        files: Mapping[str, str] | None = None,
        exit_code: int = 0,
        sleep: float = 0.0,
        kill: int = 0,
    ) -> None:
        """What the next run prints, writes to the output folder and exits with."""
        written = {name: f"copy:{self.template}" if text == "NIFTI" else text for name, text in (files or {}).items()}
        spec = {"lines": list(lines), "files": written, "exit": exit_code, "sleep": sleep, "signal": kill}
        self.script.with_suffix(".json").write_text(json.dumps(spec))


NIFTI = "NIFTI"
SIDECAR = json.dumps({"Modality": "MR", "SeriesNumber": 3})


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDcm2niix]:
    folder = tmp_path / "fake"
    folder.mkdir()
    script = folder / "dcm2niix"
    script.write_text(f"#!{sys.executable}\n{_FAKE}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    template = folder / "template.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2), dtype=np.int16), np.eye(4)), template)
    monkeypatch.setattr(conversion, "dcm2niix_binary", lambda: script)
    dcm2niix_version.cache_clear()  # (cached: must neither leak into nor come from other tests)
    yield FakeDcm2niix(script, template)
    dcm2niix_version.cache_clear()


@pytest.fixture
def dicom(tmp_path: Path) -> list[Path]:
    """Three input files (the fake does not read them)."""
    folder = tmp_path / "series"
    folder.mkdir()
    files = [folder / f"IM_{n}" for n in range(3)]
    for file in files:
        file.write_bytes(b"\0" * 132 + b"DICM")
    return files


def _run(dicom: list[Path], tmp_path: Path) -> Dcm2niixRun:
    return run_dcm2niix(dicom, tmp_path / "work", source=dicom[0].parent)


def test_fake_reports_its_version(fake: FakeDcm2niix) -> None:
    assert dcm2niix_version() == "v1.0.20990101"


def test_corrupt_dicom_exit_4_is_unreadable(fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path) -> None:
    fake.program(
        lines=["Found 3 DICOM file(s)", "Error: corrupt pixel data {stage}/000001.dcm", "Warning: giving up"],
        exit_code=4,
    )
    with pytest.raises(UnreadableDataError) as caught:
        _run(dicom, tmp_path)
    assert caught.value.returncode == 4
    # stdout (Warning:) is read before stderr (Error:): the two are separate pipes
    assert caught.value.details == ("Warning: giving up", f"Error: corrupt pixel data {dicom[1]}")


def test_unreadable_without_messages_gives_the_last_lines(
    fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path
) -> None:
    fake.program(lines=["banner", "Found 3 DICOM file(s)", "Unable to decode JPEG.", "", "Giving up"], exit_code=4)
    with pytest.raises(UnreadableDataError) as caught:
        _run(dicom, tmp_path)
    assert caught.value.details == ("Found 3 DICOM file(s)", "Unable to decode JPEG.", "Giving up")


@pytest.mark.parametrize(("line", "code"), [
    ("Error: Unable to write BIDS sidecar {out}/series.json (disk full?)", 1),
    ("Error: Unable to write {out}/series.nii.gz (disk full?)", 0),
    ("Error: Unable to create {out}/series.bval", 1),
])
def test_an_output_dcm2niix_could_not_write_is_the_disk_not_the_data(
    line: str, code: int, fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path
) -> None:
    # seen in the fault campaign: a full disk once passed for "unreadable image data" (skipped for good)
    fake.program(lines=["Found 3 DICOM file(s)", line.replace("{out}", str(tmp_path / "work" / "nifti"))],
                 exit_code=code)
    with pytest.raises(Dcm2niixError) as caught:
        _run(dicom, tmp_path)
    assert not isinstance(caught.value, UnreadableDataError) and caught.value.retryable
    assert "the disk is full or not writable" in caught.value.output


def test_a_failed_run_on_a_full_disk_is_the_disk(fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake.program(lines=["Found 3 DICOM file(s)", "Warning: nothing to stack"], exit_code=1)
    monkeypatch.setattr(conversion, "_nearly_full", lambda folder: True)
    with pytest.raises(Dcm2niixError) as caught:
        _run(dicom, tmp_path)
    assert not isinstance(caught.value, UnreadableDataError)


@pytest.mark.parametrize("code", [0, 1, 8, 10])
def test_success_code_without_image_is_unreadable(
    code: int, fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path
) -> None:
    fake.program(lines=["Found 3 DICOM file(s)", "Warning: nothing to stack"], exit_code=code)
    with pytest.raises(UnreadableDataError) as caught:
        _run(dicom, tmp_path)
    assert caught.value.returncode == code
    assert caught.value.details == ("Warning: nothing to stack", "dcm2niix wrote no NIfTI image")


def test_incomplete_volumes_exit_10_uses_the_images_with_a_warning(
    fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path
) -> None:
    fake.program(
        lines=["Convert 3 DICOM as {stage}/series (4x3x2x1)"],
        files={"series.nii.gz": NIFTI, "series.json": SIDECAR},
        exit_code=10,
    )
    run = _run(dicom, tmp_path)
    assert len(run.images) == 1 and run.exit_code == 10
    assert run.warnings == (
        f"dcm2niix exited with code 10 (incomplete volumes found) converting {dicom[0].parent}, "
        "but wrote 1 image(s), which are used",
    )


def test_nothing_to_convert_exit_11_is_unreadable(fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path) -> None:
    fake.program(lines=["Found 3 DICOM file(s)", "Warning: nothing to convert"], exit_code=11)
    with pytest.raises(UnreadableDataError) as caught:
        _run(dicom, tmp_path)
    assert caught.value.returncode == 11 and caught.value.details == ("Warning: nothing to convert",)


def test_exit_1_with_image_succeeds_with_its_errors_as_warnings(
    fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path
) -> None:
    fake.program(
        lines=["Convert 3 DICOM as {stage}/series (4x3x2x1)", "Error: something odd"],
        files={"series.nii.gz": NIFTI, "series.json": SIDECAR},
        exit_code=1,
    )
    run = _run(dicom, tmp_path)
    (image,) = run.images
    assert (image.metadata, image.shape, run.exit_code, run.files_used) == (
        {"Modality": "MR", "SeriesNumber": 3},
        (4, 3, 2),
        1,
        3,
    )
    assert run.warnings == (
        "Error: something odd",
        f"dcm2niix exited with code 1 (unspecified error) converting {dicom[0].parent}, "
        "but wrote 1 image(s), which are used",
    )


def test_warnings_are_deduplicated_in_order_and_files_used_is_summed(
    fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path
) -> None:
    fake.program(
        lines=[
            "Warning: second thought",
            "Convert 1 DICOM as x/series_e1 (4x3x2x1)",
            "Warning: first thought",
            "  Warning: second thought",
            "Convert 1 DICOM as x/series_e2 (4x3x2x1)",
            "Not a Warning: line",
        ],
        files={
            name: text for e in (1, 2) for name, text in ((f"series_e{e}.nii.gz", NIFTI), (f"series_e{e}.json", "{}"))
        },
    )
    run = _run(dicom, tmp_path)
    assert [image.postfix for image in run.images] == ["_e1", "_e2"]
    assert (run.exit_code, run.files_used) == (0, 2)
    assert run.warnings == (
        "Warning: second thought",
        "Warning: first thought",
        f"dcm2niix used 2 of the 3 DICOM files of {dicom[0].parent}",
    )


def test_image_without_sidecar_is_kept_without_metadata(fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path) -> None:
    fake.program(
        lines=["Convert 3 DICOM as x/series (4x3x2x1)"],
        files={"series.nii.gz": NIFTI, "series.json": SIDECAR, "series_ph.nii.gz": NIFTI},
    )
    run = _run(dicom, tmp_path)
    with_sidecar, without = run.images
    assert with_sidecar.sidecar is not None and with_sidecar.metadata["SeriesNumber"] == 3
    assert (without.nifti.name, without.sidecar, without.metadata, without.postfix) == (
        "series_ph.nii.gz",
        None,
        {},
        "_ph",
    )
    assert run.warnings == (
        f"dcm2niix wrote series_ph.nii.gz of {dicom[0].parent} without a JSON sidecar; it has no metadata",
    )


def test_files_bidsbridge_does_not_use_are_left_out(fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path) -> None:
    fake.program(
        lines=["Convert 3 DICOM as x/series (4x3x2x1)"],
        files={
            "series.nii.gz": NIFTI,
            "series.json": SIDECAR,
            "series.txt": "notes",
            "series.mvec": "1 0 0",
            "series_ROI1.nii.gz": NIFTI,
            "series_Raw.nii.gz": NIFTI,
            "series_e2_PSa.nii.gz": NIFTI,
            "series_e2.bval": "0 1000",
            "series_ADC.json": "{}",
        },
    )
    run = _run(dicom, tmp_path)
    (image,) = run.images
    assert image.nifti.name == "series.nii.gz" and image.bval is None
    assert run.warnings == (
        f"left out files dcm2niix wrote for {dicom[0].parent} that bidsbridge does not use: series.mvec, "
        "series.txt, series_ADC.json, series_ROI1.nii.gz, series_Raw.nii.gz, series_e2.bval, series_e2_PSa.nii.gz",
    )


def test_auxiliary_image_with_sidecar_is_an_image(fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path) -> None:
    fake.program(files={"series_ROI1.nii.gz": NIFTI, "series_ROI1.json": SIDECAR}, lines=["Convert 3 DICOM as x (1)"])
    (image,) = _run(dicom, tmp_path).images
    assert image.postfix == "_ROI1" and image.metadata["SeriesNumber"] == 3


def test_only_auxiliary_images_is_unreadable(fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path) -> None:
    fake.program(files={"series_ROI1.nii.gz": NIFTI})
    with pytest.raises(UnreadableDataError) as caught:
        _run(dicom, tmp_path)
    assert caught.value.details == (
        "dcm2niix wrote no NIfTI image",
        f"left out files dcm2niix wrote for {dicom[0].parent} that bidsbridge does not use: series_ROI1.nii.gz",
    )


@pytest.mark.parametrize("code", [3, 5, 6, 7, 9, 12, 127])
def test_environment_exit_codes_fail_even_with_images(
    code: int, fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path
) -> None:
    fake.program(
        lines=["Convert 3 DICOM as x/series (4x3x2x1)", "Error: trouble"],
        files={"series.nii.gz": NIFTI, "series.json": SIDECAR},
        exit_code=code,
    )
    with pytest.raises(Dcm2niixError) as caught:
        _run(dicom, tmp_path)
    assert not isinstance(caught.value, DicomInputError)
    assert caught.value.returncode == code
    assert "Error: trouble" in caught.value.output
    meaning = conversion._EXIT_MEANINGS.get(code, "undocumented exit code")
    assert caught.value.output.endswith(f"(exit {code}: {meaning})")


def test_crash_is_worth_retrying(fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path) -> None:
    fake.program(lines=["Found 3 DICOM file(s)"], kill=signal.SIGKILL)
    with pytest.raises(Dcm2niixError) as caught:
        _run(dicom, tmp_path)
    assert caught.value.returncode == -signal.SIGKILL
    assert caught.value.output == "Found 3 DICOM file(s)\n(exit -9: undocumented exit code)"


def test_timeout_is_worth_retrying(
    fake: FakeDcm2niix, dicom: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conversion, "DCM2NIIX_TIMEOUT", 1.0)
    fake.program(lines=["Found 3 DICOM file(s) in {stage}"], sleep=30)
    with pytest.raises(Dcm2niixError) as caught:
        _run(dicom, tmp_path)
    assert caught.value.returncode == -1
    assert caught.value.output == f"Found 3 DICOM file(s) in {dicom[0].parent}\n(timed out after 1 s)"


def test_missing_binary_is_a_conversion_error(
    dicom: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conversion, "dcm2niix_binary", lambda: tmp_path / "no-such-dcm2niix")
    with pytest.raises(ConversionError, match="reinstall the dcm2niix package") as caught:
        _run(dicom, tmp_path)
    assert not isinstance(caught.value, Dcm2niixError | DicomInputError)
