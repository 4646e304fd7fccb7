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
disambiguated when publishing, see :func:`converters.bids.session_labels.resolve_sessions`.

**Labels always exist** (:meth:`Labels.resolve_subject`): a series is never refused for its
labels. The subject label is, in this order,

1. the label the caller gives (``--subject``, a routing rule, the plugin's ``Subject``), unless
   it is empty or a placeholder (:func:`usable_label`: a rule's ``{PatientID}`` of an anonymised
   series must not merge every such patient into one subject);
2. the subject template's value (default the PatientID) if none of the header fields it uses is
   empty or a placeholder — through the subject map or the pseudonym key when configured;
3. else ``pn`` + a keyed hash of the PatientName, when the header has a usable one (one label
   per patient, the name itself never written);
4. else ``st`` + a keyed hash of the StudyInstanceUID (each study its own subject).

The key of 3 and 4 is the site's pseudonym key when configured, else a random secret kept in the
dataset (:func:`converters.bids.manifests.dataset_secret`), so the hashes cannot be reversed by
trying names. Every fallback is said in the series' report (``notes``). Sessions without a usable
StudyDate get ``uid`` + a digest of the StudyInstanceUID (:func:`~converters.bids.session_labels.resolve_sessions`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from converters.bids.naming import STUDY_INDEX, sanitize_label
from converters.errors import LabelError
from converters.records import DicomSeries

__all__ = [
    "FIELDS",
    "PLACEHOLDERS",
    "PSEUDONYM_LENGTH",
    "STUDY_INDEX",
    "Labels",
    "SubjectLabel",
    "read_subject_map",
    "usable_label",
]

#: Placeholders a template may use, and the DicomSeries attribute each reads.
FIELDS: Mapping[str, str] = {
    "PatientID": "patient_id",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "StudyInstanceUID": "study_uid",
}
#: Hex digits kept of the keyed hash (48 bits: no collision in any realistic cohort).
PSEUDONYM_LENGTH = 12
#: Values anonymisers write instead of an identifier (compared upper case, letters and digits only).
PLACEHOLDERS = frozenset({
    "ANON", "ANONYMOUS", "ANONYMIZED", "ANONYMISED", "DEIDENTIFIED", "REMOVED", "DELETED", "REDACTED",
    "UNKNOWN", "NONE", "NULL", "NA", "EMPTY", "PATIENT", "NOID", "NOPATIENTID",
})  # fmt: skip


def usable_label(text: str) -> str | None:
    """``text`` as a BIDS label, or None when it cannot identify anyone: nothing left after
    sanitizing (``***``, ``-``), only zeros (``0000``), only ``X`` (``XXXXXX``), or a word from
    :data:`PLACEHOLDERS` (``ANONYMOUS``, ``REMOVED``, ...)."""
    try:
        label = sanitize_label(text)
    except LabelError:
        return None
    upper = label.upper()
    if upper in PLACEHOLDERS or set(upper) == {"0"} or (len(upper) > 1 and set(upper) == {"X"}):
        return None
    return label


@dataclass(frozen=True)
class SubjectLabel:
    """A subject label and where it came from (``given``, ``template``, ``subject map``,
    ``pseudonym``, ``PatientName hash``, ``StudyInstanceUID hash``); ``note`` says why a fallback
    was used (for the report), without any identifying value."""

    label: str
    source: str
    note: str | None = None


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

    def resolve_subject(
        self, series: DicomSeries, *, given: str | None = None, secret: Callable[[], bytes]
    ) -> SubjectLabel:
        """The subject label of ``series`` by the order in the module docstring; never fails for a
        missing or placeholder identifier. ``secret`` gives the dataset's key for the hashed
        fallbacks (called only when one is needed). Raises :class:`LabelError` only for a patient
        missing from a configured subject map (a site policy, not a missing label)."""
        why: list[str] = []
        if given is not None:
            label = usable_label(given)
            if label is not None:
                return SubjectLabel(label, "given")
            why.append("the given subject label is empty or a placeholder")
        unusable = self._unusable_fields(series)
        if not unusable:
            note = f"{why[0]}: subject from the subject template" if why else None
            return SubjectLabel(self.subject_label(series), self._source(), note)
        for name, value in unusable:
            why.append(f"{name} is {f'a placeholder ({value!r})' if value.strip() else 'empty or missing'}")
        key = self.pseudonym_key or secret()
        name = _person_name(series.patient_name)
        if usable_label(name) is not None:
            digest = hmac.new(key, f"PatientName:{name}".encode(), hashlib.sha256).hexdigest()
            return SubjectLabel(
                f"pn{digest[:PSEUDONYM_LENGTH]}",
                "PatientName hash",
                f"{'; '.join(why)}: subject labelled by a keyed hash of the PatientName",
            )
        digest = hmac.new(key, f"StudyInstanceUID:{series.study_uid}".encode(), hashlib.sha256).hexdigest()
        return SubjectLabel(
            f"st{digest[:PSEUDONYM_LENGTH]}",
            "StudyInstanceUID hash",
            f"{'; '.join(why)} and there is no usable PatientName: subject labelled by a keyed hash of the "
            "StudyInstanceUID (each such study is a subject of its own)",
        )

    def _unusable_fields(self, series: DicomSeries) -> list[tuple[str, str]]:
        """The header fields the subject template uses whose value is empty or a placeholder."""
        found: list[tuple[str, str]] = []
        for _text, name, _spec, _conversion in string.Formatter().parse(self.subject):
            if name is not None:
                value = str(getattr(series, FIELDS[name]))
                if usable_label(value) is None:
                    found.append((name, value))
        return found

    def _source(self) -> str:
        if self.subject_map is not None:
            return "subject map"
        return "pseudonym" if self.pseudonym_key is not None else "template"

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


def _person_name(value: str) -> str:
    """A DICOM person name in one form whatever the padding: components stripped, empty trailing
    components dropped, upper case (``Doe^John^^^`` and ``DOE^JOHN`` are one name)."""
    groups = []
    for group in value.split("="):  # alphabetic=ideographic=phonetic
        parts = [part.strip() for part in group.split("^")]
        while parts and not parts[-1]:
            parts.pop()
        groups.append("^".join(parts))
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).upper()


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
