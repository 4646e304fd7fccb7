"""Typed, immutable records of the rules engine: what a rule file says, and what a series is.

A :class:`RuleSet` is built only by :func:`orthanc_plugin.rules.check.parse_rules` (which checks
everything first), so every record here is valid by construction: fields name known attributes,
regexes passed the complexity guard, templates reference known attributes, actions are complete.

A :class:`SeriesFacts` is what a rule can look at: DICOM attributes of the series' first instance
(by keyword, or ``GGGG,EEEE`` for attributes the dictionary does not name), where the data came
from (Orthanc's instance metadata ``RemoteAET``, ``CalledAET``, ``RemoteIP``) and the instance
count. :mod:`orthanc_plugin.rules.facts` builds it from pydicom datasets or Orthanc's REST JSON.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Action",
    "All",
    "AnyOf",
    "Condition",
    "ConvertAction",
    "DeriveAction",
    "FieldKind",
    "FieldRef",
    "ForwardAction",
    "Not",
    "Operator",
    "Position",
    "PushXnatAction",
    "Rule",
    "RuleSet",
    "SeriesFacts",
    "SkipAction",
    "SourceFacts",
    "Substitution",
    "Template",
    "Test",
]


@dataclass(frozen=True)
class Position:
    """1-based line and column in the rule file."""

    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


#: ``dicom``: an attribute of the first instance; ``source``: where the data came from
#: (``source.calling_aet``, ``source.called_aet``, ``source.remote_ip``); ``series``: facts about
#: the whole series (``series.instance_count``).
FieldKind = Literal["dicom", "source", "series"]


@dataclass(frozen=True)
class FieldRef:
    """An attribute a condition or template refers to."""

    #: As written in the rule file (``SeriesDescription``, ``0018,0024``, ``source.calling_aet``).
    name: str
    #: Lookup key: the DICOM keyword, ``GGGG,EEEE`` (upper-case hex) for attributes without one,
    #: or the fact name for ``source``/``series`` fields.
    key: str
    kind: FieldKind


Operator = Literal["equals", "in", "regex", "startswith", "contains", "lt", "le", "gt", "ge", "exists", "missing"]


@dataclass(frozen=True)
class Test:
    """One comparison of one attribute (a leaf of a condition)."""

    field: FieldRef
    op: Operator
    position: Position
    #: Operand of ``equals``/``startswith``/``contains``/``regex`` (the pattern's text).
    text: str = ""
    #: Operand of ``in``.
    texts: tuple[str, ...] = ()
    #: Operand of ``lt``/``le``/``gt``/``ge``.
    number: float = 0.0
    #: Compiled ``regex`` (full match).
    pattern: re.Pattern[str] | None = None
    #: ``ignore_case: true`` beside the operator: text operators compare case-insensitively.
    ignore_case: bool = False


@dataclass(frozen=True)
class All:
    """Every item matches (an empty ``all`` — or ``match: {}`` — matches every series)."""

    items: tuple[Condition, ...]
    position: Position


@dataclass(frozen=True)
class AnyOf:
    """At least one item matches."""

    items: tuple[Condition, ...]
    position: Position


@dataclass(frozen=True)
class Not:
    """The item does not match."""

    item: Condition
    position: Position


Condition = Test | All | AnyOf | Not


@dataclass(frozen=True)
class Substitution:
    """``{Field|filter|filter}`` inside a template."""

    field: FieldRef
    filters: tuple[str, ...] = ()


@dataclass(frozen=True)
class Template:
    """Literal text and substitutions, e.g. ``P_{source.calling_aet|lower}``."""

    source: str
    parts: tuple[str | Substitution, ...]
    position: Position


@dataclass(frozen=True)
class ConvertAction:
    """Convert the series into a BIDS dataset, optionally forcing its BIDS name."""

    position: Position
    dataset: str = "default"
    datatype: str | None = None
    suffix: str | None = None
    #: BIDS entity key (``task``, ``acq``, ``run``, ``dir``, ...) -> value template.
    entities: Mapping[str, Template] = field(default_factory=dict, hash=False)
    subject: Template | None = None
    session: Template | None = None
    #: Sidecar fields to add (e.g. ASL timing, EchoTime1/EchoTime2 that no header records).
    metadata: Mapping[str, str | int | float | bool | tuple[str | int | float | bool, ...]] = field(
        default_factory=dict, hash=False
    )
    #: Files written beside the image, keyed ``_<suffix>.<ext>`` (``_aslcontext.tsv``), with their text.
    companions: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class DeriveAction:
    """Derive objects from the series (names from :data:`~orthanc_plugin.rules.check.DERIVATIONS`)."""

    names: tuple[str, ...]
    position: Position


@dataclass(frozen=True)
class PushXnatAction:
    """Push the converted series to an XNAT server (an alias of ``BidsBridge.Destinations``)."""

    server: str
    project: Template
    position: Position
    subject: Template | None = None
    session: Template | None = None


@dataclass(frozen=True)
class ForwardAction:
    """Send the series' DICOM instances to an Orthanc modality or peer (an asynchronous job)."""

    target: str
    kind: Literal["modality", "peer"]
    position: Position


@dataclass(frozen=True)
class SkipAction:
    """Produce nothing for research from this series (no convert/derive/push), and say why.

    A skip ends evaluation for the series (as ``stop: true``) and cancels the convert, derive and
    push actions of earlier matching rules; forwards stay planned.
    """

    reason: Template
    position: Position


Action = ConvertAction | DeriveAction | PushXnatAction | ForwardAction | SkipAction


@dataclass(frozen=True)
class Rule:
    name: str
    match: Condition
    actions: tuple[Action, ...]
    position: Position
    description: str = ""
    stop: bool = False


@dataclass(frozen=True)
class RuleSet:
    """A checked rule file: its rules in order, where it came from and a digest of its bytes."""

    version: int
    rules: tuple[Rule, ...]
    #: Path of the file (as given), or ``<defaults>`` for the shipped rule set.
    source: str
    #: ``sha256:`` + hex digest of the file's bytes: identifies exactly which rules decided.
    digest: str
    description: str = ""


@dataclass(frozen=True)
class SourceFacts:
    """Where the series came from (Orthanc instance metadata); None when unknown."""

    calling_aet: str | None = None
    called_aet: str | None = None
    remote_ip: str | None = None


@dataclass(frozen=True)
class SeriesFacts:
    """What rules look at for one series."""

    series_uid: str
    #: DICOM keyword (or ``GGGG,EEEE``) -> value as text; multiple values joined by ``\\``.
    attributes: Mapping[str, str] = field(default_factory=dict, hash=False)
    source: SourceFacts = SourceFacts()
    instance_count: int = 0
    #: Orthanc's series identifier, when the facts came from Orthanc.
    orthanc_id: str | None = None
