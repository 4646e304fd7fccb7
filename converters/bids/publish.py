"""Stage 4 — publish: move one series' staged files into the dataset, atomically and safely
next to other processes doing the same.

Layout of the bookkeeping folder ``<dataset>/.bidsbridge/`` (hidden, so the BIDS validator
ignores it):

- ``lock`` — every publish holds an exclusive :func:`fcntl.flock` on it for its whole critical
  section (naming, renames, manifest and table updates);
- ``series/<sha256 of SeriesInstanceUID>.json`` — the manifest of one series: its subject,
  session, study and the files it owns. Re-publishing a series replaces exactly those files;
- ``tmp/<random>/`` — private staging folders (same file system as the dataset, so the final
  moves are renames);
- ``label-key`` — a random secret made on first need (mode 0600): the key of the hashed
  subject labels of series without a usable PatientID (:meth:`converters.labels.Labels.resolve_subject`).

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
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from converters.bids.dataset import (
    changes_text,
    dataset_description,
    dump_json,
    participants_sidecar,
    read_tsv,
    readme_text,
    render_tsv,
)
from converters.bids.naming import STUDY_INDEX, scans_path, session_prefix
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
    "StudyKey",
    "dataset_lock",
    "dataset_secret",
    "discard_staging",
    "ensure_dataset",
    "make_staging_dir",
    "manifest_path",
    "publish",
    "read_manifest",
    "read_manifests",
    "resolve_sessions",
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
    #: The session label the study asked for, its StudyTime, and whether the label was given
    #: by the caller (never disambiguated or moved). None for manifests of older versions.
    session_base: str | None = None
    study_time: str = ""
    session_fixed: bool = True
    #: StudyDate (``YYYYMMDD``) or "": orders studies for ``{StudyIndex}`` session labels.
    study_date: str = ""
    #: participants.tsv columns from this series' headers (``age``, ``sex``).
    participant: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: For an acquisition spread over several series (:mod:`converters.regroup`): the input
    #: series converted into it, and a digest of their instances (same digest: same input).
    members: tuple[str, ...] = ()
    sources: str = ""

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
            "session_base": self.session_base,
            "study_time": self.study_time,
            "study_date": self.study_date,
            "session_fixed": self.session_fixed,
            "participant": dict(self.participant),
            "members": list(self.members),
            "sources": self.sources,
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
            session_base=None if data.get("session_base") is None else str(data["session_base"]),
            study_time=str(data.get("study_time", "")),
            study_date=str(data.get("study_date", "")),
            session_fixed=bool(data.get("session_fixed", True)),
            participant={str(k): str(v) for k, v in data.get("participant", {}).items()},
            members=tuple(str(m) for m in data.get("members", ())),
            sources=str(data.get("sources", "")),
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


SECRET_NAME = "label-key"


def dataset_secret(root: Path) -> bytes:
    """The dataset's own random secret (32 bytes, hex in ``.bidsbridge/label-key``), made
    atomically on first use so that concurrent workers all read the same one."""
    folder = _bookkeeping(root)
    path = folder / SECRET_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            temporary = folder / f".{SECRET_NAME}.{uuid.uuid4().hex}.tmp"
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32) + "\n")
            try:
                os.link(temporary, path)  # fails if another process made it first: theirs wins
            except FileExistsError:
                pass
            finally:
                temporary.unlink(missing_ok=True)
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise DatasetError(f"cannot read or create the dataset's label key {path}: {exc}") from exc
    if len(text) < 32:
        raise DatasetError(f"the dataset's label key {path} is damaged; delete it only if no label depends on it")
    return text.encode("ascii")


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


@dataclass(frozen=True)
class StudyKey:
    """What decides a study's session label: the label it asks for and when it was acquired."""

    study_uid: str
    #: Requested label (session template, default StudyDate) or None (no date: a UID digest).
    base: str | None
    #: StudyTime (``HHMMSS[.ffffff]``) or "".
    time: str
    #: A label given by the caller (or by an older bidsbridge): used as it is.
    fixed: str | None = None
    #: StudyDate ``YYYYMMDD`` or "" (orders ``{StudyIndex}`` studies).
    date: str = ""


def _digest(study_uid: str) -> str:
    return hashlib.sha256(study_uid.encode("utf-8")).hexdigest()[:8]


def resolve_sessions(studies: Mapping[str, StudyKey]) -> dict[str, str]:
    """Session label of each study of one subject, a pure function of all of them (so arrival
    order never matters).

    Fixed labels stay. Studies asking for the same label (two studies on one day) are put in
    order of StudyTime (then UID): the first keeps the plain label (``20220711``), each later one
    gets the time added (``20220711T153000``), or a digest of its StudyInstanceUID when even that
    is taken. A study with no label to ask for gets ``uid`` plus that digest. Studies asking for
    :data:`~converters.bids.naming.STUDY_INDEX` are numbered 1, 2, ... by StudyDate, StudyTime, UID.
    """
    labels: dict[str, str] = {uid: key.fixed for uid, key in studies.items() if key.fixed is not None}
    taken = set(labels.values())
    indexed = sorted(
        (key for key in studies.values() if key.fixed is None and key.base == STUDY_INDEX),
        key=lambda k: (k.date or "~", k.time or "~", k.study_uid),
    )
    number = 0
    for key in indexed:
        number += 1
        while str(number) in taken:
            number += 1
        labels[key.study_uid] = str(number)
        taken.add(str(number))
    groups: dict[str, list[StudyKey]] = {}
    for key in studies.values():
        if key.fixed is None and key.base != STUDY_INDEX:
            groups.setdefault(key.base or "", []).append(key)
    for base in sorted(groups):
        for position, key in enumerate(sorted(groups[base], key=lambda k: (k.time or "~", k.study_uid))):
            time = key.time.split(".")[0]
            candidates = [base] if base and position == 0 else []
            if base and len(time) >= 6 and time[:6].isdigit():
                candidates.append(f"{base}T{time[:6]}")
            candidates.append(f"{base}x{_digest(key.study_uid)}" if base else f"uid{_digest(key.study_uid)}")
            label = next((c for c in candidates if c not in taken), None)
            if label is None:
                raise DatasetError(f"cannot find a free session label for study {key.study_uid}; pass session=")
            labels[key.study_uid] = label
            taken.add(label)
    return labels


