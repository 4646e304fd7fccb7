"""What goes where in XNAT for one BIDS session: a pure plan, computed from the dataset on disk.

For project ``P``, BIDS subject ``S`` and session ``X`` (the layout xnat2bids and BIDS apps
launched from XNAT expect):

* subject label and session label from templates (default ``{subject}`` and
  ``{subject}_{session}``), sanitized to XNAT's label characters (letters, digits, ``_``, ``-``);
* session ``xsiType`` by the modality most of its series have (``xnat:mrSessionData``,
  ``xnat:petSessionData``, ``xnat:ctSessionData``), date and time from the earliest acquisition;
* one scan per converted series: ID = SeriesNumber, ``type`` and ``series_description`` = the
  SeriesDescription, scan ``xsiType`` by modality; resource ``NIFTI`` holds the series' files
  (``.nii.gz``, ``.json``, ``.bval``, ``.bvec`` and companions such as ``_aslcontext.tsv``) and
  resource ``BIDS`` its JSON sidecars, all under their BIDS file names; resource ``QC`` the QC
  pictures of its images and of their derivations (``derivatives/bidsbridge-qc/``, PNG,
  :mod:`converters.qc`), when it has any;
* a session resource ``BIDS`` with the session's BIDS tree (paths from the dataset root,
  ``sub-S/ses-X/anat/...``) and ``dataset_description.json``;
* derived DICOM objects (SEG, Parametric Map, SR) as scans of their own, ID = their
  SeriesNumber, with a ``DICOM`` resource; SEG as ``xnat:segScanData``, SR as ``xnat:srScanData``.

Series are grouped by the converter's manifests (``.bidsbridge/series/*.json``). Scan IDs are
decided over *all* series of the session, so pushing one series at a time gives the same IDs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from converters.bids.derivatives import derived_outputs
from converters.bids.manifests import SeriesManifest, read_manifests
from converters.derived import SEGMENTATION_SOP_CLASSES
from converters.errors import DatasetError
from converters.qc import file_pictures, series_pictures
from xnat_container.destinations import DEFAULT_SESSION_LABEL, DEFAULT_SUBJECT_LABEL
from xnat_container.errors import XnatLabelError, XnatRequestError
from xnat_container.labels import sanitize_xnat_label

__all__ = [
    "DERIVED_RESOURCE",
    "NIFTI_RESOURCE",
    "QC_RESOURCE",
    "SESSION_RESOURCE",
    "SIDECAR_RESOURCE",
    "ResourcePlan",
    "ScanPlan",
    "SessionPlan",
    "UploadFile",
    "dataset_sessions",
    "plan_session",
    "render_label",
    "sanitize_xnat_label",
    "scan_xsi_type",
    "session_xsi_type",
]

NIFTI_RESOURCE = "NIFTI"
SIDECAR_RESOURCE = "BIDS"
SESSION_RESOURCE = "BIDS"
DERIVED_RESOURCE = "DICOM"
QC_RESOURCE = "QC"

_SESSION_TYPES = {"MR": "xnat:mrSessionData", "PT": "xnat:petSessionData", "CT": "xnat:ctSessionData"}
_SCAN_TYPES = {
    "MR": "xnat:mrScanData",
    "PT": "xnat:petScanData",
    "CT": "xnat:ctScanData",
    "SEG": "xnat:segScanData",
    "SR": "xnat:srScanData",
}
_OTHER_SCAN = "xnat:otherDicomScanData"



def render_label(template: str, subject: str, session: str | None, what: str = "label") -> str:
    """Fill a label template (``{subject}``, ``{session}``) and sanitize the result.

    Without a session, ``{session}`` is empty and the separators around it disappear.
    """
    try:
        text = template.format(subject=subject, session=session or "")
    except (KeyError, IndexError, ValueError) as exc:
        raise XnatLabelError(f"cannot fill the {what} template {template!r}: {exc}") from exc
    return sanitize_xnat_label(text, what)


def session_xsi_type(modalities: Sequence[str]) -> str:
    """The session type for the modalities of its series (the most common known one wins)."""
    counts = Counter(m for m in modalities if m in _SESSION_TYPES)
    if not counts:
        return _SESSION_TYPES["MR"]
    return _SESSION_TYPES[sorted(counts, key=lambda m: (-counts[m], m))[0]]


def scan_xsi_type(modality: str, sop_class_uid: str = "") -> str:
    if sop_class_uid in SEGMENTATION_SOP_CLASSES:
        return _SCAN_TYPES["SEG"]
    return _SCAN_TYPES.get(modality.upper(), _OTHER_SCAN)


@dataclass(frozen=True)
class UploadFile:
    local: Path
    #: Path inside the XNAT resource.
    remote: str


@dataclass(frozen=True)
class ResourcePlan:
    label: str
    format: str
    files: tuple[UploadFile, ...]


@dataclass(frozen=True)
class ScanPlan:
    scan_id: str
    xsi_type: str
    type: str
    series_description: str
    #: SeriesInstanceUID of the source (or derived) series.
    series_uid: str
    modality: str
    resources: tuple[ResourcePlan, ...]


@dataclass(frozen=True)
class SessionPlan:
    project: str
    #: BIDS labels (without ``sub-``/``ses-``).
    subject: str
    session: str | None
    subject_label: str
    session_label: str
    xsi_type: str
    #: ``YYYY-MM-DD`` and ``HH:MM:SS``, or ``""`` when unknown.
    date: str
    time: str
    scans: tuple[ScanPlan, ...]
    #: Session-level resources.
    resources: tuple[ResourcePlan, ...]

    def file_count(self) -> int:
        return sum(len(r.files) for _scan, r in self.all_resources())

    def all_resources(self) -> Iterator[tuple[ScanPlan | None, ResourcePlan]]:
        for scan in self.scans:
            for resource in scan.resources:
                yield scan, resource
        for resource in self.resources:
            yield None, resource


def _session_folder(subject: str, session: str | None) -> str:
    return f"sub-{subject}/ses-{session}" if session else f"sub-{subject}"


def _sidecar(root: Path, outputs: Sequence[str]) -> dict[str, object]:
    for name in outputs:
        if name.endswith(".json"):
            try:
                data = json.loads((root / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                return data
    return {}


def _assign_ids(wanted: Sequence[tuple[int | None, str]], taken: set[str]) -> dict[str, str]:
    """Scan IDs by series UID: the SeriesNumber, or ``<number>_<k>`` when taken, ``u<digest>`` without one."""
    ids: dict[str, str] = {}
    for number, uid in sorted(wanted, key=lambda item: (item[0] is None, item[0] or 0, item[1])):
        base = str(number) if number is not None else "u" + hashlib.sha256(uid.encode()).hexdigest()[:8]
        candidate, k = base, 1
        while candidate in taken:
            k += 1
            candidate = f"{base}_{k}"
        taken.add(candidate)
        ids[uid] = candidate
    return ids


def _date_time(manifests: Sequence[SeriesManifest]) -> tuple[str, str]:
    times = sorted(t for m in manifests for _name, t in m.scans if t and t != "n/a")
    if not times:
        return "", ""
    match = re.match(r"(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2}:\d{2}))?", times[0])
    if match is None:
        return "", ""
    return match.group(1), match.group(2) or ""


@dataclass(frozen=True)
class _Derived:
    series_uid: str
    series_number: int | None
    description: str
    modality: str
    sop_class_uid: str
    files: tuple[Path, ...]


def _read_derived(paths: Sequence[Path]) -> list[_Derived]:
    grouped: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise XnatRequestError(f"cannot read the derived DICOM object {path}: {exc}") from exc
        grouped.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((Path(path), ds))
    found = []
    for uid, members in sorted(grouped.items()):
        first = members[0][1]
        number = first.get("SeriesNumber")
        found.append(
            _Derived(
                series_uid=uid,
                series_number=int(number) if number not in (None, "") else None,
                description=str(first.get("SeriesDescription", "") or ""),
                modality=str(first.get("Modality", "") or ""),
                sop_class_uid=str(first.get("SOPClassUID", "") or ""),
                files=tuple(sorted(p for p, _ds in members)),
            )
        )
    return found


def _derived_resource(item: _Derived) -> ResourcePlan:
    names = [p.name for p in item.files]
    unique = len(set(names)) == len(names)
    files = tuple(UploadFile(p, p.name if unique else f"{index:04d}_{p.name}") for index, p in enumerate(item.files, 1))
    return ResourcePlan(DERIVED_RESOURCE, "DICOM", files)


def _session_manifests(root: Path, subject: str, session: str | None) -> list[SeriesManifest]:
    try:
        manifests = read_manifests(root)
    except DatasetError as exc:
        raise XnatRequestError(str(exc)) from exc
    return sorted(
        (m for m in manifests.values() if m.subject == subject and (m.session or None) == (session or None)),
        key=lambda m: m.series_uid,
    )


def dataset_sessions(bids_root: Path) -> list[tuple[str, str | None]]:
    """Every (subject, session) of a converted dataset, from its manifests, sorted."""
    try:
        manifests = read_manifests(Path(bids_root))
    except DatasetError as exc:
        raise XnatRequestError(str(exc)) from exc
    return sorted({(m.subject, m.session or None) for m in manifests.values() if m.outputs}, key=str)


def _chosen_outputs(
    root: Path,
    manifests: Sequence[SeriesManifest],
    series_outputs: Mapping[str, Sequence[str]] | None,
    subject: str,
    session: str | None,
) -> dict[str, tuple[str, ...]]:
    """The series to deliver -> their files: every series of the session, or those named (with files)."""
    if series_outputs is None:
        return {m.series_uid: tuple(m.outputs) for m in manifests}
    known = {m.series_uid for m in manifests}
    unknown = sorted(uid for uid, outputs in series_outputs.items() if outputs and uid not in known)
    if unknown:
        raise XnatRequestError(
            f"series {unknown[0]} has outputs but no manifest for sub-{subject} ses-{session} in {root}"
        )
    return {uid: tuple(outputs) for uid, outputs in series_outputs.items() if outputs}


def _qc_pictures(root: Path, series_uid: str) -> tuple[UploadFile, ...]:
    """The QC pictures of a series' images and of the images derived from it, by file name."""
    try:
        derived = derived_outputs(root, series_uid)
    except DatasetError as exc:
        raise XnatRequestError(str(exc)) from exc
    found = series_pictures(root, series_uid) + file_pictures(root, derived)
    return tuple(UploadFile(root / name, Path(name).name) for name in sorted(set(found)))


