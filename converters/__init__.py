"""bidsbridge converters: DICOM series -> NIfTI + JSON (dcm2niix) -> raw BIDS dataset.

The pipeline runs in stages, one module each: :mod:`.discover` (find series, headers only),
:mod:`.conversion` (dcm2niix on one series), :mod:`.classify` (where it belongs in BIDS, with
:mod:`.asl` digging ASL facts out of the headers) and :mod:`.bids` (names, session-wide runs and
field-map links in :mod:`.bids.session`, dataset files, atomic publishing); :mod:`.labels` makes
subject/session labels (templates, pseudonyms); :mod:`.pipeline` strings them together.
"""

import logging

from converters.bids.naming import sanitize_label
from converters.classify import Override
from converters.errors import (
    BidsBridgeError,
    ConversionError,
    DatasetError,
    Dcm2niixError,
    DicomInputError,
    LabelError,
    UnreadableDataError,
)
from converters.labels import Labels
from converters.pipeline import convert_series, convert_tree, converted_sources, series_outputs
from converters.records import SeriesResult

__all__ = [
    "BidsBridgeError",
    "ConversionError",
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

logging.getLogger(__name__).addHandler(logging.NullHandler())
