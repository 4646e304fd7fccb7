"""Attribute references: DICOM keywords, tags and the ``source.*``/``series.*`` facts.

A field is written as a DICOM keyword (``SeriesDescription``, checked against pydicom's data
dictionary), a tag (``0018,0024`` or ``(0018,0024)``; a tag the dictionary names is looked up by
its keyword, others such as private tags by ``GGGG,EEEE``), or one of :data:`SOURCE_FIELDS` /
:data:`SERIES_FIELDS`.
"""

from __future__ import annotations

import difflib
import re

from pydicom.datadict import dictionary_keyword, keyword_dict, tag_for_keyword

from converters.errors import BidsBridgeError

from .model import FieldRef, SeriesFacts

__all__ = ["SERIES_FIELDS", "SOURCE_FIELDS", "FieldError", "lookup", "parse_field", "tag_key"]

#: Where the data came from (Orthanc instance metadata RemoteAET, CalledAET, RemoteIP).
SOURCE_FIELDS = ("calling_aet", "called_aet", "remote_ip")
#: Facts about the whole series.
SERIES_FIELDS = ("instance_count",)

_TAG = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")
_LOOKS_LIKE_TAG = re.compile(r"^[(\d]|,")


class FieldError(BidsBridgeError, ValueError):
    """A field name is not usable; ``hint`` says what would be."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def tag_key(group: int, element: int) -> str:
    """Lookup key of a tag: its dictionary keyword, else ``GGGG,EEEE`` (upper-case hex)."""
    tag = group << 16 | element
    try:
        keyword = dictionary_keyword(tag)
    except KeyError:
        keyword = ""
    return keyword or f"{group:04X},{element:04X}"


def parse_field(name: str) -> FieldRef:
    """Resolve a field as written in a rule file; raise :class:`FieldError` if it names nothing."""
    if name.startswith(("source.", "series.")):
        kind, _, fact = name.partition(".")
        known = SOURCE_FIELDS if kind == "source" else SERIES_FIELDS
        if fact not in known:
            choices = ", ".join(f"{kind}.{f}" for f in known)
            raise FieldError(f"unknown field {name!r}", f"known {kind} fields: {choices}")
        return FieldRef(name, fact, "source" if kind == "source" else "series")
    if _LOOKS_LIKE_TAG.search(name):
        found = _TAG.match(name)
        if found is None:
            raise FieldError(
                f"malformed tag {name!r}", "write a tag as four hex digits, a comma, four hex digits: 0018,0024"
            )
        return FieldRef(name, tag_key(int(found.group(1), 16), int(found.group(2), 16)), "dicom")
    if name.isascii() and name.isidentifier() and tag_for_keyword(name) is not None:
        return FieldRef(name, name, "dicom")
    close = difflib.get_close_matches(name, keyword_dict.keys(), n=3) if len(name) <= 64 else []
    hint = (f"did you mean {', '.join(close)}?" if close
            else "use a keyword from the DICOM dictionary or a tag GGGG,EEEE")
    if not name.isascii():
        hint = "the name has non-ASCII characters (look-alike letters?); " + hint
    raise FieldError(f"unknown DICOM keyword {name!r}", hint)


def lookup(facts: SeriesFacts, field: FieldRef) -> str | None:
    """The value of ``field`` for a series as text, or None when the series does not have it."""
    if field.kind == "source":
        value = getattr(facts.source, field.key, None)
        return value if isinstance(value, str) and value != "" else None
    if field.kind == "series":
        return str(facts.instance_count) if field.key == "instance_count" else None
    return facts.attributes.get(field.key)
