"""Stage 2 — conversion: run the pinned dcm2niix on exactly one series.

The series' files are staged as symlinks (hard links or copies where symlinks are impossible) in
a private folder so that dcm2niix sees that series and nothing else. The binary is always the one
shipped by the ``dcm2niix`` PyPI package (``dcm2niix.bin``), never whatever is on ``PATH``.

Options: ``-g i`` ignores a user's ``~/.dcm2nii.ini``; ``-b y -ba y`` writes anonymised BIDS
sidecars; ``-z i`` gzips with dcm2niix's internal zlib (``-z y`` would use ``pigz`` when it is on
``PATH``, making the bytes depend on the host); ``-f series`` fixes the output name so that only
dcm2niix's own postfixes (``_e2``, ``_ph``, ...) vary.

The exit code (dcm2niix's ``ERRORS.md``) and the files written decide the outcome together:

=========================  ===================================================================
exit code                  outcome of :func:`run_dcm2niix`
=========================  ===================================================================
0, 1, 8 or 10, NIfTI      a :class:`~converters.records.Dcm2niixRun`; 1 (unspecified error),
written                    8 (converted some but not all files) and 10 (incomplete volumes,
                           dcm2niix's sources) add a warning saying so
0, 1, 8 or 10, no NIfTI    :class:`~converters.errors.UnreadableDataError`
2 (no DICOM images),       :class:`~converters.errors.UnreadableDataError`: the data cannot be
4 (corrupt DICOM file),    read, retrying will not help (it is a ``DicomInputError``)
11 (nothing to convert)
3, 5, 6, 7, 9, 12, any     :class:`~converters.errors.Dcm2niixError`: the environment failed
other, a timeout           (folders, permissions, the binary, options), worth retrying
any, and dcm2niix says it  :class:`~converters.errors.Dcm2niixError` (retried): the disk is at
could not write (or exit   fault, not the data — checked first, so a full disk never passes for
!= 0 on a full disk)       unreadable data
=========================  ===================================================================

A successful run's warnings are dcm2niix's ``Warning:`` (and ``Error:``) lines, duplicates
collapsed (one message about many files is given once, with the count), plus bidsbridge's own
remarks: a partial conversion (with dcm2niix's reason when it gives one, such as duplicates
removed), an image without JSON sidecar (returned with empty metadata), files dcm2niix wrote that
bidsbridge does not use (anything but ``.nii.gz``/``.json``/``.bval``/``.bvec`` of an image, and
``_ROI``/``_Raw``/``_PS`` images without sidecar; they are left out). dcm2niix's messages name the
series' own files, not the staged links.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import dcm2niix
import nibabel as nib

from converters.errors import ConversionError, Dcm2niixError, UnreadableDataError
from converters.records import ConvertedImage, Dcm2niixRun

__all__ = ["DCM2NIIX_TIMEOUT", "OUTPUT_NAME", "dcm2niix_binary", "dcm2niix_version", "run_dcm2niix"]

logger = logging.getLogger(__name__)

#: Fixed output name handed to ``dcm2niix -f``.
OUTPUT_NAME = "series"
#: Seconds one dcm2niix run may take before it is killed (default 900).
DCM2NIIX_TIMEOUT = 900.0

#: What dcm2niix's exit codes mean (its ``ERRORS.md``).
_EXIT_MEANINGS = {
    0: "success",
    1: "unspecified error",
    2: "no DICOM images found",
    3: "exit from report version",
    4: "corrupt DICOM file",
    5: "input folder invalid",
    6: "output folder invalid",
    7: "unable to write to output folder",
    8: "converted some but not all of the input DICOMs",
    9: "unable to rename files",
    # Defined by dcm2niix's sources (nii_dicom_batch.h), not yet in ERRORS.md:
    10: "incomplete volumes found",
    11: "nothing that was expected to be converted",
    12: "invalid command-line parameter",
}
#: Exit codes after which the images dcm2niix wrote are used.
_USABLE_EXITS = frozenset({0, 1, 8, 10})
#: Exit codes saying that the DICOM data itself cannot be read.
_UNREADABLE_EXITS = frozenset({2, 4, 11})
#: Lines of dcm2niix's output kept as details of an unreadable series when it printed no message.
_TAIL_LINES = 3

_CONVERTED = re.compile(r"^Convert (\d+) DICOM as ", re.MULTILINE)
_VERSION = re.compile(r"version (v\d[\w.]*)")
_MESSAGE = re.compile(r"(?:Warning|Error):")
#: A message that ends with the path of the file it is about: (message, path).
_ABOUT_FILE = re.compile(r"^(.*\S)\s+(/\S+)$")
#: dcm2niix's line saying it dropped files (not a Warning: line), e.g. "1 images have identical
#: time, series, acquisition and instance values. DUPLICATES REMOVED."
_DROPPED = re.compile(r"^.*DUPLICATES REMOVED.*$", re.MULTILINE)
#: dcm2niix's words for an output it could not write (a full or read-only disk, not the data).
_WRITE_FAILED = re.compile(r"Unable to write|\(disk full\?\)|Unable to create|unable to save", re.IGNORECASE)
#: Free space (bytes) under which a failed run is blamed on the disk rather than on the data.
_NEARLY_FULL = 1 << 20
#: Postfix parts of auxiliary images (overlays, Philips raw data and presentation states), with
#: dcm2niix's letter for name clashes; without a sidecar such an image is left out.
_AUXILIARY = re.compile(r"(?:ROI\d+|Raw|PS)[a-z]?")


def dcm2niix_binary() -> Path:
    """Path of the dcm2niix executable of the pinned ``dcm2niix`` package."""
    return Path(dcm2niix.bin)


@functools.cache
def dcm2niix_version() -> str:
    """The version dcm2niix reports about itself, e.g. ``v1.0.20260724``."""
    try:
        proc = subprocess.run(
            [str(dcm2niix_binary()), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        raise ConversionError(
            f"cannot run dcm2niix at {dcm2niix_binary()} ({exc}); reinstall the dcm2niix package"
        ) from exc
    found = _VERSION.search(proc.stdout + proc.stderr)
    if found is None:
        raise ConversionError(f"dcm2niix at {dcm2niix_binary()} did not report its version")
    return found.group(1)


def _stage(files: Sequence[Path], folder: Path) -> None:
    folder.mkdir(parents=True)
    for index, source in enumerate(files):
        link = folder / f"{index:06d}.dcm"
        target = source.resolve()
        try:
            link.symlink_to(target)
        except OSError:
            try:
                os.link(target, link)
            except OSError:
                shutil.copy2(target, link)


def _unstage(output: str, stage: Path, files: Sequence[Path], where: Path) -> str:
    """``output`` naming the series' files and folder where it names the staged links and their folder."""

    def source(found: re.Match[str]) -> str:
        index = int(found.group(1))
        return str(files[index]) if index < len(files) else found.group(0)

    return re.sub(re.escape(str(stage)) + r"/+(\d{6})\.dcm", source, output).replace(str(stage), str(where))


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _messages(output: str) -> tuple[str, ...]:
    """dcm2niix's ``Warning:`` and ``Error:`` lines, duplicates collapsed; a message it repeats
    for many files (ending with the file's path) is given once, with the number of other files."""
    groups: dict[str, list[str]] = {}
    for line in _unique(line for line in (raw.strip() for raw in output.splitlines()) if _MESSAGE.match(line)):
        about = _ABOUT_FILE.match(line)
        groups.setdefault(about.group(1) if about else line, []).append(line)
    return tuple(
        lines[0] if len(lines) == 1 else f"{lines[0]} (and {len(lines) - 1} more files)" for lines in groups.values()
    )


