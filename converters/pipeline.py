"""The pipeline, top to bottom: discover -> dcm2niix -> classify -> publish, for one series
(:func:`convert_series`, what the Orthanc worker calls) or a whole folder (:func:`convert_tree`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from converters.asl import read_asl_headers
from converters.bids.dataset import dump_json, participant_facts, sidecar
from converters.bids.naming import sanitize_label
from converters.bids.publish import (
    PublishRequest,
    StagedImage,
    discard_staging,
    make_staging_dir,
    manifest_path,
    publish,
    read_manifest,
)
from converters.classify import DEFAULT_RULES, Override, Rule, SeriesFacts, classify, place, screen
from converters.conversion import dcm2niix_version, run_dcm2niix
from converters.discover import discover
from converters.errors import BidsBridgeError, DatasetError, DicomInputError, LabelError
from converters.labels import Labels
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

__all__ = ["convert_series", "convert_tree", "series_outputs"]

logger = logging.getLogger(__name__)

#: (datatype, suffix) pairs whose files include .bval/.bvec.
_WITH_GRADIENTS = frozenset({("dwi", "dwi"), ("fmap", "epi")})


def _dataset_root(dataset_root: Path) -> Path:
    root = Path(dataset_root).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create the BIDS dataset folder {root}: {exc}") from exc
    return root


def _name(series: DicomSeries) -> str:
    number = "?" if series.series_number is None else str(series.series_number)
    return f"series {number} {series.series_description!r} ({series.series_uid})"


def _subject(series: DicomSeries, subject: str | None, labels: Labels) -> str:
    if subject is not None:
        return sanitize_label(subject)
    if not series.patient_id and "{PatientID}" in labels.subject:
        raise DicomInputError(f"{_name(series)} has no PatientID; pass an explicit subject label")
    try:
        return labels.subject_label(series)
    except LabelError as exc:
        raise DicomInputError(f"{_name(series)}: {exc}") from exc


def _damage_message(series: DicomSeries) -> str:
    listed = "; ".join(problem.describe() for problem in series.problems)
    return f"{_name(series)} has damaged files: {listed}"


def _stage(staging: Path, placements: Sequence[Placement]) -> tuple[StagedImage, ...]:
    folder = staging / "publish"
    folder.mkdir()
    staged: list[StagedImage] = []
    for index, placement in enumerate(placements):
        image, target = placement.image, placement.target
        sidecar_path = folder / f"{index}.json"
        sidecar_path.write_text(dump_json(sidecar(image.metadata, target)), encoding="utf-8")
        files = {".nii.gz": image.nifti, ".json": sidecar_path}
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
        staged.append(StagedImage(files=files, target=target, echo_times=_echo_times(placement), variant=variant))
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
    subject_label = _subject(series, subject, labels)
    session_label = None if session is None else sanitize_label(session)
    session_base = labels.session_label(series) if session is None else None
    version = dcm2niix_version()
    staging = make_staging_dir(root)
    try:
        decision: BidsTarget | Skip
        staged: tuple[StagedImage, ...] = ()
        skip = screen(series)
        if skip is not None:
            decision = skip
        else:
            source = Path(os.path.commonpath([str(f) for f in series.files]))
            images = run_dcm2niix(series.files, staging / "dcm2niix", source=source)
            asl = read_asl_headers(series.files) if _is_asl(series, images) else None
            facts = SeriesFacts(series, images, asl=asl)
            decision = classify(facts, rules=rules, overrides=overrides)
            if isinstance(decision, BidsTarget):
                placements = place(facts, decision)
                if isinstance(placements, Skip):
                    decision = placements
                else:
                    try:
                        staged = _stage(staging, placements)
                    except OSError as exc:
                        raise DatasetError(f"cannot stage the outputs of {_name(series)} in {root}: {exc}") from exc
        published = publish(
            root,
            PublishRequest(
                series=series,
                subject=subject_label,
                session=session_label,
                images=staged,
                session_base=session_base,
                participant=participant_facts(series.patient_sex, series.patient_age) if labels.demographics else {},
            ),
            dcm2niix_version=version,
        )
    finally:
        discard_staging(staging)
    if isinstance(decision, Skip):
        logger.info("%s skipped: %s", _name(series), decision.reason)
    else:
        logger.info("%s converted (%s): %s", _name(series), decision.rule, ", ".join(published.outputs))
    return SeriesResult(
        series_uid=series.series_uid,
        series_description=series.series_description,
        state="skipped" if isinstance(decision, Skip) else "converted",
        reason=decision.reason if isinstance(decision, Skip) else None,
        outputs=published.outputs,
        subject=subject_label,
        session=published.session,
        series_number=series.series_number,
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
    """Convert the one series whose files are in ``dicom_dir`` into the BIDS dataset.

    ``subject`` defaults to the sanitized PatientID, ``session`` to the StudyDate (disambiguated
    when the subject has another study that day); ``labels`` changes those defaults (templates,
    pseudonyms, see :class:`~converters.labels.Labels`). Re-converting a series replaces its files.

    Returns a result with state ``converted`` or ``skipped`` (with the reason). Raises
    :class:`DicomInputError` when the input is unusable (damaged or non-DICOM files, no DICOM,
    more than one series, no PatientID) — retrying will not help — and
    :class:`ConversionError` / :class:`DatasetError` for failures worth retrying.
    """
    root = _dataset_root(dataset_root)
    inventory = _discover(dicom_dir)
    damaged: list[UnusableFile] = list(inventory.unattributed)
    for series in inventory.series:
        damaged.extend(series.problems)
    if damaged:
        listed = "; ".join(item.describe() for item in damaged)
        raise DicomInputError(f"damaged or non-DICOM files: {listed}", damaged[0].path)
    if not inventory.series:
        raise DicomInputError("no DICOM instances found", dicom_dir)
    if len(inventory.series) > 1:
        listed = ", ".join(_name(series) for series in inventory.series)
        raise DicomInputError(f"expected one series, found {len(inventory.series)}: {listed}", dicom_dir)
    return _convert_discovered(
        inventory.series[0],
        root,
        subject=subject,
        session=session,
        overrides=overrides,
        rules=DEFAULT_RULES,
        labels=labels or Labels(),
    )


def convert_tree(
    input_dir: Path,
    dataset_root: Path,
    *,
    subject: str | None = None,
    session: str | None = None,
    overrides: Sequence[Override] = (),
    labels: Labels | None = None,
) -> list[SeriesResult]:
    """Discover and convert every series under ``input_dir``; one bad series never stops the others.

    Each series gives one result, with the files it owns once every series is in (a later true
    repeat may have renumbered an earlier series' runs); a series that raised is reported as ``failed`` with the error
    message as reason. Files that belong to no series are reported too, with an empty
    ``series_uid`` and their path as ``series_description``: ``skipped`` for plainly non-DICOM
    files (``notes.txt``, DICOMDIR, duplicates), ``failed`` for damaged DICOM-like files.
    Raises :class:`DicomInputError` only if ``input_dir`` itself cannot be read.
    """
    root = _dataset_root(dataset_root)
    source = Path(input_dir)
    inventory = _discover(source)
    results: list[SeriesResult] = []
    for series in inventory.series:
        try:
            result = _convert_discovered(
                series,
                root,
                subject=subject,
                session=session,
                overrides=overrides,
                rules=DEFAULT_RULES,
                labels=labels or Labels(),
            )
        except Exception as exc:  # one bad series must not stop the others
            if not isinstance(exc, BidsBridgeError):
                logger.exception("unexpected error converting %s", _name(series))
            else:
                logger.error("%s failed: %s", _name(series), exc)
            result = SeriesResult(
                series_uid=series.series_uid,
                series_description=series.series_description,
                state="failed",
                reason=str(exc) if isinstance(exc, BidsBridgeError) else f"{type(exc).__name__}: {exc}",
                series_number=series.series_number,
            )
        results.append(result)
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
            )
        )
    return results


def _current(root: Path, result: SeriesResult) -> SeriesResult:
    """``result`` with the files and session its series has now (later series may have moved them)."""
    manifest = read_manifest(manifest_path(root, result.series_uid))
    if manifest is None:
        return result
    return replace(result, outputs=manifest.outputs, session=manifest.session)


def series_outputs(dataset_root: Path, series_uid: str) -> list[str]:
    """Files (relative to the dataset root, sorted) the series currently owns; [] if none."""
    manifest = read_manifest(manifest_path(Path(dataset_root).resolve(), series_uid))
    return [] if manifest is None else list(manifest.outputs)
