"""The job contract: what each kind of job carries in (its parameters) and gives back (its
result), typed, with the one JSON form the queue stores and ``GET /bidsbridge/jobs`` shows.

Kinds (:data:`JobKind`) and their records:

==========  =====================  =================================================================
kind        parameters             result
==========  =====================  =================================================================
convert     :class:`ConvertJob`    :class:`ConvertResult` (or :class:`ReverseResult` for a SEG /
                                   Parametric Map from another tool; :class:`UnchangedResult`
                                   when an early conversion made it from the same instances)
segment     :class:`SegmentJob`    :class:`SegmentResult`
push        :class:`PushJob`       :class:`PushResult`
==========  =====================  =================================================================

A handler (:mod:`orthanc_plugin.handlers`) turns a claimed :class:`Job` into an :class:`Outcome`
(finished: ``done`` or ``skipped``) or a :class:`Deferred` (put back to wait, no attempt spent);
a failure is an exception of the error tree (:mod:`converters.errors`), retried when
``retryable``. To add a kind: a parameters class here (in :data:`PARAMETERS`), a result class, a
handler in :data:`orthanc_plugin.handlers.HANDLERS`.

Parameters are read back with dacite (a maintained dataclass builder) from the stored JSON;
results are written once and read back only where the REST routes need them
(:meth:`ConvertResult.from_json`). Standard library, dacite and light converter records only:
this module is also imported inside Orthanc.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import dacite

from converters.records import SeriesResult

from .derivations import DERIVATIONS, DerivationName
from .rules.plan import Decision

if TYPE_CHECKING:
    from xnat_container.push import PushReport

__all__ = [
    "DERIVATIONS",
    "JOB_STATES",
    "PARAMETERS",
    "TERMINAL_STATES",
    "Attempt",
    "ConvertJob",
    "ConvertResult",
    "DatasetConversion",
    "Deferred",
    "DerivationName",
    "DerivationRecord",
    "ForwardRecord",
    "Job",
    "JobKind",
    "JobParams",
    "JobResult",
    "JobState",
    "Outcome",
    "PushJob",
    "PushResult",
    "ReverseResult",
    "SegmentJob",
    "SegmentResult",
    "SegmentationType",
    "StageOutcome",
    "UnchangedResult",
    "params_from_json",
    "params_to_json",
]

JobKind = Literal["convert", "segment", "push"]
JobState = Literal["queued", "running", "done", "skipped", "failed"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
TERMINAL_STATES: frozenset[JobState] = frozenset({"done", "skipped", "failed"})
SegmentationType = Literal["BINARY", "LABELMAP"]

_DACITE = dacite.Config(cast=[tuple])  # extra keys (queues of older versions) are ignored


# -- parameters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertJob:
    """Convert a series (rules, conversion, derivations, forwards, pushes)."""

    kind: ClassVar[JobKind] = "convert"
    #: Derivations asked for by hand, on top of what the rules ask.
    derive: tuple[DerivationName, ...] = ()


@dataclass(frozen=True)
class SegmentJob:
    """Encode a user's NIfTI label map of the series as a DICOM SEG."""

    kind: ClassVar[JobKind] = "segment"
    #: The uploaded label map and its label table (paths in the plugin's uploads folder).
    labelmap: str
    labels: str | None = None
    segmentation_type: SegmentationType = "BINARY"
    desc: str = "user"


@dataclass(frozen=True)
class PushJob:
    """Deliver a converted series (and its derived DICOM objects) to an XNAT project."""

    kind: ClassVar[JobKind] = "push"
    server: str
    project: str
    #: XNAT subject/session labels from the rule ("" -> the destination's label templates).
    subject: str
    session: str
    dataset_root: str
    #: The SeriesInstanceUID the series is filed under in the dataset (its manifest).
    series_uid: str
    bids_subject: str
    bids_session: str | None
    outputs: tuple[str, ...]
    #: Orthanc ids of the derived DICOM instances to deliver with it.
    derived_instances: tuple[str, ...] = ()


JobParams = ConvertJob | SegmentJob | PushJob
PARAMETERS: Mapping[JobKind, type[ConvertJob] | type[SegmentJob] | type[PushJob]] = {
    "convert": ConvertJob,
    "segment": SegmentJob,
    "push": PushJob,
}


def params_to_json(params: JobParams) -> dict[str, Any]:
    """The stored form of a job's parameters."""
    return asdict(params)


