"""Read one DICOM image series — classic single-frame or enhanced multi-frame — onto its grid.

Every frame of the series (a file of a classic series, or one frame of an enhanced instance)
becomes a :class:`SeriesFrame` that knows its slice on the series' :class:`SeriesGeometry` and
where to look up its functional-group attributes. Series with several volumes (diffusion, fMRI)
have several frames per slice; what tells the volumes apart is for the caller (see
:mod:`converters.derived.adc`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError

from converters.derived.errors import DerivedInputError, GeometryError
from converters.derived.geometry import SeriesGeometry, build_geometry
from converters.dicom_header import PIXEL_TAGS

__all__ = [
    "ImageSeries",
    "SeriesFrame",
    "functional_item",
    "read_image_series",
    "series_from_datasets",
    "series_name",
]

logger = logging.getLogger(__name__)

def functional_item(groups: Sequence[Dataset], keyword: str) -> Dataset | None:
    """First item of sequence ``keyword`` in the first of ``groups`` that has it, else None."""
    for group in groups:
        sequence = group.get(keyword)
        if sequence:
            item: Dataset = sequence[0]
            return item
    return None


def series_name(ds: Dataset) -> str:
    """How messages name a series: ``series 10 "DWI_dir80_PA"`` (or its UID without a number)."""
    number = ds.get("SeriesNumber")
    description = str(ds.get("SeriesDescription", "") or "").strip()
    label = f"series {number}" if number not in (None, "") else f"series {ds.get('SeriesInstanceUID', '?')}"
    return f'{label} "{description}"' if description else label


@dataclass(frozen=True, repr=False)
class SeriesFrame:
    """One 2D frame of a series."""

    #: Index of the instance in :attr:`ImageSeries.datasets`.
    instance: int
    #: 1-based frame number within a multi-frame instance; None for a single-frame instance.
    frame_number: int | None
    #: Index of the frame's slice on :attr:`ImageSeries.geometry`.
    slice_index: int
    #: Where to look up attributes, most specific first: the per-frame functional group item,
    #: the shared one, then the instance itself (classic images hold everything at top level).
    groups: tuple[Dataset, ...]
    #: Acquisition order within the series (Instance Number, Temporal Position Index, frame).
    order: tuple[int, int, int, int]

    def __repr__(self) -> str:
        return f"SeriesFrame(instance={self.instance}, frame={self.frame_number}, slice={self.slice_index})"


@dataclass(frozen=True, repr=False)
class ImageSeries:
    """The instances of one image series and its frames on one regular grid."""

    paths: tuple[Path, ...]
    #: The instances, as read (without pixel data when read with ``pixels=False``).
    datasets: tuple[Dataset, ...]
    frames: tuple[SeriesFrame, ...]
    geometry: SeriesGeometry
    #: For messages, e.g. ``series 10 "DWI_dir80_PA"``.
    name: str

    def __repr__(self) -> str:
        return (
            f"ImageSeries({self.name}, {len(self.datasets)} instances, {len(self.frames)} frames, "
            f"{self.geometry.describe()})"
        )

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frames_per_slice(self) -> int:
        return len(self.frames) // self.geometry.shape[0]

    def pixels(self) -> npt.NDArray[np.float64]:
        """All frames as rescaled values (Rescale Slope/Intercept applied), in :attr:`frames` order.

        :raises DerivedInputError: the series was read without pixel data, or it cannot be decoded.
        """
        decoded: dict[int, npt.NDArray[Any]] = {}
        out = np.empty((len(self.frames), self.geometry.rows, self.geometry.columns), dtype=np.float64)
        for n, frame in enumerate(self.frames):
            if frame.instance not in decoded:
                ds = self.datasets[frame.instance]
                if not any(tag in ds for tag in PIXEL_TAGS):
                    path = self.paths[frame.instance]
                    raise DerivedInputError(f"{self.name}: instance read without pixel data", path)
                try:
                    decoded[frame.instance] = ds.pixel_array
                except Exception as exc:  # pydicom raises many types for undecodable pixel data
                    raise DerivedInputError(
                        f"{self.name}: cannot decode pixel data ({exc})", self.paths[frame.instance]
                    ) from exc
            array = decoded[frame.instance]
            plane = array[frame.frame_number - 1] if frame.frame_number is not None and array.ndim == 3 else array
            slope, intercept = _rescale(frame.groups)
            out[n] = plane * slope + intercept
        return out

    def highdicom_sources(self) -> tuple[list[Dataset], list[Dataset]]:
        """(source_images, further_source_images) as highdicom's derived-image constructors take them.

        The first are the instances of one volume that define the frames' positions (one
        multi-frame instance, or one single-frame instance per slice); the second all the others,
        which highdicom references frame by frame where positions match.
        """
        first_instance = self.frames[0].instance
        if self.frames[0].frame_number is not None:
            primary = [first_instance]
        else:
            seen: dict[int, int] = {}
            for frame in sorted(self.frames, key=lambda f: f.order):
                seen.setdefault(frame.slice_index, frame.instance)
            primary = [seen[k] for k in sorted(seen)]
        chosen = set(primary)
        return (
            [_reference_copy(self.datasets[i]) for i in primary],
            [_reference_copy(ds) for i, ds in enumerate(self.datasets) if i not in chosen],
        )


_SPATIAL_GROUPS = ("PixelMeasuresSequence", "PlaneOrientationSequence")


def _reference_copy(ds: Dataset) -> Dataset:
    """A header-only copy of an instance to hand to highdicom as a source image.

    highdicom reads pixel spacing and orientation of a multi-frame source from its shared
    functional groups; scanners (e.g. Siemens XA) often put them per frame. The grid check of
    :func:`build_geometry` has shown them equal for all frames, so the copy's shared group gets
    the first frame's. The original dataset is left as it is.
    """
    copy = Dataset()
    copy.file_meta = ds.file_meta if hasattr(ds, "file_meta") else FileMetaDataset()
    for element in ds:
        if element.tag not in PIXEL_TAGS:
            copy.add(element)
    if "PerFrameFunctionalGroupsSequence" in ds:
        old_shared = ds.get("SharedFunctionalGroupsSequence")
        shared = Dataset()
        if old_shared:
            for element in old_shared[0]:
                shared.add(element)
        first = ds.PerFrameFunctionalGroupsSequence[0]
        for keyword in _SPATIAL_GROUPS:
            if keyword not in shared and keyword in first:
                setattr(shared, keyword, first[keyword].value)
        copy.SharedFunctionalGroupsSequence = [shared]
    return copy


def _rescale(groups: Sequence[Dataset]) -> tuple[float, float]:
    item = functional_item(groups, "PixelValueTransformationSequence")
    for source in ([item] if item is not None else []) + [groups[-1]]:
        if "RescaleSlope" in source or "RescaleIntercept" in source:
            return float(source.get("RescaleSlope", 1.0) or 1.0), float(source.get("RescaleIntercept", 0.0) or 0.0)
    return 1.0, 0.0


def _list_files(source: Path | Sequence[Path]) -> list[Path]:
    if isinstance(source, Path):
        if source.is_dir():
            return sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [source]
    return [Path(p) for p in source]


def _read(paths: Sequence[Path], pixels: bool) -> tuple[list[Path], list[Dataset]]:
    kept_paths: list[Path] = []
    datasets: list[Dataset] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
        except InvalidDicomError:
            logger.debug("skipping %s: not a DICOM file", path)
            continue
        except OSError as exc:
            raise DerivedInputError(f"cannot read DICOM file ({exc})", path) from exc
        if "Rows" not in ds:
            logger.debug("skipping %s: not an image (SOP class %s)", path, ds.get("SOPClassUID", "?"))
            continue
        kept_paths.append(path)
        datasets.append(ds)
    return kept_paths, datasets


#: A frame with its Image Orientation (Patient), Image Position (Patient) and Pixel Spacing.
_LocatedFrame = tuple[SeriesFrame, list[float], list[float], list[float]]


def _frames_of(index: int, ds: Dataset, path: Path, name: str) -> list[_LocatedFrame]:
    """Frames of one instance with their (orientation, position, pixel spacing), slice unset."""
    instance_number = int(ds.get("InstanceNumber", 0) or 0)
    out: list[_LocatedFrame] = []
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.get("SharedFunctionalGroupsSequence")
        shared_item = shared[0] if shared else Dataset()
        for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
            groups = (item, shared_item, ds)
            plane = functional_item(groups, "PlanePositionSequence")
            orient = functional_item(groups, "PlaneOrientationSequence")
            measures = functional_item(groups, "PixelMeasuresSequence")
            if plane is None or orient is None or measures is None or "PixelSpacing" not in measures:
                raise GeometryError(f"{name}: frame {number} lacks plane position, orientation or pixel spacing", path)
            content = functional_item(groups, "FrameContentSequence")
            temporal = int(content.get("TemporalPositionIndex", 0) or 0) if content is not None else 0
            frame = SeriesFrame(index, number, 0, groups, (instance_number, temporal, number, index))
            out.append((frame, list(orient.ImageOrientationPatient), list(plane.ImagePositionPatient),
                        list(measures.PixelSpacing)))
    elif int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DerivedInputError(f"{name}: multi-frame instance without functional groups is not supported", path)
    else:
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
        if missing:
            raise GeometryError(f"{name}: instance lacks {', '.join(missing)}", path)
        frame = SeriesFrame(index, None, 0, (ds,), (instance_number, 0, 0, index))
        out.append((frame, list(ds.ImageOrientationPatient), list(ds.ImagePositionPatient), list(ds.PixelSpacing)))
    return out


def read_image_series(source: Path | Sequence[Path], *, pixels: bool = True) -> ImageSeries:
    """Read one image series from a folder (searched recursively) or a list of files.

    Non-DICOM files and non-image instances (SR, KO, ...) in a folder are skipped.

    :param pixels: also read pixel data (needed for :meth:`ImageSeries.pixels`); headers suffice
        to reference a series from a derived object.
    :raises DerivedInputError: no image instance, several series, unsupported encoding.
    :raises GeometryError: the frames do not form one regular grid.
    """
    paths, datasets = _read(_list_files(source), pixels)
    if not datasets:
        raise DerivedInputError("no DICOM image instance found", source if isinstance(source, Path) else None)
    series_uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series_uids) > 1:
        names = sorted({series_name(ds) for ds in datasets})
        raise DerivedInputError(
            f"expected one series, found {len(series_uids)}: {', '.join(names)}",
            source if isinstance(source, Path) else None,
        )
    return series_from_datasets(datasets, paths)


def series_from_datasets(datasets: Sequence[Dataset], paths: Sequence[Path] | None = None) -> ImageSeries:
    """An :class:`ImageSeries` from instances already read (``paths`` only name them in messages).

    :raises DerivedInputError: unsupported encoding.
    :raises GeometryError: the frames do not form one regular grid.
    """
    if not datasets:
        raise DerivedInputError("no DICOM image instance given")
    paths = list(paths) if paths is not None else [Path(f"<instance {n + 1}>") for n in range(len(datasets))]
    # Keep instances in acquisition order so frames (and volumes) come out in that order.
    ordered = sorted(range(len(datasets)), key=lambda i: (int(datasets[i].get("InstanceNumber", 0) or 0), i))
    paths = [paths[i] for i in ordered]
    datasets = [datasets[i] for i in ordered]
    first = datasets[0]
    name = series_name(first)
    if int(first.get("SamplesPerPixel", 1)) != 1:
        raise DerivedInputError(f"{name}: colour images are not supported", paths[0])
    rows, columns = int(first.Rows), int(first.Columns)
    collected: list[_LocatedFrame] = []
    for index, (path, ds) in enumerate(zip(paths, datasets, strict=True)):
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise GeometryError(
                f"{name}: frames of {int(ds.Rows)}x{int(ds.Columns)} and {rows}x{columns} pixels in one series", path
            )
        collected.extend(_frames_of(index, ds, path, name))
    thickness_item = functional_item(collected[0][0].groups, "PixelMeasuresSequence")
    thickness_value = (thickness_item or first).get("SliceThickness")
    geometry, slice_of_frame = build_geometry(
        rows=rows,
        columns=columns,
        orientations=[c[1] for c in collected],
        positions=[c[2] for c in collected],
        pixel_spacings=[c[3] for c in collected],
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        slice_thickness=float(thickness_value) if thickness_value not in (None, "") else None,
        what=name,
    )
    frames = tuple(
        SeriesFrame(c[0].instance, c[0].frame_number, slice_index, c[0].groups, c[0].order)
        for c, slice_index in zip(collected, slice_of_frame, strict=True)
    )
    if not geometry.frame_of_reference_uid:
        raise GeometryError(f"{name}: no Frame of Reference UID", paths[0])
    return ImageSeries(tuple(paths), tuple(datasets), frames, geometry, name)
