"""One handler per job kind: a claimed :class:`~orthanc_plugin.jobs.Job` in, an
:class:`~orthanc_plugin.jobs.Outcome` or :class:`~orthanc_plugin.jobs.Deferred` out.

Handler contract (the worker, :mod:`orthanc_plugin.worker`, is the only caller):

* a handler gets a :class:`JobContext` (the job, the queue, an Orthanc API, the worker's
  settings and rules, a private scratch folder, and an exit stack for locks held until the job
  is recorded) and returns what happened;
* it raises only errors of the project's error tree for failures it knows
  (:mod:`converters.errors`): the worker retries those that are ``retryable`` and fails the job
  at once otherwise; any other exception is a bug, retried like a retryable error and logged;
* it never touches the job's state itself (the worker records the outcome) — except queueing
  follow-up jobs (a conversion queues its ``push`` jobs).

``convert`` stages, in order: :mod:`.completeness_stage` (an ``early`` job waits until its
series is complete or stable), :mod:`.routing_stage` (rules), :mod:`.acquisition_stage` (wait
for the other series of an acquisition exported as several series), forwards, conversion into
each dataset the rules name (:mod:`converters`), derivations (:mod:`.derive_stage`), QC pictures
(:mod:`converters.qc`; never failing the job: what is missing is said in its result), pushes.
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from converters import convert_series, converted_sources, series_outputs
from converters.errors import BidsBridgeError, ConversionError
from converters.qc import QcOutcome, series_pictures
from converters.qc.write import write_derived_qc, write_series_qc  # matplotlib loads with the worker, not in a job
from converters.records import SeriesResult, SkipCode

from .acquisition_stage import Acquisition, find_acquisition
from .completeness_stage import EARLY_POLL_SECONDS, instances_digest, look, unchanged_since_last
from .derivations import DERIVATION_NAMES, DerivationName
from .derive_stage import FOREIGN_DERIVED_CLASSES, derive, reverse_convert, segment, sop_class_of
from .job_queue import JobQueue
from .jobs import (
    ConvertJob,
    ConvertResult,
    DatasetConversion,
    Deferred,
    DerivationRecord,
    Job,
    JobKind,
    Outcome,
    PushJob,
    PushResult,
    ReverseResult,
    SegmentJob,
    SegmentResult,
    StageOutcome,
    UnchangedResult,
)
from .push_stage import push
from .rest_client import OrthancApi
from .routing_stage import RoutingError, RulesSnapshot, SeriesInfo, decide, fetch_series_info, forward
from .rules import Decision, PlannedConvert
from .worker_settings import WorkerSettings

__all__ = ["ACQUISITION_POLL_SECONDS", "ACQUISITION_WAIT_SECONDS", "HANDLERS", "Handler", "JobContext"]

logger = logging.getLogger(__name__)

#: Seconds between two looks at an acquisition's other series while one is not stable yet.
ACQUISITION_POLL_SECONDS = 2.0
#: Longest wait for them (seconds); then the parts present are converted.
ACQUISITION_WAIT_SECONDS = 1800.0

_P = TypeVar("_P", ConvertJob, SegmentJob, PushJob)


@dataclass
class JobContext:
    """What a handler works with (see the module's contract)."""

    job: Job
    queue: JobQueue
    client: OrthancApi
    settings: WorkerSettings
    rules: RulesSnapshot
    scratch: Path
    stack: ExitStack

    def params(self, kind: type[_P]) -> _P:
        if not isinstance(self.job.params, kind):
            raise TypeError(f"job {self.job.id} is a {self.job.kind} job, not {kind.kind}")
        return self.job.params

    @property
    def dicom_dir(self) -> Path:
        return self.scratch / "dicom"

    @property
    def first_dir(self) -> Path:
        """Where first instances fetched for their tags are kept (then moved into :attr:`dicom_dir`)."""
        return self.scratch / "first"

    def fetched(self) -> dict[str, Path]:
        """The instance files in :attr:`first_dir`, by Orthanc id (``download_series(have=)``)."""
        return {path.stem: path for path in self.first_dir.glob("*.dcm")}

    def datasets(self) -> dict[str, Path]:
        roots = self.settings.datasets or {"default": self.settings.bids_root}
        return {name: Path(root) for name, root in roots.items()}


Handler = Callable[[JobContext], Outcome | Deferred]


# -- convert --------------------------------------------------------------------------------------


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _own_series(decision: Decision, *, reason: str | None = None, reason_code: SkipCode | None = None,
                outputs: tuple[str, ...] = (), acquisition: Acquisition | None = None) -> SeriesResult:
    """The job's series as the rules saw it: skipped (with the rules' reason), or converted with
    the rest of its ``acquisition`` (into ``outputs``)."""
    return SeriesResult(
        series_uid=decision.series_uid,
        series_description=decision.series_description,
        state="skipped" if acquisition is None else "converted",
        reason=reason,
        outputs=outputs,
        series_number=_number(decision.series_number),
        reason_code=reason_code,
        acquisition=None if acquisition is None else acquisition.uid,
        members=() if acquisition is None else tuple(member.series_uid for member in acquisition.members),
    )


def _reverse(ctx: JobContext, info: SeriesInfo) -> Outcome:
    """A SEG or Parametric Map from another tool: NIfTI into the derivatives of its source."""
    files = ctx.client.download_series(ctx.job.series, ctx.dicom_dir, have=ctx.fetched())
    made = reverse_convert(files, Path(ctx.settings.bids_root), wait_for_source=ctx.job.attempts < ctx.job.max_attempts)
    if made is not None and made.outputs:
        made = _with_qc(Path(ctx.settings.bids_root), made)
    result = ReverseResult(str(info.tags.get("SeriesInstanceUID", "")), str(info.tags.get("SeriesDescription", "")),
                           made)
    if made is None or not made.outputs:
        return Outcome("skipped", result, reason="; ".join(made.notes if made else ()) or "nothing to convert")
    return Outcome("done", result, made.outputs)


def _hold(state_dir: Path, name: str, stack: ExitStack) -> bool:
    """Take the worker-wide lock ``name`` until ``stack`` closes; False when another worker holds it."""
    folder = state_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / name).open("a+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    stack.callback(handle.close)  # closing the file releases the lock
    return True


def _await_acquisition(ctx: JobContext, info: SeriesInfo) -> Acquisition | Deferred | None:
    """For a series that is one part of an acquisition exported as several series: the
    acquisition once every part is stable and no other part's job converts it (its lock is then
    held until the job is recorded), else a :class:`Deferred`; None for any other series."""
    found = (find_acquisition(ctx.client, ctx.job.series, info.tags, info.study_id, ctx.first_dir)
             if info.study_id else None)
    if found is None or len(found.members) < 2:
        return None
    since = ctx.job.waiting_since or time.time()
    if found.unstable and time.time() - since < ACQUISITION_WAIT_SECONDS:
        waiting = ", ".join(str(m.series_number) for m in found.unstable)
        return Deferred(ACQUISITION_POLL_SECONDS, f"part of an {found.describe()}: waiting for series {waiting} to "
                        "become stable", since, found.uid)
    if not _hold(Path(ctx.settings.state_dir), f"acquisition-{found.uid}", ctx.stack):
        return Deferred(ACQUISITION_POLL_SECONDS, f"part of an {found.describe()}: another part's job is "
                        "converting it", since, found.uid)
    return found


def _convert_into(ctx: JobContext, decision: Decision) -> dict[str, DatasetConversion]:
    """Convert the downloaded series into every dataset the rules name."""
    roots = ctx.datasets()
    conversions: dict[str, DatasetConversion] = {}
    for plan in decision.converts:
        root = roots[plan.dataset]
        result = _convert_one(ctx, root, plan)
        if result.state == "failed":
            raise ConversionError(result.reason or f"the conversion of series {ctx.job.series} failed")
        conversions[plan.dataset] = DatasetConversion(str(root), result)
    return conversions


def _in_orthanc_terms(text: str, dicom_dir: Path, series: str) -> str:
    """``text`` naming Orthanc's instances and series instead of the job's scratch copies
    (``<scratch>/dicom/[<series>/]<instance>.dcm``, deleted when the job ends)."""
    copies = re.compile(re.escape(str(dicom_dir)) + r"/(?:[0-9a-f-]{44}/)?([0-9a-f-]{44})\.dcm")
    text = copies.sub(lambda found: f"Orthanc instance {found.group(1)}", text)
    return text.replace(str(dicom_dir), f"Orthanc series {series}")


def _convert_one(ctx: JobContext, root: Path, plan: PlannedConvert) -> SeriesResult:
    """One conversion; its messages (and errors) in Orthanc's terms."""
    def plain(text: str) -> str:
        return _in_orthanc_terms(text, ctx.dicom_dir, ctx.job.series)

    try:
        result = convert_series(ctx.dicom_dir, root, subject=plan.subject or ctx.settings.subject,
                                session=plan.session or ctx.settings.session,
                                overrides=[plan.override] if plan.override is not None else ())
    except BidsBridgeError as exc:
        message = plain(str(exc))
        if message == str(exc):
            raise
        raise exc.restated(message) from exc
    return replace(result, reason=None if result.reason is None else plain(result.reason),
                   notes=tuple(plain(note) for note in result.notes))


def _derivations(decision: Decision, params: ConvertJob) -> list[DerivationName]:
    names = {DERIVATION_NAMES[n][0] for d in decision.derives for n in d.names if n in DERIVATION_NAMES}
    return sorted(names | set(params.derive))


def _derive_all(ctx: JobContext, names: list[DerivationName], into: DatasetConversion) -> dict[str, DerivationRecord]:
    """Each derivation; one that does not apply to the series is recorded, the conversion stands."""
    derived: dict[str, DerivationRecord] = {}
    for name in names:
        try:
            made = derive(name, ctx.dicom_dir, Path(into.dataset_root), into.series.series_uid, ctx.client)
        except BidsBridgeError as exc:
            if exc.retryable:
                raise
            derived[name] = DerivationRecord(error=str(exc))
            continue
        derived[name] = DerivationRecord(made)
    return derived


def _queue_pushes(ctx: JobContext, decision: Decision, into: DatasetConversion,
                  derived: Mapping[str, DerivationRecord]) -> tuple[int, ...]:
    instances = tuple(i for record in derived.values() if record.made for i in record.made.orthanc_instances)
    series = into.series
    return tuple(
        ctx.queue.enqueue(
            ctx.job.series, "rule",
            PushJob(server=target.server, project=target.project, subject=target.subject, session=target.session,
                    dataset_root=into.dataset_root, series_uid=series.series_uid, bids_subject=series.subject or "",
                    bids_session=series.session, outputs=series.outputs, derived_instances=instances),
            max_attempts=ctx.settings.push_attempts,
        )
        for target in decision.pushes
    )


def _with_qc(root: Path, made: StageOutcome) -> StageOutcome:
    """A derivation's outcome with the QC pictures of its images (why any is missing in its notes)."""
    try:
        drawn = write_derived_qc(root, made.outputs)
    except Exception as exc:  # QC never fails the job
        if not isinstance(exc, BidsBridgeError):
            logger.exception("unexpected error drawing the QC pictures in %s", root)
        return replace(made, notes=(*made.notes, f"no QC pictures: {exc}"))
    return replace(made, qc=drawn.files, notes=(*made.notes, *drawn.problems))


def _draw_qc(conversions: Mapping[str, DatasetConversion],
             derived: Mapping[str, DerivationRecord]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """QC pictures of the images converted into every dataset and of the derivations (made in the
    first); (the pictures of the first dataset, the job's ``dataset_root``; why any is missing).
    Never raises: a conversion stands without its pictures."""
    pictures: tuple[str, ...] = ()
    problems: list[str] = []
    for index, conversion in enumerate(conversions.values()):
        root = Path(conversion.dataset_root)
        made = QcOutcome()
        try:
            if conversion.series.state == "converted":
                made = write_series_qc(root, conversion.series.acquisition or conversion.series.series_uid)
            if index == 0:
                made = made + write_derived_qc(root, [o for r in derived.values() if r.made for o in r.made.outputs])
        except Exception as exc:  # QC never fails a conversion: say why the pictures are missing
            if not isinstance(exc, BidsBridgeError):
                logger.exception("unexpected error drawing the QC pictures in %s", root)
            problems.append(f"no QC pictures in {root}: {exc}")
            continue
        problems += made.problems
        if index == 0:
            pictures = made.files
    return pictures, tuple(problems)


def _finish_conversion(ctx: JobContext, decision: Decision, conversions: dict[str, DatasetConversion],
                       record: ConvertResult) -> Outcome:
    """Derivations, QC pictures and pushes after the conversion, and the job's outcome."""
    first = next(iter(conversions.values()))
    derived = _derive_all(ctx, _derivations(decision, ctx.params(ConvertJob)), first)
    qc, qc_problems = _draw_qc(conversions, derived)
    pushes = _queue_pushes(ctx, decision, first, derived) if first.series.state == "converted" else ()
    series = replace(first.series, qc=qc)
    if series.acquisition is not None:  # this job's own series, filed with the rest of its acquisition
        series = replace(series, series_uid=decision.series_uid, series_number=_number(decision.series_number))
    result = replace(record, series=series, conversions=conversions, derived=derived, push_jobs=pushes, qc=qc,
                     qc_problems=qc_problems)
    outputs = (*first.series.outputs, *(o for r in derived.values() if r.made for o in r.made.outputs))
    problems = [f"derivation {name!r} not made: {r.error}" for name, r in derived.items() if r.error]
    made = series.state == "converted" or any(r.made for r in derived.values())
    why = None if made else series.reason
    return Outcome("done" if made else "skipped", result, tuple(outputs), "; ".join(problems) or why)


def _early_wait(ctx: JobContext) -> Deferred | None:
    """An ``early`` job waits until its series is complete by its headers, or stable."""
    if ctx.job.trigger != "early":
        return None
    state = look(ctx.client, ctx.job.series, ctx.first_dir)
    if state.ready:
        if state.complete:
            logger.info("series %s complete before StableAge: %s", ctx.job.series, state.describe())
        return None
    return Deferred(EARLY_POLL_SECONDS, f"early completion: {state.describe()}", ctx.job.waiting_since or time.time())


def _already_converted_early(ctx: JobContext, info: SeriesInfo) -> Outcome | None:
    """A stable job after a conversion made from these very instances has nothing to do."""
    previous = unchanged_since_last(ctx.queue, ctx.job, info.instances)
    if previous is None or previous.result is None:
        return None
    note = f"already converted from these {info.instance_count} instance(s) by job {previous.id}"
    return Outcome("done", UnchangedResult(previous.result, note), previous.outputs, previous.error)


def handle_convert(ctx: JobContext) -> Outcome | Deferred:
    """(Early completion,) rules, (waiting for the rest of an acquisition,) forwards,
    conversion, derivations, pushes."""
    waiting = _early_wait(ctx)
    if waiting is not None:
        return waiting
    info = fetch_series_info(ctx.client, ctx.job.series, ctx.first_dir)
    if info.instance_count == 0:
        return Outcome("skipped", reason=f"series {ctx.job.series} has no instances")
    done = _already_converted_early(ctx, info)
    if done is not None:
        return done
    if info.tags.get("SOPClassUID") in FOREIGN_DERIVED_CLASSES:
        return _reverse(ctx, info)
    decision = decide(ctx.rules, info)
    if decision.problems:
        raise RoutingError("the routing rules cannot be applied to this series: " + "; ".join(decision.problems))
    converts = decision.skip is None and bool(decision.converts)
    # Before anything is sent anywhere: a part of a multi-series acquisition may have to wait.
    acquisition = _await_acquisition(ctx, info) if converts else None
    if isinstance(acquisition, Deferred):
        return acquisition
    forwards = tuple(forward(ctx.client, ctx.job.series, f.kind, f.target) for f in decision.forwards)
    record = ConvertResult(series=_own_series(decision), decision=decision, forwards=forwards)
    if not converts:
        reason = decision.skip.reason if decision.skip is not None else "no conversion planned by the rules"
        series = _own_series(decision, reason=reason, reason_code="rule")
        return Outcome("done" if forwards else "skipped", replace(record, series=series), reason=reason)
    if acquisition is not None:
        roots = [ctx.datasets()[plan.dataset] for plan in decision.converts]
        if all(converted_sources(root, acquisition.uid) == acquisition.sources for root in roots):
            outputs = tuple(series_outputs(roots[0], acquisition.uid))
            qc = tuple(series_pictures(roots[0], acquisition.uid))
            series = replace(_own_series(decision, outputs=outputs, acquisition=acquisition), qc=qc)
            note = f"{acquisition.describe()} already converted from these instances (by another part's job)"
            return Outcome("done", replace(record, series=series, note=note, qc=qc), outputs)
        for member in acquisition.members:
            ctx.client.download_series(member.orthanc_id, ctx.dicom_dir / member.orthanc_id, have=ctx.fetched())
    else:
        paths = ctx.client.download_series(ctx.job.series, ctx.dicom_dir, have=ctx.fetched())
        record = replace(record, instances_digest=instances_digest(path.stem for path in paths))
    return _finish_conversion(ctx, decision, _convert_into(ctx, decision), record)


# -- segment and push -----------------------------------------------------------------------------


def handle_segment(ctx: JobContext) -> Outcome:
    """A user's label map of the series -> a DICOM SEG in Orthanc + the derivatives' dseg."""
    params = ctx.params(SegmentJob)
    ctx.client.download_series(ctx.job.series, ctx.dicom_dir)
    series_uid = sop_class_of(sorted(ctx.dicom_dir.iterdir()))[2]
    made = segment(Path(params.labelmap), Path(params.labels) if params.labels else None, ctx.dicom_dir,
                   Path(ctx.settings.bids_root), series_uid=series_uid, client=ctx.client,
                   segmentation_type=params.segmentation_type, desc=params.desc)
    return Outcome("done", SegmentResult(_with_qc(Path(ctx.settings.bids_root), made)), made.outputs)


def handle_push(ctx: JobContext) -> Outcome:
    """Deliver a converted series to XNAT (retried on its own, never redoing the conversion)."""
    params = ctx.params(PushJob)
    report = push(params, ctx.settings.destinations, ctx.client)
    return Outcome("done", PushResult(report), params.outputs)


#: The handler of each job kind (add a kind here, with its records in :mod:`orthanc_plugin.jobs`).
HANDLERS: Mapping[JobKind, Handler] = {
    "convert": handle_convert,
    "segment": handle_segment,
    "push": handle_push,
}

