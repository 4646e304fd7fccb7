"""Conditions: operators, combinators, the regex guard, and evaluation with an explanation.

Text operators (``equals``, ``in``, ``startswith``, ``contains``, ``regex``) compare the
attribute's text (several values joined by ``\\``, as DICOM and Orthanc write them); with
``ignore_case: true`` they compare case-insensitively. ``regex`` must match the *whole* text.
Numeric operators (``lt``, ``le``, ``gt``, ``ge``) need an attribute holding one number.
``exists``/``missing`` test presence. A missing attribute never matches a comparison: evaluation
does not raise on any series, it explains instead.

Regexes are guarded before use (Python's ``re`` has no timeout): at most
:data:`MAX_REGEX_LENGTH` characters, no quantifier inside a repeated group (``(a+)+``), no
alternation inside a repeated group (``(a|a)*``), no backreferences, at most
:data:`MAX_UNBOUNDED` unbounded quantifiers, bounded repeats up to 1000; and they are only
applied to values up to :data:`MAX_REGEX_INPUT` characters (longer values do not match).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from converters.errors import BidsBridgeError

from .fields import lookup
from .model import All, Condition, Not, SeriesFacts, Test

__all__ = [
    "MAX_REGEX_INPUT",
    "MAX_REGEX_LENGTH",
    "MAX_UNBOUNDED",
    "OPERATORS",
    "Outcome",
    "RegexError",
    "compile_regex",
    "describe",
    "evaluate",
]

#: Operators and what their operand must be.
OPERATORS: dict[str, str] = {
    "equals": "a value",
    "in": "a list of values",
    "regex": "a regular expression (full match)",
    "startswith": "a text",
    "contains": "a text",
    "lt": "a number",
    "le": "a number",
    "gt": "a number",
    "ge": "a number",
    "exists": "true or false",
    "missing": "true or false",
}

MAX_REGEX_LENGTH = 256
MAX_REGEX_INPUT = 256
MAX_UNBOUNDED = 3
_MAX_BOUNDED = 1000

# The standard library's regex parser (re._parser in 3.11+); only used to inspect a pattern's shape.
_parser: Any = importlib.import_module("re._parser")
_UNBOUNDED: int = int(_parser.MAXREPEAT)
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})


class RegexError(BidsBridgeError, ValueError):
    """A regex is invalid or could take too long; ``hint`` says how to rewrite it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _children(op: str, av: Any) -> list[Any]:
    if op in _REPEATS:
        return [av[2]]
    if op == "SUBPATTERN":
        return [av[3]]
    if op == "BRANCH":
        return list(av[1])
    if op in ("ASSERT", "ASSERT_NOT"):
        return [av[1]]
    if op == "ATOMIC_GROUP":
        return [av]
    if op == "GROUPREF_EXISTS":
        return [branch for branch in av[1:] if branch is not None]
    return []


def _contains(subpattern: Any, wanted: frozenset[str], *, repeating_only: bool) -> bool:
    for op_code, av in subpattern:
        op = str(op_code)
        if op in wanted and (not repeating_only or op not in _REPEATS or av[1] > 1):
            return True
        if any(_contains(child, wanted, repeating_only=repeating_only) for child in _children(op, av)):
            return True
    return False


def _inspect(subpattern: Any, counts: list[int]) -> None:
    for op_code, av in subpattern:
        op = str(op_code)
        if op in ("GROUPREF", "GROUPREF_EXISTS"):
            raise RegexError("backreferences are not allowed in rule regexes",
                             "match the text without \\1 or (?P=name)")
        if op in _REPEATS:
            low, high, body = av
            if high == _UNBOUNDED:
                counts[0] += 1
            elif high > _MAX_BOUNDED or low > _MAX_BOUNDED:
                raise RegexError(f"repeat count over {_MAX_BOUNDED}", "use a smaller count or '*'")
            if high > 1 and _contains(body, _REPEATS, repeating_only=True):
                raise RegexError(
                    "nested quantifier (a repeated group that itself repeats, like (a+)+) can take exponential time",
                    "repeat the inner part once: (a+)+ matches what a+ matches",
                )
            if high > 1 and _contains(body, frozenset({"BRANCH"}), repeating_only=False):
                raise RegexError(
                    "alternation inside a repeated group (like (a|ab)*) can take exponential time",
                    "use a character class ([ab]*) or match the alternatives without repeating them",
                )
        for child in _children(op, av):
            _inspect(child, counts)