def _details(output: str) -> tuple[str, ...]:
    """What dcm2niix said about a failure: its messages, else its last lines."""
    messages = _messages(output)
    if messages:
        return messages
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return tuple(lines[-_TAIL_LINES:])


def _nearly_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL


def _meaning(code: int) -> str:
    return _EXIT_MEANINGS.get(code, "undocumented exit code")


def _image(out: Path, nifti: Path, sidecar: Path | None, source: Path) -> ConvertedImage:
    postfix = nifti.name[len(OUTPUT_NAME) : -len(".nii.gz")]
    metadata: dict[str, Any] = {}
    if sidecar is not None:
        try:
            # dcm2niix copies header text as it is: control characters unescaped (strict=False
            # accepts them), and bytes that are not UTF-8 (a wrong SpecificCharacterSet; replaced).
            metadata = json.loads(sidecar.read_bytes().decode("utf-8", errors="replace"), strict=False)
        except (OSError, ValueError) as exc:
            raise ConversionError(f"dcm2niix wrote an unreadable sidecar {sidecar.name} for {source}: {exc}") from exc
    bval = out / f"{OUTPUT_NAME}{postfix}.bval"
    bvec = out / f"{OUTPUT_NAME}{postfix}.bvec"
    try:
        header = nib.load(nifti)
    except Exception as exc:  # nibabel raises several types for unreadable images
        raise ConversionError(f"dcm2niix wrote an unreadable image {nifti.name} for {source}: {exc}") from exc
    if not isinstance(header, nib.Nifti1Image):
        raise ConversionError(f"dcm2niix wrote {nifti.name} for {source}, which is not a NIfTI-1 image")
    bvalues: tuple[float, ...] = ()
    if bval.is_file():
        try:
            bvalues = tuple(float(v) for v in bval.read_text(encoding="ascii").split())
        except (OSError, ValueError) as exc:
            raise ConversionError(f"dcm2niix wrote an unreadable {bval.name} for {source}: {exc}") from exc
    return ConvertedImage(
        nifti=nifti,
        sidecar=sidecar,
        bval=bval if bval.is_file() else None,
        bvec=bvec if bvec.is_file() else None,
        metadata=metadata,
        postfix=postfix,
        shape=tuple(int(n) for n in header.shape),
        affine=tuple(tuple(float(v) for v in row) for row in header.affine),
        bvalues=bvalues,
    )