def _series_scan(root: Path, manifest: SeriesManifest, outputs: Sequence[str], scan_id: str) -> ScanPlan:
    """The scan of one converted series: its files in ``NIFTI``, its JSON sidecars also in ``BIDS``."""
    missing = [name for name in outputs if not (root / name).is_file()]
    if missing:
        raise XnatRequestError(f"{root / missing[0]} is listed as an output but does not exist; re-convert")
    sidecar = _sidecar(root, outputs)
    modality = str(sidecar.get("Modality") or "MR")
    description = manifest.series_description or str(sidecar.get("SeriesDescription") or "")
    nifti = tuple(UploadFile(root / name, Path(name).name) for name in sorted(outputs))
    sidecars = tuple(f for f in nifti if f.remote.endswith(".json"))
    resources = [ResourcePlan(NIFTI_RESOURCE, "NIFTI", nifti)]
    if sidecars:
        resources.append(ResourcePlan(SIDECAR_RESOURCE, "BIDS", sidecars))
    pictures = _qc_pictures(root, manifest.series_uid)
    if pictures:
        resources.append(ResourcePlan(QC_RESOURCE, "PNG", pictures))
    return ScanPlan(
        scan_id=scan_id,
        xsi_type=scan_xsi_type(modality),
        type=description,
        series_description=description,
        series_uid=manifest.series_uid,
        modality=modality,
        resources=tuple(resources),
    )


