"""Evaluation: a checked :class:`~.model.RuleSet` and a series' facts -> a typed :class:`Decision`.

Rules are evaluated in file order. Every matching rule's actions are planned, in order. A rule with
``stop: true`` ends evaluation; so does a ``skip``, which also cancels the convert, derive and
push actions planned by earlier rules (forwards stay). A series no rule matches is skipped with
the reason "no rule matched". The decision records every rule's outcome — for a non-match the
first condition that failed — so a job can say why its series went where it went.

:func:`evaluate` never raises: missing attributes simply do not match, a template that cannot be
rendered for this series becomes a *problem* of the decision (the caller should fail the job,
since retrying will not help), and an unexpected internal error is logged and reported the same way.
Subject and session label templates are the exception: a series is never refused for its labels,
so one that gives nothing (an anonymised PatientID) is a *note* and the converter's documented
fallback labels the series (:meth:`converters.labels.Labels.resolve_subject`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from converters import Override
from converters.jsonform import to_json

from .check import ENTITIES
from .match import evaluate as evaluate_condition
from .model import (
    ConvertAction,
    DeriveAction,
    ForwardAction,
    Position,
    PushXnatAction,
    RuleSet,
    SeriesFacts,
    SkipAction,
    Template,
)
from .templates import parse_template, render

__all__ = [
    "DEFAULT_XNAT_SESSION",
    "DEFAULT_XNAT_SUBJECT",
    "Decision",
    "Outcome",
    "Planned",
    "PlannedConvert",
    "PlannedDerive",
    "PlannedForward",
    "PlannedPush",
    "PlannedSkip",
    "RuleTrace",
    "evaluate",
]

logger = logging.getLogger(__name__)

#: XNAT labels used when ``push_xnat`` gives no ``subject``/``session`` template.
DEFAULT_XNAT_SUBJECT = parse_template("{PatientID}", "xnat", Position(0, 0))
DEFAULT_XNAT_SESSION = parse_template("{PatientID}_{StudyDate}", "xnat", Position(0, 0))

#: ``convert``: the series goes to at least one dataset; ``skip``: nothing for research (with a
#: reason); ``forward``: only forwarded; ``none``: matched rules planned neither (derive/push only).
Outcome = Literal["convert", "skip", "forward", "none"]


@dataclass(frozen=True)
class RuleTrace:
    """What one rule did for the series."""

    rule: str
    line: int
    #: ``matched``, ``no-match`` or ``not-evaluated`` (an earlier rule stopped evaluation).
    status: Literal["matched", "no-match", "not-evaluated"]
    #: For ``no-match``: the first condition that failed; for ``not-evaluated``: which rule stopped.
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True)
class PlannedConvert:
    rule: str
    dataset: str
    #: BIDS name forced by the rule, for :func:`converters.convert_series` (``overrides=[...]``);
    #: None when the classifier decides alone.
    override: Override | None
    #: Sanitized labels from the rule's templates; None = the converter's default (PatientID / StudyDate).
    subject: str | None
    session: str | None
    action: Literal["convert"] = "convert"

    def to_dict(self) -> dict[str, Any]:
        override = None
        if self.override is not None:
            override = {
                "datatype": self.override.datatype,
                "suffix": self.override.suffix,
                "entities": dict(self.override.entities),
                "metadata": dict(self.override.metadata),
                "companions": dict(self.override.companions),
            }
        return {"action": self.action, "rule": self.rule, "dataset": self.dataset, "override": override,
                "subject": self.subject, "session": self.session}


@dataclass(frozen=True)
class PlannedDerive:
    rule: str
    names: tuple[str, ...]
    action: Literal["derive"] = "derive"

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True)
class PlannedPush:
    rule: str
    server: str
    project: str
    subject: str
    session: str
    action: Literal["push_xnat"] = "push_xnat"

    @property
    def uri(self) -> str:
        """Where the session goes: ``xnat://ALIAS/data/projects/P/subjects/S/experiments/E``."""
        return (f"xnat://{self.server}/data/projects/{self.project}/subjects/{self.subject}"
                f"/experiments/{self.session}")

    def to_dict(self) -> dict[str, Any]:
        return {**to_json(self), "uri": self.uri}


@dataclass(frozen=True)
class PlannedForward:
    rule: str
    kind: Literal["modality", "peer"]
    target: str
    action: Literal["forward"] = "forward"

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True)
class PlannedSkip:
    #: The rule that skipped, or ``""`` when no rule matched.
    rule: str
    reason: str
    action: Literal["skip"] = "skip"

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


Planned = PlannedConvert | PlannedDerive | PlannedPush | PlannedForward | PlannedSkip