def _read_outputs(out: Path, source: Path) -> tuple[tuple[ConvertedImage, ...], tuple[str, ...]]:
    """The images dcm2niix wrote to ``out`` and remarks on what is missing or left out."""
    images: list[ConvertedImage] = []
    remarks: list[str] = []
    for nifti in sorted(out.glob(f"{OUTPUT_NAME}*.nii.gz")):
        postfix = nifti.name[len(OUTPUT_NAME) : -len(".nii.gz")]
        sidecar = out / f"{OUTPUT_NAME}{postfix}.json"
        if sidecar.is_file():
            images.append(_image(out, nifti, sidecar, source))
        elif not any(_AUXILIARY.fullmatch(part) for part in postfix.split("_")):
            remarks.append(f"dcm2niix wrote {nifti.name} of {source} without a JSON sidecar; it has no metadata")
            images.append(_image(out, nifti, None, source))
        # else: an overlay, raw data or presentation state without sidecar, left out below
    used = {p for image in images for p in (image.nifti, image.sidecar, image.bval, image.bvec) if p is not None}
    ignored = sorted(p.name for p in out.iterdir() if p not in used)
    if ignored:
        remarks.append(f"left out files dcm2niix wrote for {source} that bidsbridge does not use: {', '.join(ignored)}")
    return tuple(images), tuple(remarks)


