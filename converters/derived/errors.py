"""Exceptions raised by :mod:`converters.derived`.

Each subclasses an exception of :mod:`converters.errors` (and through it the built-in that fits),
so callers may catch the specific class, the project-wide one or the built-in. Messages name the
series or file concerned and what is missing or wrong.
"""

from __future__ import annotations

from converters.errors import BidsBridgeError, DicomInputError

__all__ = [
    "DerivedInputError",
    "DiffusionInfoError",
    "EmptyMaskError",
    "GeometryError",
    "GeometryMismatchError",
    "LabelTableError",
    "MissingB0Error",
]


class DerivedInputError(DicomInputError):
    """An input of a derivation (a DICOM series, a SEG, a Parametric Map, a NIfTI) is unusable."""


class GeometryError(DerivedInputError):
    """The frames of a series do not form one regular 3D grid.

    Raised for orientations or pixel spacings that vary between frames, slices that are not
    evenly spaced (a gap, a missing slice) or positions with unequal numbers of frames.
    """


class DiffusionInfoError(DerivedInputError):
    """A series carries no (or incomplete) diffusion information: no b-value for some frames."""


class MissingB0Error(DiffusionInfoError):
    """A diffusion series has no b = 0 volume (or no diffusion-weighted one), so no ADC."""


class GeometryMismatchError(BidsBridgeError, ValueError):
    """An image (e.g. a label map) is not on the voxel grid of the series it must belong to.

    The message lists each mismatch, e.g. ``shape 64x64x30 ≠ source 72x72x39``. Resample the
    image onto the source series' grid (nearest neighbour for labels) before encoding it.
    """


class EmptyMaskError(BidsBridgeError, ValueError):
    """A mask or label map has no voxel set, so there is nothing to encode or measure."""


class LabelTableError(BidsBridgeError, ValueError):
    """A label table (JSON or BIDS ``dseg.tsv``) is malformed or does not fit its label map."""
