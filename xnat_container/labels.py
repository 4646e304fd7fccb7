"""XNAT labels (project, subject and session IDs): the one place that says which characters XNAT
accepts — ASCII letters, digits, ``_`` and ``-`` — and how other text is reduced to them (accents
folded, every other run of characters one ``_``, no ``_``/``-`` at either end).

Used by the delivery's layout and by the routing rules' ``xnat`` templates. Standard library only.
"""

from __future__ import annotations

import re
import unicodedata

from xnat_container.errors import XnatLabelError

__all__ = ["sanitize_xnat_label", "xnat_label_characters"]


def xnat_label_characters(text: str) -> str:
    """``text`` reduced to the characters of an XNAT label; may be empty."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9_-]+", "_", folded).strip("_-")


def sanitize_xnat_label(value: str, what: str = "label") -> str:
    """``value`` as an XNAT label; raises :class:`XnatLabelError` when no letter or digit is left."""
    label = xnat_label_characters(value)
    if not re.search(r"[A-Za-z0-9]", label):
        raise XnatLabelError(f"the XNAT {what} {value!r} has no letters or digits")
    return label
