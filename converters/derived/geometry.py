"""Voxel grids of DICOM series and the NIfTI images that lie on them.

Conventions used throughout :mod:`converters.derived`:

* A volume is a numpy array in **DICOM frame order** ``(slice, row, column)``: ``volume[k]`` is
  the frame at ``geometry.positions[k]``, slices sorted by increasing distance along the slice
  normal (row cosine x column cosine), as highdicom sorts them.
* The same volume as a NIfTI image uses **dcm2niix's voxel order** ``(column, reversed row,
  slice)``, so our NIfTI outputs are voxel-for-voxel comparable with the BIDS images dcm2niix
  writes for the same series. :meth:`SeriesGeometry.to_nifti` / :meth:`~SeriesGeometry.from_nifti`
  convert the arrays and :attr:`SeriesGeometry.nifti_affine` is the matching voxel → RAS+ affine.

A NIfTI image is *on* a series' grid when its voxel centres coincide with the series' voxels,
whatever its axis order or flips (e.g. a label map drawn on a dcm2niix conversion, or on a
reoriented copy). :func:`conform_to_geometry` checks that and reorders the array; anything that
would need interpolation is refused with a :class:`GeometryMismatchError` naming each mismatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from nibabel.orientations import aff2axcodes as _aff2axcodes

from converters.derived.errors import GeometryError, GeometryMismatchError

__all__ = [
    "POSITION_TOLERANCE_MM",
    "SeriesGeometry",
    "build_geometry",
    "conform_to_geometry",
]

#: Two frame positions closer than this (mm) are the same slice; slice spacings may deviate
#: from their mean by this much. DICOM writes positions as decimal strings, often with 3-4 digits.
POSITION_TOLERANCE_MM = 0.01
#: Largest difference of direction cosines (unitless) still treated as the same orientation.
_COSINE_TOLERANCE = 1e-3
#: Largest relative difference of voxel sizes still treated as equal.
_SPACING_TOLERANCE = 1e-3
#: Largest offset (in voxels) between two grids still treated as coincident.
_OFFSET_TOLERANCE_VOXELS = 0.01

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

Vector3 = tuple[float, float, float]


def _axcodes(affine: npt.NDArray[np.float64]) -> tuple[str, ...]:
    codes: tuple[str, ...] = tuple(_aff2axcodes(affine))  # type: ignore[no-untyped-call]
    return codes


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape)


def _fmt_mm(values: Sequence[float] | npt.NDArray[np.float64]) -> str:
    return "x".join(f"{float(v):.4g}" for v in values)


@dataclass(frozen=True)
class SeriesGeometry:
    """The regular 3D grid of a DICOM series (all frames of one volume).

    ``positions`` holds the Image Position (Patient) of each slice in array order; they are
    equally spaced along the slice normal (checked by :func:`build_geometry`).
    """

    rows: int
    columns: int
    #: Image Orientation (Patient): row direction cosine then column direction cosine (LPS).
    orientation: tuple[float, float, float, float, float, float]
    positions: tuple[Vector3, ...]
    #: Pixel Spacing as DICOM orders it: (between rows, between columns), in mm.
    pixel_spacing: tuple[float, float]
    frame_of_reference_uid: str
    #: Slice Thickness (mm) when the source says; it may differ from the spacing.
    slice_thickness: float | None = None

    def __post_init__(self) -> None:
        if len(self.orientation) != 6 or len(self.pixel_spacing) != 2 or not self.positions:
            raise ValueError("a SeriesGeometry needs 6 direction cosines, 2 pixel spacings and ≥ 1 position")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape of a volume in DICOM frame order: (slices, rows, columns)."""
        return (len(self.positions), self.rows, self.columns)

    @property
    def nifti_shape(self) -> tuple[int, int, int]:
        """Array shape of the same volume as a NIfTI image: (columns, rows, slices)."""
        return (self.columns, self.rows, len(self.positions))

    @property
    def row_cosine(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.orientation[:3], dtype=np.float64)

    @property
    def column_cosine(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.orientation[3:], dtype=np.float64)

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        return np.cross(self.row_cosine, self.column_cosine)

    @property
    def slice_step(self) -> npt.NDArray[np.float64]:
        """Vector (mm, LPS) from one slice position to the next."""
        if len(self.positions) > 1:
            first = np.asarray(self.positions[0])
            last = np.asarray(self.positions[-1])
            return np.asarray((last - first) / (len(self.positions) - 1), dtype=np.float64)
        return self.normal * (self.slice_thickness or 1.0)

    @property
    def slice_spacing(self) -> float:
        return float(np.linalg.norm(self.slice_step))

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths (mm) along (slice, row, column) array axes."""
        return (self.slice_spacing, self.pixel_spacing[0], self.pixel_spacing[1])

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """Voxel index (slice, row, column) → patient coordinates (LPS, mm)."""
        matrix = np.eye(4)
        matrix[:3, 0] = self.slice_step
        matrix[:3, 1] = self.column_cosine * self.pixel_spacing[0]
        matrix[:3, 2] = self.row_cosine * self.pixel_spacing[1]
        matrix[:3, 3] = self.positions[0]
        return matrix

    @property
    def nifti_affine(self) -> npt.NDArray[np.float64]:
        """NIfTI voxel index (column, reversed row, slice) → RAS+ (mm), as dcm2niix writes it."""
        lps = np.eye(4)
        lps[:3, 0] = self.row_cosine * self.pixel_spacing[1]
        lps[:3, 1] = -self.column_cosine * self.pixel_spacing[0]
        lps[:3, 2] = self.slice_step
        lps[:3, 3] = np.asarray(self.positions[0]) + (self.rows - 1) * self.pixel_spacing[0] * self.column_cosine
        return np.asarray(_LPS_TO_RAS @ lps, dtype=np.float64)

    def to_nifti(self, volume: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """Reorder a (slice, row, column) volume into NIfTI voxel order."""
        self._check_shape(volume.shape[:3], self.shape, "volume")
        return np.ascontiguousarray(np.transpose(volume, (2, 1, 0, *range(3, volume.ndim)))[:, ::-1])

    def from_nifti(self, data: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """Reorder a NIfTI-ordered array (on this grid) into (slice, row, column)."""
        self._check_shape(data.shape[:3], self.nifti_shape, "NIfTI array")
        return np.ascontiguousarray(np.transpose(data[:, ::-1], (2, 1, 0, *range(3, data.ndim))))

    def same_grid(self, other: SeriesGeometry) -> bool:
        """True when both grids have the same shape and voxel centres (within tolerance)."""
        if self.shape != other.shape:
            return False
        corners = np.array([[0, 0, 0, 1], [self.shape[0] - 1, self.rows - 1, self.columns - 1, 1]], float)
        a = corners @ self.affine.T
        b = corners @ other.affine.T
        return bool(np.max(np.abs(a - b)) <= POSITION_TOLERANCE_MM * 10) and bool(
            np.allclose(self.orientation, other.orientation, atol=_COSINE_TOLERANCE)
        )

    def describe(self) -> str:
        """Short human description, e.g. ``72x72x39 voxels of 3x3x3 mm, LAS``."""
        codes = "".join(_axcodes(self.nifti_affine))
        return f"{_fmt_shape(self.nifti_shape)} voxels of {_fmt_mm(self.voxel_size[::-1])} mm, {codes}"

    @staticmethod
    def _check_shape(actual: Sequence[int], expected: Sequence[int], what: str) -> None:
        if tuple(actual) != tuple(expected):
            raise ValueError(f"{what} shape {_fmt_shape(actual)} ≠ grid {_fmt_shape(expected)}")


def build_geometry(
    *,
    rows: int,
    columns: int,
    orientations: Sequence[Sequence[float]],
    positions: Sequence[Sequence[float]],
    pixel_spacings: Sequence[Sequence[float]],
    frame_of_reference_uid: str,
    slice_thickness: float | None,
    what: str,
) -> tuple[SeriesGeometry, list[int]]:
    """Build the grid spanned by frames, one (orientation, position, spacing) per frame.

    Frames at the same position are the same slice (e.g. the volumes of a diffusion series);
    every slice must then hold the same number of frames. Returns the geometry and, for each
    frame, the index of its slice. ``what`` names the series in error messages.

    :raises GeometryError: orientations or spacings differ between frames, slices are unevenly
        spaced or not stacked along the normal, or slices hold unequal numbers of frames.
    """
    if not positions:
        raise GeometryError(f"{what} has no frames with a position")
    if not (len(orientations) == len(positions) == len(pixel_spacings)):
        raise ValueError("orientations, positions and pixel_spacings must have one entry per frame")
    iop = np.asarray(orientations, dtype=np.float64)
    if np.max(np.abs(iop - iop[0])) > _COSINE_TOLERANCE:
        raise GeometryError(f"{what}: Image Orientation (Patient) varies between frames (a localizer or mixed stacks?)")
    spacing = np.asarray(pixel_spacings, dtype=np.float64)
    if np.max(np.abs(spacing - spacing[0])) > _SPACING_TOLERANCE * float(np.max(spacing[0])):
        raise GeometryError(f"{what}: Pixel Spacing varies between frames")
    row_cos, col_cos = iop[0, :3], iop[0, 3:]
    normal = np.cross(row_cos, col_cos)
    pos = np.asarray(positions, dtype=np.float64)
    distance = pos @ normal
    order = np.argsort(distance, kind="stable")

    # Cluster frames into slices by their distance along the normal.
    slice_of_frame = [0] * len(pos)
    slice_distance: list[float] = []
    slice_position: list[npt.NDArray[np.float64]] = []
    for index in order:
        if not slice_distance or distance[index] - slice_distance[-1] > POSITION_TOLERANCE_MM:
            slice_distance.append(float(distance[index]))
            slice_position.append(pos[index])
        elif np.max(np.abs(pos[index] - slice_position[-1])) > POSITION_TOLERANCE_MM * 10:
            raise GeometryError(f"{what}: frames at the same slice location have different in-plane positions")
        slice_of_frame[index] = len(slice_distance) - 1

    counts = np.bincount(slice_of_frame, minlength=len(slice_distance))
    if np.any(counts != counts[0]):
        odd = int(np.argmax(counts != counts[0]))
        raise GeometryError(
            f"{what}: slices hold unequal numbers of frames ({int(counts[odd])} at "
            f"{slice_distance[odd]:.2f} mm along the normal, {int(counts[0])} at the first slice); "
            "a volume is incomplete"
        )

    if len(slice_position) > 1:
        steps = np.diff(np.asarray(slice_position), axis=0)
        mean_step = steps.mean(axis=0)
        deviation = float(np.max(np.linalg.norm(steps - mean_step, axis=1)))
        if deviation > max(POSITION_TOLERANCE_MM, _SPACING_TOLERANCE * float(np.linalg.norm(mean_step))):
            gaps = np.linalg.norm(steps, axis=1)
            raise GeometryError(
                f"{what}: slices are not evenly spaced (spacing {gaps.min():.3f} to {gaps.max():.3f} mm; "
                "a missing slice?)"
            )
        along = float(mean_step @ normal)
        if np.linalg.norm(mean_step - along * normal) > max(POSITION_TOLERANCE_MM, 1e-3 * abs(along)):
            raise GeometryError(f"{what}: slices are not stacked along their normal (gantry tilt or shear)")

    geometry = SeriesGeometry(
        rows=int(rows),
        columns=int(columns),
        orientation=(
            float(iop[0, 0]), float(iop[0, 1]), float(iop[0, 2]),
            float(iop[0, 3]), float(iop[0, 4]), float(iop[0, 5]),
        ),
        positions=tuple((float(p[0]), float(p[1]), float(p[2])) for p in slice_position),
        pixel_spacing=(float(spacing[0][0]), float(spacing[0][1])),
        frame_of_reference_uid=frame_of_reference_uid,
        slice_thickness=slice_thickness,
    )
    return geometry, slice_of_frame


@dataclass(frozen=True)
class _AxisMap:
    """How a NIfTI array's axes map onto a grid's NIfTI axes: out axis a = ±(in axis source[a])."""

    source: tuple[int, int, int]
    flip: tuple[bool, bool, bool]


def _match_axes(
    shape: tuple[int, ...], affine: npt.NDArray[np.float64], geometry: SeriesGeometry
) -> tuple[_AxisMap | None, list[str]]:
    target = geometry.nifti_affine
    target_shape = geometry.nifti_shape
    own_size = np.linalg.norm(affine[:3, :3], axis=0)
    target_size = np.linalg.norm(target[:3, :3], axis=0)
    if np.any(own_size == 0):
        return None, ["its affine is degenerate (a zero-length voxel axis)"]
    own_dirs = affine[:3, :3] / own_size
    target_dirs = target[:3, :3] / target_size
    cosines = target_dirs.T @ own_dirs  # [a, b]: target axis a · own axis b
    rounded = np.round(cosines)
    is_permutation = (
        np.max(np.abs(cosines - rounded)) <= _COSINE_TOLERANCE
        and np.all(np.abs(rounded).sum(axis=0) == 1)
        and np.all(np.abs(rounded).sum(axis=1) == 1)
    )
    problems: list[str] = []
    own_codes = "".join(_axcodes(affine))
    target_codes = "".join(_axcodes(target))
    if not is_permutation:
        problems.append(f"orientation {own_codes} (axes not parallel to the source's) ≠ source {target_codes}")
        if sorted(shape) != sorted(target_shape):
            problems.append(f"shape {_fmt_shape(shape)} ≠ source {_fmt_shape(target_shape)}")
        return None, problems

    b0, b1, b2 = (int(np.nonzero(rounded[a])[0][0]) for a in range(3))
    source = (b0, b1, b2)
    flip = (bool(rounded[0, b0] < 0), bool(rounded[1, b1] < 0), bool(rounded[2, b2] < 0))
    permuted_size = own_size[list(source)]
    if np.max(np.abs(permuted_size - target_size) / target_size) > _SPACING_TOLERANCE:
        problems.append(f"voxel size {_fmt_mm(own_size)} mm ≠ source {_fmt_mm(target_size)} mm")
    permuted_shape = tuple(shape[b] for b in source)
    if permuted_shape != target_shape:
        reordered = "" if source == (0, 1, 2) else f" ({_fmt_shape(permuted_shape)} in the source's axis order)"
        problems.append(f"shape {_fmt_shape(shape)}{reordered} ≠ source {_fmt_shape(target_shape)}")
    if problems:
        return None, problems

    # Same axes, sizes and extent: the voxel centres must coincide (first voxel of each axis).
    transform = np.linalg.inv(target) @ affine
    expected = np.array([target_shape[a] - 1 if flip[a] else 0 for a in range(3)], dtype=np.float64)
    offset_voxels = transform[:3, 3] - expected
    if np.max(np.abs(offset_voxels)) > _OFFSET_TOLERANCE_VOXELS:
        offset_mm = target[:3, :3] @ offset_voxels
        problems.append(
            f"grid shifted by ({_fmt_mm(offset_mm).replace('x', ', ')}) mm "
            f"= ({', '.join(f'{v:.3g}' for v in offset_voxels)}) voxels from the source's"
        )
        return None, problems
    return _AxisMap(source=source, flip=flip), []


def conform_to_geometry(
    data: npt.NDArray[np.generic],
    affine: npt.NDArray[np.float64],
    geometry: SeriesGeometry,
    *,
    what: str,
    source_name: str,
) -> npt.NDArray[np.generic]:
    """Return a 3D NIfTI array on ``geometry``'s grid as a (slice, row, column) volume.

    The array may use any axis order and flips of that grid (e.g. dcm2niix's or FSL's); it is
    reordered without interpolation. Trailing axes of length 1 are dropped.

    :raises GeometryMismatchError: the voxels do not coincide with the grid; the message lists
        each mismatch (shape, voxel size, orientation, offset).
    """
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise GeometryMismatchError(
            f"{what} does not match the grid of {source_name}: it has {data.ndim} dimensions "
            f"(shape {_fmt_shape(data.shape)}), a label map needs 3"
        )
    axis_map, problems = _match_axes(data.shape, np.asarray(affine, dtype=np.float64), geometry)
    if axis_map is None:
        raise GeometryMismatchError(
            f"{what} does not match the grid of {source_name} ({geometry.describe()}): " + "; ".join(problems)
        )
    reordered = np.transpose(data, axis_map.source)
    for axis, flipped in enumerate(axis_map.flip):
        if flipped:
            reordered = np.flip(reordered, axis=axis)
    return geometry.from_nifti(reordered)
