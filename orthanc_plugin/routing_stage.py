"""Worker stage: what the routing rules decide for a series, and the forwards they ask for.

The decision is taken in the worker, at job time, from the series' facts (the first instance's
tags, read from its file, and Orthanc's reception metadata: calling AET, called AET, remote IP), with
the rules the plugin accepted: the plugin's :class:`~orthanc_plugin.rules.RulesHolder` checks
every edit of the admin's file and writes the accepted bytes as a snapshot in the state
directory when it accepts them; workers read only that snapshot (:class:`RulesSnapshot`), so a
worker never runs rules the plugin refused, whenever it starts.  Forwards are sent as asynchronous Orthanc jobs and
followed to their end; a failed forward fails the attempt, so the durable queue retries it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.errors import BidsBridgeError

from .instance_tags import read_tags
from .jobs import ForwardRecord
from .rest_client import OrthancApi, OrthancError
from .rules import (
    SNAPSHOT_NAME,
    CheckContext,
    Decision,
    RulesError,
    RuleSet,
    SeriesFacts,
    evaluate,
    facts_from_orthanc,
    load_default_rules,
    parse_rules,
)

__all__ = [
    "ForwardError",
    "RoutingError",
    "RulesSnapshot",
    "SeriesInfo",
    "decide",
    "fetch_series_info",
    "forward",
]

logger = logging.getLogger(__name__)

FORWARD_TIMEOUT = 900.0


class ForwardError(OrthancError):
    """An Orthanc store job to a modality or peer failed (retried by the queue)."""


class RoutingError(BidsBridgeError, ValueError):
    """The routing rules cannot be applied to a series (a template needs an attribute the series
    lacks, ...). Retrying cannot help: fix the rules file or the data."""


@dataclass(frozen=True)
class SeriesInfo:
    facts: SeriesFacts
    tags: dict[str, Any]
    instance_count: int
    #: Orthanc id of the study the series belongs to.
    study_id: str = ""
    #: Orthanc ids of its instances, sorted.
    instances: tuple[str, ...] = ()
    #: Instance files downloaded already (the first), by Orthanc id: for ``download_series(have=)``.
    downloaded: Mapping[str, Path] = field(default_factory=dict)


class RulesSnapshot:
    """The worker's view of the accepted rules (re-read when the plugin publishes a new snapshot)."""

    def __init__(self, state_dir: Path, source: str | None, context: dict[str, Any] | None) -> None:
        self.path = None if source is None else state_dir / SNAPSHOT_NAME  # written by the plugin's RulesHolder
        self.source = source or "(default rules)"
        self.context = CheckContext.from_orthanc_config(context or {})
        self._stamp: tuple[int, int] | None = None
        self._rules: RuleSet = load_default_rules()

    @property
    def rules(self) -> RuleSet:
        if self.path is None:
            return self._rules
        stat = self.path.stat()  # the plugin writes it before starting the workers
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            try:
                self._rules, _ = parse_rules(self.path.read_bytes(), self.source, self.context)
                self._stamp = (stat.st_mtime_ns, stat.st_size)
            except RulesError as exc:  # cannot happen for a snapshot the plugin accepted; keep the old rules
                logger.error("rules snapshot unreadable, previous rules kept: %s", exc)
        return self._rules


def fetch_series_info(client: OrthancApi, series_id: str, folder: Path) -> SeriesInfo:
    """The series' facts, from its first instance, whose file is downloaded into ``folder``
    (:attr:`SeriesInfo.downloaded`)."""
    series = client.get_json(f"/series/{series_id}")
    instances = sorted(series["Instances"])
    if not instances:
        return SeriesInfo(facts_from_orthanc({}, {}, instance_count=0, orthanc_id=series_id), {}, 0)
    first = instances[0]
    tags, path = read_tags(client, first, folder)
    metadata = client.get_json(f"/instances/{first}/metadata?expand")
    facts = facts_from_orthanc(tags, metadata, instance_count=len(instances), orthanc_id=series_id)
    return SeriesInfo(facts, tags, len(instances), str(series.get("ParentStudy", "")), tuple(instances),
                      {first: path})


def decide(rules: RulesSnapshot, info: SeriesInfo) -> Decision:
    return evaluate(rules.rules, info.facts)


def forward(client: OrthancApi, series_id: str, kind: str, target: str) -> ForwardRecord:
    """Send the series to an Orthanc modality or peer as an asynchronous job and wait for it."""
    route = "modalities" if kind == "modality" else "peers"
    answer = client.post_json(f"/{route}/{target}/store", {"Resources": [series_id], "Asynchronous": True})
    job_id = str(answer["ID"])
    deadline = time.monotonic() + FORWARD_TIMEOUT
    while time.monotonic() < deadline:
        job = client.get_json(f"/jobs/{job_id}")
        if job["State"] == "Success":
            return ForwardRecord(kind, target, job_id, "Success")
        if job["State"] == "Failure":
            raise ForwardError(f"forward of series {series_id} to {kind} {target} failed in Orthanc job {job_id}:"
                               f" {job.get('ErrorDescription') or job.get('ErrorCode')}")
        time.sleep(0.5)
    raise ForwardError(f"forward of series {series_id} to {kind} {target} did not finish in {FORWARD_TIMEOUT:.0f} s")