@dataclass(frozen=True)
class Decision:
    """What the rules decided for one series, and why. :meth:`to_dict` is the job record's form."""

    series_uid: str
    series_description: str
    series_number: str | None
    orthanc_id: str | None
    #: The rule file (path or ``<defaults>``) and the digest of its bytes.
    rules_source: str
    rules_digest: str
    trace: tuple[RuleTrace, ...]
    #: Planned actions in rule order (cancelled research actions removed when a rule skipped).
    actions: tuple[Planned, ...]
    #: Set when the series is skipped (by a rule, or because no rule matched).
    skip: PlannedSkip | None
    #: Why some action cannot be carried out for this series (a template's attribute is missing,
    #: a label has nothing usable after sanitizing). Non-empty = the job should fail.
    problems: tuple[str, ...] = field(default=())
    #: What the job record should say although nothing failed (a label template that gave
    #: nothing, so the converter's fallback label is used).
    notes: tuple[str, ...] = field(default=())

    @property
    def matched(self) -> tuple[str, ...]:
        return tuple(t.rule for t in self.trace if t.status == "matched")

    @property
    def converts(self) -> tuple[PlannedConvert, ...]:
        return tuple(a for a in self.actions if isinstance(a, PlannedConvert))

    @property
    def derives(self) -> tuple[PlannedDerive, ...]:
        return tuple(a for a in self.actions if isinstance(a, PlannedDerive))

    @property
    def pushes(self) -> tuple[PlannedPush, ...]:
        return tuple(a for a in self.actions if isinstance(a, PlannedPush))

    @property
    def forwards(self) -> tuple[PlannedForward, ...]:
        return tuple(a for a in self.actions if isinstance(a, PlannedForward))

    @property
    def outcome(self) -> Outcome:
        if self.skip is not None:
            return "skip"
        if self.converts:
            return "convert"
        return "forward" if self.forwards else "none"

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Decision:
        """Read a :meth:`to_dict` record back (e.g. from a job); raise ``ValueError`` if malformed."""
        try:
            skip = record.get("skip")
            return cls(
                series_uid=str(record["series_uid"]),
                series_description=str(record["series_description"]),
                series_number=_optional(record.get("series_number")),
                orthanc_id=_optional(record.get("orthanc_id")),
                rules_source=str(record["rules"]["source"]),
                rules_digest=str(record["rules"]["digest"]),
                trace=tuple(
                    RuleTrace(str(t["rule"]), int(t["line"]), t["status"], _optional(t.get("reason")))
                    for t in record["trace"]
                ),
                actions=tuple(_planned(a, str(record["series_uid"])) for a in record["actions"]),
                skip=None if skip is None else PlannedSkip(str(skip["rule"]), str(skip["reason"])),
                problems=tuple(str(p) for p in record.get("problems", ())),
                notes=tuple(str(n) for n in record.get("notes", ())),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a decision record: {type(exc).__name__}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid,
            "series_description": self.series_description,
            "series_number": self.series_number,
            "orthanc_id": self.orthanc_id,
            "rules": {"source": self.rules_source, "digest": self.rules_digest},
            "outcome": self.outcome,
            "matched": list(self.matched),
            "skip": None if self.skip is None else self.skip.to_dict(),
            "actions": [a.to_dict() for a in self.actions],
            "problems": list(self.problems),
            "notes": list(self.notes),
            "trace": [t.to_dict() for t in self.trace],
        }


def _optional(value: object) -> str | None:
    return None if value is None else str(value)


def _planned(record: Mapping[str, Any], series_uid: str) -> Planned:
    kind = record["action"]
    rule = str(record["rule"])
    if kind == "convert":
        override = record.get("override")
        forced = None
        if override is not None:
            forced = Override(series_uid=series_uid or None, datatype=_optional(override.get("datatype")),
                              suffix=_optional(override.get("suffix")),
                              entities={str(k): _optional(v) for k, v in dict(override["entities"]).items()},
                              metadata=dict(override.get("metadata") or {}),
                              companions={str(k): str(v) for k, v in dict(override.get("companions") or {}).items()})
        return PlannedConvert(rule, str(record["dataset"]), forced, _optional(record.get("subject")),
                              _optional(record.get("session")))
    if kind == "derive":
        return PlannedDerive(rule, tuple(str(n) for n in record["names"]))
    if kind == "push_xnat":
        return PlannedPush(rule, str(record["server"]), str(record["project"]), str(record["subject"]),
                           str(record["session"]))
    if kind == "forward":
        target_kind = record["kind"]
        if target_kind not in ("modality", "peer"):
            raise KeyError(f"forward kind {target_kind!r}")
        return PlannedForward(rule, target_kind, str(record["target"]))
    if kind == "skip":
        return PlannedSkip(rule, str(record["reason"]))
    raise KeyError(f"action {kind!r}")


