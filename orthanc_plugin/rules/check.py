"""Schema and meaning checks: positioned YAML nodes -> a :class:`~.model.RuleSet`, or diagnostics.

Everything that can be known before a series arrives is checked here, and every problem found is
reported (not just the first) as a :class:`~.errors.Diagnostic` at its line and column:
unknown keys (with the allowed list), wrong types (named), unknown DICOM keywords (checked
against pydicom's dictionary), malformed tags, unknown operators and actions, regexes that are
invalid or could take too long, templates naming unknown attributes or trying to leave their
folder, unknown derivations, duplicate rule names, and — when the caller knows them (see
:class:`CheckContext`) — unknown XNAT destinations, datasets, Orthanc modalities and peers.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

from converters.classify import SUPPORTED

from ..derivations import DERIVATION_NAMES
from .errors import Diagnostic, RulesError
from .fields import FieldError, parse_field
from .loader import MAX_FILE_BYTES, YMap, YNode, YScalar, YSeq, read_rule_file
from .match import OPERATORS, RegexError, compile_regex
from .model import (
    Action,
    All,
    AnyOf,
    Condition,
    ConvertAction,
    DeriveAction,
    FieldRef,
    ForwardAction,
    Not,
    Operator,
    Position,
    PushXnatAction,
    Rule,
    RuleSet,
    SkipAction,
    Template,
    Test,
)
from .templates import TemplateError, TemplateKind, parse_template

__all__ = [
    "ACTIONS",
    "DATATYPES",
    "DEFAULT_RULES_FILE",
    "DERIVATIONS",
    "ENTITIES",
    "MAX_RULES",
    "VERSION",
    "CheckContext",
    "check_rules",
    "load_default_rules",
    "load_rules",
    "parse_rules",
]

#: The rule-file format this version reads.
VERSION = 1
#: Most rules a file may hold.
MAX_RULES = 500
#: Derivation names ``derive`` accepts -> what they make (the list lives in
#: :mod:`orthanc_plugin.derivations`).
DERIVATIONS: Mapping[str, str] = {name: made for name, (_run, made) in DERIVATION_NAMES.items()}
#: Actions and their arguments.
ACTIONS: Mapping[str, str] = {
    "convert": "{dataset, datatype, suffix, entities, subject, session} (all optional)",
    "derive": "a derivation name or a list of them",
    "push_xnat": "{server, project, subject, session}",
    "forward": "{modality: NAME} or {peer: NAME}",
    "skip": "the reason (text; may use {Keyword})",
}
#: BIDS datatypes ``convert`` may force.
DATATYPES = ("anat", "func", "dwi", "fmap", "perf")
#: BIDS entities ``convert`` may set -> template kind (``index`` entities take digits only).
ENTITIES: Mapping[str, TemplateKind] = {
    "task": "label", "acq": "label", "ce": "label", "rec": "label", "dir": "label", "run": "index",
    "echo": "index", "flip": "index", "inv": "index", "mt": "label", "part": "label", "chunk": "index",
}  # fmt: skip

#: The shipped default rule set (what runs when no rule file is configured).
DEFAULT_RULES_FILE = "defaults.yaml"

_TOP_KEYS = ("version", "description", "rules")
_RULE_KEYS = ("name", "description", "match", "actions", "stop")
_CONVERT_KEYS = ("dataset", "datatype", "suffix", "entities", "subject", "session", "metadata", "companions")
_SIDECAR_KEY = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")
_COMPANION_KEY = re.compile(r"^_[A-Za-z0-9]{1,32}\.(tsv|json|txt)$")
#: Largest companion file text accepted.
MAX_COMPANION = 64 * 1024
_Value = str | int | float | bool
#: A checked mapping: key text -> (key node, value node).
_Keys = dict[str, tuple[YScalar, YNode]]
_PUSH_KEYS = ("server", "project", "subject", "session")
_FORWARD_KEYS = ("modality", "peer")
_RESEARCH = (ConvertAction, DeriveAction, PushXnatAction)


@dataclass(frozen=True)
class CheckContext:
    """Names the deployment knows. ``None`` = not known here: names are then only noted, not refused."""

    #: XNAT server aliases (``BidsBridge.Destinations`` keys).
    destinations: frozenset[str] | None = None
    #: Dataset names (``default`` plus ``BidsBridge.Datasets`` keys).
    datasets: frozenset[str] | None = None
    #: Orthanc ``DicomModalities`` names.
    modalities: frozenset[str] | None = None
    #: Orthanc ``OrthancPeers`` names.
    peers: frozenset[str] | None = None
    #: The site makes subject labels itself (a keyed pseudonym or a mapping table,
    #: :class:`converters.Labels`): rules may then not set ``convert: {subject: ...}``, which would
    #: publish under a label that bypasses the policy.
    pseudonymised_subjects: bool = False

    @classmethod
    def from_orthanc_config(cls, config: Mapping[str, Any]) -> CheckContext:
        """Known names from Orthanc's configuration (the whole JSON, as a dict)."""

        def keys(value: object) -> frozenset[str]:
            return frozenset(str(k) for k in value) if isinstance(value, Mapping) else frozenset()

        section = config.get("BidsBridge")
        section = section if isinstance(section, Mapping) else {}
        return cls(
            destinations=keys(section.get("Destinations")),
            datasets=frozenset({"default"}) | keys(section.get("Datasets")),
            modalities=keys(config.get("DicomModalities")),
            peers=keys(config.get("OrthancPeers")),
        )


