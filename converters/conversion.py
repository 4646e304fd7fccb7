"""Stage 2 — conversion: run the pinned dcm2niix on exactly one series.

The series' files are staged as symlinks (hard links or copies where symlinks are impossible) in
a private folder so that dcm2niix sees that series and nothing else. The binary is always the one
shipped by the ``dcm2niix`` PyPI package (``dcm2niix.bin``), never whatever is on ``PATH``.

Options: ``-g i`` ignores a user's ``~/.dcm2nii.ini``; ``-b y -ba y`` writes anonymised BIDS
sidecars; ``-z i`` gzips with dcm2niix's internal zlib (``-z y`` would use ``pigz`` when it is on
``PATH``, making the bytes depend on the host); ``-f series`` fixes the output name so that only
dcm2niix's own postfixes (``_e2``, ``_ph``, ...) vary.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dcm2niix
import nibabel as nib

from converters.errors import ConversionError, Dcm2niixError
from converters.records import ConvertedImage

__all__ = ["DCM2NIIX_TIMEOUT", "OUTPUT_NAME", "dcm2niix_binary", "dcm2niix_version", "run_dcm2niix"]

logger = logging.getLogger(__name__)

#: Fixed output name handed to ``dcm2niix -f``.
OUTPUT_NAME = "series"
#: Seconds one dcm2niix run may take before it is killed (default 900).
DCM2NIIX_TIMEOUT = 900.0

_CONVERTED = re.compile(r"^Convert (\d+) DICOM as ", re.MULTILINE)
_VERSION = re.compile(r"version (v\d[\w.]*)")


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


def _image(out: Path, nifti: Path, output: str, source: Path) -> ConvertedImage:
    postfix = nifti.name[len(OUTPUT_NAME) : -len(".nii.gz")]
    sidecar = out / f"{OUTPUT_NAME}{postfix}.json"
    if not sidecar.is_file():
        raise Dcm2niixError(source, 0, f"{output}\n(no JSON sidecar next to {nifti.name})")
    try:
        metadata: dict[str, Any] = json.loads(sidecar.read_text(encoding="utf-8"))
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


def run_dcm2niix(files: Sequence[Path], workdir: Path, *, source: Path | None = None) -> tuple[ConvertedImage, ...]:
    """Convert the DICOM ``files`` of one series; outputs go to ``workdir/nifti``.

    ``workdir`` must not hold earlier results; ``source`` names the series in error messages
    (default: the folder shared by ``files``). Raises :class:`Dcm2niixError` when dcm2niix fails
    or writes nothing, with dcm2niix's own messages.
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
            command, capture_output=True, text=True, errors="replace", timeout=DCM2NIIX_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout if isinstance(exc.stdout, str) else ""
        raise Dcm2niixError(where, -1, f"{partial}\n(timed out after {DCM2NIIX_TIMEOUT:g} s)") from exc
    except OSError as exc:
        raise ConversionError(
            f"cannot run dcm2niix at {dcm2niix_binary()} ({exc}); reinstall the dcm2niix package"
        ) from exc
    output = (proc.stdout + proc.stderr).strip()
    logger.debug("dcm2niix output for %s:\n%s", where, output)
    if proc.returncode != 0:
        raise Dcm2niixError(where, proc.returncode, output)
    niftis = sorted(out.glob(f"{OUTPUT_NAME}*.nii.gz"))
    if not niftis:
        raise Dcm2niixError(where, proc.returncode, f"{output}\n(dcm2niix wrote no NIfTI image)")
    images = tuple(_image(out, nifti, output, where) for nifti in niftis)
    known = {p for image in images for p in (image.nifti, image.sidecar, image.bval, image.bvec) if p}
    unexpected = sorted(p.name for p in out.iterdir() if p not in known)
    if unexpected:
        raise ConversionError(f"dcm2niix wrote files bidsbridge does not understand for {where}: {unexpected}")
    converted = sum(int(n) for n in _CONVERTED.findall(output))
    if converted < len(files):  # (one enhanced file may feed several outputs, hence "<")
        logger.warning("dcm2niix used %d of the %d DICOM files of %s:\n%s", converted, len(files), where, output)
    return images
