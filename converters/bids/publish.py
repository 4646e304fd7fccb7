"""Stage 4 — publish: move one series' staged files into the dataset, atomically and safely
next to other processes doing the same.

:func:`publish` takes the dataset lock (:mod:`.manifests`), works out the series' session label
(:mod:`.session_labels`; moving a study whose label changed), lays its session out again
(:func:`converters.bids.session.layout`: runs, ``acq``, field-map links), claims the new names in
the manifests before renaming anything, moves the files in, and then refreshes the dataset
tables (:mod:`.tables`); the QC pictures of every series whose files changed follow them
(:func:`converters.qc.dataset.follow_series`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from converters.bids.atomic import write_text_atomic
from converters.bids.dataset import dump_json
from converters.bids.manifests import (
    SeriesManifest,
    _remove_empty_parents,
    dataset_lock,
    discard_staging,
    make_staging_dir,
    manifest_path,
    read_manifests,
    sweep_staging,
)
from converters.bids.naming import session_prefix
from converters.bids.session import LINK_KEYS, ImageRecord, Slot, layout, links
from converters.bids.session_labels import StudyKey, _study_keys, resolve_sessions
from converters.bids.tables import _ensure_dataset_files, _refresh_participants, _refresh_scans
from converters.errors import DatasetError
from converters.qc.dataset import follow_series
from converters.records import BidsTarget, DicomSeries

__all__ = ["PublishRequest", "Published", "StagedImage", "publish"]

_EXTENSION_ORDER = (".nii.gz", ".json", ".bval", ".bvec", "_aslcontext.tsv")


@dataclass(frozen=True)
class StagedImage:
    """Files of one image already written under the staging folder, keyed by extension
    (``.nii.gz``, ``.json``, ``.bval``, ``.bvec``), and where they should go."""

    files: Mapping[str, Path] = field(hash=False)
    target: BidsTarget
    #: Echo times (s) of a GRE field-map image, to pair magnitude and phase series.
    echo_times: tuple[float, ...] = ()
    #: (MRAcquisitionType, SequenceName): see :class:`ImageRecord`.
    variant: tuple[str, ...] = ()
    #: The acquisition of its series the image belongs to (see :class:`ImageRecord`).
    unit: int = 0


@dataclass(frozen=True)
class PublishRequest:
    """One series to publish; no images means "the series is skipped": remove what it owned."""

    series: DicomSeries
    subject: str
    #: Explicit session label, or None to derive it from the study (see :func:`resolve_sessions`).
    session: str | None
    images: tuple[StagedImage, ...] = ()
    #: Session label the study asks for before disambiguation (the session template's result),
    #: or None for the StudyDate. Used only when ``session`` is None.
    session_base: str | None = None
    #: participants.tsv columns this series' headers give (``age``, ``sex``), when allowed.
    participant: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: Input series this one is made of (an acquisition spread over several series) and the
    #: digest of their instances; their own manifests, if any (converted alone before), are
    #: superseded: removed with their files.
    members: tuple[str, ...] = ()
    sources: str = ""


@dataclass(frozen=True)
class Published:
    outputs: tuple[str, ...]
    session: str | None


def _session_manifests(
    manifests: Mapping[str, SeriesManifest], subject: str, session: str | None
) -> list[SeriesManifest]:
    return [m for m in manifests.values() if m.subject == subject and m.session == session]


def _scans_of(manifest: SeriesManifest, slots: list[Slot]) -> tuple[tuple[str, str], ...]:
    folder, _ = session_prefix(manifest.subject, manifest.session)
    return tuple(
        sorted(
            (slot.paths[".nii.gz"][len(folder) + 1 :], manifest.acquisition_time)
            for slot in slots
            if ".nii.gz" in slot.paths
        )
    )


def _rename_all(root: Path, renames: list[tuple[str, str]]) -> None:
    """Rename files (paths relative to ``root``) so that none overwrites another still to move:
    a move waits while its destination is occupied; only a cycle goes through a holding folder."""
    pending = [(root / old, new) for old, new in renames if (root / old).exists()]
    hold: Path | None = None
    try:
        while pending:
            waiting = []
            for source, new in pending:
                destination = root / new
                if destination.exists():
                    waiting.append((source, new))
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, destination)
                _remove_empty_parents(root, source)
            if len(waiting) == len(pending):  # a cycle (names swapped): break it
                sources = {source for source, _new in waiting}
                if not any(root / new in sources for _source, new in waiting):
                    blocked = ", ".join(new for _source, new in waiting)
                    raise DatasetError(f"cannot rename into {blocked}: taken by files no series owns; move them away")
                hold = hold or make_staging_dir(root)
                source, new = waiting[0]
                parked = hold / str(len(list(hold.iterdir())))
                os.replace(source, parked)
                _remove_empty_parents(root, source)
                waiting[0] = (parked, new)
            pending = waiting
    finally:
        if hold is not None:
            discard_staging(hold)


def _settle(
    root: Path,
    subject: str,
    session: str | None,
    manifests: dict[str, SeriesManifest],
    *,
    incoming: SeriesManifest | None,
    staged: tuple[StagedImage, ...],
    previous: SeriesManifest | None,
) -> None:
    """Lay out one session again with ``incoming`` (its files in ``staged``) in place of
    ``previous``, rename what moved, and rewrite the link fields of the session's sidecars."""
    members = [
        m
        for m in _session_manifests(manifests, subject, session)
        if incoming is None or m.series_uid != incoming.series_uid
    ]
    if incoming is not None:
        members.append(incoming)
    legacy = {p for m in members if not m.images for p in m.outputs}  # manifests of an older version
    mine = set(previous.outputs) if previous is not None else set()
    owned = {p for m in manifests.values() for p in m.outputs} | mine

    def foreign(path: str) -> bool:
        return path in legacy or (path not in owned and (root / path).exists())

    laid = [m for m in members if m.images]
    slots = layout(subject, session, [m.entry() for m in laid], foreign)

    renames: list[tuple[str, str]] = []
    updated: list[SeriesManifest] = []
    claims: list[SeriesManifest] = []
    for manifest in laid:
        placed = tuple(dict(slot.paths) for slot in slots[manifest.series_uid])
        outputs = tuple(sorted(p for paths in placed for p in paths.values()))
        if incoming is None or manifest.series_uid != incoming.series_uid:
            moves = [
                (before[ext], after[ext])
                for before, after in zip(manifest.placed, placed, strict=True)
                for ext in sorted(before)
                if before[ext] != after[ext]
            ]
            if moves:
                renames.extend(moves)
                claims.append(replace(manifest, outputs=tuple(sorted(set(manifest.outputs) | set(outputs)))))
        if manifest.placed != placed or manifest.outputs != outputs or manifest is incoming:
            updated.append(
                replace(manifest, placed=placed, outputs=outputs, scans=_scans_of(manifest, slots[manifest.series_uid]))
            )

    new_mine: set[str] = set()
    if incoming is not None:
        new_mine = {p for slot in slots[incoming.series_uid] for p in slot.paths.values()}
        if new_mine - mine:
            claims.append(replace(incoming, outputs=tuple(sorted(new_mine | mine)), images=(), placed=()))
    # Claim every new name before the first rename: if this process dies half-way, the next
    # publish finds the names owned (not foreign) and completes or replaces them.
    for claim in claims:
        write_text_atomic(manifest_path(root, claim.series_uid), dump_json(claim.to_json()))

    for stale in sorted(mine - new_mine):
        (root / stale).unlink(missing_ok=True)
        _remove_empty_parents(root, root / stale)
    _rename_all(root, renames)
    if incoming is not None:
        for image, slot in zip(staged, slots[incoming.series_uid], strict=True):
            for ext in sorted(slot.paths, key=_EXTENSION_ORDER.index):
                destination = root / slot.paths[ext]
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(image.files[ext], destination)
    for manifest in updated:
        write_text_atomic(manifest_path(root, manifest.series_uid), dump_json(manifest.to_json()))
        manifests[manifest.series_uid] = manifest

    # Field-map links: B0FieldIdentifier / B0FieldSource / IntendedFor, recomputed for the session.
    linked = links(subject, session, [m.entry() for m in laid], slots)
    for relative, fields in sorted(linked.items()):
        path = root / relative
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot update the field-map links in {path}: {exc}") from exc
        wanted = {k: v for k, v in current.items() if k not in LINK_KEYS}
        wanted.update({key: fields[key] for key in LINK_KEYS if key in fields})
        if wanted != current or list(wanted) != list(current):
            write_text_atomic(path, dump_json(wanted))


