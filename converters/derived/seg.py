"""Label maps and masks as DICOM Segmentations (highdicom ``seg.Segmentation``) and back.

* One segment per label, numbered 1..N in label order. When the label values are not already
  1..N they are renumbered, and each segment's Segment Description (0062,0006) records the
  original value as ``Label value 7 in the source label map`` — :func:`read_segmentation`
  restores the original values from it, so NIfTI → SEG → NIfTI is voxel-exact.
* ``BINARY`` (default, one bit-packed frame per slice and segment) or ``LABELMAP`` (one frame per
  slice holding segment numbers; highdicom ≥ 0.28). Empty frames are kept, so every SEG covers
  the full source grid and reads back without its source.
* The SEG shares the source series' study and Frame of Reference and references its instances
  frame by frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from converters.derived import _provenance
from converters.derived._spatial import frame_positions, highdicom_spatial, quiet_highdicom, slice_of_position
from converters.derived.adc import AdcResult
from converters.derived.errors import DerivedInputError, EmptyMaskError, GeometryMismatchError
from converters.derived.geometry import SeriesGeometry, build_geometry
from converters.derived.labels import Label, LabelTable
from converters.derived.series import ImageSeries, functional_item, series_name

__all__ = [
    "MASK_LABEL",
    "SEGMENTATION_SOP_CLASSES",
    "SegmentationData",
    "SegmentationType",
    "encode_mask_segmentation",
    "encode_segmentation",
    "read_segmentation",
    "segment_volumes_ml",
]

SegmentationType = Literal["BINARY", "LABELMAP"]

#: The single segment of the ADC signal mask.
MASK_LABEL = Label(1, "ADC signal mask", description="Voxels with diffusion signal, where the ADC is defined")

#: SOP Class UIDs of DICOM Segmentations (Segmentation, Label Map Segmentation): highdicom's list.
SEGMENTATION_SOP_CLASSES: frozenset[str] = frozenset(hd.seg.SOP_CLASS_UIDS)
_ORIGINAL_VALUE = re.compile(r"^Label value (\d+) in the source label map")
_DEFAULT_ALGORITHM_FAMILY: Code = codes.DCM.HistogramAnalysis


def _segment_description(segment: Label, original: int, algorithm: str | None) -> hd.seg.SegmentDescription:
    description = hd.seg.SegmentDescription(
        segment_number=segment.value,
        segment_label=_provenance.long_string(segment.name),
        segmented_property_category=segment.category,
        segmented_property_type=segment.type,
        algorithm_type=(
            hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if algorithm else hd.seg.SegmentAlgorithmTypeValues.MANUAL
        ),
        algorithm_identification=_provenance.algorithm(algorithm, _DEFAULT_ALGORITHM_FAMILY) if algorithm else None,
        display_color=hd.color.CIELabColor.from_rgb(*segment.color) if segment.color else None,
    )
    text = f"Label value {original} in the source label map"
    if segment.description:
        text += f"; {segment.description}"
    description.SegmentDescription = text[:1024]
    return description


def _check_grid(labels: npt.NDArray[np.generic], geometry: SeriesGeometry, what: str, source: str) -> None:
    if labels.shape != geometry.shape:
        shape = "x".join(map(str, labels.shape[::-1]))
        expected = "x".join(map(str, geometry.shape[::-1]))
        raise GeometryMismatchError(f"{what} does not match the grid of {source}: shape {shape} ≠ source {expected}")


def encode_segmentation(
    labels: npt.NDArray[np.integer],
    source: ImageSeries,
    table: LabelTable | None = None,
    *,
    segmentation_type: SegmentationType | str = "BINARY",
    algorithm: str | None = None,
    series_number: int | None = None,
    series_description: str | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    what: str = "label map",
) -> hd.seg.Segmentation:
    """Encode a label volume (slice, row, column) on ``source``'s grid as a Segmentation.

    UIDs are derived from the source series and the content, so encoding the same labels twice
    gives the same instance. ``series_number`` defaults to 3000 + the source's.

    :param table: names and codes of the label values; values missing from it are an error,
        labels absent from the volume are left out. Default: ``label <value>`` with generic codes.
    :param algorithm: the name of the algorithm that produced the labels (segments AUTOMATIC);
        None records them as MANUAL.
    :param transfer_syntax_uid: any highdicom supports for the type (e.g. Implicit VR, RLE).
    :param what: names the label volume in messages.
    :raises GeometryMismatchError: the volume's shape is not the source grid's.
    :raises EmptyMaskError: no voxel carries a label.
    :raises LabelTableError: a value of the volume is not in ``table``; negative values.
    """
    return _encode(
        labels,
        source,
        table,
        segmentation_type=segmentation_type,
        algorithm=algorithm,
        series_number=series_number,
        series_description=series_description,
        transfer_syntax_uid=transfer_syntax_uid,
        what=what,
        kind="seg",
    )


def _encode(
    labels: npt.NDArray[np.integer],
    source: ImageSeries,
    table: LabelTable | None,
    *,
    segmentation_type: SegmentationType | str,
    algorithm: str | None,
    series_number: int | None,
    series_description: str | None,
    transfer_syntax_uid: str,
    what: str,
    kind: str,
) -> hd.seg.Segmentation:
    seg_type = hd.seg.SegmentationTypeValues(str(segmentation_type).upper())
    if seg_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        raise ValueError("segmentation_type must be BINARY or LABELMAP")
    _check_grid(labels, source.geometry, what, source.name)
    values = np.unique(labels)
    if values.size and values[0] < 0:
        raise EmptyMaskError(f"{what} holds negative values ({int(values[0])}); label values are ≥ 0")
    present = [int(v) for v in values if v != 0]
    if not present:
        raise EmptyMaskError(f"{what} has no labelled voxel (all 0); nothing to encode")
    table = (table or LabelTable.defaults(present)).restricted_to(present, what=what)
    numbered, mapping = table.renumbered()
    lookup = np.zeros(max(present) + 1, dtype=np.uint16)
    for original, number in mapping.items():
        lookup[original] = number
    segment_array = lookup[np.asarray(labels, dtype=np.int64)]
    original_of = {number: original for original, number in mapping.items()}
    descriptions = [_segment_description(label, original_of[label.value], algorithm) for label in numbered.labels]

    first = source.datasets[0]
    sources, further = source.highdicom_sources()
    content = _provenance.digest(
        segment_array.tobytes(), repr(sorted(mapping.items())).encode(), seg_type.value.encode()
    )
    description = series_description or _provenance.long_string(
        f"{'Mask' if kind == 'mask-seg' else 'Segmentation'} of {first.get('SeriesDescription') or source.name!s}"
    )
    with quiet_highdicom():
        seg = hd.seg.Segmentation(
            source_images=sources,
            further_source_images=further,
            pixel_array=segment_array.astype(np.uint16 if len(descriptions) > 255 else np.uint8),
            segmentation_type=seg_type,
            segment_descriptions=descriptions,
            series_instance_uid=_provenance.derived_uid(f"{kind}-series", source.series_instance_uid, content),
            series_number=series_number if series_number is not None else _provenance.series_number(kind, first),
            sop_instance_uid=_provenance.derived_uid(f"{kind}-instance", source.series_instance_uid, content),
            instance_number=1,
            manufacturer=_provenance.MANUFACTURER,
            manufacturer_model_name=_provenance.MODEL_NAME,
            software_versions=_provenance.software_version(),
            device_serial_number=_provenance.DEVICE_SERIAL_NUMBER,
            omit_empty_frames=False,
            transfer_syntax_uid=transfer_syntax_uid,
            content_label="MASK" if kind == "mask-seg" else "LABELS",
            content_description=_provenance.long_string(description),
            series_description=description,
            **highdicom_spatial(source.geometry),
        )
    return seg


def encode_mask_segmentation(
    result: AdcResult,
    *,
    segmentation_type: SegmentationType | str = "BINARY",
    series_number: int | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> hd.seg.Segmentation:
    """Encode the signal mask of an ADC computation as a one-segment Segmentation.

    ``series_number`` defaults to 2000 + the source's.

    :raises EmptyMaskError: the mask is empty.
    """
    return _encode(
        result.mask.astype(np.uint8),
        result.series,
        LabelTable((MASK_LABEL,)),
        segmentation_type=segmentation_type,
        algorithm="bidsbridge ADC signal mask",
        series_number=series_number,
        series_description=None,
        transfer_syntax_uid=transfer_syntax_uid,
        what="ADC signal mask",
        kind="mask-seg",
    )


@dataclass(frozen=True, eq=False, repr=False)
class SegmentationData:
    """A Segmentation read back as a label volume."""

    #: Original label values (int32), (slice, row, column); 0 = background.
    labels: npt.NDArray[np.int32]
    geometry: SeriesGeometry
    #: The labels by original value, with their names, codes and colours.
    table: LabelTable
    #: Segment number → original label value.
    segment_values: dict[int, int]
    #: Series Instance UID of the series the segmentation was drawn on (first one referenced).
    source_series_uid: str | None
    dataset: Dataset

    def __repr__(self) -> str:
        names = ", ".join(f"{label.value}={label.name}" for label in self.table.labels)
        return f"SegmentationData({names}; {self.geometry.describe()})"

    @classmethod
    def from_dataset(cls, dataset: Dataset, *, geometry: SeriesGeometry | None = None) -> SegmentationData:
        """Read a Segmentation dataset; :func:`read_segmentation` also takes a path."""
        return read_segmentation(dataset, geometry=geometry)


def _segments(ds: Dataset) -> tuple[LabelTable, dict[int, int]]:
    labels: list[Label] = []
    values: dict[int, int] = {}
    for item in ds.SegmentSequence:
        number = int(item.SegmentNumber)
        if number == 0:
            continue  # the background segment of a LABELMAP segmentation
        text = str(item.get("SegmentDescription", "") or "")
        match = _ORIGINAL_VALUE.match(text)
        values[number] = int(match.group(1)) if match else number
        description = text[match.end():].removeprefix("; ") if match else text
        lab = item.get("RecommendedDisplayCIELabValue")
        color = hd.color.CIELabColor.from_dicom_value(list(lab)).to_rgb(clip=True) if lab else None
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        type_ = item.SegmentedPropertyTypeCodeSequence[0]
        labels.append(
            Label(
                value=values[number],
                name=str(item.get("SegmentLabel", f"segment {number}")),
                category=Code(str(category.CodeValue), str(category.CodingSchemeDesignator), str(category.CodeMeaning)),
                type=Code(str(type_.CodeValue), str(type_.CodingSchemeDesignator), str(type_.CodeMeaning)),
                color=(int(color[0]), int(color[1]), int(color[2])) if color is not None else None,
                description=description,
            )
        )
    if len(set(values.values())) != len(values):
        values = {number: number for number in values}  # recorded values clash: fall back to numbers
        labels = [Label(n, lab.name, lab.category, lab.type, lab.color) for n, lab in zip(values, labels, strict=True)]
    return LabelTable.of(labels), values


def read_segmentation(source: Path | Dataset, *, geometry: SeriesGeometry | None = None) -> SegmentationData:
    """Read a BINARY or LABELMAP Segmentation into a label volume with original label values.

    :param geometry: the grid of the segmented series. Needed only for SEGs that omit empty
        frames (those of other tools); without it the SEG's frames must cover a regular grid.
    :raises DerivedInputError: not a Segmentation, FRACTIONAL, or overlapping segments.
    :raises GeometryMismatchError: a frame is not on ``geometry``.
    """
    path = source if isinstance(source, Path) else None
    ds = pydicom.dcmread(source) if isinstance(source, Path) else source
    name = series_name(ds)
    if ds.get("SOPClassUID") not in SEGMENTATION_SOP_CLASSES:
        raise DerivedInputError(f"not a Segmentation (SOP Class {ds.get('SOPClassUID', '?')})", path)
    seg_type = str(ds.get("SegmentationType", ""))
    if seg_type not in ("BINARY", "LABELMAP"):
        raise DerivedInputError(f"{name}: {seg_type or 'unknown'} segmentations cannot become a label map", path)
    table, values = _segments(ds)
    positions = frame_positions(ds)
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if geometry is None:
        measures = shared.PixelMeasuresSequence[0]
        orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        geometry, slices = build_geometry(
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            orientations=[orientation] * len(positions),
            positions=positions,
            pixel_spacings=[measures.PixelSpacing] * len(positions),
            frame_of_reference_uid=str(ds.FrameOfReferenceUID),
            slice_thickness=float(measures.SliceThickness) if "SliceThickness" in measures else None,
            what=name,
        )
    else:
        if (int(ds.Rows), int(ds.Columns)) != (geometry.rows, geometry.columns):
            raise GeometryMismatchError(
                f"{name}: frames of {int(ds.Rows)}x{int(ds.Columns)} pixels ≠ source {geometry.rows}x{geometry.columns}"
            )
        slices = [slice_of_position(geometry, p, what=name) for p in positions]
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    volume = np.zeros(geometry.shape, dtype=np.int32)
    for index, (k, item) in enumerate(zip(slices, per_frame, strict=True)):
        frame = pixels[index]
        if seg_type == "LABELMAP":
            for number in np.unique(frame):
                if number == 0:
                    continue
                if int(number) not in values:
                    raise DerivedInputError(f"{name}: frame {index + 1} holds undeclared segment {int(number)}", path)
                volume[k][frame == number] = values[int(number)]
            continue
        identification = functional_item((item, shared), "SegmentIdentificationSequence")
        number = int(identification.ReferencedSegmentNumber) if identification is not None else 1
        on = frame.astype(bool)
        overlap = on & (volume[k] != 0) & (volume[k] != values[number])
        if overlap.any():
            raise DerivedInputError(
                f"{name}: segment {number} overlaps another segment; overlapping segments cannot become one label map",
                path,
            )
        volume[k][on] = values[number]
    referenced = ds.get("ReferencedSeriesSequence")
    return SegmentationData(
        labels=volume,
        geometry=geometry,
        table=table,
        segment_values=values,
        source_series_uid=str(referenced[0].SeriesInstanceUID) if referenced else None,
        dataset=ds,
    )


def segment_volumes_ml(data: SegmentationData) -> dict[int, float]:
    """Volume (ml) of each label value of a read-back segmentation."""
    voxel_ml = data.geometry.voxel_volume_mm3 / 1000.0
    counts = np.bincount(data.labels.ravel(), minlength=max(data.table.values, default=0) + 1)
    return {value: float(counts[value]) * voxel_ml for value in data.table.values}