def run_dcm2niix(files: Sequence[Path], workdir: Path, *, source: Path | None = None) -> Dcm2niixRun:
    """Convert the DICOM ``files`` of one series; outputs go to ``workdir/nifti``.

    ``workdir`` must not hold earlier results; ``source`` names the series in messages (default:
    the folder shared by ``files``). Returns the images and warnings of a successful run; raises
    :class:`UnreadableDataError` when dcm2niix cannot read the data and :class:`Dcm2niixError` /
    :class:`ConversionError` when running it failed (see the module's exit-code table).
    """
    if not files:
        raise ConversionError("no DICOM files to convert")
    where = source if source is not None else Path(os.path.commonpath([str(f) for f in files]))
    stage = workdir / "dicom"
    out = workdir / "nifti"
    try:
        _stage(files, stage)
        out.mkdir(parents=True)
    except OSError as exc:
        raise ConversionError(f"cannot stage the DICOM files of {where} for dcm2niix: {exc}") from exc
    command = [
        str(dcm2niix_binary()), "-g", "i", "-b", "y", "-ba", "y", "-z", "i",
        "-f", OUTPUT_NAME, "-o", str(out), str(stage),
    ]  # fmt: skip
    logger.debug("running %s", " ".join(command))
    try:
        proc = subprocess.run(
            command,
            # Two pipes: dcm2niix buffers stdout (Warning: lines) but not stderr (Error: lines), so
            # one shared pipe would splice an Error: line into the middle of a Warning: line (the
            # order between the two is lost either way; stdout is read first).
            capture_output=True,
            text=True,
            errors="replace",
            timeout=DCM2NIIX_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        partial = "\n".join(
            stream.decode(errors="replace") if isinstance(stream, bytes) else stream or ""
            for stream in (exc.stdout, exc.stderr)
        )
        output = _unstage(partial.strip(), stage, files, where)
        raise Dcm2niixError(where, -1, f"{output}\n(timed out after {DCM2NIIX_TIMEOUT:g} s)") from exc
    except OSError as exc:
        raise ConversionError(
            f"cannot run dcm2niix at {dcm2niix_binary()} ({exc}); reinstall the dcm2niix package"
        ) from exc
    code = proc.returncode
    output = _unstage(f"{proc.stdout}\n{proc.stderr}".strip(), stage, files, where)
    logger.debug("dcm2niix output for %s (exit %d):\n%s", where, code, output)
    blames_data = code in _USABLE_EXITS or code in _UNREADABLE_EXITS  # (other codes are retried anyway)
    if blames_data and (_WRITE_FAILED.search(output) or (code != 0 and _nearly_full(out))):
        raise Dcm2niixError(where, code, f"{output}\n(dcm2niix could not write its output into {out}: the disk is "
                                         "full or not writable; the series is retried, its data is not at fault)")
    if code in _UNREADABLE_EXITS:
        raise UnreadableDataError(where, code, _details(output))
    if code not in _USABLE_EXITS:
        raise Dcm2niixError(where, code, f"{output}\n(exit {code}: {_meaning(code)})")
    images, remarks = _read_outputs(out, where)
    if not images:
        raise UnreadableDataError(where, code, (*_details(output), "dcm2niix wrote no NIfTI image", *remarks))
    warnings = list(_messages(output))
    if code != 0:
        warnings.append(
            f"dcm2niix exited with code {code} ({_meaning(code)}) converting {where}, "
            f"but wrote {len(images)} image(s), which are used"
        )
    warnings += remarks
    if warnings:
        logger.info("dcm2niix converted %s with warnings:\n%s", where, "\n".join(warnings))
    converted = sum(int(n) for n in _CONVERTED.findall(output))
    if converted < len(files):  # (one enhanced file may feed several outputs, hence "<")
        logger.warning("dcm2niix used %d of the %d DICOM files of %s:\n%s", converted, len(files), where, output)
        why = "".join(f" ({line})" for line in _unique(found.strip() for found in _DROPPED.findall(output)))
        warnings.append(f"dcm2niix used {converted} of the {len(files)} DICOM files of {where}{why}")
    return Dcm2niixRun(images=images, warnings=_unique(warnings), exit_code=code, files_used=converted)
