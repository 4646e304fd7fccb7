"""The one error tree of bidsbridge: every error the product raises on purpose derives from
:class:`BidsBridgeError` (the plugin's and the XNAT delivery's errors too).

Every message says what failed, where (a path or a series), and what to do about it. Each class
subclasses the built-in that fits so callers may catch either. :attr:`BidsBridgeError.retryable`
says whether doing the same work again later may succeed: the plugin's job queue retries a job
that failed with a retryable error (with backoff) and fails it at once otherwise.

=========================  =========  ====================================================
class                      retryable  what
=========================  =========  ====================================================
DicomInputError            no         the DICOM input is unusable (damaged, not one series)
UnreadableDataError        no         dcm2niix cannot decode the data
LabelError                 no         a label cannot be made (e.g. a patient missing from a
                                      subject map)
ConversionError            yes        dcm2niix or the environment failed
Dcm2niixError              yes        dcm2niix exited with an environment error
DatasetError               yes        the dataset cannot be written (disk, permissions)
QcError                    no         a QC picture cannot be drawn of an image (never fails
                                      a conversion: it is recorded)
=========================  =========  ====================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

__all__ = [
    "BidsBridgeError",
    "ConversionError",
    "DatasetError",
    "Dcm2niixError",
    "DicomInputError",
    "LabelError",
    "QcError",
    "UnreadableDataError",
]


class BidsBridgeError(Exception):
    """Base class of every error bidsbridge raises on purpose."""

    #: True when trying the same work again later may succeed (a server down, a full disk);
    #: False when only a change of input or configuration helps.
    retryable: bool = False

    def restated(self, message: str) -> Self:
        """This error (same class, attributes and ``retryable``) saying ``message`` instead; for
        callers that put a message in their own terms. Subclasses' constructors differ, so the
        twin is made without calling one."""
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.args = (message,)
        twin.__cause__ = self
        return twin


class DicomInputError(BidsBridgeError, ValueError):
    """The DICOM input cannot be used: unreadable, truncated, or not one series."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        self.path = None if path is None else Path(path)
        where = f" ({self.path})" if self.path is not None else ""
        super().__init__(f"{message}{where}")


class UnreadableDataError(DicomInputError):
    """dcm2niix cannot make an image of the series' data: no DICOM it understands, corrupt or
    undecodable pixel data. Retrying will not help. ``details`` holds dcm2niix's own lines saying why
    (its ``Error:``/``Warning:`` lines, else the last lines it printed); when dcm2niix exited as if it
    had succeeded, they end with bidsbridge's note that it wrote no (usable) image."""

    def __init__(self, series_dir: Path, returncode: int, details: tuple[str, ...]) -> None:
        super().__init__(
            f"dcm2niix could not read the image data of {series_dir} (exit {returncode}): "
            f"{'; '.join(details) or '(no output)'}"
        )
        self.path = Path(series_dir)  # set after the message, which already names it
        self.series_dir = Path(series_dir)
        self.returncode = returncode
        self.details = details


class ConversionError(BidsBridgeError, RuntimeError):
    """Converting a series to NIfTI failed."""

    retryable = True


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
    """The BIDS dataset cannot be written (permissions, a full disk, corrupt bookkeeping, ...)."""

    retryable = True


class QcError(BidsBridgeError, ValueError):
    """A QC picture cannot be drawn of an image (no usable orientation, no voxels, an unknown
    source). The conversion stands; the reason is recorded with its result."""
