"""bidsbridge converters: DICOM series -> NIfTI + JSON (dcm2niix) -> raw BIDS dataset.

The pipeline runs in stages, one module each: :mod:`.discover` (find series, headers only),
:mod:`.conversion` (dcm2niix on one series), :mod:`.classify` (where it belongs in BIDS, with
:mod:`.asl` digging ASL facts out of the headers) and :mod:`.bids` (names, session-wide runs and
field-map links in :mod:`.bids.session`, dataset files, atomic publishing); :mod:`.labels` makes
subject/session labels (templates, pseudonyms); :mod:`.pipeline` strings them together.

Everything but the errors and records is imported on first use, so that importing those light
parts — as the Orthanc plugin does inside Orthanc — loads no third-party package.
"""

import logging
from typing import TYPE_CHECKING

from converters.errors import (
    BidsBridgeError,
    ConversionError,
    DatasetError,
    Dcm2niixError,
    DicomInputError,
    LabelError,
    UnreadableDataError,
)
from converters.lazy import lazy_names
from converters.records import SeriesResult

if TYPE_CHECKING:
    from converters.bids.manifests import converted_sources, series_outputs
    from converters.bids.naming import sanitize_label
    from converters.classify import Override
    from converters.labels import Labels
    from converters.pipeline import ConvertProgress, convert_series, convert_tree

__all__ = [
    "BidsBridgeError",
    "ConversionError",
    "ConvertProgress",
    "DatasetError",
    "Dcm2niixError",
    "DicomInputError",
    "LabelError",
    "Labels",
    "Override",
    "SeriesResult",
    "UnreadableDataError",
    "convert_series",
    "convert_tree",
    "converted_sources",
    "sanitize_label",
    "series_outputs",
]

#: Names imported on first use, and their modules (only errors and records load eagerly: they
#: use the standard library alone, so Orthanc's interpreter can import them before the venv's
#: packages are on its path).
_LAZY = {
    "ConvertProgress": "converters.pipeline",
    "convert_series": "converters.pipeline",
    "convert_tree": "converters.pipeline",
    "converted_sources": "converters.bids.manifests",
    "series_outputs": "converters.bids.manifests",
    "sanitize_label": "converters.bids.naming",
    "Override": "converters.classify",
    "Labels": "converters.labels",
}


__getattr__ = lazy_names(__name__, _LAZY)


logging.getLogger(__name__).addHandler(logging.NullHandler())
