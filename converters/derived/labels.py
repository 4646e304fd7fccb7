"""Label tables: which label value of a label map means what.

Accepted inputs (:func:`read_label_table` picks the parser from the file name):

* JSON, the short form ``{"1": "tumor", "2": "edema"}``;
* JSON, the rich form ``{"1": {"name": "tumor", "category": CODE, "type": CODE, "color": "#ff0000",
  "description": "..."}}`` or a list of such objects each with an ``"index"``; ``CODE`` is
  ``{"CodeValue": "108369006", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Neoplasm"}``
  (``value``/``scheme``/``meaning`` work too) or the string ``"SCT:108369006:Neoplasm"``;
* a BIDS ``dseg.tsv`` with columns ``index`` and ``name`` (``color`` used when present).

Labels without codes get the generic category and type SCT 85756007 "Tissue", as 3D Slicer
does for new segments. Label value 0 is background and never a label.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from converters.derived.errors import LabelTableError

__all__ = [
    "DEFAULT_CATEGORY",
    "DEFAULT_TYPE",
    "Label",
    "LabelTable",
    "format_dseg_tsv",
    "parse_label_table",
    "read_label_table",
]

DEFAULT_CATEGORY: Code = codes.SCT.Tissue
DEFAULT_TYPE: Code = codes.SCT.Tissue
_MAX_LABEL = 65535
_COLOR = re.compile(r"^#?([0-9a-fA-F]{6})$")


@dataclass(frozen=True)
class Label:
    """One label of a label map."""

    value: int
    name: str
    category: Code = DEFAULT_CATEGORY
    type: Code = DEFAULT_TYPE
    #: Display colour as RGB 0-255, when given.
    color: tuple[int, int, int] | None = None
    description: str = ""


@dataclass(frozen=True)
class LabelTable:
    """Labels by value, ascending, values unique and in 1..65535."""

    labels: tuple[Label, ...]

    def __post_init__(self) -> None:
        values = [label.value for label in self.labels]
        if values != sorted(set(values)):
            raise LabelTableError("label values must be unique (the table keeps them sorted)")
        if values and not 1 <= values[0] <= values[-1] <= _MAX_LABEL:
            raise LabelTableError(f"label values must lie in 1..{_MAX_LABEL} (0 is background)")

    @classmethod
    def of(cls, labels: Iterable[Label]) -> LabelTable:
        return cls(tuple(sorted(labels, key=lambda label: label.value)))

    @classmethod
    def defaults(cls, values: Iterable[int]) -> LabelTable:
        """A table naming each value ``label <value>`` with the default codes."""
        return cls.of(Label(int(v), f"label {int(v)}") for v in sorted(set(values)) if int(v) != 0)

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(label.value for label in self.labels)

    def __getitem__(self, value: int) -> Label:
        for label in self.labels:
            if label.value == value:
                return label
        raise KeyError(value)

    def __len__(self) -> int:
        return len(self.labels)

    def restricted_to(self, values: Iterable[int], *, what: str) -> LabelTable:
        """The labels whose value occurs in ``values`` (0 ignored).

        :raises LabelTableError: a value occurs that the table does not name.
        """
        present = sorted({int(v) for v in values} - {0})
        missing = [v for v in present if v not in self.values]
        if missing:
            raise LabelTableError(
                f"{what} holds label value(s) {', '.join(map(str, missing))} that the label table does not name "
                f"(it names {', '.join(map(str, self.values)) or 'nothing'})"
            )
        return LabelTable.of(label for label in self.labels if label.value in present)

    def renumbered(self) -> tuple[LabelTable, dict[int, int]]:
        """The same labels numbered 1..N in order, and the mapping original value → new number."""
        mapping = {label.value: n for n, label in enumerate(self.labels, start=1)}
        return LabelTable.of(replace(label, value=mapping[label.value]) for label in self.labels), mapping


def _code(obj: Any, where: str) -> Code:
    if isinstance(obj, Code):
        return obj
    if isinstance(obj, str):
        parts = obj.split(":", 2)
        if len(parts) == 3 and all(p.strip() for p in parts):
            return Code(parts[1].strip(), parts[0].strip(), parts[2].strip())
    elif isinstance(obj, Mapping):
        value = obj.get("CodeValue", obj.get("value"))
        scheme = obj.get("CodingSchemeDesignator", obj.get("scheme"))
        meaning = obj.get("CodeMeaning", obj.get("meaning"))
        if value and scheme and meaning:
            return Code(str(value), str(scheme), str(meaning))
    raise LabelTableError(
        f"{where}: a code must be {{\"CodeValue\", \"CodingSchemeDesignator\", \"CodeMeaning\"}} "
        f"or \"SCHEME:VALUE:MEANING\", got {obj!r}"
    )


def _color(obj: Any, where: str) -> tuple[int, int, int] | None:
    if obj is None or (isinstance(obj, str) and obj.strip() in {"", "n/a"}):
        return None
    if isinstance(obj, str) and (match := _COLOR.match(obj.strip())):
        hexa = match.group(1)
        return (int(hexa[0:2], 16), int(hexa[2:4], 16), int(hexa[4:6], 16))
    if isinstance(obj, Sequence) and not isinstance(obj, str) and len(obj) == 3:
        try:
            rgb = tuple(int(c) for c in obj)
        except (TypeError, ValueError):
            rgb = ()
        if len(rgb) == 3 and all(0 <= c <= 255 for c in rgb):
            return (rgb[0], rgb[1], rgb[2])
    raise LabelTableError(f"{where}: colour must be \"#rrggbb\" or [r, g, b] in 0..255, got {obj!r}")


def _value(obj: Any, where: str) -> int:
    try:
        value = int(str(obj).strip())
    except ValueError:
        raise LabelTableError(f"{where}: label value must be an integer, got {obj!r}") from None
    if not 1 <= value <= _MAX_LABEL:
        raise LabelTableError(f"{where}: label value {value} outside 1..{_MAX_LABEL} (0 is background)")
    return value


def _label(value: int, entry: Any, where: str) -> Label:
    if isinstance(entry, str):
        name = entry.strip()
        if not name:
            raise LabelTableError(f"{where}: empty name")
        return Label(value, name)
    if not isinstance(entry, Mapping):
        raise LabelTableError(f"{where}: expected a name or an object, got {entry!r}")
    name = str(entry.get("name", entry.get("label", "")) or "").strip()
    if not name:
        raise LabelTableError(f"{where}: missing \"name\"")
    category = entry.get("category")
    type_ = entry.get("type")
    return Label(
        value=value,
        name=name,
        category=_code(category, f"{where} category") if category is not None else DEFAULT_CATEGORY,
        type=_code(type_, f"{where} type") if type_ is not None else DEFAULT_TYPE,
        color=_color(entry.get("color"), where),
        description=str(entry.get("description", "") or ""),
    )


def parse_label_table(obj: Any, *, source: str = "label table") -> LabelTable:
    """A table from parsed JSON: an object keyed by label value, or a list of objects with ``index``."""
    labels: list[Label] = []
    if isinstance(obj, Mapping):
        for key, entry in obj.items():
            value = _value(key, f"{source}, key {key!r}")
            labels.append(_label(value, entry, f"{source}, label {value}"))
    elif isinstance(obj, list):
        for n, entry in enumerate(obj):
            if not isinstance(entry, Mapping) or ("index" not in entry and "value" not in entry):
                raise LabelTableError(f"{source}, item {n}: expected an object with \"index\" and \"name\"")
            value = _value(entry.get("index", entry.get("value")), f"{source}, item {n}")
            labels.append(_label(value, entry, f"{source}, label {value}"))
    else:
        raise LabelTableError(f"{source}: expected a JSON object or list, got {type(obj).__name__}")
    if not labels:
        raise LabelTableError(f"{source}: no labels")
    values = [label.value for label in labels]
    if len(values) != len(set(values)):
        duplicates = sorted({v for v in values if values.count(v) > 1})
        raise LabelTableError(f"{source}: label value(s) {', '.join(map(str, duplicates))} given twice")
    return LabelTable.of(labels)


def _parse_tsv(text: str, source: str) -> LabelTable:
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    columns = reader.fieldnames or []
    if "index" not in columns or "name" not in columns:
        raise LabelTableError(f"{source}: a dseg.tsv needs columns \"index\" and \"name\" (found {columns})")
    entries = []
    for row in reader:
        if not any((v or "").strip() for v in row.values()):
            continue
        if str(row["index"]).strip() == "0":
            continue  # background, when listed
        entry: dict[str, Any] = {"index": row["index"], "name": row["name"]}
        if row.get("color") not in (None, "", "n/a"):
            entry["color"] = row["color"]
        entries.append(entry)
    return parse_label_table(entries, source=source)


def read_label_table(path: Path) -> LabelTable:
    """Read a label table from ``.json`` or ``.tsv`` (BIDS ``dseg.tsv``).

    :raises LabelTableError: unreadable or malformed table.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelTableError(f"cannot read label table {path}: {exc}") from exc
    if path.suffix.lower() == ".tsv":
        return _parse_tsv(text, str(path))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelTableError(f"{path}: not valid JSON ({exc}); give a .json table or a BIDS .tsv") from exc
    return parse_label_table(obj, source=str(path))


def _tsv_safe(text: str) -> str:
    return re.sub(r"[\t\r\n]+", " ", text)


def format_dseg_tsv(table: LabelTable) -> str:
    """The table as a BIDS ``dseg.tsv`` (columns ``index``, ``name``, and ``color`` when any has one)."""
    with_color = any(label.color is not None for label in table.labels)
    lines = ["index\tname" + ("\tcolor" if with_color else "")]
    for label in table.labels:
        row = f"{label.value}\t{_tsv_safe(label.name)}"
        if with_color:
            row += "\t" + ("#{:02x}{:02x}{:02x}".format(*label.color) if label.color else "n/a")
        lines.append(row)
    return "\n".join(lines) + "\n"
