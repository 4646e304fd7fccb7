"""The QC derivatives dataset ``<dataset>/derivatives/bidsbridge-qc/``: names, bookkeeping, and
pictures that follow their images.

**Names** mirror the image pictured, with the picture's kind as ``desc``:
``sub-01/ses-1/anat/sub-01_ses-1_acq-tfl_T1w.nii.gz`` →
``derivatives/bidsbridge-qc/sub-01/ses-1/anat/sub-01_ses-1_acq-tfl_desc-ortho_T1w.png``; a
derivative (``derivatives/bidsbridge/…_desc-adcmask_dseg.nii.gz``) keeps its own desc in front
(``…_desc-adcmaskOutline_dseg.png``). BIDS 1.11 has no file rule for pictures of MRI images (PNG
is allowed only for photos of EEG/MEG/NIRS/EMG set-ups, microscopy and ASL labelling planes), so
the dataset's ``.bidsignore`` lists ``*.png`` — the validator's own advice for files the
specification does not cover yet, and what fMRIPrep does with its figures; everything else in the
dataset is validated.

**Ownership.** The pictures of a raw series belong to it (``series:<SeriesInstanceUID>``), those
of a derivative image to that file (``file:<path>``); each owner has a small manifest in
``<dataset>/.bidsbridge/qc/``: per image its path, the identity of the file drawn (inode, size,
mtime: a renamed file keeps it, a re-written one does not) and its pictures. Publishing calls
:func:`follow_series` / :func:`follow_files` under the dataset lock: pictures of a renamed image
are renamed with it, those of a replaced or removed image are removed (drawing again is the QC
step's work). Moves go through a holding folder, so names swapped between series cannot collide;
a process killed half-way can lose pictures (a manifest may then list one that is missing), never
leave pictures no manifest owns.

Standard library only: publishing imports this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.bids.atomic import write_text_atomic
from converters.bids.dataset import BIDS_VERSION, bidsbridge_version, dump_json
from converters.bids.manifests import (
    BOOKKEEPING_DIR,
    _remove_empty_parents,
    dataset_lock,
    discard_staging,
    make_staging_dir,
    manifest_path,
    read_manifest,
)
from converters.errors import DatasetError
from converters.qc.records import QcView

__all__ = [
    "QC_DERIVATIVES",
    "QC_PREFIX",
    "Identity",
    "Locator",
    "QcEntry",
    "Rendered",
    "current_series_image",
    "ensure_qc_dataset",
    "file_owner",
    "file_pictures",
    "follow_files",
    "follow_series",
    "identity",
    "picture_path",
    "publish_pictures",
    "series_owner",
    "series_pictures",
]

logger = logging.getLogger(__name__)

#: Folder of the QC derivatives dataset under ``<dataset>/derivatives/``.
QC_DERIVATIVES = "bidsbridge-qc"
#: What every picture's path (relative to the raw dataset root) starts with.
QC_PREFIX = f"derivatives/{QC_DERIVATIVES}/"
_NIFTI = (".nii.gz", ".nii")

#: (inode, size, mtime in ns) of a file: kept by a rename, changed by a rewrite.
Identity = tuple[int, int, int]


def identity(path: Path) -> Identity | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns)


def series_owner(series_uid: str) -> str:
    return f"series:{series_uid}"


def file_owner(relative: str) -> str:
    return f"file:{relative}"


def _images(root: Path, outputs: Iterable[str]) -> dict[Identity, str]:
    """The NIfTI files among ``outputs`` by their identity."""
    images: dict[Identity, str] = {}
    for relative in outputs:
        if relative.endswith(_NIFTI):
            found = identity(root / relative)
            if found is not None:
                images[found] = relative
    return images


def picture_path(source: str, view: str) -> str:
    """Path (relative to the dataset root) of the ``view`` picture of the image ``source``
    (relative to the dataset root, raw or under ``derivatives/<pipeline>/``)."""
    relative = source.split("/", 2)[2] if source.startswith("derivatives/") else source
    folder, _, name = relative.rpartition("/")
    stem = next((name[: -len(ext)] for ext in _NIFTI if name.endswith(ext)), name)
    *entities, suffix = stem.split("_")
    for index, entity in enumerate(entities):
        if entity.startswith("desc-"):
            entities[index] = f"{entity}{view[:1].upper()}{view[1:]}"
            break
    else:
        entities.append(f"desc-{view}")
    return f"{QC_PREFIX}{folder}/{'_'.join([*entities, suffix])}.png"


@dataclass(frozen=True)
class QcEntry:
    """The pictures of one image, and the identity of the file they were drawn from."""

    source: str
    identity: Identity
    #: view -> picture path (relative to the dataset root).
    pictures: Mapping[str, str] = field(hash=False)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "identity": list(self.identity), "pictures": dict(self.pictures)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QcEntry:
        ino, size, mtime = (int(v) for v in data["identity"])
        return cls(str(data["source"]), (ino, size, mtime), {str(k): str(v) for k, v in data["pictures"].items()})


@dataclass(frozen=True)
class Rendered:
    """Pictures drawn (into a staging folder) of one image, before they are filed."""

    source: str
    identity: Identity
    #: view -> the staged PNG.
    files: Mapping[QcView, Path] = field(hash=False)


def _manifest_file(root: Path, owner: str) -> Path:
    digest = hashlib.sha256(owner.encode("utf-8")).hexdigest()
    return root / BOOKKEEPING_DIR / "qc" / f"{digest}.json"


def _read(root: Path, owner: str) -> list[QcEntry]:
    path = _manifest_file(root, owner)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [QcEntry.from_json(entry) for entry in data["images"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"corrupt QC manifest {path} ({exc}); delete it and derivatives/{QC_DERIVATIVES}") from exc


def _write(root: Path, owner: str, entries: Sequence[QcEntry]) -> None:
    path = _manifest_file(root, owner)
    if not entries:
        path.unlink(missing_ok=True)
        return
    write_text_atomic(path, dump_json({"owner": owner, "images": [entry.to_json() for entry in entries]}))


def _remove(root: Path, relative: str) -> None:
    (root / relative).unlink(missing_ok=True)
    _remove_empty_parents(root, root / relative)


def _move_all(root: Path, moves: Sequence[tuple[Path, str]]) -> None:
    for source, relative in moves:
        destination = root / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)


def _follow(root: Path, owners: Mapping[str, Callable[[QcEntry], str | None]]) -> None:
    """For each owner: its pictures renamed after their image (``locate`` says where the very
    file drawn is now, or None: removed). Never fails the publishing that calls it: a damaged
    QC manifest or a picture that cannot be moved is logged and left."""
    try:
        _follow_all(root, owners)
    except OSError as exc:  # DatasetError (a damaged manifest) included
        logger.warning("QC pictures in %s not updated after publishing: %s", root, exc)


def _follow_all(root: Path, owners: Mapping[str, Callable[[QcEntry], str | None]]) -> None:
    plans: list[tuple[str, list[QcEntry], list[tuple[str, str]]]] = []
    for owner, locate in owners.items():
        try:
            entries = _read(root, owner)
        except DatasetError as exc:
            logger.warning("%s", exc)
            continue
        if not entries:
            continue
        kept: list[QcEntry] = []
        moves: list[tuple[str, str]] = []
        changed = False
        for entry in entries:
            where = locate(entry)
            if where is None:
                changed = True
                for picture in entry.pictures.values():
                    _remove(root, picture)
                continue
            wanted = {view: picture_path(where, view) for view in entry.pictures}
            moves += [(entry.pictures[view], wanted[view]) for view in wanted if entry.pictures[view] != wanted[view]]
            changed |= where != entry.source
            kept.append(QcEntry(where, entry.identity, wanted))
        if changed:
            plans.append((owner, kept, moves))
    if not any(moves for _owner, _kept, moves in plans):
        for owner, kept, _moves in plans:
            _write(root, owner, kept)
        return
    hold = make_staging_dir(root)
    try:
        held: list[tuple[Path, str]] = []
        for _owner, _kept, moves in plans:
            for old, new in moves:
                if (root / old).exists():
                    parked = hold / str(len(held))
                    os.replace(root / old, parked)
                    _remove_empty_parents(root, root / old)
                    held.append((parked, new))
        for owner, kept, _moves in plans:
            _write(root, owner, kept)
        _move_all(root, held)
    finally:
        discard_staging(hold)


def follow_series(root: Path, outputs: Mapping[str, Sequence[str] | None]) -> None:
    """Under the dataset lock, after publishing: the pictures of each series in ``outputs``
    (SeriesInstanceUID -> the files it owns now, None when it owns none) follow its images."""

    def locator(current: Sequence[str] | None) -> Callable[[QcEntry], str | None]:
        images = _images(root, current or ())
        return lambda entry: images.get(entry.identity)

    _follow(root, {series_owner(uid): locator(current) for uid, current in outputs.items()})


def follow_files(root: Path, paths: Iterable[str]) -> None:
    """Under the dataset lock, after (re)writing or removing derivative files: pictures of a
    file that is gone or was written again are removed."""

    def same(entry: QcEntry) -> str | None:
        return entry.source if identity(root / entry.source) == entry.identity else None

    _follow(root, {file_owner(path): same for path in paths if path.endswith(_NIFTI)})


Locator = Callable[[Rendered], str | None]


def publish_pictures(
    root: Path, owner_of: Callable[[str], str], rendered: Sequence[Rendered], locator: Callable[[], Locator]
) -> tuple[list[str], list[str]]:
    """File staged pictures under the dataset lock, replacing what their owners had; return
    (pictures filed, problems). ``locator()``, called under the lock, gives the function saying
    where each image drawn is now (None: it changed while it was drawn; its pictures are
    dropped, the newer conversion draws its own)."""
    filed: list[str] = []
    problems: list[str] = []
    if not rendered:
        return filed, problems
    by_owner: dict[str, list[Rendered]] = {}
    for item in rendered:
        by_owner.setdefault(owner_of(item.source), []).append(item)
    with dataset_lock(root):
        ensure_qc_dataset(root)
        locate = locator()
        for owner, items in sorted(by_owner.items()):
            previous = _read(root, owner)
            entries: list[QcEntry] = []
            moves: list[tuple[Path, str]] = []
            for item in items:
                where = locate(item)
                if where is None:
                    problems.append(f"{item.source} changed while its QC pictures were drawn: "
                                    "left to its new conversion")
                    continue
                pictures: dict[str, str] = {view: picture_path(where, view) for view in sorted(item.files)}
                entries.append(QcEntry(where, item.identity, pictures))
                moves += [(item.files[view], pictures[view]) for view in sorted(item.files)]
            wanted = {picture for entry in entries for picture in entry.pictures.values()}
            for entry in previous:
                for picture in entry.pictures.values():
                    if picture not in wanted:
                        _remove(root, picture)
            _write(root, owner, entries)
            _move_all(root, moves)
            filed += sorted(wanted)
    return sorted(filed), problems


def _existing(root: Path, owner: str) -> list[str]:
    """The owner's pictures that exist; none (and a warning) when its manifest is damaged: QC
    pictures are never worth failing a job or a delivery for."""
    try:
        entries = _read(root, owner)
    except DatasetError as exc:
        logger.warning("%s", exc)
        return []
    return sorted(p for entry in entries for p in entry.pictures.values() if (root / p).is_file())


def series_pictures(dataset_root: Path, series_uid: str) -> list[str]:
    """The QC pictures of a raw series' images (relative to the dataset root, sorted)."""
    return _existing(Path(dataset_root).resolve(), series_owner(series_uid))


