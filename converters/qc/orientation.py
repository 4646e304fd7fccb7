"""Which voxel axes a picture shows, and the labels of its edges, from the image's affine.

A picture shows the voxels as they are stored (nothing is resampled or reoriented), so that what
it shows is what the file holds; the edges are labelled with the direction each shown axis runs
towards, from nibabel's :func:`~nibabel.orientations.io_orientation` /
:func:`~nibabel.orientations.aff2axcodes`. A copy of an image with one voxel axis reversed (and
its affine saying so) is drawn mirrored, with the two labels of that axis swapped.

Panels: the **sagittal** one cuts the voxel axis closest to left-right and shows the
anterior-posterior axis across, superior-inferior up; **coronal** cuts anterior-posterior and
shows left-right across, superior-inferior up; **axial** cuts superior-inferior and shows
left-right across, anterior-posterior up. Column indices grow to the right and row indices
upwards (``origin="lower"``): the right edge carries the code of the horizontal axis, the top edge
the code of the vertical one, and the other two edges their opposites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from nibabel import orientations

from converters.errors import QcError
from converters.qc.records import EdgeLabels

__all__ = ["PLANES", "Panel", "panels"]

#: nibabel is only partly annotated; its calls go through ``Any``.
_ORIENTATIONS: Any = orientations

#: (plane, world axis it cuts, world axis across, world axis up); world axes 0 = x (L-R),
#: 1 = y (P-A), 2 = z (I-S) as in nibabel's RAS+ orientation.
PLANES: tuple[tuple[str, int, int, int], ...] = (
    ("sagittal", 0, 1, 2),
    ("coronal", 1, 0, 2),
    ("axial", 2, 0, 1),
)
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclass(frozen=True)
class Panel:
    """One panel: the voxel axis it cuts, the voxel axes shown across and up, and its labels."""

    plane: str
    cut: int
    across: int
    up: int
    labels: EdgeLabels


def panels(affine: npt.NDArray[np.float64]) -> tuple[tuple[str, ...], tuple[Panel, ...]]:
    """(axis codes, the sagittal, coronal and axial panels) of an image with this 4x4 affine.

    Raises :class:`QcError` when the affine gives no orientation (zero or repeated columns)."""
    matrix = np.asarray(affine, dtype=float)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise QcError(f"the image's affine is not a finite 4x4 matrix: {matrix.tolist()}")
    orientation = _ORIENTATIONS.io_orientation(matrix)
    if np.isnan(orientation).any():
        raise QcError("the image's affine gives no orientation (a zero or repeated direction): no labels can be drawn")
    codes = tuple(str(code) for code in _ORIENTATIONS.aff2axcodes(matrix))
    voxel_axis = {int(world): voxel for voxel, (world, _flip) in enumerate(orientation)}
    found = []
    for plane, cut, across, up in PLANES:
        horizontal, vertical = voxel_axis[across], voxel_axis[up]
        labels = EdgeLabels(
            plane=plane,
            left=_OPPOSITE[codes[horizontal]],
            right=codes[horizontal],
            top=codes[vertical],
            bottom=_OPPOSITE[codes[vertical]],
        )
        found.append(Panel(plane, voxel_axis[cut], horizontal, vertical, labels))
    return codes, tuple(found)
