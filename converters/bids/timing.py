"""Timing that BIDS checks between a NIfTI header and its sidecar, made consistent before publishing.

For ``bold`` the validator requires a 4D header (``BOLD_NOT_4D``) whose ``pixdim[4]`` (in the
unit of ``xyzt_units``) equals the sidecar's RepetitionTime within 1 ms
(``REPETITION_TIME_MISMATCH``). dcm2niix writes a single-volume run as a 3D image, and on some
GE series the header's slice-time-derived TR differs from the sidecar's. :func:`bold_timing`
returns the header fields to change: the voxels are never touched, and the sidecar's
RepetitionTime (what BIDS apps read) wins over the header's; a sidecar without one gets the
header's. :func:`rewrite_header` streams a ``.nii.gz`` into a new file with those fields changed.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HeaderChange", "bold_timing", "rewrite_header"]

#: Tolerance (s) under which header and sidecar TR count as equal (the validator allows 1 ms).
TR_TOLERANCE = 0.0005
_HEADER_SIZE = 348
_UNIT_SECONDS = {8: 1.0, 16: 1e-3, 24: 1e-6}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class HeaderChange:
    """What to change in a NIfTI-1 header (None: keep) and what to add to the sidecar."""

    dims: int | None = None
    repetition_time: float | None = None
    sidecar: Mapping[str, Any] | None = None

    @property
    def header_changes(self) -> bool:
        return self.dims is not None or self.repetition_time is not None


def _read_header(path: Path) -> bytes:
    with gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb") as handle:
        header = handle.read(_HEADER_SIZE)
    if len(header) < _HEADER_SIZE or struct.unpack("<i", header[:4])[0] != _HEADER_SIZE:
        raise ValueError(f"{path} is not a little-endian NIfTI-1 image")
    return header


def bold_timing(nifti: Path, metadata: Mapping[str, Any]) -> HeaderChange:
    """The header/sidecar changes that make a ``bold`` image's timing valid (possibly none)."""
    header = _read_header(nifti)
    dims = struct.unpack("<h", header[40:42])[0]
    pixdim4 = struct.unpack("<f", header[92:96])[0]
    unit = _UNIT_SECONDS.get(header[123] & 0x38, 1.0)
    header_tr = float(pixdim4) * unit
    sidecar_tr = metadata.get("RepetitionTime")
    wanted_dims = 4 if dims < 4 else None
    if isinstance(sidecar_tr, int | float) and not isinstance(sidecar_tr, bool) and sidecar_tr > 0:
        fix_tr = abs(header_tr - float(sidecar_tr)) >= TR_TOLERANCE or (header[123] & 0x38) != 8
        return HeaderChange(wanted_dims, float(sidecar_tr) if fix_tr or wanted_dims else None)
    if header_tr > 0:
        return HeaderChange(wanted_dims, header_tr if wanted_dims else None, {"RepetitionTime": header_tr})
    return HeaderChange(wanted_dims)


def rewrite_header(source: Path, destination: Path, change: HeaderChange) -> None:
    """Copy the ``.nii.gz`` ``source`` to ``destination`` with ``change`` applied to its header
    (streamed: memory stays small whatever the image size; gzip level 6 as dcm2niix, no mtime)."""
    with gzip.open(source, "rb") as reader:
        header = bytearray(reader.read(_HEADER_SIZE))
        if change.dims is not None:
            dims = struct.unpack("<8h", header[40:56])
            values = list(dims)
            for axis in range(values[0] + 1, change.dims + 1):
                values[axis] = 1
            values[0] = change.dims
            header[40:56] = struct.pack("<8h", *values)
        if change.repetition_time is not None:
            header[92:96] = struct.pack("<f", change.repetition_time)
            header[123] = (header[123] & 0x07) | 8  # time unit: seconds
        with (
            destination.open("wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out,
        ):
            out.write(bytes(header))
            while chunk := reader.read(_CHUNK):
                out.write(chunk)
