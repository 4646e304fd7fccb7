"""The dataset's bookkeeping folder ``<dataset>/.bidsbridge/`` (hidden, so the BIDS validator
ignores it) and the file-system primitives publishing is built on.

Layout:

- ``lock`` — every publish holds an exclusive :func:`fcntl.flock` on it for its whole critical
  section (naming, renames, manifest and table updates): :func:`dataset_lock`;
- ``series/<sha256 of SeriesInstanceUID>.json`` — the manifest of one series (:class:`SeriesManifest`):
  its subject, session, study and the files it owns. Re-publishing a series replaces exactly those files;
- ``tmp/<random>/`` — private staging folders (same file system as the dataset, so the final
  moves are renames): :func:`make_staging_dir`, :func:`discard_staging`; folders left by crashed
  processes are swept after :data:`STALE_STAGING_SECONDS`;
- ``label-key`` — a random secret made on first need (mode 0600): the key of the hashed
  subject labels of series without a usable PatientID (:meth:`converters.labels.Labels.resolve_subject`),
  see :func:`dataset_secret`.

Files are written atomically (:mod:`converters.bids.atomic`) so readers never see half a file.
:func:`_remove_empty_parents` is shared with the sibling modules of :mod:`converters.bids` only.
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.bids.atomic import owner_is_gone, owner_tag
from converters.bids.session import ImageRecord, SeriesEntry
from converters.errors import DatasetError

__all__ = [
    "BOOKKEEPING_DIR",
    "LOCK_NAME",
    "SECRET_NAME",
    "STALE_STAGING_SECONDS",
    "SeriesManifest",
    "converted_sources",
    "dataset_lock",
    "dataset_secret",
    "discard_staging",
    "make_staging_dir",
    "manifest_path",
    "read_manifest",
    "read_manifests",
    "series_outputs",
    "sweep_staging",
]

logger = logging.getLogger(__name__)

#: Bookkeeping folder inside the dataset root.
BOOKKEEPING_DIR = ".bidsbridge"
#: Lock file inside :data:`BOOKKEEPING_DIR`.
LOCK_NAME = "lock"
#: The dataset's label key inside :data:`BOOKKEEPING_DIR` (see :func:`dataset_secret`).
SECRET_NAME = "label-key"
#: Staging folders older than this (seconds; default one day) belong to crashed processes and are
#: removed by the next publish. A conversion never takes that long (dcm2niix is killed after 900 s).
STALE_STAGING_SECONDS = 24 * 3600.0


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


def dataset_secret(root: Path) -> bytes:
    """The dataset's own random secret (32 bytes, hex in ``.bidsbridge/label-key``), made
    atomically on first use so that concurrent workers all read the same one."""
    folder = _bookkeeping(root)
    path = folder / SECRET_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            temporary = folder / f".{SECRET_NAME}.{owner_tag()}.tmp"
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
    """A new private folder under ``.bidsbridge/tmp`` (same file system as the dataset), named
    ``<host>-<pid>-<random>`` so that the folders of a killed process can be told and removed."""
    folder = _bookkeeping(root) / "tmp" / owner_tag()
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise DatasetError(f"cannot create a staging folder in {root}: {exc}") from exc
    return folder


def discard_staging(folder: Path) -> None:
    """Remove a staging folder made by :func:`make_staging_dir` (errors are logged, not raised)."""
    shutil.rmtree(folder, ignore_errors=True)


def sweep_staging(root: Path) -> None:
    """Remove staging folders of processes that died (killed mid-conversion) and any older than
    :data:`STALE_STAGING_SECONDS` (other hosts' on a shared dataset, older versions')."""
    folder = _bookkeeping(root) / "tmp"
    limit = time.time() - STALE_STAGING_SECONDS
    for entry in folder.iterdir() if folder.is_dir() else ():
        try:
            if owner_is_gone(entry.name) or entry.stat().st_mtime < limit:
                logger.warning("removing staging folder %s left by a crashed conversion", entry)
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            continue


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


def series_outputs(dataset_root: Path, series_uid: str) -> list[str]:
    """Files (relative to the dataset root, sorted) the series currently owns — directly, or as a
    part of an acquisition converted together (:mod:`converters.regroup`); [] if none."""
    root = Path(dataset_root).resolve()
    manifest = read_manifest(manifest_path(root, series_uid))
    if manifest is None:
        manifest = next((m for m in read_manifests(root).values() if series_uid in m.members), None)
    return [] if manifest is None else list(manifest.outputs)


def converted_sources(dataset_root: Path, series_uid: str) -> str | None:
    """The input digest (:func:`converters.regroup.sources_digest`) an acquisition spread over
    several series was last converted from, or None: the plugin converts it again only when its
    series or their instances changed."""
    manifest = read_manifest(manifest_path(Path(dataset_root).resolve(), series_uid))
    return None if manifest is None or not manifest.sources else manifest.sources