def _kind(node: YNode) -> str:
    if isinstance(node, YMap):
        return "a mapping"
    if isinstance(node, YSeq):
        return "a list"
    return {"str": "text", "int": "a number", "float": "a number", "bool": "true/false", "null": "nothing"}[node.type]


def _close(word: str, choices: tuple[str, ...] | list[str]) -> str:
    found = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {found[0]!r}? " if found else ""


class _Builder:
    def __init__(self, file: str, context: CheckContext) -> None:
        self.file = file
        self.context = context
        self.diagnostics: list[Diagnostic] = []

    # -- reporting ---------------------------------------------------------------------------
    def error(self, at: Position, message: str, hint: str = "") -> None:
        self.diagnostics.append(Diagnostic(self.file, at.line, at.column, message, hint))

    def note(self, at: Position, message: str, hint: str = "") -> None:
        self.diagnostics.append(Diagnostic(self.file, at.line, at.column, message, hint, "note"))

    def mapping(self, node: YNode, what: str, allowed: tuple[str, ...]) -> _Keys | None:
        if not isinstance(node, YMap):
            self.error(node.position, f"{what} must be a mapping, not {_kind(node)}", f"keys: {', '.join(allowed)}")
            return None
        found: _Keys = {}
        for key, value in node.items:
            if key.text not in allowed:
                self.error(key.position, f"unknown key {key.text!r} in {what}",
                           f"{_close(key.text, allowed)}allowed: {', '.join(allowed)}")
                continue
            found[key.text] = (key, value)
        return found

    def text(self, node: YNode, what: str, *, numbers: bool = False) -> str | None:
        if isinstance(node, YScalar) and (node.type == "str" or (numbers and node.type in ("int", "float"))):
            return node.text
        self.error(node.position, f"{what} must be text, not {_kind(node)}",
                   "quote it" if isinstance(node, YScalar) else "")
        return None

    def template(self, node: YNode, what: str, kind: TemplateKind) -> Template | None:
        source = self.text(node, what, numbers=True)
        if source is None:
            return None
        try:
            return parse_template(source, kind, node.position)
        except TemplateError as exc:
            at = node.position
            if "\n" not in source:
                quoted = isinstance(node, YScalar) and node.quoted
                at = Position(at.line, at.column + exc.offset + (1 if quoted else 0))
            self.error(at, f"{what}: {exc}", exc.hint)
            return None

    # -- conditions --------------------------------------------------------------------------
    def condition(self, node: YNode) -> Condition | None:
        if not isinstance(node, YMap):
            self.error(node.position, f"a condition must be a mapping, not {_kind(node)}",
                       "write 'Keyword: {operator: value}', or all:/any:/not:")
            return None
        items: list[Condition] = []
        ok = True
        for key, value in node.items:
            found = self.entry(key, value)
            if found is None:
                ok = False
            else:
                items.append(found)
        if not ok:
            return None
        return items[0] if len(items) == 1 else All(tuple(items), node.position)

    def entry(self, key: YScalar, value: YNode) -> Condition | None:
        """One key of a condition mapping: ``all:``/``any:``/``not:``, or an attribute and its tests."""
        if key.text in ("all", "any"):
            return self.group(key, value)
        if key.text == "not":
            inner = self.condition(value)
            return None if inner is None else Not(inner, key.position)
        return self.field_tests(key, value)

    def group(self, key: YScalar, value: YNode) -> Condition | None:
        """``all:`` or ``any:`` with its list of conditions."""
        if not isinstance(value, YSeq):
            self.error(value.position, f"{key.text} must be a list of conditions, not {_kind(value)}",
                       f"write '{key.text}:' then '- ...' items")
            return None
        if key.text == "any" and not value.items:
            self.error(value.position, "any: with no conditions never matches", "give at least one condition")
            return None
        parsed = [self.condition(item) for item in value.items]
        if any(item is None for item in parsed):
            return None
        items = tuple(item for item in parsed if item is not None)
        return All(items, key.position) if key.text == "all" else AnyOf(items, key.position)

    def field_tests(self, key: YScalar, value: YNode) -> Condition | None:
        """``Keyword: value`` (equals) or ``Keyword: {operator: value, ...}`` (every test must hold)."""
        try:
            field = parse_field(key.text)
        except FieldError as exc:
            self.error(key.position, str(exc), exc.hint)
            return None
        if isinstance(value, YScalar) and value.type in ("str", "int", "float"):
            return Test(field, "equals", value.position, text=value.text)
        if not isinstance(value, YMap):
            self.error(value.position, f"{key.text}: expected a value or {{operator: value}}, not {_kind(value)}",
                       f"operators: {', '.join(OPERATORS)}")
            return None
        ignore_case, ok = self.ignore_case_option(value)
        tests: list[Condition] = []
        for op_key, operand in value.items:
            if op_key.text == "ignore_case":
                continue
            test = self.test(field_name=key.text, op_key=op_key, operand=operand, ignore_case=ignore_case)
            if test is None:
                ok = False
            else:
                tests.append(test)
        if not ok:
            return None
        if not tests:
            self.error(value.position, f"{key.text}: no operator given", f"operators: {', '.join(OPERATORS)}")
            return None
        return tests[0] if len(tests) == 1 else All(tuple(tests), value.position)

    def ignore_case_option(self, operators: YMap) -> tuple[bool, bool]:
        """The ``ignore_case`` flag beside an attribute's operators, and whether it was well formed."""
        ignore_case = False
        ok = True
        for op_key, operand in operators.items:
            if op_key.text == "ignore_case":
                flag = self.flag(operand, "ignore_case")
                if flag is None:
                    ok = False
                else:
                    ignore_case = flag
        return ignore_case, ok

    def flag(self, node: YNode, what: str) -> bool | None:
        """A ``true``/``false`` value; None (reported) for anything else."""
        if isinstance(node, YScalar) and node.type == "bool":
            return bool(node.value)
        self.error(node.position, f"{what} must be true or false, not {_kind(node)}")
        return None

    def test(self, *, field_name: str, op_key: YScalar, operand: YNode, ignore_case: bool) -> Test | None:
        field = parse_field(field_name)
        op = op_key.text
        at = op_key.position
        if op not in OPERATORS:
            self.error(at, f"unknown operator {op!r}", f"{_close(op, list(OPERATORS))}operators: "
                       f"{', '.join(OPERATORS)}, plus ignore_case")
            return None
        operator = cast(Operator, op)  # checked just above
        if op in ("exists", "missing"):
            return self.presence_test(field, operator, at, operand)
        if op in ("lt", "le", "gt", "ge"):
            return self.number_test(field, operator, at, operand)
        if op == "in":
            return self.in_test(field, at, operand, ignore_case)
        return self.text_test(field, operator, at, operand, ignore_case)

    def presence_test(self, field: FieldRef, op: Operator, at: Position, operand: YNode) -> Test | None:
        """``exists: true|false`` / ``missing: true|false`` (a false flag is the opposite test)."""
        if not (isinstance(operand, YScalar) and operand.type == "bool"):
            self.error(operand.position, f"{op} needs {OPERATORS[op]}, not {_kind(operand)}")
            return None
        positive = bool(operand.value) == (op == "exists")
        return Test(field, "exists" if positive else "missing", at)

    def number_test(self, field: FieldRef, op: Operator, at: Position, operand: YNode) -> Test | None:
        """``lt``/``le``/``gt``/``ge`` with a finite number."""
        if not (isinstance(operand, YScalar) and operand.type in ("int", "float")):
            self.error(operand.position, f"{op} needs {OPERATORS[op]}, not {_kind(operand)}", "write e.g. 'gt: 2.5'")
            return None
        try:
            number = float(operand.value) if isinstance(operand.value, int | float) else math.nan
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            self.error(operand.position, f"{op} needs a finite number, not {operand.text}", "write e.g. 'gt: 2.5'")
            return None
        return Test(field, op, at, number=number)

    def in_test(self, field: FieldRef, at: Position, operand: YNode, ignore_case: bool) -> Test | None:
        """``in: [value, ...]`` (a non-empty list)."""
        if not isinstance(operand, YSeq) or not operand.items:
            self.error(operand.position, f"in needs {OPERATORS['in']}, not {_kind(operand)}",
                       "write e.g. 'in: [MR, CT]'")
            return None
        texts = [self.value(item, "in") for item in operand.items]
        if any(t is None for t in texts):
            return None
        return Test(field, "in", at, texts=tuple(t for t in texts if t is not None), ignore_case=ignore_case)

    def text_test(self, field: FieldRef, op: Operator, at: Position, operand: YNode, ignore_case: bool) -> Test | None:
        """``equals``/``startswith``/``contains``/``regex`` (the regex compiled and vetted here)."""
        text = self.value(operand, op)
        if text is None:
            return None
        if op == "regex":
            try:
                pattern = compile_regex(text, ignore_case=ignore_case)
            except RegexError as exc:
                self.error(operand.position, str(exc), exc.hint)
                return None
            return Test(field, "regex", at, text=text, pattern=pattern, ignore_case=ignore_case)
        return Test(field, op, at, text=text, ignore_case=ignore_case)

    def value(self, node: YNode, op: str) -> str | None:
        if isinstance(node, YScalar) and node.type in ("str", "int", "float"):
            return node.text
        hint = "quote it to compare with the text" if isinstance(node, YScalar) else ""
        self.error(node.position, f"{op} needs {OPERATORS[op]}; got {_kind(node)}", hint)
        return None

    # -- actions -----------------------------------------------------------------------------
    def action(self, node: YNode) -> Action | None:
        if not isinstance(node, YMap) or len(node.items) != 1:
            self.error(node.position, f"an action must be a mapping with one key, not {_kind(node)}"
                       + (f" with {len(node.items)} keys" if isinstance(node, YMap) else ""),
                       f"actions: {', '.join(ACTIONS)}; one per list item ('- convert: {{}}')")
            return None
        key, value = node.items[0]
        at = key.position
        builder = {
            "convert": self.convert,
            "derive": self.derive,
            "push_xnat": self.push_xnat,
            "forward": self.forward,
            "skip": self.skip,
        }.get(key.text)
        if builder is None:
            self.error(at, f"unknown action {key.text!r}", f"{_close(key.text, list(ACTIONS))}actions: "
                       f"{', '.join(ACTIONS)}")
            return None
        return builder(value, at)

    def convert(self, node: YNode, at: Position) -> Action | None:
        if isinstance(node, YScalar) and node.type == "null":
            return ConvertAction(at)
        keys = self.mapping(node, "convert", _CONVERT_KEYS)
        if keys is None:
            return None
        errors = len(self.errors())
        dataset = "default"
        if "dataset" in keys:
            dataset = self.text(keys["dataset"][1], "convert dataset") or "default"
            self.known(keys["dataset"][1].position, "dataset", dataset, self.context.datasets,
                       source="--orthanc-config (BidsBridge.Datasets)", always={"default"})
        datatype, suffix = self.target(keys)
        entities = self.entities(keys["entities"][1]) if "entities" in keys else {}
        if "subject" in keys and self.context.pseudonymised_subjects:
            self.error(keys["subject"][0].position, "this site pseudonymises subjects; a rule cannot set the subject",
                       "remove 'subject:': the configured pseudonym key or mapping table makes the label")
        subject = self.template(keys["subject"][1], "subject", "label") if "subject" in keys else None
        session = self.template(keys["session"][1], "session", "label") if "session" in keys else None
        metadata = self.metadata(keys["metadata"][1]) if "metadata" in keys else {}
        companions = self.companions(keys["companions"][1]) if "companions" in keys else {}
        if len(self.errors()) > errors:
            return None
        return ConvertAction(at, dataset, datatype, suffix, entities, subject, session, metadata, companions)

    def target(self, keys: _Keys) -> tuple[str | None, str | None]:
        """The BIDS ``datatype`` and ``suffix`` a ``convert`` forces (None when not given; named together)."""
        datatype = suffix = None
        if "datatype" in keys:
            datatype = self.text(keys["datatype"][1], "datatype")
            if datatype is not None and datatype not in DATATYPES:
                self.error(keys["datatype"][1].position, f"unknown BIDS datatype {datatype!r}",
                           f"{_close(datatype, DATATYPES)}datatypes: {', '.join(DATATYPES)}")
        if "suffix" in keys:
            suffix = self.text(keys["suffix"][1], "suffix")
            if suffix is not None and not (suffix.isascii() and suffix.isalnum()):
                self.error(keys["suffix"][1].position, f"BIDS suffix {suffix!r} must be letters and digits",
                           "e.g. T1w, bold, dwi, epi")
        if ("datatype" in keys) != ("suffix" in keys):
            given = "datatype" if "datatype" in keys else "suffix"
            self.error(keys[given][0].position, "datatype and suffix go together",
                       "name both (e.g. datatype: anat, suffix: T2w), or neither to let the classifier decide")
        elif datatype in DATATYPES and suffix and (datatype, suffix) not in SUPPORTED:
            known = ", ".join(sorted(s for d, s in SUPPORTED if d == datatype)) or "none yet"
            self.note(keys["suffix"][1].position, f"{datatype}/{suffix} is not a target the converter knows",
                      f"it is written as named, without the converter's checks; known {datatype} suffixes: {known}")
        return datatype, suffix

    def entities(self, node: YNode) -> dict[str, Template]:
        """``entities: {name: template}``: the BIDS entities a ``convert`` sets."""
        entities: dict[str, Template] = {}
        found = self.mapping(node, "entities", tuple(ENTITIES))
        for name, (_, value) in (found or {}).items():
            template = self.template(value, f"entity {name}", ENTITIES[name])
            if template is not None:
                entities[name] = template
        return entities

    def json_value(self, node: YNode, what: str) -> _Value | tuple[_Value, ...] | None:
        if isinstance(node, YScalar) and node.type != "null":
            value = node.value
            if isinstance(value, float) and not math.isfinite(value):
                self.error(node.position, f"{what} must be a finite number, not {node.text}")
                return None
            return value
        if isinstance(node, YSeq) and node.items and all(
            isinstance(item, YScalar) and item.type != "null" for item in node.items
        ):
            values = [self.json_value(item, what) for item in node.items]
            if any(v is None or isinstance(v, tuple) for v in values):
                return None
            return tuple(v for v in values if v is not None and not isinstance(v, tuple))
        self.error(node.position, f"{what} must be a value or a list of values, not {_kind(node)}",
                   "sidecar fields are numbers, text, true/false or flat lists of them")
        return None

    def metadata(self, node: YNode) -> dict[str, _Value | tuple[_Value, ...]]:
        found: dict[str, _Value | tuple[_Value, ...]] = {}
        if not isinstance(node, YMap):
            self.error(node.position, f"metadata must be a mapping, not {_kind(node)}",
                       "e.g. metadata: {PostLabelingDelay: 1.8, M0Type: Absent}")
            return found
        for key, value in node.items:
            if not _SIDECAR_KEY.match(key.text):
                self.error(key.position, f"sidecar field {key.text!r} is not a BIDS key",
                           "BIDS sidecar keys are CamelCase letters and digits (EchoTime1, RepetitionTimePreparation)")
                continue
            parsed = self.json_value(value, f"metadata {key.text}")
            if parsed is not None:
                found[key.text] = parsed
        return found

    def companions(self, node: YNode) -> dict[str, str]:
        found: dict[str, str] = {}
        if not isinstance(node, YMap):
            self.error(node.position, f"companions must be a mapping, not {_kind(node)}",
                       "e.g. companions: {_aslcontext.tsv: \"volume_type\\ncontrol\\nlabel\\n\"}")
            return found
        for key, value in node.items:
            if not _COMPANION_KEY.match(key.text):
                self.error(key.position, f"companion {key.text!r} must be named _<suffix>.tsv, .json or .txt",
                           "e.g. _aslcontext.tsv; it is written beside the image with the image's name")
                continue
            text = self.text(value, f"companion {key.text}")
            if text is None:
                continue
            if len(text) > MAX_COMPANION or "\x00" in text:
                self.error(value.position, f"companion {key.text} is longer than {MAX_COMPANION} characters or "
                           "holds NUL", "companions are small text tables")
                continue
            found[key.text] = text
        return found

    def derive(self, node: YNode, at: Position) -> Action | None:
        items = node.items if isinstance(node, YSeq) else (node,)
        names: list[str] = []
        for item in items:
            name = self.text(item, "derive")
            if name is None:
                return None
            if name not in DERIVATIONS:
                self.error(item.position, f"unknown derivation {name!r}",
                           f"{_close(name, list(DERIVATIONS))}derivations: {', '.join(DERIVATIONS)}")
                return None
            names.append(name)
        if not names:
            self.error(node.position, "derive needs at least one derivation", f"derivations: {', '.join(DERIVATIONS)}")
            return None
        return DeriveAction(tuple(names), at)

    def push_xnat(self, node: YNode, at: Position) -> Action | None:
        keys = self.mapping(node, "push_xnat", _PUSH_KEYS)
        if keys is None:
            return None
        for required in ("server", "project"):
            if required not in keys:
                self.error(node.position, f"push_xnat needs {required}", f"keys: {', '.join(_PUSH_KEYS)}")
                return None
        server = self.text(keys["server"][1], "push_xnat server")
        if server is not None:
            self.known(keys["server"][1].position, "XNAT destination", server, self.context.destinations,
                       source="--destinations or --orthanc-config (BidsBridge.Destinations)")
        project = self.template(keys["project"][1], "push_xnat project", "xnat")
        subject = self.template(keys["subject"][1], "push_xnat subject", "xnat") if "subject" in keys else None
        session = self.template(keys["session"][1], "push_xnat session", "xnat") if "session" in keys else None
        bad = (server is None or project is None or ("subject" in keys and subject is None)
               or ("session" in keys and session is None))
        if bad or server is None or project is None:
            return None
        return PushXnatAction(server, project, at, subject, session)

    def forward(self, node: YNode, at: Position) -> Action | None:
        keys = self.mapping(node, "forward", _FORWARD_KEYS)
        if keys is None:
            return None
        if len(keys) != 1:
            self.error(node.position, "forward needs exactly one of modality or peer", "e.g. forward: {modality: PACS}")
            return None
        kind, (_, value) = next(iter(keys.items()))
        target = self.text(value, f"forward {kind}")
        if target is None:
            return None
        if kind == "modality":
            self.known(value.position, "Orthanc modality", target, self.context.modalities,
                       source="--orthanc-config (DicomModalities)")
            return ForwardAction(target, "modality", at)
        self.known(value.position, "Orthanc peer", target, self.context.peers, source="--orthanc-config (OrthancPeers)")
        return ForwardAction(target, "peer", at)

    def skip(self, node: YNode, at: Position) -> Action | None:
        if isinstance(node, YScalar) and node.type == "str" and not node.text.strip():
            self.error(node.position, "skip needs a reason", "e.g. skip: 'structured report, not an image'")
            return None
        if isinstance(node, YScalar) and node.type == "null":
            self.error(node.position, "skip needs a reason", "e.g. skip: 'structured report, not an image'")
            return None
        reason = self.template(node, "skip reason", "text")
        return None if reason is None else SkipAction(reason, at)

    def known(self, at: Position, what: str, name: str, known: frozenset[str] | None, *, source: str,
              always: set[str] | None = None) -> None:
        if always and name in always:
            return
        if known is None:
            self.note(at, f"{what} {name!r} not verified", f"pass {source} to check it against the deployment")
        elif name not in known:
            listed = ", ".join(sorted(known)) or "(none configured)"
            self.error(at, f"unknown {what} {name!r}", f"{_close(name, sorted(known))}known: {listed}")

    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    # -- rules -------------------------------------------------------------------------------
    def rule(self, node: YNode, names: dict[str, Position]) -> Rule | None:
        keys = self.mapping(node, "a rule", _RULE_KEYS)
        if keys is None:
            return None
        before = len(self.errors())
        for required in ("name", "match", "actions"):
            if required not in keys:
                self.error(node.position, f"rule without {required}", f"a rule has {', '.join(_RULE_KEYS)}")
        name = self.rule_name(keys["name"][1], names) if "name" in keys else None
        description = self.description(keys)
        stop = False
        if "stop" in keys:
            stop = bool(self.flag(keys["stop"][1], "stop"))
        match = self.condition(keys["match"][1]) if "match" in keys else None
        actions = self.rule_actions(keys["actions"][1]) if "actions" in keys else []
        if len(self.errors()) > before or name is None or match is None:
            return None
        return Rule(name, match, tuple(actions), node.position, description, stop)

    def rule_name(self, node: YNode, names: dict[str, Position]) -> str | None:
        """A rule's name, checked for its characters and against the ``names`` seen so far (recorded there)."""
        name = self.text(node, "rule name", numbers=True)
        if name is not None:
            at = node.position
            if not name or len(name) > 64 or not all(ch.isascii() and (ch.isalnum() or ch in "_.- ") for ch in name):
                self.error(at, f"rule name {name!r} must be 1-64 ASCII letters, digits, spaces, '_', '.', '-'",
                           "names appear in logs and job records")
            elif name in names:
                self.error(at, f"duplicate rule name {name!r} (first at line {names[name].line})",
                           "give each rule its own name: job records say which rules matched by name")
            else:
                names[name] = at
        return name

    def description(self, keys: _Keys) -> str:
        """The optional ``description`` text (empty when absent or not text)."""
        if "description" not in keys:
            return ""
        return self.text(keys["description"][1], "description") or ""

    def rule_actions(self, node: YNode) -> list[Action]:
        """A rule's ``actions`` list (the well-formed ones); a skip cannot share a rule with research actions."""
        actions: list[Action] = []
        if not isinstance(node, YSeq) or not node.items:
            self.error(node.position, f"actions must be a non-empty list, not {_kind(node)}",
                       f"actions: {', '.join(ACTIONS)}")
            return actions
        for item in node.items:
            action = self.action(item)
            if action is not None:
                actions.append(action)
        skips = [a for a in actions if isinstance(a, SkipAction)]
        research = [a for a in actions if isinstance(a, _RESEARCH)]
        if skips and research:
            self.error(skips[0].position, "a rule cannot both skip and convert/derive/push_xnat",
                       "a skip cancels those actions; put them in different rules")
        return actions

    def ruleset(self, tree: YNode, digest: str) -> RuleSet | None:
        keys = self.mapping(tree, "the rule file", _TOP_KEYS)
        if keys is None:
            return None
        version = self.version(tree, keys)
        description = self.description(keys)
        rules = self.rules(tree, keys)
        if self.errors():
            return None
        return RuleSet(version, tuple(rules), self.file, digest, description)

    def version(self, tree: YNode, keys: _Keys) -> int:
        """The file's ``version`` (:data:`VERSION`), or 0 (reported) when missing or another one."""
        if "version" not in keys:
            self.error(tree.position, "the rule file has no version", f"start with 'version: {VERSION}'")
            return 0
        node = keys["version"][1]
        if not (isinstance(node, YScalar) and node.type == "int" and node.value == VERSION):
            shown = node.text if isinstance(node, YScalar) else _kind(node)
            self.error(node.position, f"version must be {VERSION}, not {shown}",
                       f"this bidsbridge reads rule files of version {VERSION}")
            return 0
        return VERSION

    def rules(self, tree: YNode, keys: _Keys) -> list[Rule]:
        """The file's ``rules`` list (the well-formed ones; at most :data:`MAX_RULES`)."""
        rules: list[Rule] = []
        if "rules" not in keys:
            self.error(tree.position, "the rule file has no rules list", "add 'rules:' with '- name: ...' items")
            return rules
        node = keys["rules"][1]
        if not isinstance(node, YSeq):
            self.error(node.position, f"rules must be a list, not {_kind(node)}", "write '- name: ...' items")
        elif len(node.items) > MAX_RULES:
            self.error(node.items[MAX_RULES].position, f"more than {MAX_RULES} rules", "combine rules with in:/any:")
        else:
            names: dict[str, Position] = {}
            for item in node.items:
                rule = self.rule(item, names)
                if rule is not None:
                    rules.append(rule)
        return rules

