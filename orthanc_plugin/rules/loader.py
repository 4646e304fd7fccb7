"""Read a rule file safely into a tree of positioned YAML nodes (no Python objects, no code).

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
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from yaml.events import AliasEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

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


class _SafeComposer(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases, tags and deep nesting while composing."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            raise _Refused(
                f"alias *{event.anchor} is not allowed",
                "write the value out in full; anchors and aliases are refused (YAML bombs use them)",
                event.start_mark,
            )
        if isinstance(event, NodeEvent) and event.anchor is not None:
            raise _Refused(
                f"anchor &{event.anchor} is not allowed",
                "write the value out in full; anchors and aliases are refused (YAML bombs use them)",
                event.start_mark,
            )
        tag = getattr(event, "tag", None)
        if tag is not None:
            raise _Refused(
                f"YAML tag {tag!r} is not allowed",
                "rule files are plain data: remove the tag (quote the value if it must be text)",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nesting deeper than {MAX_DEPTH} levels", "flatten the conditions", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _position(mark: Any) -> Position:
    if mark is None:
        return Position(1, 1)
    return Position(mark.line + 1, mark.column + 1)


def _scalar(node: ScalarNode, loader: yaml.SafeLoader) -> YScalar:
    position = _position(node.start_mark)
    kind = node.tag[len(_TAG_PREFIX) :] if node.tag.startswith(_TAG_PREFIX) else node.tag
    if kind in ("int", "float", "bool", "null"):
        try:
            value = loader.construct_object(node)
        except (ValueError, OverflowError):
            raise _Refused(f"number {node.value[:20]}... cannot be read", "use a shorter number",
                           node.start_mark) from None
        if isinstance(value, int | float | bool) or value is None:
            return YScalar(value, node.value, kind, position)  # type: ignore[arg-type]
    # str, timestamp (kept as the text written), the merge key "<<", "=": plain text.
    return YScalar(node.value, node.value, "str", position, quoted=node.style in ("'", '"'))


def _convert(node: Node, loader: yaml.SafeLoader, diagnostics: list[Diagnostic], file: str) -> YNode:
    position = _position(node.start_mark)
    if isinstance(node, ScalarNode):
        return _scalar(node, loader)
    if isinstance(node, SequenceNode):
        return YSeq(tuple(_convert(item, loader, diagnostics, file) for item in node.value), position)
    assert isinstance(node, MappingNode)
    items: list[tuple[YScalar, YNode]] = []
    seen: dict[str, Position] = {}
    for key_node, value_node in node.value:
        key = _convert(key_node, loader, diagnostics, file)
        if not isinstance(key, YScalar):
            diagnostics.append(
                Diagnostic(file, key.position.line, key.position.column, "mapping keys must be plain text",
                           "write the key as a word, e.g. SeriesDescription")
            )
            continue
        if key.text in seen:
            first = seen[key.text]
            diagnostics.append(
                Diagnostic(file, key.position.line, key.position.column,
                           f"duplicate key {key.text!r} (first at line {first.line})",
                           "YAML keeps only the last one; merge them or use 'all:' with a list")
            )
            continue
        seen[key.text] = key.position
        items.append((key, _convert(value_node, loader, diagnostics, file)))
    return YMap(tuple(items), position)


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
    loader = _SafeComposer(text)
    diagnostics: list[Diagnostic] = []
    try:
        node = loader.get_single_node()
        if node is None:
            raise RulesError([Diagnostic(file, 1, 1, "the rule file is empty",
                                         "start with 'version: 1' and a 'rules:' list")])
        tree = _convert(node, loader, diagnostics, file)
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
    except RecursionError:
        raise RulesError([Diagnostic(file, 1, 1, "the document is nested too deeply", "flatten it")]) from None
    finally:
        loader.dispose()
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