def _derived_scan(item: _Derived, scan_id: str) -> ScanPlan:
    """The scan of one derived DICOM object (SEG, Parametric Map, SR), its files in ``DICOM``."""
    return ScanPlan(
        scan_id=scan_id,
        xsi_type=scan_xsi_type(item.modality, item.sop_class_uid),
        type=item.description or item.modality,
        series_description=item.description,
        series_uid=item.series_uid,
        modality=item.modality,
        resources=(_derived_resource(item),),
    )


def _session_resources(
    root: Path, folder: Path, outputs: Sequence[str], *, whole_session: bool
) -> tuple[ResourcePlan, ...]:
    """The session resource ``BIDS`` (none when empty), by path from the dataset root.

    It holds the delivered series' files; with the whole session, every (non-hidden) file of its
    folder, else the session's ``*_scans.tsv``; and ``dataset_description.json``.
    """
    session_files: dict[str, Path] = {name: root / name for name in outputs}
    if whole_session and folder.is_dir():
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and not any(part.startswith(".") for part in relative.parts):
                session_files[relative.as_posix()] = path
    elif session_files:
        for path in sorted(folder.glob("*_scans.tsv")):
            session_files[path.relative_to(root).as_posix()] = path
    dataset_description = root / "dataset_description.json"
    if session_files and dataset_description.is_file():
        session_files["dataset_description.json"] = dataset_description
    if not session_files:
        return ()
    files = tuple(UploadFile(p, n) for n, p in sorted(session_files.items()))
    return (ResourcePlan(SESSION_RESOURCE, "BIDS", files),)