def params_from_json(kind: JobKind, data: Mapping[str, Any]) -> JobParams:
    """A job's parameters from their stored form; raises ``dacite.DaciteError`` if malformed."""
    return dacite.from_dict(PARAMETERS[kind], dict(data), config=_DACITE)


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageOutcome:
    """What a derivation stage made: files in the dataset and DICOM instances stored in Orthanc."""

    #: Files written into the BIDS dataset (relative to its root).
    outputs: tuple[str, ...] = ()
    #: Orthanc instance ids of the DICOM objects stored.
    orthanc_instances: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: QC pictures of the images written (``segment`` jobs, SEGs from other tools; a conversion's
    #: derivations list theirs in :attr:`ConvertResult.qc`).
    qc: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DerivationRecord:
    """One derivation of a conversion job: what it made, or why it could not be made."""

    made: StageOutcome | None = None
    #: Why the derivation does not apply to this series (the conversion stands).
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error} if self.made is None else self.made.to_json()


@dataclass(frozen=True)
class ForwardRecord:
    """A forward to an Orthanc modality or peer, run as an Orthanc job."""

    kind: str
    target: str
    orthanc_job: str
    state: str


@dataclass(frozen=True)
class DatasetConversion:
    """The conversion of the series into one dataset the rules named."""

    dataset_root: str
    series: SeriesResult

    def to_json(self) -> dict[str, Any]:
        return {**self.series.to_dict(), "dataset_root": self.dataset_root}


def _series_from_json(record: Mapping[str, Any]) -> SeriesResult:
    fields = {name: record[name] for name in SeriesResult.__dataclass_fields__ if name in record}
    return dacite.from_dict(SeriesResult, fields, config=dacite.Config(cast=[tuple]))


@dataclass(frozen=True)
class ConvertResult:
    """What a ``convert`` job did. ``series`` is the job's own series' report (the same record as
    ``bidsbridge convert --report`` writes), taken from the first dataset converted into."""

    series: SeriesResult
    decision: Decision | None = None
    #: By dataset name, in the order the rules named them.
    conversions: Mapping[str, DatasetConversion] = field(default_factory=dict)
    derived: Mapping[str, DerivationRecord] = field(default_factory=dict)
    forwards: tuple[ForwardRecord, ...] = ()
    #: Ids of the ``push`` jobs queued after the conversion.
    push_jobs: tuple[int, ...] = ()
    #: E.g. "already converted from these instances (by another part's job)".
    note: str | None = None
    #: Digest of the Orthanc instances converted (:func:`.completeness_stage.instances_digest`).
    instances_digest: str | None = None
    #: QC pictures of the converted images and of the derivations' images: paths relative to
    #: :attr:`dataset_root`, each a PNG under ``derivatives/bidsbridge-qc/`` (:mod:`converters.qc`).
    qc: tuple[str, ...] = ()
    #: Why a picture is missing (QC never fails a conversion).
    qc_problems: tuple[str, ...] = ()

    @property
    def dataset_root(self) -> str | None:
        first = next(iter(self.conversions.values()), None)
        return None if first is None else first.dataset_root

    @property
    def filed_as(self) -> str:
        """The SeriesInstanceUID whose manifest holds the series' files (its acquisition's, for
        one part of an acquisition spread over several series)."""
        return self.series.acquisition or self.series.series_uid

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if self.decision is not None:
            record["decision"] = self.decision.to_dict()
        if self.forwards:
            record["forwards"] = [asdict(forward) for forward in self.forwards]
        if self.conversions:
            record["conversion"] = {name: conversion.to_json() for name, conversion in self.conversions.items()}
        if self.derived:
            record["derived"] = {name: derivation.to_json() for name, derivation in self.derived.items()}
        if self.push_jobs:
            record["push_jobs"] = list(self.push_jobs)
        record.update(self.series.to_dict())
        if self.dataset_root is not None:
            record["dataset_root"] = self.dataset_root
        if self.note is not None:
            record["note"] = self.note
        if self.instances_digest is not None:
            record["instances_digest"] = self.instances_digest
        record["qc"] = list(self.qc)
        if self.qc_problems:
            record["qc_problems"] = list(self.qc_problems)
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ConvertResult:
        """Read a stored result back; raises ``ValueError`` (or a dacite error) if malformed."""
        decision = Decision.from_dict(record["decision"]) if record.get("decision") else None
        conversions = {
            name: DatasetConversion(str(item["dataset_root"]), _series_from_json(item))
            for name, item in (record.get("conversion") or {}).items()
        }
        digest = record.get("instances_digest")
        return cls(series=_series_from_json(record), decision=decision, conversions=conversions,
                   note=record.get("note"), instances_digest=None if digest is None else str(digest),
                   qc=tuple(str(p) for p in record.get("qc") or ()),
                   qc_problems=tuple(str(p) for p in record.get("qc_problems") or ()))


