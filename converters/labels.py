"""Subject and session labels: templates over DICOM header fields, optional pseudonymisation.

A :class:`Labels` policy says how a series' subject and session labels are made:

- ``subject`` / ``session`` are templates with ``{Field}`` placeholders (see :data:`FIELDS`),
  default ``{PatientID}`` and ``{StudyDate}``; the result is reduced to BIDS letters and digits.
  The session template ``{StudyIndex}`` numbers each subject's studies 1, 2, ... in date order
  instead (no date in any path; an earlier study arriving later renumbers the others);
- ``pseudonym_key`` (a site secret) replaces the subject label by a keyed hash (HMAC-SHA256 of the
  templated label, first :data:`PSEUDONYM_LENGTH` hex digits): stable for one site, not
  reversible without the key, and different across sites;
- ``subject_map`` (e.g. read from a TSV by :func:`read_subject_map`) maps the templated label
  (before sanitizing) to the label to use; a patient missing from the table is refused rather
  than published under its real identifier.

A session label that more than one study of a subject would get (two studies on one day) is
disambiguated when publishing, see :func:`converters.bids.publish.resolve_sessions`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from converters.bids.naming import STUDY_INDEX, sanitize_label
from converters.errors import LabelError
from converters.records import DicomSeries

__all__ = ["FIELDS", "PSEUDONYM_LENGTH", "STUDY_INDEX", "Labels", "read_subject_map"]

#: Placeholders a template may use, and the DicomSeries attribute each reads.
FIELDS: Mapping[str, str] = {
    "PatientID": "patient_id",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "StudyInstanceUID": "study_uid",
}
#: Hex digits kept of the keyed hash (48 bits: no collision in any realistic cohort).
PSEUDONYM_LENGTH = 12


def _check_template(template: str) -> None:
    if template == STUDY_INDEX:
        return
    for _text, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if name not in FIELDS or spec or conversion:
            raise LabelError(f"label template {template!r}: unknown placeholder {{{name}}}; use {sorted(FIELDS)}")


@dataclass(frozen=True)
class Labels:
    """How subject and session labels are made (see the module docstring). Immutable."""

    #: Template of the subject label (default ``{PatientID}``).
    subject: str = "{PatientID}"
    #: Template of the session label (default ``{StudyDate}``).
    session: str = "{StudyDate}"
    #: Site secret for keyed-hash pseudonyms of the subject, or None.
    pseudonym_key: bytes | None = field(default=None, repr=False)
    #: Templated subject -> label to publish, or None.
    subject_map: Mapping[str, str] | None = field(default=None, hash=False, repr=False)
    #: Write age and sex to participants.tsv when the headers record them (default True).
    demographics: bool = True

    def __post_init__(self) -> None:
        _check_template(self.subject)
        _check_template(self.session)
        if self.pseudonym_key is not None and self.subject_map is not None:
            raise LabelError("give either a pseudonym key or a subject map, not both")
        if self.pseudonym_key is not None and len(self.pseudonym_key) < 16:
            raise LabelError("the pseudonym key must hold at least 16 bytes; generate it with a random source")

    @staticmethod
    def _fill(template: str, series: DicomSeries) -> str:
        return template.format(**{name: getattr(series, attribute) for name, attribute in FIELDS.items()})

    def subject_label(self, series: DicomSeries) -> str:
        """The subject label of ``series``; raises :class:`LabelError` when there is none."""
        raw = self._fill(self.subject, series).strip()
        if not raw:
            raise LabelError(f"the subject template {self.subject!r} gives nothing for this series; pass a subject")
        if self.subject_map is not None:
            if raw not in self.subject_map:
                raise LabelError(f"subject {raw!r} is not in the subject mapping table; add it (nothing was published)")
            return sanitize_label(self.subject_map[raw])
        if self.pseudonym_key is not None:
            digest = hmac.new(self.pseudonym_key, raw.encode("utf-8"), hashlib.sha256).hexdigest()
            return digest[:PSEUDONYM_LENGTH]
        return sanitize_label(raw)

    def session_label(self, series: DicomSeries) -> str | None:
        """The session label before disambiguation, or None when the template gives nothing
        (e.g. no StudyDate): the publisher then derives one from the StudyInstanceUID.
        :data:`STUDY_INDEX` comes back as it is: the publisher numbers the studies."""
        if self.session == STUDY_INDEX:
            return STUDY_INDEX
        raw = self._fill(self.session, series)
        try:
            return sanitize_label(raw)
        except LabelError:
            return None


_SEPARATOR = re.compile(r"\t|,")


def read_subject_map(path: Path) -> dict[str, str]:
    """Read a two-column table (TSV or CSV; ``source<TAB>label``, an optional header line whose
    second column is ``label`` or ``participant_id``) into a mapping."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LabelError(f"cannot read the subject mapping table {path}: {exc}") from exc
    table: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = [cell.strip() for cell in _SEPARATOR.split(line)]
        if len(cells) != 2 or not all(cells):
            raise LabelError(f"{path} line {number}: expected two columns (source, label), got {line!r}")
        if number == 1 and cells[1].lower() in ("label", "participant_id", "subject"):
            continue
        if cells[0] in table:
            raise LabelError(f"{path} line {number}: {cells[0]!r} is mapped twice")
        table[cells[0]] = cells[1].removeprefix("sub-")
    return table
