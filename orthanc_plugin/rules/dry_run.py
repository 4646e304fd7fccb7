"""The dry run of a rule set against one series: what ``bidsbridge rules test`` prints.

:func:`dry_run` evaluates the rules for a series' facts (:func:`.plan.evaluate`) and previews
the BIDS path of each planned conversion (:func:`.preview.preview_convert`); :class:`DryRun` has
the two forms the CLI prints, :meth:`DryRun.text` (each rule matched, or the first condition that
failed; the planned actions and BIDS names) and :meth:`DryRun.to_dict` (``--json``). The status
page's ``POST /bidsbridge/rules/test`` answers the same through :class:`DryRunner`, for the
active rules or a candidate rules text, so the CLI and the page cannot disagree. Writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .check import CheckContext, parse_rules
from .errors import Diagnostic
from .model import RuleSet, SeriesFacts
from .plan import Decision, PlannedConvert, PlannedDerive, PlannedForward, PlannedPush, PlannedSkip, evaluate
from .preview import BidsPreview, preview_convert

__all__ = ["CANDIDATE_SOURCE", "DryRun", "DryRunner", "dry_run"]

#: The file name diagnostics of a pasted candidate rules text point at.
CANDIDATE_SOURCE = "(candidate rules)"


@dataclass(frozen=True)
class DryRun:
    """What the rules decide for one series, with a BIDS preview per planned conversion."""

    decision: Decision
    previews: tuple[BidsPreview, ...]
    #: Notes of the rules' checks (e.g. an alias that could not be verified here).
    notes: tuple[Diagnostic, ...] = ()

    @property
    def title(self) -> str:
        decision = self.decision
        number = f"#{decision.series_number} " if decision.series_number else ""
        return f"{number}{decision.series_description or '(no description)'} [{decision.series_uid}]"

    def to_dict(self) -> dict[str, Any]:
        """The decision record with ``bids_preview`` in each convert action (``rules test --json``)."""
        record = self.decision.to_dict()
        converts = iter(self.previews)
        for action in record["actions"]:
            if action["action"] == "convert":
                preview = next(converts)
                action["bids_preview"] = {"path": preview.path, "note": preview.note}
        return record

    def text(self) -> str:
        """The lines ``rules test`` prints for the series."""
        decision = self.decision
        lines = [f"{self.title}: {decision.outcome.upper()}"]
        for trace in decision.trace:
            if trace.status == "matched":
                lines.append(f"  matched      {trace.rule} (line {trace.line})")
            elif trace.status == "no-match":
                lines.append(f"  not matched  {trace.rule}: {trace.reason}")
            else:
                lines.append(f"  not tried    {trace.rule}: {trace.reason}")
        converts = iter(self.previews)
        for action in decision.actions:
            if isinstance(action, PlannedConvert):
                lines.extend(_convert_lines(action, next(converts)))
            elif isinstance(action, PlannedDerive):
                lines.append(f"  -> derive {', '.join(action.names)} (rule {action.rule})")
            elif isinstance(action, PlannedPush):
                lines.append(f"  -> push to {action.uri} (rule {action.rule})")
            elif isinstance(action, PlannedForward):
                lines.append(f"  -> forward to Orthanc {action.kind} {action.target!r} (rule {action.rule})")
            elif isinstance(action, PlannedSkip):
                by = f"rule {action.rule}" if action.rule else "no rule"
                lines.append(f"  -> skip: {action.reason} ({by})")
        lines.extend(f"  PROBLEM: {problem}" for problem in decision.problems)
        return "".join(f"{line}\n" for line in lines)


def _convert_lines(action: PlannedConvert, preview: BidsPreview) -> list[str]:
    forced = ""
    if action.override is not None:
        parts = [action.override.datatype or "", action.override.suffix or ""]
        entities = "_".join(f"{k}-{v}" for k, v in action.override.entities.items() if v)
        forced = f" (forced: {'/'.join(p for p in parts if p)}{' ' + entities if entities else ''})"
    where = preview.path or "path decided at conversion"
    return [f"  -> convert into dataset {action.dataset!r}{forced}: {where}", f"     {preview.note}"]


def dry_run(ruleset: RuleSet, facts: SeriesFacts, notes: tuple[Diagnostic, ...] = ()) -> DryRun:
    """Evaluate ``ruleset`` for ``facts`` and preview its conversions; never raises for checked rules."""
    decision = evaluate(ruleset, facts)
    return DryRun(decision, tuple(preview_convert(facts, action) for action in decision.converts), notes)


@dataclass(frozen=True)
class DryRunner:
    """A dry run against a series the caller names, for the active or a candidate rule set."""

    #: The rules in force (e.g. ``RulesHolder.rules``).
    active: Callable[[], RuleSet]
    #: The names the deployment knows, checked in a candidate text as in the rule file.
    context: CheckContext
    #: The facts of an Orthanc series (its first instance's tags and reception metadata).
    facts: Callable[[str], SeriesFacts]

    def run(self, series_id: str, candidate: bytes | None = None) -> DryRun:
        """Raises :class:`~.errors.RulesError` for a candidate text that fails its checks, and what
        ``facts`` raises for a series that cannot be read."""
        notes: tuple[Diagnostic, ...] = ()
        if candidate is None:
            ruleset = self.active()
        else:
            ruleset, notes = parse_rules(candidate, CANDIDATE_SOURCE, self.context)
        return dry_run(ruleset, self.facts(series_id), notes)
