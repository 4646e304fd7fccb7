"""Routing rules: declarative YAML that decides, per series, what bidsbridge does with it.

A rule file (``version: 1`` and an ordered ``rules`` list) is read safely (:mod:`.loader`),
checked (:mod:`.check`) into typed records (:mod:`.model`), evaluated for a series' facts
(:mod:`.facts`, :mod:`.match`, :mod:`.templates`) into a :class:`Decision` (:mod:`.plan`), and kept
live by :class:`RulesHolder` (:mod:`.reload`). ``bidsbridge rules check|test`` is :mod:`.cli`.
The admin guide is ``README.md`` beside this file.

Only :class:`RulesError` is ever raised by the engine (with diagnostics); evaluating a checked
rule set never raises.

Only :mod:`.errors`, :mod:`.model` load with the package; every other name is imported
on first use (``bidsbridge --help`` and Orthanc's start-up need none of the heavy libraries).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from converters.lazy import lazy_names
from orthanc_plugin.rules.errors import Diagnostic, RulesError
from orthanc_plugin.rules.model import RuleSet, SeriesFacts, SourceFacts

if TYPE_CHECKING:
    from orthanc_plugin.rules.check import CheckContext, load_default_rules, load_rules, parse_rules
    from orthanc_plugin.rules.facts import facts_from_dataset, facts_from_folder, facts_from_orthanc
    from orthanc_plugin.rules.plan import (
        Decision,
        PlannedConvert,
        PlannedDerive,
        PlannedForward,
        PlannedPush,
        PlannedSkip,
        RuleTrace,
        evaluate,
    )
    from orthanc_plugin.rules.reload import SNAPSHOT_NAME, RulesHolder, RulesStatus

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

#: Names imported on first use, and their modules.
_LAZY = {
    "CheckContext": "orthanc_plugin.rules.check",
    "load_default_rules": "orthanc_plugin.rules.check",
    "load_rules": "orthanc_plugin.rules.check",
    "parse_rules": "orthanc_plugin.rules.check",
    "facts_from_dataset": "orthanc_plugin.rules.facts",
    "facts_from_folder": "orthanc_plugin.rules.facts",
    "facts_from_orthanc": "orthanc_plugin.rules.facts",
    "Decision": "orthanc_plugin.rules.plan",
    "PlannedConvert": "orthanc_plugin.rules.plan",
    "PlannedDerive": "orthanc_plugin.rules.plan",
    "PlannedForward": "orthanc_plugin.rules.plan",
    "PlannedPush": "orthanc_plugin.rules.plan",
    "PlannedSkip": "orthanc_plugin.rules.plan",
    "RuleTrace": "orthanc_plugin.rules.plan",
    "evaluate": "orthanc_plugin.rules.plan",
    "SNAPSHOT_NAME": "orthanc_plugin.rules.reload",
    "RulesHolder": "orthanc_plugin.rules.reload",
    "RulesStatus": "orthanc_plugin.rules.reload",
}


__getattr__ = lazy_names(__name__, _LAZY)


logging.getLogger(__name__).addHandler(logging.NullHandler())
