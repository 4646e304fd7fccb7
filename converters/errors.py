"""Exceptions raised by :mod:`converters`.

Every message says what failed, where (a path or a series), and what to do about it.
Each class subclasses the built-in that fits so callers may catch either.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BidsBridgeError",
    "ConversionError",
    "DatasetError",
    "Dcm2niixError",
    "DicomInputError",
    "LabelError",
]


class BidsBridgeError(Exception):
    """Base class of every error bidsbridge raises on purpose."""


class DicomInputError(BidsBridgeError, ValueError):
    """The DICOM input cannot be used: unreadable, truncated, or not one series."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        self.path = None if path is None else Path(path)
        where = f" ({self.path})" if self.path is not None else ""
        super().__init__(f"{message}{where}")


class ConversionError(BidsBridgeError, RuntimeError):
    """Converting a series to NIfTI failed."""


class Dcm2niixError(ConversionError):
    """dcm2niix failed or produced nothing; carries its own output."""

    def __init__(self, series_dir: Path, returncode: int, output: str) -> None:
        self.series_dir = series_dir
        self.returncode = returncode
        self.output = output
        tail = "\n".join(line for line in output.strip().splitlines()[-8:])
        super().__init__(f"dcm2niix exited with code {returncode} converting {series_dir}: {tail or '(no output)'}")


class LabelError(BidsBridgeError, ValueError):
    """A subject/session/entity label is empty or unusable after sanitizing."""


class DatasetError(BidsBridgeError, OSError):
    """The BIDS dataset cannot be written (permissions, corrupt bookkeeping, ...)."""
