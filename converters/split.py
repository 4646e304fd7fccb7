"""Stage 2b — split: the images dcm2niix wrote for one series, grouped into acquisitions.

dcm2niix writes several images for one series for many reasons, and says why in a file-name
postfix (its FILENAMING.md): ``_e<n>`` echoes, ``_ph`` phase, ``_real``/``_imaginary``,
``_fieldmaphz`` (a scanner field map beside its magnitude), ``_c<coil>`` uncombined coils,
``_i<n>`` non-parallel slices (several orientations), ``_t<ms>`` trigger delays, ``_MoCo``,
``_ADC``, ``_ROI<n>``, ``_Raw``, ``_PS``, ``_Eq``/``_Tilt`` (resampled), and a letter (``a``,
``b``, ...) when two images would otherwise get one name — e.g. both phase-encoding polarities
of a GE ``epi_pepolar`` series, or one series holding several SeriesNumbers.

Images that differ only by echo or by magnitude/phase/real/imaginary/field map are **one
acquisition** (an :class:`ImageSet`): they are classified together and told apart by ``echo``
and ``part`` entities or GRE field-map suffixes. Any other difference makes a set of its own,
classified on its own sidecar (PhaseEncodingDirection, ImageType, orientation, ...).

Voxel-identical sets (same shape, affine, data type, scaling and voxel bytes — e.g. one image
stored in several transfer syntaxes, or classic and enhanced copies of one acquisition) are
duplicates: one is kept (:func:`deduplicate` says which and why).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from converters.records import ConvertedImage

__all__ = ["Duplicate", "ImageSet", "deduplicate", "partition", "variant_tokens", "voxel_digest"]

logger = logging.getLogger(__name__)

#: Postfix tokens of variants within one acquisition (followed by another token, a conflict
#: letter or the end).
_WITHIN = re.compile(r"_(?:e\d+|ph|real|imaginary|fieldmaphz)(?=_|[a-z]*$)")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageSet:
    """The images of one acquisition within a series (see the module docstring)."""

    #: Position of the set among the series' sets (0 = the first by SeriesNumber, then postfix).
    index: int
    images: tuple[ConvertedImage, ...]
    #: What of dcm2niix's postfix sets this acquisition apart ("" for the plain one, ``a``,
    #: ``_c2``, ``_i00002``, ``_ADC``, ...).
    residue: str

    @property
    def series_number(self) -> int | None:
        """SeriesNumber from the sidecar (dcm2niix splits a series holding several)."""
        for image in self.images:
            number = image.metadata.get("SeriesNumber")
            if isinstance(number, int):
                return number
        return None

    @property
    def tokens(self) -> tuple[str, ...]:
        """The residue's postfix tokens without the leading ``_`` (``("c2",)``, ``("ADC",)``)."""
        return tuple(token for token in self.residue.split("_") if token)

    def describe(self) -> str:
        """A short name for reports: ``image 'a' (SeriesNumber 1006)``; dcm2niix's postfix, if any."""
        postfixes = ", ".join(repr(image.postfix) for image in self.images if image.postfix)
        number = self.series_number
        where = f"SeriesNumber {number}" if number is not None else ""
        name = f"image{'s' if len(self.images) > 1 else ''}"
        if postfixes and where:
            return f"{name} {postfixes} ({where})"
        return f"{name} {postfixes or f'({where})' if where else postfixes}".strip() or name


@dataclass(frozen=True)
class Duplicate:
    """A set left out because another one of the series holds the same voxels."""

    dropped: ImageSet
    kept: ImageSet
    reason: str


def _residue(postfix: str) -> str:
    return _WITHIN.sub("", postfix)


def variant_tokens(postfix: str) -> tuple[str, ...]:
    """The within-acquisition tokens of a postfix, without ``_``: ``"_e2_ph"`` -> ``("e2", "ph")``."""
    return tuple(found.group(0)[1:] for found in _WITHIN.finditer(postfix))


