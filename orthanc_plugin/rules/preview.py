"""Dry-run preview of the BIDS path a planned ``convert`` would give, from headers alone.

Uses the converter's own classifier (:func:`converters.classify.screen` and
:func:`converters.classify.classify` with the rule's override) on a header-only description of
the series. dcm2niix has not run, so the preview is a hint: the classifier may need its output
(b-values, BidsGuess, echoes), and dcm2niix may split a series into several images. The exact
file names are decided at conversion. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from converters import sanitize_label
from converters.bids.naming import relative_path
from converters.classify import SeriesFacts as ClassifierFacts
from converters.classify import classify, screen
from converters.errors import BidsBridgeError
from converters.records import BidsTarget, DicomSeries

from .model import SeriesFacts
from .plan import PlannedConvert

__all__ = ["BidsPreview", "preview_convert"]

_LATER = "the exact file name is decided at conversion"


@dataclass(frozen=True)
class BidsPreview:
    """Where the series would probably go (``path`` relative to the dataset root) and how sure that is."""

    path: str | None
    note: str


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _series(facts: SeriesFacts) -> DicomSeries:
    a = facts.attributes
    return DicomSeries(
        series_uid=facts.series_uid,
        study_uid=a.get("StudyInstanceUID", ""),
        patient_id=a.get("PatientID", ""),
        series_number=_int(a.get("SeriesNumber")),
        series_description=a.get("SeriesDescription", ""),
        protocol_name=a.get("ProtocolName", ""),
        modality=a.get("Modality", ""),
        sop_class_uid=a.get("SOPClassUID", ""),
        study_date=a.get("StudyDate", ""),
        study_time=a.get("StudyTime", ""),
        acquisition_time="",
        image_type=tuple(v.strip().upper() for v in a.get("ImageType", "").split("\\") if v.strip()),
        has_pixels="Rows" in a,
        files=(),
    )


def preview_convert(facts: SeriesFacts, planned: PlannedConvert) -> BidsPreview:
    """Header-only BIDS preview of one planned conversion; never raises."""
    try:
        series = _series(facts)
        skip = screen(series)
        if skip is not None:
            return BidsPreview(None, f"the converter will skip it: {skip.reason}")
        overrides = [planned.override] if planned.override is not None else []
        decision = classify(ClassifierFacts(series), overrides=overrides)
        if not isinstance(decision, BidsTarget):
            return BidsPreview(None, f"decided at conversion (from headers alone the classifier says: "
                                     f"{decision.reason})")
        subject = planned.subject or sanitize_label(series.patient_id)
        session = planned.session or (sanitize_label(series.study_date) if series.study_date else None)
        path = relative_path(subject, session, decision, ".nii.gz")
        return BidsPreview(path, f"classifier rule {decision.rule or '?'} from headers; {_LATER}")
    except BidsBridgeError as exc:
        return BidsPreview(None, f"decided at conversion ({exc})")
    except Exception as exc:
        return BidsPreview(None, f"no preview ({type(exc).__name__}: {exc}); {_LATER}")
