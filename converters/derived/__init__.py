"""Derived DICOM objects: ADC maps, segmentations and measurement reports, and their NIfTI forms.

The pipeline, one module per concept (highdicom-style):

* :mod:`~converters.derived.series` reads a DICOM series onto its grid
  (:mod:`~converters.derived.geometry` relates that grid to NIfTI images);
* :mod:`~converters.derived.adc` computes an ADC map from a diffusion series;
* :mod:`~converters.derived.pm` encodes it as a Parametric Map, :mod:`~converters.derived.seg`
  encodes masks and label maps (with :mod:`~converters.derived.labels` tables) as Segmentations,
  :mod:`~converters.derived.sr` measures segments in a TID 1500 report; each reads its object back;
* :mod:`~converters.derived.nifti` writes and reads the NIfTI side;
* :mod:`~converters.derived.derive` holds the folder-to-files entry points the CLI calls.

Library code only logs (``logging.getLogger(__name__)``); entry points configure logging.

Only :mod:`.errors` load with the package; every other name is imported
on first use (``bidsbridge --help`` and Orthanc's start-up need none of the heavy libraries).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from converters.derived.errors import (
    DerivedInputError,
    DiffusionInfoError,
    EmptyMaskError,
    GeometryError,
    GeometryMismatchError,
    LabelTableError,
    MissingB0Error,
)
from converters.lazy import lazy_names

if TYPE_CHECKING:
    from converters.derived.adc import AdcResult, DiffusionEncoding, compute_adc
    from converters.derived.derive import derive_adc, derive_seg, derive_sr
    from converters.derived.geometry import SeriesGeometry, conform_to_geometry
    from converters.derived.labels import Label, LabelTable, format_dseg_tsv, parse_label_table, read_label_table
    from converters.derived.nifti import read_nifti_labels, write_nifti, write_nifti_labels, write_nifti_map
    from converters.derived.pm import ParametricMapData, encode_parametric_map, read_parametric_map
    from converters.derived.seg import (
        SEGMENTATION_SOP_CLASSES,
        SegmentationData,
        SegmentationType,
        encode_mask_segmentation,
        encode_segmentation,
        read_segmentation,
    )
    from converters.derived.series import ImageSeries, read_image_series, series_from_datasets
    from converters.derived.sr import SegmentMeasurement, encode_measurement_sr, measure_segments

__all__ = [
    "SEGMENTATION_SOP_CLASSES",
    "AdcResult",
    "DerivedInputError",
    "DiffusionEncoding",
    "DiffusionInfoError",
    "EmptyMaskError",
    "GeometryError",
    "GeometryMismatchError",
    "ImageSeries",
    "Label",
    "LabelTable",
    "LabelTableError",
    "MissingB0Error",
    "ParametricMapData",
    "SegmentMeasurement",
    "SegmentationData",
    "SegmentationType",
    "SeriesGeometry",
    "compute_adc",
    "conform_to_geometry",
    "derive_adc",
    "derive_seg",
    "derive_sr",
    "encode_mask_segmentation",
    "encode_measurement_sr",
    "encode_parametric_map",
    "encode_segmentation",
    "format_dseg_tsv",
    "measure_segments",
    "parse_label_table",
    "read_image_series",
    "read_label_table",
    "read_nifti_labels",
    "read_parametric_map",
    "read_segmentation",
    "series_from_datasets",
    "write_nifti",
    "write_nifti_labels",
    "write_nifti_map",
]

#: Names imported on first use, and their modules.
_LAZY = {
    "AdcResult": "converters.derived.adc",
    "DiffusionEncoding": "converters.derived.adc",
    "compute_adc": "converters.derived.adc",
    "derive_adc": "converters.derived.derive",
    "derive_seg": "converters.derived.derive",
    "derive_sr": "converters.derived.derive",
    "SeriesGeometry": "converters.derived.geometry",
    "conform_to_geometry": "converters.derived.geometry",
    "Label": "converters.derived.labels",
    "LabelTable": "converters.derived.labels",
    "format_dseg_tsv": "converters.derived.labels",
    "parse_label_table": "converters.derived.labels",
    "read_label_table": "converters.derived.labels",
    "read_nifti_labels": "converters.derived.nifti",
    "write_nifti": "converters.derived.nifti",
    "write_nifti_labels": "converters.derived.nifti",
    "write_nifti_map": "converters.derived.nifti",
    "ParametricMapData": "converters.derived.pm",
    "encode_parametric_map": "converters.derived.pm",
    "read_parametric_map": "converters.derived.pm",
    "SEGMENTATION_SOP_CLASSES": "converters.derived.seg",
    "SegmentationData": "converters.derived.seg",
    "SegmentationType": "converters.derived.seg",
    "encode_mask_segmentation": "converters.derived.seg",
    "encode_segmentation": "converters.derived.seg",
    "read_segmentation": "converters.derived.seg",
    "ImageSeries": "converters.derived.series",
    "read_image_series": "converters.derived.series",
    "series_from_datasets": "converters.derived.series",
    "SegmentMeasurement": "converters.derived.sr",
    "encode_measurement_sr": "converters.derived.sr",
    "measure_segments": "converters.derived.sr",
}


__getattr__ = lazy_names(__name__, _LAZY)


logging.getLogger(__name__).addHandler(logging.NullHandler())