def _study_keys(subject: str, manifests: Mapping[str, SeriesManifest]) -> dict[str, StudyKey]:
    keys: dict[str, StudyKey] = {}
    for manifest in sorted(manifests.values(), key=lambda m: m.series_uid):
        if manifest.subject != subject or manifest.study_uid in keys or manifest.session is None:
            continue
        fixed = manifest.session if manifest.session_fixed else None
        keys[manifest.study_uid] = StudyKey(
            manifest.study_uid, manifest.session_base, manifest.study_time, fixed, manifest.study_date
        )
    return keys


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


#: participants.tsv columns bidsbridge fills from the headers, in this order.
_PARTICIPANT_COLUMNS = ("age", "sex")


def _participant_values(manifests: Sequence[SeriesManifest]) -> dict[str, str]:
    """One subject's columns: sex when its series agree, age at the earliest study recording one."""
    values: dict[str, str] = {}
    sexes = {m.participant["sex"] for m in manifests if "sex" in m.participant}
    if len(sexes) == 1:
        values["sex"] = sexes.pop()
    aged = sorted(
        (m.acquisition_time or "~", m.series_uid, m.participant["age"]) for m in manifests if "age" in m.participant
    )
    if aged:
        values["age"] = aged[0][2]
    return values


def _refresh_participants(root: Path, manifests: Mapping[str, SeriesManifest]) -> None:
    path = root / "participants.tsv"
    by_subject: dict[str, list[SeriesManifest]] = {}
    for manifest in manifests.values():
        by_subject.setdefault(f"sub-{manifest.subject}", []).append(manifest)
    facts = {participant: _participant_values(found) for participant, found in by_subject.items()}
    existing = read_tsv(path)
    columns = ["participant_id"] + [c for c in _PARTICIPANT_COLUMNS if any(c in f for f in facts.values())]
    rows: dict[str, dict[str, str]] = {}
    if existing is not None:
        old_columns, old_rows = existing
        columns += [c for c in old_columns if c not in columns]
        for row in old_rows:
            participant = row.get("participant_id", "")
            if participant in by_subject or (participant and (root / participant).is_dir()):
                rows[participant] = dict(row)
    for participant, values in facts.items():
        row = rows.setdefault(participant, {"participant_id": participant})
        for column in _PARTICIPANT_COLUMNS:
            if column in values:
                row[column] = values[column]
    if not rows:
        if path.exists():
            path.unlink()
        return
    _write_text(path, render_tsv(columns, (rows[p] for p in sorted(rows))))
    sidecar_path = root / "participants.json"
    try:
        described = json.loads(sidecar_path.read_text(encoding="utf-8")) if sidecar_path.exists() else {}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {sidecar_path} ({exc}); fix or delete it") from exc
    ours = participants_sidecar()
    wanted = dict(described)
    for column in columns:
        if column in ours and column not in wanted:
            wanted[column] = ours[column]
    if wanted != described or not sidecar_path.exists():
        _write_text(sidecar_path, dump_json(wanted))


def ensure_dataset(root: Path, dcm2niix_version: str) -> None:
    """Make ``root`` a BIDS dataset (its dataset-level files) under the dataset lock, whatever is
    converted into it later: a dataset never exists without ``dataset_description.json``."""
    try:
        with dataset_lock(root):
            _ensure_dataset_files(root, dcm2niix_version)
    except OSError as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"cannot write the dataset files of {root}: {exc}") from exc


def _ensure_dataset_files(root: Path, dcm2niix_version: str) -> None:
    """Create dataset_description.json, README.md and CHANGES when missing; never overwrite the user's."""
    if not (root / "dataset_description.json").exists():
        _write_text(root / "dataset_description.json", dump_json(dataset_description(dcm2niix_version)))
    if not any((root / name).exists() for name in ("README", "README.md", "README.rst", "README.txt")):
        _write_text(root / "README.md", readme_text())
    if not (root / "CHANGES").exists():
        _write_text(root / "CHANGES", changes_text())


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
        _write_text(manifest_path(root, claim.series_uid), dump_json(claim.to_json()))

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


def publish(root: Path, request: PublishRequest, *, dcm2niix_version: str) -> Published:
    """Publish one series under the dataset lock; see the module docstring."""
    uid = request.series.series_uid
    try:
        with dataset_lock(root):
            manifests = read_manifests(root)
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