def file_pictures(dataset_root: Path, paths: Iterable[str]) -> list[str]:
    """The QC pictures of derivative images (relative to the dataset root, sorted)."""
    root = Path(dataset_root).resolve()
    return sorted(p for path in paths if path.endswith(_NIFTI) for p in _existing(root, file_owner(path)))


_DESCRIPTION = "QC pictures of every converted image: orthogonal mid-slices, mean and mosaic views, maps, outlines"
_README = """# bidsbridge QC pictures

One PNG picture per view of every image bidsbridge converted into the raw dataset (`../..`) or
derived into `../bidsbridge`, named after the image with the view as `desc`:

* `desc-ortho`: three orthogonal mid-slices (the first volume of a 4D image);
* `desc-mean`: a 4D image's mean volume and its mean intensity over time;
* `desc-mosaic`: axial slices of an anatomical image;
* `desc-map`: a derived parametric map (ADC) with a colour bar;
* `desc-outline` (after the image's own desc): a label map's outlines over its source image.

Voxels are shown as stored; each panel's edges carry the direction (L/R, A/P, S/I) its axes
run towards according to the image's affine. The PNG text chunk `bidsbridge:orientation` holds
the same labels as JSON. BIDS has no file rule for such pictures, so `.bidsignore` lists them.
Pictures are replaced when their image is converted again and removed with it; do not edit.
"""
_BIDSIGNORE = "# QC pictures: BIDS has no file rule for pictures of MRI images (see README)\n*.png\n"


def ensure_qc_dataset(dataset_root: Path) -> None:
    """Write the QC dataset's ``dataset_description.json``, README and ``.bidsignore`` if missing."""
    root = Path(dataset_root) / "derivatives" / QC_DERIVATIVES
    generated: dict[str, str] = {"Name": "bidsbridge"}
    version = bidsbridge_version()
    if version is not None:
        generated["Version"] = version
    generated["Description"] = _DESCRIPTION
    files = {
        "dataset_description.json": dump_json({
            "Name": "bidsbridge QC pictures",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [generated],
            "SourceDatasets": [{"URL": "../.."}],
        }),
        "README.md": _README,
        ".bidsignore": _BIDSIGNORE,
    }
    for name, text in files.items():
        path = root / name
        if not path.exists():
            write_text_atomic(path, text)


def current_series_image(root: Path, series_uid: str) -> Locator:
    """``locate`` for :func:`publish_pictures` of a raw series: where the file drawn is now."""
    manifest = read_manifest(manifest_path(root, series_uid))
    images = _images(root, manifest.outputs if manifest is not None else ())
    return lambda item: images.get(item.identity)
