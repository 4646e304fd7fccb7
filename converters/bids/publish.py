"""Stage 4 — publish: move one series' staged files into the dataset, atomically and safely
next to other processes doing the same.

Layout of the bookkeeping folder ``<dataset>/.bidsbridge/`` (hidden, so the BIDS validator
ignores it):

- ``lock`` — every publish holds an exclusive :func:`fcntl.flock` on it for its whole critical
  section (naming, renames, manifest and table updates);
- ``series/<sha256 of SeriesInstanceUID>.json`` — the manifest of one series: its subject,
  session, study and the files it owns. Re-publishing a series replaces exactly those files;
- ``tmp/<random>/`` — private staging folders (same file system as the dataset, so the final
  moves are renames).

Nothing written here depends on time or on the machine: participants.tsv and every
``*_scans.tsv`` are regenerated from the manifests (plus rows the user added for files bidsbridge
does not own), sorted.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from converters.bids.dataset import (
    dataset_description,
    dump_json,
    participants_sidecar,
    read_tsv,
    readme_text,
    render_tsv,
)
from converters.bids.naming import scans_path, session_prefix
from converters.bids.session import LINK_KEYS, ImageRecord, SeriesEntry, Slot, layout, links
from converters.errors import DatasetError
from converters.records import BidsTarget, DicomSeries

__all__ = [
    "BOOKKEEPING_DIR",
    "LOCK_NAME",
    "STALE_STAGING_SECONDS",
    "PublishRequest",
    "Published",
    "SeriesManifest",
    "StagedImage",
    "dataset_lock",
    "discard_staging",
    "make_staging_dir",
    "manifest_path",
    "publish",
    "read_manifest",
    "read_manifests",
    "resolve_session",
]

logger = logging.getLogger(__name__)

#: Bookkeeping folder inside the dataset root.
BOOKKEEPING_DIR = ".bidsbridge"
#: Lock file inside :data:`BOOKKEEPING_DIR`.
LOCK_NAME = "lock"
#: Staging folders older than this (seconds; default one day) belong to crashed processes and are
#: removed by the next publish. A conversion never takes that long (dcm2niix is killed after 900 s).
STALE_STAGING_SECONDS = 24 * 3600.0

_EXTENSION_ORDER = (".nii.gz", ".json", ".bval", ".bvec", "_aslcontext.tsv")


@dataclass(frozen=True)
class SeriesManifest:
    """What one series owns in the dataset."""

    series_uid: str
    study_uid: str
    subject: str
    session: str | None
    series_number: int | None
    series_description: str
    #: Files relative to the dataset root, sorted.
    outputs: tuple[str, ...]
    #: (file name relative to the session folder, acq_time) for each image, sorted.
    scans: tuple[tuple[str, str], ...] = ()
    #: Earliest acquisition date-time of the series (BIDS form) or "".
    acquisition_time: str = ""
    #: Each image as the classifier placed it, and where it is now (extension -> path).
    images: tuple[ImageRecord, ...] = ()
    placed: tuple[Mapping[str, str], ...] = ()

    def entry(self) -> SeriesEntry:
        return SeriesEntry(self.series_uid, self.series_number, self.acquisition_time, self.images)

    def to_json(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
            "subject": self.subject,
            "session": self.session,
            "series_number": self.series_number,
            "series_description": self.series_description,
            "acquisition_time": self.acquisition_time,
            "outputs": list(self.outputs),
            "scans": [{"filename": name, "acq_time": time} for name, time in self.scans],
            "images": [
                {**image.to_json(), "placed": dict(placed)}
                for image, placed in zip(self.images, self.placed, strict=True)
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeriesManifest:
        return cls(
            series_uid=str(data["series_uid"]),
            study_uid=str(data["study_uid"]),
            subject=str(data["subject"]),
            session=None if data["session"] is None else str(data["session"]),
            series_number=None if data["series_number"] is None else int(data["series_number"]),
            series_description=str(data["series_description"]),
            outputs=tuple(str(p) for p in data["outputs"]),
            scans=tuple((str(s["filename"]), str(s["acq_time"])) for s in data["scans"]),
            acquisition_time=str(data.get("acquisition_time", "")),
            images=tuple(ImageRecord.from_json(image) for image in data.get("images", ())),
            placed=tuple({str(k): str(v) for k, v in image["placed"].items()} for image in data.get("images", ())),
        )


@dataclass(frozen=True)
class StagedImage:
    """Files of one image already written under the staging folder, keyed by extension
    (``.nii.gz``, ``.json``, ``.bval``, ``.bvec``), and where they should go."""

    files: Mapping[str, Path] = field(hash=False)
    target: BidsTarget
    #: Echo times (s) of a GRE field-map image, to pair magnitude and phase series.
    echo_times: tuple[float, ...] = ()


@dataclass(frozen=True)
class PublishRequest:
    """One series to publish; no images means "the series is skipped": remove what it owned."""

    series: DicomSeries
    subject: str
    #: Explicit session label, or None to derive it from the study (see :func:`resolve_session`).
    session: str | None
    images: tuple[StagedImage, ...] = ()


@dataclass(frozen=True)
class Published:
    outputs: tuple[str, ...]
    session: str | None


def _bookkeeping(root: Path) -> Path:
    return root / BOOKKEEPING_DIR


def manifest_path(root: Path, series_uid: str) -> Path:
    digest = hashlib.sha256(series_uid.encode("utf-8")).hexdigest()
    return _bookkeeping(root) / "series" / f"{digest}.json"


def read_manifest(path: Path) -> SeriesManifest | None:
    try:
        return SeriesManifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"corrupt bidsbridge manifest {path} ({exc}); delete it and re-convert that series") from exc


def read_manifests(root: Path) -> dict[str, SeriesManifest]:
    """All manifests of the dataset by SeriesInstanceUID."""
    folder = _bookkeeping(root) / "series"
    found: dict[str, SeriesManifest] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        manifest = read_manifest(path)
        if manifest is not None:
            found[manifest.series_uid] = manifest
    return found


@contextmanager
def dataset_lock(root: Path) -> Iterator[None]:
    """Hold the dataset-wide exclusive lock (blocks until it is free)."""
    folder = _bookkeeping(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / LOCK_NAME).open("a+b")
    except OSError as exc:
        raise DatasetError(f"cannot create the dataset lock in {folder}: {exc}") from exc
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def make_staging_dir(root: Path) -> Path:
    """A new private folder under ``.bidsbridge/tmp`` (same file system as the dataset)."""
    folder = _bookkeeping(root) / "tmp" / uuid.uuid4().hex
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise DatasetError(f"cannot create a staging folder in {root}: {exc}") from exc
    return folder


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and :func:`os.replace` so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _remove_empty_parents(root: Path, path: Path) -> None:
    """Remove the now-empty folders above ``path``, up to (not including) ``root``."""
    folder = path.parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return
            raise
        folder = folder.parent


def resolve_session(subject: str, series: DicomSeries, manifests: Mapping[str, SeriesManifest]) -> str:
    """Session label of ``series``' study for ``subject``.

    A study already in the dataset keeps its label. A new study gets its StudyDate
    (``20220711``); if that label already belongs to another study of the same subject it gets
    the date plus StudyTime (``20220711T120427``), and failing that the date plus a digest of the
    StudyInstanceUID. Without a StudyDate the label is ``uid`` plus that digest. So the study
    published first on a date keeps the plain date; the others are deterministic in their headers.
    """
    for manifest in manifests.values():
        if manifest.subject == subject and manifest.study_uid == series.study_uid and manifest.session:
            return manifest.session
    taken = {m.session for m in manifests.values() if m.subject == subject and m.study_uid != series.study_uid}
    digest = hashlib.sha256(series.study_uid.encode("utf-8")).hexdigest()[:8]
    date = series.study_date if len(series.study_date) == 8 and series.study_date.isdigit() else ""
    time = series.study_time.split(".")[0]
    candidates: list[str] = []
    if date:
        candidates.append(date)
        if len(time) >= 6 and time[:6].isdigit():
            candidates.append(f"{date}T{time[:6]}")
        candidates.append(f"{date}x{digest}")
    else:
        candidates.append(f"uid{digest}")
    for candidate in candidates:
        if candidate not in taken:
            return candidate
    raise DatasetError(f"cannot find a free session label for study {series.study_uid} of sub-{subject}; pass session=")


def _refresh_scans(root: Path, subject: str, session: str | None, manifests: Mapping[str, SeriesManifest]) -> None:
    folder, _ = session_prefix(subject, session)
    path = root / scans_path(subject, session)
    managed: dict[str, str] = {}
    for manifest in manifests.values():
        if manifest.subject == subject and manifest.session == session:
            managed.update(dict(manifest.scans))
    owned_anywhere = {p for m in manifests.values() for p in m.outputs}
    existing = read_tsv(path)
    columns = ["filename", "acq_time"]
    rows: dict[str, dict[str, str]] = {}
    if existing is not None:
        old_columns, old_rows = existing
        columns += [c for c in old_columns if c not in columns]
        for row in old_rows:
            name = row.get("filename", "")
            if name in managed:
                rows[name] = dict(row)
            elif f"{folder}/{name}" not in owned_anywhere and (root / folder / name).exists():
                rows[name] = dict(row)  # the user's own file: keep its row
    for name, acq_time in managed.items():
        rows[name] = {**rows.get(name, {}), "filename": name, "acq_time": acq_time or "n/a"}
    if not rows:
        if path.exists():
            path.unlink()
            _remove_empty_parents(root, path)
        return
    _write_text(path, render_tsv(columns, (rows[name] for name in sorted(rows))))


def _refresh_participants(root: Path, manifests: Mapping[str, SeriesManifest]) -> None:
    path = root / "participants.tsv"
    subjects = {f"sub-{m.subject}" for m in manifests.values()}
    existing = read_tsv(path)
    columns = ["participant_id"]
    rows: dict[str, dict[str, str]] = {}
    if existing is not None:
        old_columns, old_rows = existing
        columns += [c for c in old_columns if c not in columns]
        for row in old_rows:
            participant = row.get("participant_id", "")
            if participant in subjects or (participant and (root / participant).is_dir()):
                rows[participant] = dict(row)
    for participant in subjects:
        rows.setdefault(participant, {"participant_id": participant})
    if not rows:
        if path.exists():
            path.unlink()
        return
    _write_text(path, render_tsv(columns, (rows[p] for p in sorted(rows))))
    if not (root / "participants.json").exists():
        _write_text(root / "participants.json", dump_json(participants_sidecar()))


def _ensure_dataset_files(root: Path, dcm2niix_version: str) -> None:
    """Create dataset_description.json and README.md when missing; never overwrite the user's."""
    if not (root / "dataset_description.json").exists():
        _write_text(root / "dataset_description.json", dump_json(dataset_description(dcm2niix_version)))
    if not any((root / name).exists() for name in ("README", "README.md", "README.rst", "README.txt")):
        _write_text(root / "README.md", readme_text())


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
    for manifest in laid:
        placed = tuple(dict(slot.paths) for slot in slots[manifest.series_uid])
        outputs = tuple(sorted(p for paths in placed for p in paths.values()))
        if incoming is None or manifest.series_uid != incoming.series_uid:
            for before, after in zip(manifest.placed, placed, strict=True):
                renames.extend((before[ext], after[ext]) for ext in sorted(before) if before[ext] != after[ext])
        if manifest.placed != placed or manifest.outputs != outputs or manifest is incoming:
            updated.append(
                replace(manifest, placed=placed, outputs=outputs, scans=_scans_of(manifest, slots[manifest.series_uid]))
            )

    new_mine: set[str] = set()
    if incoming is not None:
        new_mine = {p for slot in slots[incoming.series_uid] for p in slot.paths.values()}
        if new_mine - mine:
            # Claim the new names before the first rename: if this process dies half-way, the
            # next publish of the series finds them owned by it and replaces them.
            claim = replace(incoming, outputs=tuple(sorted(new_mine | mine)), images=(), placed=())
            _write_text(manifest_path(root, incoming.series_uid), dump_json(claim.to_json()))

    hold = make_staging_dir(root) if renames else None
    try:
        held: list[tuple[Path, str]] = []
        for number, (old, new) in enumerate(renames):
            assert hold is not None
            source = root / old
            if source.exists():
                os.replace(source, hold / str(number))
                held.append((hold / str(number), new))
            _remove_empty_parents(root, source)
        for stale in sorted(mine - new_mine):
            (root / stale).unlink(missing_ok=True)
            _remove_empty_parents(root, root / stale)
        for source, new in held:
            (root / new).parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, root / new)
        if incoming is not None:
            for image, slot in zip(staged, slots[incoming.series_uid], strict=True):
                for ext in sorted(slot.paths, key=_EXTENSION_ORDER.index):
                    destination = root / slot.paths[ext]
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(image.files[ext], destination)
    finally:
        if hold is not None:
            discard_staging(hold)
    for manifest in updated:
        _write_text(manifest_path(root, manifest.series_uid), dump_json(manifest.to_json()))
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
            _write_text(path, dump_json(wanted))


