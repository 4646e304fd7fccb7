"""Derived maps and label images filed into the BIDS derivatives dataset ``derivatives/bidsbridge/``.

Names follow the BIDS derivatives conventions, built on the raw BIDS name of the source series
(``sub-01_ses-1_dir-PA_dwi.nii.gz`` → ``sub-01_ses-1_dir-PA_ADC.nii.gz``;
segmentations → ``…_desc-<label>_dseg.nii.gz`` + ``…_desc-<label>_dseg.tsv``), each image with a
JSON sidecar whose ``Sources`` names the raw file (BIDS URI). The derivatives dataset gets its own
``dataset_description.json`` (``DatasetType: derivative``).

Publishing is atomic per file (temp + rename) under the raw dataset's lock, and each
(source series, derivation) owns its files through a small manifest in
``<dataset>/.bidsbridge/derived/``: deriving again replaces them, never duplicates (their QC
pictures are removed: :func:`converters.qc.dataset.follow_files`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from converters.bids.atomic import copy_file_atomic, write_bytes_atomic
from converters.bids.dataset import BIDS_VERSION
from converters.bids.manifests import dataset_lock, series_outputs
from converters.bids.naming import sanitize_label
from converters.errors import DatasetError
from converters.qc.dataset import follow_files

__all__ = ["DERIVATIVES_NAME", "DerivativeImage", "derivatives_root", "derived_outputs", "publish_derivatives"]

DERIVATIVES_NAME = "bidsbridge"


@dataclass(frozen=True)
class DerivativeImage:
    """One image to file: a NIfTI and how to name it."""

    nifti: Path
    #: BIDS suffix: ``ADC``, ``dseg``, ``mask``, ...
    suffix: str
    #: ``desc-`` entity value (sanitized), or None.
    desc: str | None = None
    #: A ``dseg.tsv`` (or other side table) to file next to the image.
    table: Path | None = None
    sidecar: Mapping[str, Any] = field(default_factory=dict)


def derivatives_root(dataset_root: Path) -> Path:
    return Path(dataset_root) / "derivatives" / DERIVATIVES_NAME


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _dump(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _ensure_description(root: Path) -> None:
    path = root / "dataset_description.json"
    if path.exists():
        return
    write_bytes_atomic(path, _dump({
        "Name": "bidsbridge derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bidsbridge", "Version": _version("bidsbridge"),
                         "Description": "ADC maps and segmentations, also stored as DICOM in Orthanc"}],
        "SourceDatasets": [{"URL": "../.."}],
    }))


def _base_name(dataset_root: Path, source_series_uid: str, fallback: tuple[str, str | None, str]) -> tuple[str, str]:
    """(folder relative to the dataset root, file-name stem without suffix) of the source image."""
    for relative in series_outputs(dataset_root, source_series_uid):
        if relative.endswith(".nii.gz") and not relative.startswith(("sourcedata/", "derivatives/")):
            folder, name = relative.rsplit("/", 1)
            stem = name[: -len(".nii.gz")]
            return folder, stem.rsplit("_", 1)[0]
    subject, session, label = fallback
    parts = [f"sub-{sanitize_label(subject)}"] + ([f"ses-{sanitize_label(session)}"] if session else [])
    return "/".join([*parts, "anat"]), "_".join([*parts, f"acq-{sanitize_label(label)}"])


def _manifest(dataset_root: Path, key: str) -> Path:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return Path(dataset_root) / ".bidsbridge" / "derived" / f"{digest}.json"


def derived_outputs(dataset_root: Path, source_series_uid: str) -> list[str]:
    """Every file derived from the series (relative to the dataset root, sorted)."""
    folder = Path(dataset_root) / ".bidsbridge" / "derived"
    found: set[str] = set()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"corrupt derivatives manifest {path} ({exc}); derive that series again") from exc
        if record.get("series_uid") == source_series_uid:
            found.update(str(p) for p in record.get("outputs", []))
    return sorted(found)


def publish_derivatives(
    dataset_root: Path,
    source_series_uid: str,
    derivation: str,
    images: Sequence[DerivativeImage],
    *,
    fallback: tuple[str, str | None, str] = ("unknown", None, "series"),
) -> list[str]:
    """File ``images`` derived from the series ``source_series_uid``; return paths relative to the
    raw dataset root. ``derivation`` (e.g. ``adc``) keys the replacement of earlier outputs;
    ``fallback`` = (subject, session, label) names a source that is not in the raw dataset."""
    dataset_root = Path(dataset_root).resolve()
    root = derivatives_root(dataset_root)
    written: list[str] = []
    try:
        with dataset_lock(dataset_root):
            _ensure_description(root)
            folder, stem = _base_name(dataset_root, source_series_uid, fallback)
            raw_source = next((p for p in series_outputs(dataset_root, source_series_uid) if p.endswith(".nii.gz")),
                              None)
            for image in images:
                desc = f"_desc-{sanitize_label(image.desc)}" if image.desc else ""
                if not re.fullmatch(r"[A-Za-z0-9]+", image.suffix):
                    raise DatasetError(f"derivative suffix {image.suffix!r} is not BIDS alphanumeric")
                name = f"{stem}{desc}_{image.suffix}"
                target = root / folder / f"{name}.nii.gz"
                copy_file_atomic(image.nifti, target)
                sidecar = dict(image.sidecar)
                if raw_source is not None:
                    sidecar.setdefault("Sources", [f"bids:raw:{raw_source}"])
                write_bytes_atomic(root / folder / f"{name}.json", _dump(sidecar))
                written += [f"{folder}/{name}.nii.gz", f"{folder}/{name}.json"]
                if image.table is not None:
                    copy_file_atomic(image.table, root / folder / f"{name}.tsv")
                    written.append(f"{folder}/{name}.tsv")
            relative = sorted(f"derivatives/{DERIVATIVES_NAME}/{p}" for p in written)
            manifest = _manifest(dataset_root, f"{source_series_uid}\0{derivation}")
            previous: list[str] = []
            if manifest.exists():
                previous = list(json.loads(manifest.read_text(encoding="utf-8")).get("outputs", []))
            for stale in set(previous) - set(relative):
                (dataset_root / stale).unlink(missing_ok=True)
            write_bytes_atomic(manifest, _dump({"series_uid": source_series_uid, "derivation": derivation,
                                           "outputs": relative}))
            follow_files(dataset_root, sorted(set(previous) | set(relative)))  # their QC pictures are stale now
    except OSError as exc:
        raise DatasetError(f"cannot write derivatives under {root}: {exc}") from exc
    return relative
