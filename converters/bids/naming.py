"""BIDS names: label sanitizing, entity order, and relative paths of files in a raw dataset."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from converters.errors import LabelError
from converters.records import BidsTarget

__all__ = [
    "ENTITY_ORDER",
    "INDEX_ENTITIES",
    "STUDY_INDEX",
    "entity_value",
    "label_characters",
    "relative_path",
    "sanitize_label",
    "scans_path",
    "session_prefix",
]

#: Entity keys in the order the BIDS schema (1.11) puts them in file names. ``sub`` and ``ses`` come
#: from the subject/session, every other key from :attr:`BidsTarget.entities`.
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec",
    "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split",
    "recording", "chunk",
)  # fmt: skip

#: Session template numbering a subject's studies 1, 2, ... in StudyDate/StudyTime order (no date
#: in any path); only valid as the whole template (see :class:`converters.labels.Labels`).
STUDY_INDEX = "{StudyIndex}"

#: Entities whose value is a non-negative integer index rather than a label.
INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "split", "chunk"})

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


def label_characters(text: str) -> str:
    """``text`` reduced to the characters of a BIDS label (ASCII letters and digits, accents
    folded: ``"Müller-2"`` -> ``"Muller2"``); may be empty. The one definition of them."""
    decomposed = unicodedata.normalize("NFKD", text)
    return _NOT_ALNUM.sub("", decomposed.encode("ascii", "ignore").decode("ascii"))


def sanitize_label(text: str) -> str:
    """Reduce ``text`` to a BIDS label (:func:`label_characters`); raises :class:`LabelError` if
    nothing is left."""
    label = label_characters(text)
    if not label:
        raise LabelError(
            f"{text!r} has no letters or digits, so it cannot be a BIDS label; pass an explicit label instead"
        )
    return label


def entity_value(key: str, value: str) -> str:
    """Validate one entity value: digits for index entities, else a sanitized label."""
    if key not in ENTITY_ORDER or key in ("sub", "ses"):
        raise LabelError(f"unknown or misplaced BIDS entity {key!r} (value {value!r})")
    if key in INDEX_ENTITIES:
        if not value.isascii() or not value.isdigit():
            raise LabelError(f"BIDS entity {key!r} needs a non-negative integer, got {value!r}")
        return value
    return sanitize_label(value)


def session_prefix(subject: str, session: str | None) -> tuple[str, str]:
    """Return (folder, file-name prefix), e.g. ``("sub-01/ses-1", "sub-01_ses-1")``."""
    if session is None:
        return f"sub-{subject}", f"sub-{subject}"
    return f"sub-{subject}/ses-{session}", f"sub-{subject}_ses-{session}"


def _stem(prefix: str, entities: Mapping[str, str], suffix: str) -> str:
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise LabelError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [prefix]
    parts.extend(f"{key}-{entities[key]}" for key in ENTITY_ORDER if key in entities)
    parts.append(suffix)
    return "_".join(parts)


def relative_path(subject: str, session: str | None, target: BidsTarget, extension: str) -> str:
    """Path of one file relative to the dataset root, e.g.
    ``sub-01/ses-20220711/anat/sub-01_ses-20220711_acq-tfl_T1w.nii.gz``."""
    folder, prefix = session_prefix(subject, session)
    return f"{folder}/{target.datatype}/{_stem(prefix, target.entities, target.suffix)}{extension}"


def scans_path(subject: str, session: str | None) -> str:
    """Path of the session's ``*_scans.tsv`` relative to the dataset root."""
    folder, prefix = session_prefix(subject, session)
    return f"{folder}/{prefix}_scans.tsv"
