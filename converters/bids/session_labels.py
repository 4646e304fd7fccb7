"""Session labels: which label each study of a subject gets, a pure function of all its studies
(no I/O, so arrival order never matters). Moving a study's files when its label changes is the
publisher's job (:func:`converters.bids.publish.publish`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from converters.bids.manifests import SeriesManifest
from converters.bids.naming import STUDY_INDEX
from converters.errors import DatasetError

__all__ = ["StudyKey", "resolve_sessions"]


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
