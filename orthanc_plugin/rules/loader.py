"""Read a rule file safely into a tree of positioned YAML nodes (no Python objects, no code).

The parser's event stream (libyaml's C parser when PyYAML has it, else PyYAML's own; both the
safe loaders) is composed into nodes here, iteratively, so nothing is built before it is checked.
Only plain YAML is accepted: mappings, sequences and scalars. Refused, each with a diagnostic at
its position: files over :data:`MAX_FILE_BYTES`, bytes that are not UTF-8, invisible or
bidirectional control characters (text that reads differently than it parses), anchors and
aliases (the "billion laughs" YAML bomb needs them), explicit tags (``!!python/object``, ``!foo``,
even ``!!str``), nesting deeper than :data:`MAX_DEPTH`, several documents, non-scalar or
duplicate mapping keys. Scalars keep their source text and the type YAML 1.1's safe resolver gives
them (``str``, ``int``, ``float``, ``bool``, ``null``; timestamps stay text).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    DocumentStartEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceStartEvent,
)
from yaml.nodes import ScalarNode

from .errors import Diagnostic, RulesError
from .model import Position

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "YMap", "YNode", "YScalar", "YSeq", "parse_yaml", "read_rule_file"]

#: Largest rule file accepted (1 MiB); real rule files are a few kilobytes.
MAX_FILE_BYTES = 1 << 20
#: Deepest nesting of mappings/sequences accepted.
MAX_DEPTH = 48

ScalarType = Literal["str", "int", "float", "bool", "null"]

_TAG_PREFIX = "tag:yaml.org,2002:"


@dataclass(frozen=True)
class YScalar:
    value: str | int | float | bool | None
    #: The scalar as written (without quotes).
    text: str
    type: ScalarType
    position: Position
    #: Written in quotes: the text starts one column after ``position``.
    quoted: bool = False


@dataclass(frozen=True)
class YSeq:
    items: tuple[YNode, ...]
    position: Position


@dataclass(frozen=True)
class YMap:
    #: (key, value) pairs in file order; keys are unique.
    items: tuple[tuple[YScalar, YNode], ...]
    position: Position

    def keys(self) -> list[str]:
        return [key.text for key, _ in self.items]


YNode = YScalar | YSeq | YMap


class _Refused(Exception):
    def __init__(self, message: str, hint: str, mark: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.mark = mark


#: libyaml's C parser when PyYAML has it (much faster on large files), else the pure-Python one;
#: both are the *safe* loaders. Only their event stream and scalar resolver are used: nodes are
#: composed here, so anchors, aliases and tags are refused before anything is built.
_LOADER: Any = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader
_BOMB_HINT = "write the value out in full; anchors and aliases are refused (YAML bombs use them)"


def _position(mark: Any) -> Position:
    if mark is None:
        return Position(1, 1)
    return Position(mark.line + 1, mark.column + 1)


def _scalar(event: ScalarEvent, loader: Any) -> YScalar:
    position = _position(event.start_mark)
    tag = loader.resolve(ScalarNode, event.value, event.implicit)
    kind = tag[len(_TAG_PREFIX) :] if tag.startswith(_TAG_PREFIX) else tag
    if kind in ("int", "float", "bool", "null"):
        try:
            value = loader.construct_object(ScalarNode(tag, event.value))
        except (ValueError, OverflowError):
            raise _Refused(f"number {event.value[:20]}... cannot be read", "use a shorter number",
                           event.start_mark) from None
        if isinstance(value, int | float | bool) or value is None:
            return YScalar(value, event.value, kind, position)
    # str, timestamp (kept as the text written), the merge key "<<", "=": plain text.
    return YScalar(event.value, event.value, "str", position, quoted=event.style in ("'", '"'))


@dataclass
class _Open:
    """A mapping or sequence being composed."""

    is_map: bool
    position: Position
    items: list[YNode] = field(default_factory=list)
    pairs: list[tuple[YScalar, YNode]] = field(default_factory=list)
    seen: dict[str, Position] = field(default_factory=dict)
    #: For a mapping: the key read, waiting for its value (None: the key was unusable).
    key: YScalar | None = None
    expecting_value: bool = False

    def close(self) -> YNode:
        return YMap(tuple(self.pairs), self.position) if self.is_map else YSeq(tuple(self.items), self.position)

    def add(self, node: YNode, diagnostics: list[Diagnostic], file: str) -> None:
        """Take a finished child: a list item, or in a mapping alternately a key and its value.

        Unusable (non-text) and duplicate keys are reported in ``diagnostics`` and their entry dropped.
        """
        if not self.is_map:
            self.items.append(node)
        elif not self.expecting_value:
            self.expecting_value = True
            self.key = node if isinstance(node, YScalar) else None
            if self.key is None:
                diagnostics.append(Diagnostic(file, node.position.line, node.position.column,
                                              "mapping keys must be plain text",
                                              "write the key as a word, e.g. SeriesDescription"))
        else:
            key, self.key, self.expecting_value = self.key, None, False
            if key is None:
                return
            first = self.seen.get(key.text)
            if first is not None:
                diagnostics.append(Diagnostic(file, key.position.line, key.position.column,
                                              f"duplicate key {key.text!r} (first at line {first.line})",
                                              "YAML keeps only the last one; merge them or use 'all:' with a list"))
                return
            self.seen[key.text] = key.position
            self.pairs.append((key, node))


def _check_event(event: Any) -> None:
    if isinstance(event, AliasEvent):
        raise _Refused(f"alias *{event.anchor} is not allowed", _BOMB_HINT, event.start_mark)
    if isinstance(event, NodeEvent) and event.anchor is not None:
        raise _Refused(f"anchor &{event.anchor} is not allowed", _BOMB_HINT, event.start_mark)
    tag = getattr(event, "tag", None)
    if isinstance(event, NodeEvent) and tag is not None:
        raise _Refused(f"YAML tag {tag!r} is not allowed",
                       "rule files are plain data: remove the tag (quote the value if it must be text)",
                       event.start_mark)


def _compose(loader: Any, diagnostics: list[Diagnostic], file: str) -> YNode | None:
    """Build positioned nodes from the event stream, iteratively (no recursion, depth capped)."""
    stack: list[_Open] = []
    root: YNode | None = None
    documents = 0
    while loader.check_event():
        event = loader.get_event()
        if isinstance(event, DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _Refused("a rule file holds one YAML document; '---' starts a second one",
                               "remove the second document", event.start_mark)
            continue
        if not isinstance(event, NodeEvent | CollectionEndEvent):
            continue  # stream start/end, document end
        _check_event(event)
        if isinstance(event, MappingStartEvent | SequenceStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise _Refused(f"nesting deeper than {MAX_DEPTH} levels", "flatten the conditions", event.start_mark)
            stack.append(_Open(isinstance(event, MappingStartEvent), _position(event.start_mark)))
            continue
        if isinstance(event, CollectionEndEvent):
            node: YNode = stack.pop().close()
        elif isinstance(event, ScalarEvent):
            node = _scalar(event, loader)
        else:
            continue
        if stack:
            stack[-1].add(node, diagnostics, file)
        else:
            root = node
    return root


def _invisible_characters(text: str, file: str) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    line, column = 1, 1
    for char in text:
        if char == "\n":
            line, column = line + 1, 1
            continue
        category = unicodedata.category(char)
        if category == "Cf" or (category == "Cc" and char not in "\t\r"):
            name = unicodedata.name(char, "control character")
            found.append(
                Diagnostic(file, line, column, f"invisible character U+{ord(char):04X} ({name})",
                           "delete it: invisible and bidirectional characters make text read differently "
                           "than it parses")
            )
            if len(found) >= 10:
                break
        column += 1
    return found


def parse_yaml(text: str, file: str) -> YNode:
    """Parse one YAML document into positioned nodes; raise :class:`RulesError` on anything unsafe."""
    invisible = _invisible_characters(text, file)
    if invisible:
        raise RulesError(invisible)
    loader = _LOADER(text)
    diagnostics: list[Diagnostic] = []
    try:
        tree = _compose(loader, diagnostics, file)
    except _Refused as exc:
        position = _position(exc.mark)
        raise RulesError([Diagnostic(file, position.line, position.column, exc.message, exc.hint)]) from None
    except yaml.MarkedYAMLError as exc:
        position = _position(exc.problem_mark or exc.context_mark)
        problem = "; ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        raise RulesError([Diagnostic(file, position.line, position.column, f"YAML syntax: {problem}",
                                     "check the indentation and quoting around this position")]) from None
    except yaml.YAMLError as exc:
        raise RulesError([Diagnostic(file, 1, 1, f"YAML error: {exc}", "")]) from None
    finally:
        loader.dispose()
    if tree is None:
        raise RulesError([Diagnostic(file, 1, 1, "the rule file is empty",
                                     "start with 'version: 1' and a 'rules:' list")])
    if diagnostics:
        raise RulesError(diagnostics)
    return tree


def read_rule_file(data: bytes, file: str) -> YNode:
    """Decode and parse a rule file's bytes (size cap, strict UTF-8)."""
    if len(data) > MAX_FILE_BYTES:
        raise RulesError([Diagnostic(file, 1, 1, f"the rule file is larger than {MAX_FILE_BYTES} bytes",
                                     "rule files are a few kilobytes; split or shorten it")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise RulesError([Diagnostic(file, line, column, f"byte 0x{data[exc.start]:02X} is not UTF-8",
                                     "save the file as UTF-8")]) from None
    return parse_yaml(text.removeprefix("\ufeff"), file)
