"""Templates: plain substitution of attribute values, simple filters, then sanitizing.

``{PatientID}``, ``P_{source.calling_aet|upper}``, ``{PatientID|hash}`` — each ``{...}`` names a
field (see :mod:`.fields`) and optional filters from :data:`FILTERS`. Nothing else is evaluated.

What a template produces always goes through the sanitizer of its *kind* before it can touch a
path or a URL, and becomes one safe ASCII path segment:

``label``  BIDS labels (subject, session, entity values): letters and digits only, accents folded.
``index``  BIDS index entities (``run``, ``echo``): digits only.
``xnat``   XNAT project/subject/session IDs: letters, digits, ``_`` and ``-``; anything else
           becomes ``_``; never ``/``, ``.`` or an empty string.
``text``   free text (a skip reason): substituted (a missing attribute gives ``?``), control
           characters removed, not a path.

The literal text of a path template is checked as strictly when the rule file is checked, so
``../{PatientID}`` or ``/etc`` is an error there, not something silently rewritten.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from converters.bids.naming import label_characters
from converters.errors import BidsBridgeError
from xnat_container.labels import xnat_label_characters

from .fields import FieldError, lookup, parse_field
from .model import Position, SeriesFacts, Substitution, Template

__all__ = [
    "FILTERS",
    "MAX_SEGMENT",
    "Rendered",
    "TemplateError",
    "TemplateKind",
    "parse_template",
    "render",
    "sanitize",
]

TemplateKind = Literal["label", "index", "xnat", "text"]

#: Longest segment a path template may produce (longer results are cut).
MAX_SEGMENT = 64
_MAX_TEXT = 500


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _hash(text: str) -> str:
    # "surrogatepass": a lone surrogate (Orthanc's JSON may escape one, "\ud800") hashes instead of
    # raising; every other text hashes as its UTF-8 bytes.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


#: Filter name -> function (applied left to right). ``hash``: first 12 hex digits of SHA-256,
#: for pseudonymous labels (not a secret: anyone with the PatientID can recompute it).
FILTERS: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "hash": _hash,
    "alnum": lambda text: re.sub(r"[^A-Za-z0-9]", "", _ascii(text)),
    "digits": lambda text: re.sub(r"[^0-9]", "", text),
    "strip": str.strip,
}

_ALLOWED_LITERAL = {
    "label": re.compile(r"^[A-Za-z0-9]*$"),
    "index": re.compile(r"^[0-9]*$"),
    "xnat": re.compile(r"^[A-Za-z0-9_-]*$"),
}
_WHAT = {
    "label": "a BIDS label (letters and digits only)",
    "index": "a BIDS index (digits only)",
    "xnat": "an XNAT ID (letters, digits, '_' and '-')",
}
_SUBSTITUTION = re.compile(r"\{([^{}]*)\}")


class TemplateError(BidsBridgeError, ValueError):
    """A template cannot be used; ``offset`` is the character where the problem starts."""

    def __init__(self, message: str, hint: str, offset: int = 0) -> None:
        super().__init__(message)
        self.hint = hint
        self.offset = offset


def _check_literal(text: str, kind: TemplateKind, offset: int) -> None:
    if kind == "text":
        return
    if "/" in text or "\\" in text or ".." in text or text.startswith("~") or "\x00" in text:
        raise TemplateError(
            f"template text {text!r} looks like a path; a template makes exactly one folder or file name",
            "remove '/', '\\', '..' and '~'; values are placed inside the dataset/project by bidsbridge",
            offset,
        )
    if not _ALLOWED_LITERAL[kind].match(text):
        bad = sorted({ch for ch in text if not _ALLOWED_LITERAL[kind].match(ch)})
        raise TemplateError(
            f"template text {text!r} has characters {''.join(bad)!r} that {_WHAT[kind]} cannot hold",
            f"keep to {_WHAT[kind]}",
            offset,
        )


def parse_template(source: str, kind: TemplateKind, position: Position) -> Template:
    """Parse and check a template; raise :class:`TemplateError` naming the first problem."""
    parts: list[str | Substitution] = []
    index = 0
    for found in _SUBSTITUTION.finditer(source):
        literal = source[index : found.start()]
        if "{" in literal or "}" in literal:
            raise TemplateError(f"unbalanced brace in template {source!r}", "write {Keyword} or {Keyword|filter}",
                                index)
        _check_literal(literal, kind, index)
        if literal:
            parts.append(literal)
        name, *filters = (piece.strip() for piece in found.group(1).split("|"))
        try:
            field = parse_field(name)
        except FieldError as exc:
            raise TemplateError(f"template {source!r}: {exc}", exc.hint, found.start() + 1) from None
        for name_ in filters:
            if name_ not in FILTERS:
                raise TemplateError(f"unknown template filter {name_!r}", f"filters: {', '.join(FILTERS)}",
                                    found.start() + 1)
        parts.append(Substitution(field, tuple(filters)))
        index = found.end()
    tail = source[index:]
    if "{" in tail or "}" in tail:
        raise TemplateError(f"unbalanced brace in template {source!r}", "write {Keyword} or {Keyword|filter}", index)
    _check_literal(tail, kind, index)
    if tail:
        parts.append(tail)
    if not parts:
        raise TemplateError("empty template", "give a value such as {PatientID}")
    return Template(source, tuple(parts), position)


def sanitize(text: str, kind: TemplateKind) -> str:
    """Reduce ``text`` to what ``kind`` allows (see the module documentation); may return ''."""
    if kind == "text":
        cleaned = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
        return cleaned[:_MAX_TEXT]
    if kind == "label":
        return label_characters(text)[:MAX_SEGMENT]
    if kind == "index":
        return re.sub(r"[^0-9]", "", _ascii(text))[:MAX_SEGMENT]
    return xnat_label_characters(text)[:MAX_SEGMENT].strip("_-")


@dataclass(frozen=True)
class Rendered:
    """A template's sanitized result, or why there is none (a missing attribute, nothing left)."""

    value: str | None
    problem: str | None = None


def render(template: Template, facts: SeriesFacts, kind: TemplateKind) -> Rendered:
    """Substitute, filter and sanitize; never raises."""
    pieces: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            pieces.append(part)
            continue
        value = lookup(facts, part.field)
        if value is None and kind == "text":
            value = "?"
        if value is None:
            return Rendered(None, f"template {template.source!r}: the series has no {part.field.name}")
        for name in part.filters:
            value = FILTERS[name](value)
        pieces.append(value)
    result = sanitize("".join(pieces), kind)
    if not result:
        return Rendered(None, f"template {template.source!r} gives nothing usable for {kind} after sanitizing")
    return Rendered(result)
