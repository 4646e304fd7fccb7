"""Routing rules: declarative YAML that decides, per series, what bidsbridge does with it.

A rule file (``version: 1`` and an ordered ``rules`` list) is read safely (:mod:`.loader`),
checked (:mod:`.check`) into typed records (:mod:`.model`), evaluated for a series' facts
(:mod:`.facts`, :mod:`.match`, :mod:`.templates`) into a :class:`Decision` (:mod:`.plan`), and kept
live by :class:`RulesHolder` (:mod:`.reload`). ``bidsbridge rules check|test`` is :mod:`.cli`.
The admin guide is ``README.md`` beside this file.

Only :class:`RulesError` is ever raised by the engine (with diagnostics); evaluating a checked
rule set never raises.
"""

import logging

from .check import CheckContext, load_default_rules, load_rules, parse_rules
from .errors import Diagnostic, RulesError
from .facts import facts_from_dataset, facts_from_folder, facts_from_orthanc
from .model import RuleSet, SeriesFacts, SourceFacts
from .plan import (
    Decision,
    PlannedConvert,
    PlannedDerive,
    PlannedForward,
    PlannedPush,
    PlannedSkip,
    RuleTrace,
    evaluate,
)
from .reload import SNAPSHOT_NAME, RulesHolder, RulesStatus

__all__ = [
    "SNAPSHOT_NAME",
    "CheckContext",
    "Decision",
    "Diagnostic",
    "PlannedConvert",
    "PlannedDerive",
    "PlannedForward",
    "PlannedPush",
    "PlannedSkip",
    "RuleSet",
    "RuleTrace",
    "RulesError",
    "RulesHolder",
    "RulesStatus",
    "SeriesFacts",
    "SourceFacts",
    "evaluate",
    "facts_from_dataset",
    "facts_from_folder",
    "facts_from_orthanc",
    "load_default_rules",
    "load_rules",
    "parse_rules",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