def _move_study(
    root: Path, manifests: dict[str, SeriesManifest], *, study_uid: str, subject: str, session: str, skip: str
) -> set[tuple[str, str | None]]:
    """Move every series of a study (but ``skip``) of ``subject`` to another session label.

    The files move straight from their old to their new paths (another study never shares a
    session label, so nothing is in the way); each series claims its new names first."""
    moving = sorted(
        (m for m in manifests.values() if m.subject == subject and m.study_uid == study_uid and m.series_uid != skip),
        key=lambda m: m.series_uid,
    )
    touched: set[tuple[str, str | None]] = set()
    for manifest in moving:
        touched.add((manifest.subject, manifest.session))
        current = tuple(
            StagedImage(files={ext: root / path for ext, path in placed.items()}, target=image.target(None))
            for image, placed in zip(manifest.images, manifest.placed, strict=True)
        )
        del manifests[manifest.series_uid]
        moved = replace(manifest, session=session, outputs=(), placed=(), scans=())
        _settle(root, subject, session, manifests, incoming=moved, staged=current, previous=None)
        for path in manifest.outputs:
            _remove_empty_parents(root, root / path)
    for old_subject, old_session in sorted(touched, key=str):
        _settle(root, old_subject, old_session, manifests, incoming=None, staged=(), previous=None)
    touched.add((subject, session))
    return touched


