"""Typed records passed between the pipeline stages (discover -> convert -> classify -> publish)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["ConvertedImage", "SeriesResult", "SeriesState"]

SeriesState = Literal["converted", "skipped", "failed"]


@dataclass(frozen=True)
class ConvertedImage:
    """One NIfTI image dcm2niix wrote for a series (a series may yield several)."""

    nifti: Path
    sidecar: Path
    bval: Path | None
    bvec: Path | None
    #: The parsed JSON sidecar.
    metadata: dict[str, Any] = field(hash=False, compare=False)
    #: dcm2niix's file-name postfix, e.g. "" or "_e2" or "_e2_ph".
    postfix: str = ""


@dataclass(frozen=True)
class SeriesResult:
    """What happened to one input series. The plugin stores this record in its job."""

    series_uid: str
    series_description: str
    state: SeriesState
    reason: str | None = None
    #: Files written, relative to the dataset root, sorted.
    outputs: tuple[str, ...] = ()
    subject: str | None = None
    session: str | None = None
    series_number: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid,
            "series_description": self.series_description,
            "series_number": self.series_number,
            "state": self.state,
            "reason": self.reason,
            "outputs": list(self.outputs),
            "subject": self.subject,
            "session": self.session,
        }
