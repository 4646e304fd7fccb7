"""The pipeline, top to bottom: discover -> regroup -> dcm2niix -> split -> classify -> publish,
for one series or acquisition (:func:`convert_series`, what the Orthanc worker calls) or a whole
folder (:func:`convert_tree`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from converters.asl import read_asl_headers
from converters.bids.dataset import dump_json, participant_facts, sidecar
from converters.bids.manifests import (
    dataset_secret,
    discard_staging,
    make_staging_dir,
    manifest_path,
    read_manifest,
)
from converters.bids.publish import PublishRequest, StagedImage, publish
from converters.bids.tables import ensure_dataset
from converters.bids.timing import bold_timing, rewrite_header
from converters.classify import DEFAULT_RULES, Override, Rule, SeriesFacts, classify, place, screen
from converters.conversion import dcm2niix_version, run_dcm2niix
from converters.discover import discover
from converters.errors import BidsBridgeError, DatasetError, DicomInputError, LabelError, UnreadableDataError
from converters.labels import Labels, SubjectLabel, usable_label
from converters.qc.dataset import series_pictures
from converters.records import (
    BidsTarget,
    ConvertedImage,
    DicomSeries,
    Inventory,
    Placement,
    SeriesResult,
    Skip,
    UnusableFile,
)
from converters.regroup import regroup, sources_digest
from converters.split import ImageSet, deduplicate, partition

__all__ = ["ConvertProgress", "convert_series", "convert_tree"]

logger = logging.getLogger(__name__)

#: (datatype, suffix) pairs whose files include .bval/.bvec.
_WITH_GRADIENTS = frozenset({("dwi", "dwi"), ("fmap", "epi")})


def _dataset_root(dataset_root: Path) -> Path:
    root = Path(dataset_root).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create the BIDS dataset folder {root}: {exc}") from exc
    ensure_dataset(root, dcm2niix_version())
    return root


def _name(series: DicomSeries) -> str:
    number = "?" if series.series_number is None else str(series.series_number)
    return f"series {number} {series.series_description!r} ({series.series_uid})"


def _subject(series: DicomSeries, subject: str | None, labels: Labels, root: Path) -> SubjectLabel:
    """The series' subject label (never refused for a missing PatientID; see
    :meth:`Labels.resolve_subject`); a patient missing from a subject map is refused."""
    try:
        return labels.resolve_subject(series, given=subject, secret=lambda: dataset_secret(root))
    except LabelError as exc:
        raise DicomInputError(f"{_name(series)}: {exc}") from exc


#: Files named per reason in a message about damaged files (the rest are counted).
_NAMED_FILES = 3


def _describe_damage(problems: Sequence[UnusableFile]) -> str:
    """``path: reason`` per damaged file; files with one reason together (the first few named, the
    rest counted), so that a series of 500 files missing one attribute gives one short line."""
    by_reason: dict[str, list[Path]] = {}
    for problem in problems:
        by_reason.setdefault(problem.reason, []).append(problem.path)
    listed = []
    for reason, paths in by_reason.items():
        if len(paths) == 1:
            listed.append(f"{paths[0]}: {reason}")
            continue
        named = ", ".join(str(path) for path in paths[:_NAMED_FILES])
        more = f" and {len(paths) - _NAMED_FILES} more" if len(paths) > _NAMED_FILES else ""
        listed.append(f"{len(paths)} files ({named}{more}): {reason}")
    return "; ".join(listed)


def _damage_message(series: DicomSeries) -> str:
    return f"{_name(series)} has damaged files: {_describe_damage(series.problems)}"


def _bold_file(staging: Path, index: int, image: ConvertedImage) -> tuple[Path, dict[str, Any]]:
    """The NIfTI file to publish for a ``bold`` image and sidecar fields to add: 4D, with the
    header's TR equal to the sidecar's (see :mod:`converters.bids.timing`)."""
    change = bold_timing(image.nifti, image.metadata)
    extra = dict(change.sidecar or {})
    if not change.header_changes:
        return image.nifti, extra
    fixed = staging / f"{index}.nii.gz"
    rewrite_header(image.nifti, fixed, change)
    logger.info("%s: bold header made consistent with its sidecar (%s)", image.nifti.name, change)
    return fixed, extra


def _stage(staging: Path, placements: Sequence[Placement]) -> tuple[StagedImage, ...]:
    folder = staging / "publish"
    folder.mkdir()
    staged: list[StagedImage] = []
    for index, placement in enumerate(placements):
        image, target = placement.image, placement.target
        nifti = image.nifti
        if (target.datatype, target.suffix) == ("func", "bold"):
            nifti, extra = _bold_file(folder, index, image)
            if extra:
                target = replace(target, metadata={**extra, **target.metadata})
        sidecar_path = folder / f"{index}.json"
        sidecar_path.write_text(dump_json(sidecar(image.metadata, target)), encoding="utf-8")
        files = {".nii.gz": nifti, ".json": sidecar_path}
        for key, text in sorted(target.companions.items()):
            companion = folder / f"{index}{key}"
            companion.write_text(text, encoding="utf-8")
            files[key] = companion
        if (target.datatype, target.suffix) in _WITH_GRADIENTS and image.bval and image.bvec:
            files[".bval"] = image.bval
            files[".bvec"] = image.bvec
        elif image.bval or image.bvec:
            logger.info("%s: b-values left out, %s/%s does not take them", image.nifti, target.datatype, target.suffix)
        variant = (str(image.metadata.get("MRAcquisitionType", "")), str(image.metadata.get("SequenceName", "")))
        staged.append(
            StagedImage(
                files=files, target=target, echo_times=_echo_times(placement), variant=variant, unit=placement.unit
            )
        )
    return tuple(staged)


def _is_asl(series: DicomSeries, images: Sequence[ConvertedImage]) -> bool:
    """An ASL acquisition (not a map computed from one): worth reading its headers again."""
    types = set(series.image_type) | {str(t).upper() for i in images for t in i.metadata.get("ImageType", ())}
    return "ASL" in types and "DERIVED" not in types


def _echo_times(placement: Placement) -> tuple[float, ...]:
    """Echo times a GRE field-map image stems from (pairs magnitude and phase series)."""
    if placement.target.datatype != "fmap" or placement.target.suffix == "epi":
        return ()
    meta = placement.image.metadata
    keys = ("EchoTime1", "EchoTime2") if "EchoTime1" in meta else ("EchoTime",)
    return tuple(float(meta[key]) for key in keys if isinstance(meta.get(key), int | float))


@dataclass(frozen=True)
class _Decided:
    """What the classifier made of a series: the images to publish, or why none; and notes."""

    placements: tuple[Placement, ...]
    skip: Skip | None
    notes: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()


def _combined_skip(skips: Sequence[tuple[ImageSet, Skip]]) -> Skip:
    """One reason for a series none of whose acquisitions was placed."""
    if len(skips) == 1:
        return skips[0][1]
    first = skips[0][1]
    listed = "; ".join(f"{image_set.describe()}: {skip.reason}" for image_set, skip in skips)
    codes = {skip.code for _set, skip in skips}
    code = first.code if len(codes) == 1 else "unrecognised"
    return Skip(f"dcm2niix wrote {len(skips)} images, none placed — {listed}", first.rule, code)


def _decide(
    series: DicomSeries, staging: Path, *, overrides: Sequence[Override], rules: Sequence[Rule]
) -> _Decided:
    """dcm2niix, then each acquisition dcm2niix wrote classified and named on its own facts."""
    skip = screen(series)
    if skip is not None:
        return _Decided((), skip)
    source = Path(os.path.commonpath([str(f) for f in series.files]))
    try:
        run = run_dcm2niix(series.files, staging / "dcm2niix", source=source)
    except UnreadableDataError as exc:
        return _Decided((), Skip(f"unreadable image data: {exc}", "unreadable", "unreadable"))
    notes = [f"dcm2niix: {warning}" for warning in run.warnings]
    sets, duplicates = deduplicate(partition(run.images))
    notes.extend(duplicate.reason for duplicate in duplicates)
    asl = read_asl_headers(series.files) if _is_asl(series, run.images) else None
    placements: list[Placement] = []
    skips: list[tuple[ImageSet, Skip]] = []
    decided_by: list[str] = []
    for image_set in sets:
        siblings = tuple(other.images for other in sets if other is not image_set)
        facts = SeriesFacts(series, image_set.images, asl=asl, siblings=siblings, residue=image_set.residue)
        decision = classify(facts, rules=rules, overrides=overrides)
        placed = place(facts, decision) if isinstance(decision, BidsTarget) else decision
        if isinstance(placed, Skip):
            skips.append((image_set, placed))
            continue
        assert isinstance(decision, BidsTarget)
        notes.extend(decision.notes)
        decided_by.append(decision.rule)
        placements.extend(replace(placement, unit=image_set.index) for placement in placed)
    if not placements:
        if not skips:  # cannot happen: deduplicate keeps one of every voxel content
            return _Decided((), Skip("dcm2niix wrote no image", "", "unreadable"), tuple(notes))
        return _Decided((), _combined_skip(skips), tuple(notes))
    if len(sets) > 1:
        notes.extend(f"{image_set.describe()} left out ({skip.code}): {skip.reason}" for image_set, skip in skips)
    return _Decided(tuple(placements), None, tuple(notes), tuple(dict.fromkeys(decided_by)))


def _convert_discovered(
    series: DicomSeries,
    root: Path,
    *,
    subject: str | None,
    session: str | None,
    overrides: Sequence[Override],
    rules: Sequence[Rule],
    labels: Labels,
) -> SeriesResult:
    if series.problems:
        raise DicomInputError(_damage_message(series), series.problems[0].path)
    subject_label = _subject(series, subject, labels, root)
    session_label = None if session is None else usable_label(session)
    notes: list[str] = [subject_label.note] if subject_label.note else []
    if session is not None and session_label is None:
        notes.append("the given session label has no letters or digits: session from the study")
    session_base = labels.session_label(series) if session_label is None else None
    version = dcm2niix_version()
    staging = make_staging_dir(root)
    try:
        decided = _decide(series, staging, overrides=overrides, rules=rules)
        notes.extend(decided.notes)
        staged: tuple[StagedImage, ...] = ()
        if decided.placements:
            try:
                staged = _stage(staging, decided.placements)
            except OSError as exc:
                raise DatasetError(f"cannot stage the outputs of {_name(series)} in {root}: {exc}") from exc
        published = publish(
            root,
            PublishRequest(
                series=series,
                subject=subject_label.label,
                session=session_label,
                images=staged,
                session_base=session_base,
                participant=participant_facts(series.patient_sex, series.patient_age) if labels.demographics else {},
                members=tuple(part.series_uid for part in series.parts),
                sources=sources_digest((p.series_uid, p.file_count) for p in series.parts) if series.parts else "",
            ),
            dcm2niix_version=version,
        )
    finally:
        discard_staging(staging)
    if session_label is None and session_base is None and published.session is not None and staged:
        notes.append(f"no usable StudyDate: session {published.session!r} named after the StudyInstanceUID")
    if decided.skip is not None:
        logger.info("%s skipped: %s", _name(series), decided.skip.reason)
    else:
        logger.info("%s converted (%s): %s", _name(series), ", ".join(decided.rules), ", ".join(published.outputs))
    return SeriesResult(
        series_uid=series.series_uid,
        series_description=series.series_description,
        state="skipped" if decided.skip is not None else "converted",
        reason=decided.skip.reason if decided.skip is not None else None,
        outputs=published.outputs,
        subject=subject_label.label,
        session=published.session,
        series_number=series.series_number,
        reason_code=decided.skip.code if decided.skip is not None else None,
        notes=tuple(dict.fromkeys(notes)),
        acquisition=series.series_uid if series.parts else None,
        members=tuple(part.series_uid for part in series.parts),
    )


def _discover(folder: Path) -> Inventory:
    try:
        return discover(Path(folder))
    except FileNotFoundError as exc:
        raise DicomInputError(str(exc), folder) from exc
    except OSError as exc:
        raise DicomInputError(f"cannot list the DICOM folder ({exc})", folder) from exc


def convert_series(
    dicom_dir: Path,
    dataset_root: Path,
    *,
    subject: str | None = None,
    session: str | None = None,
    overrides: Sequence[Override] = (),
    labels: Labels | None = None,
) -> SeriesResult:
    """Convert the one series whose files are in ``dicom_dir`` into the BIDS dataset — or the one
    acquisition whose parts (several series, see :mod:`converters.regroup`) are all in it.

    ``subject`` defaults to the sanitized PatientID, ``session`` to the StudyDate (disambiguated
    when the subject has another study that day); ``labels`` changes those defaults (templates,
    pseudonyms, see :class:`~converters.labels.Labels`); a missing or placeholder PatientID falls
    back to a hashed label (said in the result's ``notes``). Re-converting a series replaces its
    files; converting an acquisition replaces what its parts had been converted into alone.

    Returns a result with state ``converted`` or ``skipped`` (with the reason and its code).
    Raises :class:`DicomInputError` when the input is unusable (damaged or non-DICOM files, no
    DICOM, more than one series) — retrying will not help — and :class:`ConversionError` /
    :class:`DatasetError` for failures worth retrying.
    """
    root = _dataset_root(dataset_root)
    inventory = _discover(dicom_dir)
    damaged: list[UnusableFile] = list(inventory.unattributed)
    for series in inventory.series:
        damaged.extend(series.problems)
    if damaged:
        listed = _describe_damage(damaged)
        raise DicomInputError(f"damaged or non-DICOM files: {listed}", damaged[0].path)
    if not inventory.series:
        raise DicomInputError("no DICOM instances found", dicom_dir)
    units = regroup(inventory.series)
    if len(units) > 1:
        listed = ", ".join(_name(series) for series in units)
        raise DicomInputError(f"expected one series, found {len(units)}: {listed}", dicom_dir)
    return _convert_discovered(
        units[0],
        root,
        subject=subject,
        session=session,
        overrides=overrides,
        rules=DEFAULT_RULES,
        labels=labels or Labels(),
    )


def _per_part(result: SeriesResult, unit: DicomSeries) -> list[SeriesResult]:
    """One record per input series: an acquisition's parts each get its result."""
    if not unit.parts:
        return [result]
    together = ", ".join(str(part.series_number) for part in unit.parts)
    note = f"converted together with series {together} as one acquisition (filed as {unit.series_uid})"
    return [
        replace(
            result,
            series_uid=part.series_uid,
            series_description=part.series_description,
            series_number=part.series_number,
            notes=(note, *result.notes),
        )
        for part in unit.parts
    ]


@dataclass(frozen=True)
class ConvertProgress:
    """What :func:`convert_tree` tells its ``progress`` callback each time a series is finished."""

    #: Input series finished so far (this one included), 1 to ``total``.
    done: int
    #: Input series found (the stray files that belong to no series are not counted).
    total: int
    #: The result of the series just finished. Its ``outputs`` are the files it published; a later
    #: true repeat may still renumber them (:func:`convert_tree` returns where they end up).
    result: SeriesResult


class _Reporter:
    """Counts finished series and tells the callback, one call per input series."""

    def __init__(self, total: int, callback: Callable[[ConvertProgress], None] | None) -> None:
        self.total = total
        self.done = 0
        self._callback = callback

    def finished(self, results: Sequence[SeriesResult]) -> None:
        for result in results:
            self.done += 1
            if self._callback is None:
                continue
            try:
                self._callback(ConvertProgress(self.done, self.total, result))
            except Exception:  # the callback only observes: it must not stop the conversion
                logger.exception("the progress callback failed on %s/%s (ignored)", self.done, self.total)


def convert_tree(
    input_dir: Path,
    dataset_root: Path,
    *,
    subject: str | None = None,
    session: str | None = None,
    overrides: Sequence[Override] = (),
    labels: Labels | None = None,
    jobs: int = 1,
    progress: Callable[[ConvertProgress], None] | None = None,
    qc: bool = False,
) -> list[SeriesResult]:
    """Discover and convert every series under ``input_dir``; one bad series never stops the others.

    ``jobs`` > 1 converts that many series at a time, in worker processes. ``qc`` draws the QC
    pictures of every converted series (:mod:`converters.qc`; listed in each result's ``qc``, a
    picture that cannot be drawn said in its ``notes``, never a failure).

    ``progress`` is called in the calling thread with a :class:`ConvertProgress` once per input
    series, as each finishes (with ``jobs`` > 1, in the order the workers finish; ``done``
    counts 1, 2, ... ``total`` all the same, and the returned list keeps the discovery order).
    It only observes: an exception it raises is logged and ignored.

    Series that are parts of one acquisition are converted together (:mod:`converters.regroup`);
    each input series still gives one result, with the files it owns once every series is in (a
    later true repeat may have renumbered an earlier series' runs); a series that raised is
    reported as ``failed`` with the error message as reason. Files that belong to no series are
    reported too, with an empty ``series_uid`` and their path as ``series_description``:
    ``skipped`` for plainly non-DICOM files (``notes.txt``, DICOMDIR, duplicates), ``failed`` for
    damaged DICOM-like files. Raises :class:`DicomInputError` only if ``input_dir`` itself cannot
    be read.
    """
    root = _dataset_root(dataset_root)
    source = Path(input_dir)
    inventory = _discover(source)
    units = regroup(inventory.series)
    convert = partial(_convert_unit, root=root, subject=subject, session=session, overrides=tuple(overrides),
                      labels=labels or Labels(), qc=qc)
    reporter = _Reporter(sum(len(unit.parts) or 1 for unit in units), progress)
    per_unit: list[list[SeriesResult]] = [[] for _unit in units]
    if jobs > 1 and len(units) > 1:
        # Worker processes of the interpreter itself (spawn: nothing of this process is shared);
        # the dataset lock orders their publishing, which gives the sequential run's dataset.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(units)), mp_context=context) as pool:
            futures: dict[Future[list[SeriesResult]], int] = {
                pool.submit(convert, unit): index for index, unit in enumerate(units)
            }
            for future in as_completed(futures):
                index = futures[future]
                try:
                    per_unit[index] = future.result()
                except Exception as exc:  # the process converting it died (killed, out of memory)
                    unit = units[index]
                    per_unit[index] = _per_part(_failed(unit, f"its conversion process died: {exc!r}"), unit)
                reporter.finished(per_unit[index])
    else:
        for index, unit in enumerate(units):
            per_unit[index] = convert(unit)
            reporter.finished(per_unit[index])
    results = [result for finished in per_unit for result in finished]
    # A later series may have renamed an earlier one's files (runs of true repeats): report where
    # each series' files are now.
    results = [_current(root, result) if result.state == "converted" else result for result in results]
    for item in (*inventory.foreign, *inventory.unattributed):
        try:
            shown = str(item.path.relative_to(source))
        except ValueError:
            shown = str(item.path)
        results.append(
            SeriesResult(
                series_uid="",
                series_description=shown,
                state="skipped" if item.kind == "foreign" else "failed",
                reason=item.describe(),
                reason_code=("duplicate" if item.reason.startswith("duplicate of") else "not-an-image")
                if item.kind == "foreign"
                else None,
            )
        )
    return results


def _failed(series: DicomSeries, reason: str) -> SeriesResult:
    return SeriesResult(
        series_uid=series.series_uid,
        series_description=series.series_description,
        state="failed",
        reason=reason,
        series_number=series.series_number,
        acquisition=series.series_uid if series.parts else None,
        members=tuple(part.series_uid for part in series.parts),
    )


def _convert_unit(series: DicomSeries, *, root: Path, subject: str | None, session: str | None,
                  overrides: Sequence[Override], labels: Labels, qc: bool = False) -> list[SeriesResult]:
    """One series (or acquisition) of :func:`convert_tree`, its failure reported, never raised."""
    try:
        result = _convert_discovered(series, root, subject=subject, session=session, overrides=overrides,
                                     rules=DEFAULT_RULES, labels=labels)
        if qc and result.state == "converted":
            result = _with_qc(root, result)
    except Exception as exc:  # one bad series must not stop the others
        if not isinstance(exc, BidsBridgeError):
            logger.exception("unexpected error converting %s", _name(series))
        else:
            logger.error("%s failed: %s", _name(series), exc)
        result = _failed(series, str(exc) if isinstance(exc, BidsBridgeError) else f"{type(exc).__name__}: {exc}")
    return _per_part(result, series)


def _with_qc(root: Path, result: SeriesResult) -> SeriesResult:
    """``result`` with the QC pictures of its images; what could not be drawn goes to its notes."""
    from converters.qc.write import write_series_qc  # noqa: PLC0415  (matplotlib: only when asked for)

    try:
        made = write_series_qc(root, result.acquisition or result.series_uid)
    except Exception as exc:  # QC never fails a conversion: it is said why there are no pictures
        if not isinstance(exc, BidsBridgeError):
            logger.exception("unexpected error drawing the QC pictures of %s", result.series_uid)
        return replace(result, notes=(*result.notes, f"no QC pictures: {exc}"))
    return replace(result, qc=made.files, notes=(*result.notes, *made.problems))


def _current(root: Path, result: SeriesResult) -> SeriesResult:
    """``result`` with the files and session its series has now (later series may have moved them,
    their QC pictures with them)."""
    uid = result.acquisition or result.series_uid
    manifest = read_manifest(manifest_path(root, uid))
    if manifest is None:
        return result
    qc = tuple(series_pictures(root, uid)) if result.qc else ()
    return replace(result, outputs=manifest.outputs, session=manifest.session, qc=qc)