def compile_regex(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Check a rule regex against the guard and compile it; raise :class:`RegexError`."""
    if len(pattern) > MAX_REGEX_LENGTH:
        raise RegexError(f"regex longer than {MAX_REGEX_LENGTH} characters", "split it into several conditions")
    flags = re.IGNORECASE if ignore_case else 0
    try:
        parsed = _parser.parse(pattern, flags)
        compiled = re.compile(pattern, flags)
    except re.error as exc:
        raise RegexError(f"invalid regex: {exc}",
                         "check the brackets and escapes (quote the pattern in YAML)") from None
    except (RecursionError, OverflowError, AssertionError, ValueError) as exc:
        raise RegexError(f"regex rejected: {type(exc).__name__}", "simplify the pattern") from None
    counts = [0]
    _inspect(parsed, counts)
    if counts[0] > MAX_UNBOUNDED:
        raise RegexError(
            f"{counts[0]} unbounded quantifiers (* + {{n,}}); at most {MAX_UNBOUNDED} are allowed",
            "anchor on fixed text instead of several .* in a row",
        )
    return compiled


def _quote(value: str) -> str:
    shown = value if len(value) <= 80 else value[:77] + "..."
    return repr(shown)


def describe(condition: Condition) -> str:
    """A short human description of a condition, e.g. ``Modality in ['MR', 'CT']``."""
    if isinstance(condition, Test):
        if condition.op in ("exists", "missing"):
            return f"{condition.field.name} {condition.op}"
        operand: object
        if condition.op == "in":
            operand = list(condition.texts)
        elif condition.op in ("lt", "le", "gt", "ge"):
            operand = condition.number
        else:
            operand = condition.text
        case = " (ignoring case)" if condition.ignore_case else ""
        return f"{condition.field.name} {condition.op} {operand!r}{case}"
    if isinstance(condition, Not):
        return f"not ({describe(condition.item)})"
    word = "all" if isinstance(condition, All) else "any"
    return f"{word} of {len(condition.items)} conditions"


@dataclass(frozen=True)
class Outcome:
    """Whether a condition matched; for a non-match, the first condition that failed and why."""

    matched: bool
    failure: str | None = None


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return None if math.isnan(value) else value  # NaN compares false to everything


def _presence(test: Test, value: str | None, where: str) -> Outcome:
    """``exists`` / ``missing``."""
    if test.op == "exists":
        return Outcome(True) if value is not None else Outcome(False, f"{where}: {test.field.name} is missing")
    if value is None:
        return Outcome(True)
    return Outcome(False, f"{where}: {test.field.name} is present ({_quote(value)})")


def _compare_number(test: Test, value: str, where: str) -> Outcome:
    """``lt``/``le``/``gt``/``ge``: the value must read as one number."""
    number = _number(value)
    if number is None:
        return Outcome(False, f"{where}: {test.field.name} {_quote(value)} is not a number")
    ok = {
        "lt": number < test.number,
        "le": number <= test.number,
        "gt": number > test.number,
        "ge": number >= test.number,
    }[test.op]
    return Outcome(True) if ok else Outcome(False, f"{where}: {test.field.name} {_quote(value)} is not "
                                                    f"{test.op} {test.number:g}")


def _match_regex(test: Test, value: str, where: str) -> Outcome:
    """``regex``: a full match, and only on values up to :data:`MAX_REGEX_INPUT` characters."""
    assert test.pattern is not None
    if len(value) > MAX_REGEX_INPUT:
        return Outcome(False, f"{where}: {test.field.name} is longer than {MAX_REGEX_INPUT} characters; "
                              "regexes do not apply to it")
    if test.pattern.fullmatch(value):
        return Outcome(True)
    return Outcome(False, f"{where}: {test.field.name} {_quote(value)} does not match regex {test.text!r}")


def _compare_text(test: Test, value: str, where: str) -> Outcome:
    """``equals``/``in``/``startswith``/``contains`` (case-folded with ``ignore_case``)."""
    subject = value.casefold() if test.ignore_case else value

    def fold(text: str) -> str:
        return text.casefold() if test.ignore_case else text

    if test.op == "equals":
        ok = subject == fold(test.text)
        verb = f"is not {test.text!r}"
    elif test.op == "in":
        ok = subject in {fold(text) for text in test.texts}
        shown = list(test.texts[:6]) + (["..."] if len(test.texts) > 6 else [])
        verb = f"is not one of {shown!r}"
    elif test.op == "startswith":
        ok = subject.startswith(fold(test.text))
        verb = f"does not start with {test.text!r}"
    else:
        ok = fold(test.text) in subject
        verb = f"does not contain {test.text!r}"
    return Outcome(True) if ok else Outcome(False, f"{where}: {test.field.name} {_quote(value)} {verb}")


#: How a present value is compared, by operator; the text operators are the rest.
_COMPARISONS: dict[str, Callable[[Test, str, str], Outcome]] = {
    "lt": _compare_number,
    "le": _compare_number,
    "gt": _compare_number,
    "ge": _compare_number,
    "regex": _match_regex,
}


def _test(test: Test, facts: SeriesFacts) -> Outcome:
    where = f"line {test.position}"
    value = lookup(facts, test.field)
    if test.op in ("exists", "missing"):
        return _presence(test, value, where)
    if value is None:
        return Outcome(False, f"{where}: {test.field.name} is missing, so '{describe(test)}' does not match")
    return _COMPARISONS.get(test.op, _compare_text)(test, value, where)


def evaluate(condition: Condition, facts: SeriesFacts) -> Outcome:
    """Evaluate a checked condition for one series; never raises."""
    if isinstance(condition, Test):
        return _test(condition, facts)
    if isinstance(condition, Not):
        inner = evaluate(condition.item, facts)
        if inner.matched:
            return Outcome(False, f"line {condition.position}: not: '{describe(condition.item)}' matched")
        return Outcome(True)
    if isinstance(condition, All):
        for item in condition.items:
            outcome = evaluate(item, facts)
            if not outcome.matched:
                return outcome
        return Outcome(True)
    failures: list[str] = []
    for item in condition.items:
        outcome = evaluate(item, facts)
        if outcome.matched:
            return Outcome(True)
        failures.append(outcome.failure or "")
    first = failures[0] if failures else "no alternatives"
    return Outcome(False, f"line {condition.position}: none of {len(condition.items)} alternatives matched "
                          f"(first: {first})")
