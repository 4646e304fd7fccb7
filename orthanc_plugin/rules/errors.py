"""Diagnostics and the one exception the rules engine raises: :class:`RulesError`.

A diagnostic names the file, line and column (1-based), says what is wrong and, where it helps,
what to write instead. :meth:`Diagnostic.format` gives the ``FILE:LINE:COL: message`` line that
``bidsbridge rules check`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from converters.errors import BidsBridgeError
from converters.jsonform import to_json

__all__ = ["Diagnostic", "RulesError", "Severity"]

#: ``error`` makes a rule file unusable; ``note`` is advice (e.g. an alias that could not be verified).
Severity = Literal["error", "note"]


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a rule file, at a position (1-based line and column)."""

    file: str
    line: int
    column: int
    message: str
    hint: str = ""
    severity: Severity = "error"

    def format(self) -> str:
        """``FILE:LINE:COL: message`` (notes say ``note:``), then ``  hint: ...`` on its own line."""
        prefix = "note: " if self.severity == "note" else ""
        text = f"{self.file}:{self.line}:{self.column}: {prefix}{self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


class RulesError(BidsBridgeError, ValueError):
    """A rule file cannot be used; ``diagnostics`` says where and why (errors first).

    The message is the first error, formatted; fix the file and run ``bidsbridge rules check``.
    """

    def __init__(self, diagnostics: tuple[Diagnostic, ...] | list[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        errors = [d for d in self.diagnostics if d.severity == "error"]
        first = (errors or list(self.diagnostics))[0].format() if self.diagnostics else "invalid rule file"
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        super().__init__(first + more)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")
