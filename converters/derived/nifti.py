"""NIfTI images of derived volumes, and label maps read from NIfTI onto a series' grid.

Written images use dcm2niix's voxel order and affine for the source series (see
:mod:`converters.derived.geometry`), sform and qform both "scanner", units mm. Every writer
writes to a temporary file and renames it, so a reader never sees a half-written image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from converters.derived._io import staged
from converters.derived.errors import DerivedInputError
from converters.derived.geometry import SeriesGeometry, conform_to_geometry
from converters.derived.labels import format_dseg_tsv
from converters.derived.pm import ParametricMapData
from converters.derived.seg import SegmentationData

#: nibabel is only partly annotated; its calls go through ``Any``.
_NIB: Any = nib

__all__ = [
    "nifti_image",
    "read_nifti_labels",
    "tsv_path_for",
    "write_nifti",
    "write_nifti_labels",
    "write_nifti_map",
]


def nifti_image(volume: npt.NDArray[np.generic], geometry: SeriesGeometry, *, description: str = "") -> nib.Nifti1Image:
    """A NIfTI-1 image of a (slice, row, column) volume on ``geometry``; the dtype is kept."""
    image: Any = _NIB.Nifti1Image(geometry.to_nifti(volume), geometry.nifti_affine)
    image.set_sform(geometry.nifti_affine, code=1)
    image.set_qform(geometry.nifti_affine, code=1)
    image.header.set_xyzt_units(xyz="mm")
    if description:
        image.header["descrip"] = description.encode("ascii", "replace")[:79]
    typed: nib.Nifti1Image = image
    return typed


def write_nifti(
    volume: npt.NDArray[np.generic], geometry: SeriesGeometry, path: Path, *, description: str = ""
) -> Path:
    """Write a volume as ``path`` (``.nii`` or ``.nii.gz``) atomically."""
    image = nifti_image(volume, geometry, description=description)
    with staged(path.parent) as stage:
        nib.save(image, stage.path(path.name))
        stage.commit()
    return path


def tsv_path_for(nifti_path: Path) -> Path:
    """The BIDS ``.tsv`` beside a ``.nii[.gz]``: ``x_dseg.nii.gz`` → ``x_dseg.tsv``."""
    name = nifti_path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return nifti_path.with_name(name[: -len(suffix)] + ".tsv")
    return nifti_path.with_suffix(".tsv")


def _label_dtype(max_value: int) -> type[np.unsignedinteger]:
    return np.uint8 if max_value < 256 else np.uint16


def write_nifti_labels(seg: SegmentationData, path: Path) -> tuple[Path, Path]:
    """Write a read-back Segmentation as a label map plus its BIDS ``dseg.tsv`` (original values).

    Both files appear together or not at all.
    """
    labels = seg.labels.astype(_label_dtype(int(seg.labels.max(initial=0))))
    image = nifti_image(labels, seg.geometry, description="label map")
    tsv = tsv_path_for(path)
    with staged(path.parent) as stage:
        nib.save(image, stage.path(path.name))
        stage.path(tsv.name).write_text(format_dseg_tsv(seg.table), encoding="utf-8")
        stage.commit()
    return path, tsv


def write_nifti_map(pm: ParametricMapData, path: Path) -> Path:
    """Write a read-back Parametric Map's real-world values as float32 NIfTI (exact)."""
    unit = pm.unit.value
    quantity = pm.quantity.meaning if pm.quantity is not None else "parametric map"
    return write_nifti(pm.values.astype(np.float32), pm.geometry, path, description=f"{quantity} ({unit})")


def read_nifti_labels(path: Path, geometry: SeriesGeometry, *, source_name: str) -> npt.NDArray[np.int64]:
    """Read a NIfTI label map that lies on ``geometry``'s grid as a (slice, row, column) volume.

    :raises DerivedInputError: unreadable, or non-integer / negative values.
    :raises GeometryMismatchError: not on the grid (shape, voxel size, orientation or offset).
    """
    what = f"label map {path.name}"
    try:
        image = _NIB.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise DerivedInputError(f"cannot read {what} as NIfTI ({exc})", path) from exc
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise DerivedInputError(f"{what} has data type {data.dtype}; a label map holds integers", path)
    if np.issubdtype(data.dtype, np.floating) and (not np.all(np.isfinite(data)) or np.any(data != np.round(data))):
        raise DerivedInputError(f"{what} holds non-integer values; a label map holds integers", path)
    if data.size and float(np.min(data)) < 0:
        raise DerivedInputError(f"{what} holds negative values; label values are ≥ 0", path)
    volume = conform_to_geometry(data, np.asarray(image.affine), geometry, what=what, source_name=source_name)
    return np.asarray(volume, dtype=np.int64)