def _sorted(diagnostics: list[Diagnostic]) -> tuple[Diagnostic, ...]:
    return tuple(sorted(diagnostics, key=lambda d: (d.line, d.column, d.severity)))


def parse_rules(data: bytes, file: str, context: CheckContext | None = None) -> tuple[RuleSet, tuple[Diagnostic, ...]]:
    """Check a rule file's bytes; return the rules and the notes, or raise :class:`RulesError`."""
    tree = read_rule_file(data, file)
    builder = _Builder(file, context or CheckContext())
    try:
        ruleset = builder.ruleset(tree, "sha256:" + hashlib.sha256(data).hexdigest())
    except RecursionError:
        raise RulesError([Diagnostic(file, 1, 1, "conditions nested too deeply", "flatten them")]) from None
    if ruleset is None:
        raise RulesError(_sorted(builder.diagnostics))
    return ruleset, _sorted(builder.diagnostics)


def check_rules(data: bytes, file: str, context: CheckContext | None = None) -> tuple[Diagnostic, ...]:
    """Every diagnostic for a rule file (errors and notes); empty or notes only when it is usable."""
    try:
        return parse_rules(data, file, context)[1]
    except RulesError as exc:
        return exc.diagnostics


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RulesError([Diagnostic(str(path), 1, 1, f"cannot read the rule file: {exc.strerror or exc}",
                                     "check the path and that the Orthanc user may read it")]) from None


def load_rules(path: Path | str, context: CheckContext | None = None) -> RuleSet:
    """Read and check a rule file; raise :class:`RulesError` with every problem found."""
    path = Path(path)
    return parse_rules(_read(path), str(path), context)[0]


def load_default_rules() -> RuleSet:
    """The shipped default rule set (``defaults.yaml`` beside this module)."""
    data = resources.files(__package__).joinpath(DEFAULT_RULES_FILE).read_bytes()
    return parse_rules(data, "<defaults>")[0]