def publish(root: Path, request: PublishRequest, *, dcm2niix_version: str) -> Published:
    """Publish one series under the dataset lock; see the module docstring."""
    uid = request.series.series_uid
    try:
        with dataset_lock(root):
            manifests = read_manifests(root)
            previous = manifests.get(uid)
            session = request.session
            if session is None:
                session = resolve_session(request.subject, request.series, manifests)
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
                    images=tuple(
                        ImageRecord(
                            datatype=image.target.datatype,
                            suffix=image.target.suffix,
                            entities=dict(image.target.entities),
                            extensions=tuple(sorted(image.files, key=_EXTENSION_ORDER.index)),
                            echo_times=image.echo_times,
                        )
                        for image in request.images
                    ),
                )
            touched: set[tuple[str, str | None]] = set()
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
            _sweep_stale_staging(root)
    except OSError as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"cannot publish series {uid} into {root}: {exc}") from exc
    return Published(outputs=outputs, session=session)


def _sweep_stale_staging(root: Path) -> None:
    folder = _bookkeeping(root) / "tmp"
    limit = time.time() - STALE_STAGING_SECONDS
    for entry in folder.iterdir() if folder.is_dir() else ():
        try:
            if entry.stat().st_mtime < limit:
                logger.warning("removing staging folder %s left by a crashed conversion", entry)
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            continue


def discard_staging(folder: Path) -> None:
    """Remove a staging folder made by :func:`make_staging_dir` (errors are logged, not raised)."""
    shutil.rmtree(folder, ignore_errors=True)