def _label(explicit: str | None, template: str, subject: str, session: str | None, what: str) -> str:
    """An explicit XNAT label (sanitized), else ``template`` filled for this session."""
    return sanitize_xnat_label(explicit, what) if explicit else render_label(template, subject, session, what)


def plan_session(
    project: str,
    bids_root: Path,
    subject: str,
    session: str | None,
    *,
    series_outputs: Mapping[str, Sequence[str]] | None = None,
    derived: Sequence[Path] = (),
    subject_label: str | None = None,
    session_label: str | None = None,
    subject_template: str = DEFAULT_SUBJECT_LABEL,
    session_template: str = DEFAULT_SESSION_LABEL,
) -> SessionPlan:
    """The XNAT layout of one BIDS session (see the module docstring).

    :param series_outputs: SeriesInstanceUID -> its files relative to the dataset root, to
        deliver only those series (as the plugin does per job); ``None``: every series of the session.
    :param derived: derived DICOM files (SEG, Parametric Map, SR) to deliver as scans of their own.
    :param subject_label: explicit XNAT subject label (default from ``subject_template``).
    :param session_label: explicit XNAT session label (default from ``session_template``).
    """
    root = Path(bids_root).resolve()
    manifests = _session_manifests(root, subject, session)
    derived_items = _read_derived(derived)
    ids = _assign_ids([(m.series_number, m.series_uid) for m in manifests], set())
    derived_ids = _assign_ids([(d.series_number, d.series_uid) for d in derived_items], set(ids.values()))
    chosen = _chosen_outputs(root, manifests, series_outputs, subject, session)
    delivered = [m for m in manifests if m.series_uid in chosen]

    scans = [_series_scan(root, m, chosen[m.series_uid], ids[m.series_uid]) for m in delivered]
    modalities = [scan.modality for scan in scans]
    scans += [_derived_scan(item, derived_ids[item.series_uid]) for item in derived_items]
    session_resources = _session_resources(
        root,
        root / _session_folder(subject, session),
        [name for m in delivered for name in chosen[m.series_uid]],
        whole_session=series_outputs is None,
    )
    if not scans and not session_resources:
        raise XnatRequestError(f"nothing to deliver: no converted series of sub-{subject} ses-{session} in {root}")
    date, clock = _date_time(delivered or manifests)
    return SessionPlan(
        project=project,
        subject=subject,
        session=session,
        subject_label=_label(subject_label, subject_template, subject, session, "subject label"),
        session_label=_label(session_label, session_template, subject, session, "session label"),
        xsi_type=session_xsi_type(modalities or [d.modality for d in derived_items]),
        date=date,
        time=clock,
        scans=tuple(sorted(scans, key=lambda s: _scan_sort_key(s.scan_id))),
        resources=session_resources,
    )


def _scan_sort_key(scan_id: str) -> tuple[int, str]:
    match = re.match(r"\d+", scan_id)
    return (int(match.group(0)) if match else 1 << 30, scan_id)