@dataclass(frozen=True)
class ReverseResult:
    """A SEG or Parametric Map from another tool converted into the derivatives."""

    series_uid: str
    series_description: str
    made: StageOutcome | None

    def to_json(self) -> dict[str, Any]:
        outputs = list(self.made.outputs) if self.made else []
        return {
            "reverse": None if self.made is None else self.made.to_json(),
            "series_uid": self.series_uid,
            "series_description": self.series_description,
            "state": "converted" if outputs else "skipped",
            "outputs": outputs,
        }


@dataclass(frozen=True)
class SegmentResult:
    segmentation: StageOutcome

    def to_json(self) -> dict[str, Any]:
        return {"segmentation": self.segmentation.to_json()}


@dataclass(frozen=True)
class PushResult:
    push: PushReport

    def to_json(self) -> dict[str, Any]:
        return {"push": self.push.to_dict()}


@dataclass(frozen=True)
class UnchangedResult:
    """A conversion with nothing to do: an earlier job converted the very same instances. Its
    stored result is repeated (what the routes read: files, derivations), with ``note``."""

    earlier: Mapping[str, Any]
    note: str

    def to_json(self) -> dict[str, Any]:
        return {**self.earlier, "note": self.note}


JobResult = ConvertResult | ReverseResult | SegmentResult | PushResult | UnchangedResult


@dataclass(frozen=True)
class Outcome:
    """A job finished: ``done`` (it made something) or ``skipped`` (with ``reason``)."""

    state: Literal["done", "skipped"]
    result: JobResult | None = None
    outputs: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class Deferred:
    """The job waits for something outside it (e.g. the other series of its acquisition): it is
    put back for ``seconds`` without spending an attempt; ``waiting_since`` bounds the wait."""

    seconds: float
    note: str
    waiting_since: float
    acquisition: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"waiting_since": self.waiting_since, "acquisition": self.acquisition}


# -- the job record -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One failed attempt of a job, as its history keeps it."""

    attempt: int
    #: When it ended (epoch seconds).
    at: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "at": _iso(self.at), "reason": self.reason}


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1000):03d}Z"


@dataclass(frozen=True)
class Job:
    """One job as the queue holds it. ``result`` is the stored JSON of its result (the REST form;
    :meth:`convert_result` reads a conversion's back), or of its wait while deferred."""

    id: int
    series: str
    kind: JobKind
    trigger: str
    state: JobState
    attempts: int
    max_attempts: int
    error: str | None
    outputs: tuple[str, ...]
    result: Mapping[str, Any] | None
    params: JobParams
    worker_pid: int | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    #: Until when the claiming worker holds the job (renewed by its heartbeat).
    lease_until: float | None = None
    #: Every failed attempt with its reason, oldest first (not only the last one in ``error``).
    history: tuple[Attempt, ...] = ()

    @property
    def waiting_since(self) -> float | None:
        """When a deferred job started waiting (kept across its deferrals)."""
        value = (self.result or {}).get("waiting_since") if self.state != "done" else None
        return float(value) if isinstance(value, int | float) else None

    def convert_result(self) -> ConvertResult | None:
        """The typed result of a finished conversion, or None (another kind, a SEG from elsewhere,
        no result)."""
        if self.kind != "convert" or not self.result or "reverse" in self.result or "series_uid" not in self.result:
            return None
        return ConvertResult.from_json(self.result)

    def to_dict(self) -> dict[str, Any]:
        """The REST form (``GET /bidsbridge/jobs``)."""
        return {
            "id": self.id,
            "series": self.series,
            "kind": self.kind,
            "trigger": self.trigger,
            "state": self.state,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "error": self.error,
            "outputs": list(self.outputs),
            "result": None if self.result is None else dict(self.result),
            "params": params_to_json(self.params),
            "worker_pid": self.worker_pid,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "history": [attempt.to_json() for attempt in self.history],
        }