class _Planner:
    def __init__(self, facts: SeriesFacts) -> None:
        self.facts = facts
        self.problems: list[str] = []
        self.notes: list[str] = []

    def label(self, template: Template | None, rule: str, what: str) -> str | None:
        if template is None:
            return None
        rendered = render(template, self.facts, "label")
        if rendered.value is None:
            self.notes.append(f"rule {rule!r} {what}: {rendered.problem}; the converter's fallback label is used")
        return rendered.value

    def xnat(self, template: Template, rule: str, what: str) -> str:
        rendered = render(template, self.facts, "xnat")
        if rendered.value is None and what in ("subject", "session"):
            # "": the destination's own label template (from the BIDS labels) is used instead.
            self.notes.append(f"rule {rule!r} push_xnat {what}: {rendered.problem}; the destination's label is used")
            return ""
        if rendered.value is None:
            self.problems.append(f"rule {rule!r} push_xnat {what}: {rendered.problem}")
            return "?"
        return rendered.value

    def convert(self, action: ConvertAction, rule: str) -> PlannedConvert:
        entities: dict[str, str | None] = {}
        for key, template in action.entities.items():
            rendered = render(template, self.facts, ENTITIES[key])
            if rendered.value is None:
                self.problems.append(f"rule {rule!r} entity {key}: {rendered.problem}")
            else:
                entities[key] = rendered.value
        override = None
        if action.datatype or action.suffix or entities or action.metadata or action.companions:
            metadata = {k: list(v) if isinstance(v, tuple) else v for k, v in action.metadata.items()}
            override = Override(series_uid=self.facts.series_uid or None, datatype=action.datatype,
                                suffix=action.suffix, entities=entities, metadata=metadata,
                                companions=dict(action.companions))
        return PlannedConvert(rule, action.dataset, override, self.label(action.subject, rule, "subject"),
                              self.label(action.session, rule, "session"))

    def plan(self, ruleset: RuleSet) -> tuple[list[RuleTrace], list[Planned], PlannedSkip | None]:
        trace: list[RuleTrace] = []
        planned: list[Planned] = []
        skip: PlannedSkip | None = None
        stopped_by: str | None = None
        for rule in ruleset.rules:
            if stopped_by is not None:
                trace.append(RuleTrace(rule.name, rule.position.line, "not-evaluated",
                                       f"stopped by rule {stopped_by!r}"))
                continue
            outcome = evaluate_condition(rule.match, self.facts)
            if not outcome.matched:
                trace.append(RuleTrace(rule.name, rule.position.line, "no-match", outcome.failure))
                continue
            trace.append(RuleTrace(rule.name, rule.position.line, "matched"))
            for action in rule.actions:
                if isinstance(action, ConvertAction):
                    planned.append(self.convert(action, rule.name))
                elif isinstance(action, DeriveAction):
                    planned.append(PlannedDerive(rule.name, action.names))
                elif isinstance(action, PushXnatAction):
                    planned.append(PlannedPush(
                        rule.name, action.server, self.xnat(action.project, rule.name, "project"),
                        self.xnat(action.subject or DEFAULT_XNAT_SUBJECT, rule.name, "subject"),
                        self.xnat(action.session or DEFAULT_XNAT_SESSION, rule.name, "session"),
                    ))
                elif isinstance(action, ForwardAction):
                    planned.append(PlannedForward(rule.name, action.kind, action.target))
                elif isinstance(action, SkipAction):
                    reason = render(action.reason, self.facts, "text")
                    skip = PlannedSkip(rule.name, reason.value or action.reason.source)
            if skip is not None:
                planned = [p for p in planned if isinstance(p, PlannedForward)]
                planned.append(skip)
                stopped_by = rule.name
            elif rule.stop:
                stopped_by = rule.name
        if not any(t.status == "matched" for t in trace):
            skip = PlannedSkip("", "no rule matched")
            planned.append(skip)
        return trace, planned, skip


def evaluate(ruleset: RuleSet, facts: SeriesFacts) -> Decision:
    """Decide what happens to one series. Never raises (see the module documentation)."""
    attributes = facts.attributes
    planner = _Planner(facts)
    try:
        trace, planned, skip = planner.plan(ruleset)
    except Exception as exc:  # a bug must not take the plugin down; the job records it
        logger.exception("rules evaluation failed for series %s", facts.series_uid)
        trace, planned, skip = [], [], None
        planner.problems.append(f"internal error evaluating the rules: {type(exc).__name__}: {exc}")
    return Decision(
        series_uid=facts.series_uid,
        series_description=attributes.get("SeriesDescription", ""),
        series_number=attributes.get("SeriesNumber"),
        orthanc_id=facts.orthanc_id,
        rules_source=ruleset.source,
        rules_digest=ruleset.digest,
        trace=tuple(trace),
        actions=tuple(planned),
        skip=skip,
        problems=tuple(planner.problems),
        notes=tuple(planner.notes),
    )
