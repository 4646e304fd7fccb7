"""Who made a derived object and how it is identified: equipment, algorithm, UIDs, series numbers."""

from __future__ import annotations

import hashlib
from importlib import metadata

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

MANUFACTURER = "bidsbridge"
MODEL_NAME = "bidsbridge converters.derived"
DEVICE_SERIAL_NUMBER = "bidsbridge"


def software_version() -> str:
    try:
        return metadata.version("bidsbridge")
    except metadata.PackageNotFoundError:
        return "unknown"


def algorithm(name: str, family: Code) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=name, family=family, version=software_version())


def derived_uid(kind: str, *parts: str) -> UID:
    """A UID determined by what the object is made from, so re-deriving gives the same UIDs.

    ``kind`` separates objects made from the same inputs (``"pm-series"``, ``"pm-instance"``, ...);
    ``parts`` should include the source UIDs and a digest of the content.
    """
    return generate_uid(entropy_srcs=["bidsbridge.derived", kind, *parts])


def digest(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(hashlib.sha256(chunk).digest())
    return h.hexdigest()


def long_string(text: str) -> str:
    """Fit text into a DICOM LO value (64 characters, no backslash)."""
    text = text.replace("\\", "/")
    return text if len(text) <= 64 else text[:61] + "..."


#: Default Series Number of each derived object: this offset plus the source's Series Number.
SERIES_NUMBER_OFFSET = {"pm": 1000, "mask-seg": 2000, "seg": 3000, "sr": 4000}


def series_number(kind: str, source: Dataset) -> int:
    try:
        base = int(source.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        base = 0
    return SERIES_NUMBER_OFFSET[kind] + base
