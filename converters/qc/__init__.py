"""QC pictures of converted images, filed into the derivatives dataset ``derivatives/bidsbridge-qc/``.

One module per concept: :mod:`.records` (what a picture shows: :class:`QcPicture` with its
:class:`EdgeLabels`; what a QC run made: :class:`QcOutcome`), :mod:`.orientation` (panels and
edge labels from the affine), :mod:`.render` (drawing with matplotlib, Agg), :mod:`.dataset`
(names, bookkeeping, pictures following their images when publishing renames or removes them),
:mod:`.write` (the QC step: :func:`write_series_qc`, :func:`write_derived_qc`).

Only the records load with the package; everything else on first use (matplotlib only when a
picture is drawn), so that ``bidsbridge --help`` and publishing stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from converters.lazy import lazy_names
from converters.qc.records import (
    ORIENTATION_KEY,
    VIEW_KEY,
    EdgeLabels,
    QcOutcome,
    QcPicture,
    QcView,
    read_orientation,
)

if TYPE_CHECKING:
    from converters.qc.dataset import QC_DERIVATIVES, file_pictures, series_pictures
    from converters.qc.write import write_derived_qc, write_series_qc

__all__ = [
    "ORIENTATION_KEY",
    "QC_DERIVATIVES",
    "VIEW_KEY",
    "EdgeLabels",
    "QcOutcome",
    "QcPicture",
    "QcView",
    "file_pictures",
    "read_orientation",
    "series_pictures",
    "write_derived_qc",
    "write_series_qc",
]

__getattr__ = lazy_names(__name__, {
    "QC_DERIVATIVES": "converters.qc.dataset",
    "file_pictures": "converters.qc.dataset",
    "series_pictures": "converters.qc.dataset",
    "write_derived_qc": "converters.qc.write",
    "write_series_qc": "converters.qc.write",
})