def _outputs(manifests: Mapping[str, SeriesManifest], series_uid: str) -> tuple[str, ...] | None:
    manifest = manifests.get(series_uid)
    return None if manifest is None else manifest.outputs


def publish(root: Path, request: PublishRequest, *, dcm2niix_version: str) -> Published:
    """Publish one series under the dataset lock; see the module docstring."""
    uid = request.series.series_uid
    try:
        with dataset_lock(root):
            manifests = read_manifests(root)
            before = {m.series_uid: m.outputs for m in manifests.values()}
            touched: set[tuple[str, str | None]] = set()
            for member in request.members:
                superseded = manifests.get(member) if member != uid else None
                if superseded is not None:  # converted alone before the rest of its acquisition came
                    for stale in sorted(superseded.outputs):
                        (root / stale).unlink(missing_ok=True)
                        _remove_empty_parents(root, root / stale)
                    manifest_path(root, member).unlink(missing_ok=True)
                    del manifests[member]
                    _settle(
                        root, superseded.subject, superseded.session, manifests, incoming=None, staged=(), previous=None
                    )
                    touched.add((superseded.subject, superseded.session))
            previous = manifests.get(uid)
            session = request.session
            base = request.session_base
            if base is None and len(request.series.study_date) == 8 and request.series.study_date.isdigit():
                base = request.series.study_date
            if session is None:
                # Labels follow from the studies that have files once this series is in (a skipped
                # series adds nothing, and may take the last file of its study away).
                others = {k: m for k, m in manifests.items() if k != uid}
                studies = _study_keys(request.subject, others)
                key = StudyKey(
                    request.series.study_uid, base, request.series.study_time, None, request.series.study_date
                )
                if request.images:
                    studies.setdefault(key.study_uid, key)
                labels = resolve_sessions(studies)
                session = labels.get(key.study_uid) or resolve_sessions({**studies, key.study_uid: key})[key.study_uid]
                for study_uid, label in sorted(labels.items()):
                    current = {
                        m.session
                        for m in manifests.values()
                        if m.subject == request.subject and m.study_uid == study_uid and m.series_uid != uid
                    }
                    if current and current != {label}:
                        touched |= _move_study(
                            root, manifests, study_uid=study_uid, subject=request.subject, session=label, skip=uid
                        )
            incoming: SeriesManifest | None = None
            if request.images:
                incoming = SeriesManifest(
                    series_uid=uid,
                    study_uid=request.series.study_uid,
                    subject=request.subject,
                    session=session,
                    series_number=request.series.series_number,
                    series_description=request.series.series_description,
                    outputs=(),
                    acquisition_time=request.series.acquisition_time,
                    session_base=base if request.session is None else None,
                    study_time=request.series.study_time,
                    study_date=request.series.study_date,
                    session_fixed=request.session is not None,
                    participant=dict(request.participant),
                    images=tuple(
                        ImageRecord(
                            datatype=image.target.datatype,
                            suffix=image.target.suffix,
                            entities=dict(image.target.entities),
                            extensions=tuple(sorted(image.files, key=_EXTENSION_ORDER.index)),
                            echo_times=image.echo_times,
                            variant=image.variant,
                            unit=image.unit,
                        )
                        for image in request.images
                    ),
                    members=request.members,
                    sources=request.sources,
                )
            if previous is not None and (
                incoming is None or (previous.subject, previous.session) != (request.subject, session)
            ):
                # The series leaves its session (skipped now, or moved): remove its files there.
                for stale in sorted(previous.outputs):
                    (root / stale).unlink(missing_ok=True)
                    _remove_empty_parents(root, root / stale)
                manifest_path(root, uid).unlink(missing_ok=True)
                del manifests[uid]
                _settle(root, previous.subject, previous.session, manifests, incoming=None, staged=(), previous=None)
                touched.add((previous.subject, previous.session))
                previous = None
            outputs: tuple[str, ...] = ()
            if incoming is not None:
                _settle(
                    root,
                    request.subject,
                    session,
                    manifests,
                    incoming=incoming,
                    staged=request.images,
                    previous=previous,
                )
                outputs = manifests[uid].outputs
                touched.add((request.subject, session))
            for subject, touched_session in sorted(touched, key=str):
                _refresh_scans(root, subject, touched_session, manifests)
            _refresh_participants(root, manifests)
            _ensure_dataset_files(root, dcm2niix_version)
            # QC pictures follow their images: renamed with them, removed with them (and with
            # this series' replaced files: the QC step draws them again).
            changed = {u for u in before.keys() | manifests.keys() if before.get(u) != _outputs(manifests, u)}
            follow_series(root, {u: _outputs(manifests, u) for u in sorted(changed | {uid})})
            sweep_staging(root)
    except OSError as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"cannot publish series {uid} into {root}: {exc}") from exc
    return Published(outputs=outputs, session=session)