def partition(images: Sequence[ConvertedImage]) -> tuple[ImageSet, ...]:
    """Group a series' images into acquisitions, ordered by SeriesNumber, then postfix."""
    groups: dict[str, list[ConvertedImage]] = {}
    for image in images:
        groups.setdefault(_residue(image.postfix), []).append(image)

    def order(item: tuple[str, list[ConvertedImage]]) -> tuple[int, int, str]:
        residue, members = item
        numbers = [m.metadata.get("SeriesNumber") for m in members]
        number = next((n for n in numbers if isinstance(n, int)), None)
        return (0 if number is not None else 1, number or 0, residue)

    ordered = sorted(groups.items(), key=order)
    return tuple(
        ImageSet(index, tuple(sorted(members, key=lambda m: m.postfix)), residue)
        for index, (residue, members) in enumerate(ordered)
    )


def voxel_digest(path: Path) -> str:
    """SHA-256 over a NIfTI-1 file's dimensions, data type, scaling and voxel bytes (streamed, so
    a large image costs no memory): equal digests mean voxel-identical images."""
    opener = gzip.open if path.name.endswith(".gz") else open
    digest = hashlib.sha256()
    with opener(path, "rb") as handle:
        header = handle.read(348)
        if len(header) < 348:
            raise ValueError(f"{path} is too short for a NIfTI-1 header")
        order = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        digest.update(header[40:56])  # dim[8]
        digest.update(header[70:74])  # datatype, bitpix
        digest.update(header[112:120])  # scl_slope, scl_inter
        (vox_offset,) = struct.unpack(f"{order}f", header[108:112])
        handle.read(max(int(vox_offset) - 348, 0))
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _signature(image_set: ImageSet) -> tuple[tuple[tuple[int, ...], tuple[tuple[float, ...], ...]], ...]:
    return tuple(
        (image.shape, tuple(tuple(round(v, 4) for v in row) for row in image.affine)) for image in image_set.images
    )


def _preference(image_set: ImageSet) -> tuple[int, int, int, str]:
    """Which of several duplicates to keep: the fullest sidecar (enhanced DICOM records more
    than its classic copy), then the lowest SeriesNumber, then the plain postfix."""
    keys = sum(len(image.metadata) for image in image_set.images)
    number = image_set.series_number
    return (-keys, 0 if number is not None else 1, number or 0, image_set.residue)


def _why(kept: ImageSet, dropped: ImageSet) -> str:
    kept_keys = sum(len(i.metadata) for i in kept.images)
    dropped_keys = sum(len(i.metadata) for i in dropped.images)
    if kept_keys > dropped_keys:
        because = f"its sidecar records more ({kept_keys} vs {dropped_keys} fields)"
    elif kept.series_number is not None and kept.series_number != dropped.series_number:
        because = "the same metadata, lower SeriesNumber"
    else:
        because = "the same metadata, first by dcm2niix's name"
    return f"{dropped.describe()} left out: voxel-identical to {kept.describe()}, which is kept ({because})"


def deduplicate(sets: Sequence[ImageSet]) -> tuple[tuple[ImageSet, ...], tuple[Duplicate, ...]]:
    """Drop sets whose voxels equal another set's; returns (kept sets in order, duplicates)."""
    candidates: dict[object, list[ImageSet]] = {}
    for image_set in sets:
        candidates.setdefault(_signature(image_set), []).append(image_set)
    dropped: dict[int, Duplicate] = {}
    for group in candidates.values():
        if len(group) < 2:
            continue
        by_voxels: dict[tuple[str, ...], list[ImageSet]] = {}
        for image_set in group:
            by_voxels.setdefault(tuple(voxel_digest(i.nifti) for i in image_set.images), []).append(image_set)
        for same in by_voxels.values():
            if len(same) < 2:
                continue
            keep = min(same, key=_preference)
            for other in same:
                if other is not keep:
                    dropped[other.index] = Duplicate(other, keep, _why(keep, other))
    kept = tuple(s for s in sets if s.index not in dropped)
    return kept, tuple(dropped[i] for i in sorted(dropped))
