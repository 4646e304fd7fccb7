"""highdicom spatial arguments for a grid, and placing the frames of a derived object on a grid."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from converters.derived.errors import GeometryMismatchError
from converters.derived.geometry import POSITION_TOLERANCE_MM, SeriesGeometry


def highdicom_spatial(geometry: SeriesGeometry) -> dict[str, Any]:
    """``plane_positions``, ``plane_orientation`` and ``pixel_measures`` for highdicom constructors."""
    return {
        "plane_positions": [
            hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, image_position=list(position))
            for position in geometry.positions
        ],
        "plane_orientation": hd.PlaneOrientationSequence(
            hd.CoordinateSystemNames.PATIENT, image_orientation=list(geometry.orientation)
        ),
        "pixel_measures": hd.PixelMeasuresSequence(
            pixel_spacing=list(geometry.pixel_spacing),
            slice_thickness=geometry.slice_thickness or geometry.slice_spacing,
            spacing_between_slices=geometry.slice_spacing,
        ),
    }


def slice_of_position(geometry: SeriesGeometry, position: Any, *, what: str) -> int:
    """Index of the slice of ``geometry`` at Image Position (Patient) ``position``.

    :raises GeometryMismatchError: the position is not one of the grid's slice positions.
    """
    pos = np.asarray([float(v) for v in position], dtype=np.float64)
    origin = np.asarray(geometry.positions[0])
    step = geometry.slice_step
    k = round(float((pos - origin) @ step) / float(step @ step)) if len(geometry.positions) > 1 else 0
    if not 0 <= k < len(geometry.positions) or np.max(np.abs(pos - geometry.positions[k])) > POSITION_TOLERANCE_MM * 10:
        raise GeometryMismatchError(
            f"{what}: a frame at ({', '.join(f'{v:.2f}' for v in pos)}) mm is not on the grid of the source "
            f"series ({geometry.describe()})"
        )
    return k


def frame_positions(ds: Dataset) -> list[Any]:
    """Image Position (Patient) of each frame of an enhanced multi-frame dataset."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else Dataset()
    out = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        plane = item.get("PlanePositionSequence") or shared_item.get("PlanePositionSequence")
        out.append(plane[0].ImagePositionPatient)
    return out


@contextmanager
def quiet_highdicom() -> Iterator[None]:
    """Silence highdicom's warning about single-component person names copied from the source.

    The names come verbatim from the scanner's instances; a derived object must repeat them
    unchanged, so the warning could only ever be noise to the caller.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*unlikely to represent the intended person name", category=UserWarning
        )
        yield
