"""Dataset tables and dataset-level files, regenerated from the manifests under the dataset lock:
each session's ``*_scans.tsv``, ``participants.tsv`` + ``participants.json``, and
``dataset_description.json``, ``README.md``, ``CHANGES`` (made when missing, never overwritten).

Nothing written here depends on time or on the machine: the tables come from the manifests (plus
rows the user added for files bidsbridge does not own), sorted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from converters.bids.atomic import sweep_temporaries, write_text_atomic
from converters.bids.dataset import (
    changes_text,
    dataset_description,
    dump_json,
    participants_sidecar,
    read_tsv,
    readme_text,
    render_tsv,
)
from converters.bids.manifests import SeriesManifest, _remove_empty_parents, dataset_lock, sweep_staging
from converters.bids.naming import scans_path, session_prefix
from converters.errors import DatasetError

__all__ = ["ensure_dataset"]


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
    write_text_atomic(path, render_tsv(columns, (rows[name] for name in sorted(rows))))


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
    write_text_atomic(path, render_tsv(columns, (rows[p] for p in sorted(rows))))
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
        write_text_atomic(sidecar_path, dump_json(wanted))


def ensure_dataset(root: Path, dcm2niix_version: str) -> None:
    """Make ``root`` a BIDS dataset (its dataset-level files) under the dataset lock, whatever is
    converted into it later: a dataset never exists without ``dataset_description.json``. Also
    removes what killed conversions left: staging folders and temporary files."""
    try:
        with dataset_lock(root):
            _ensure_dataset_files(root, dcm2niix_version)
            sweep_staging(root)
            sweep_temporaries(root)
    except OSError as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"cannot write the dataset files of {root}: {exc}") from exc


def _ensure_dataset_files(root: Path, dcm2niix_version: str) -> None:
    """Create dataset_description.json, README.md and CHANGES when missing; never overwrite the user's."""
    if not (root / "dataset_description.json").exists():
        write_text_atomic(root / "dataset_description.json", dump_json(dataset_description(dcm2niix_version)))
    if not any((root / name).exists() for name in ("README", "README.md", "README.rst", "README.txt")):
        write_text_atomic(root / "README.md", readme_text())
    if not (root / "CHANGES").exists():
        write_text_atomic(root / "CHANGES", changes_text())
