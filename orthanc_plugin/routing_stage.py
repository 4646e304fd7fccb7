"""Worker stage: what the routing rules decide for a series, and the forwards they ask for.

The decision is taken in the worker, at job time, from the series' facts as Orthanc has them
(the first instance's tags and its reception metadata: calling AET, called AET, remote IP), with
the rules file the worker keeps reloaded.  Forwards are sent as asynchronous Orthanc jobs and
followed to their end; a failed forward fails the attempt, so the durable queue retries it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rest_client import OrthancError, OrthancRestClient
from .rules import CheckContext, Decision, RulesError, RulesHolder, SeriesFacts, evaluate, facts_from_orthanc

__all__ = ["ForwardError", "RulesError", "SeriesInfo", "decide", "fetch_series_info", "forward", "open_rules"]

logger = logging.getLogger(__name__)

FORWARD_TIMEOUT = 900.0


class ForwardError(OrthancError):
    """An Orthanc store job to a modality or peer failed (retried by the queue)."""


@dataclass(frozen=True)
class SeriesInfo:
    facts: SeriesFacts
    tags: dict[str, Any]
    instance_count: int


def open_rules(path: str | None, context: dict[str, Any] | None) -> RulesHolder:
    """The worker's rules holder; raises :class:`RulesError` if the file is invalid right now."""
    check = CheckContext.from_orthanc_config(context or {})
    return RulesHolder(None if path is None else Path(path), context=check)


def fetch_series_info(client: OrthancRestClient, series_id: str) -> SeriesInfo:
    series = client.get_json(f"/series/{series_id}")
    instances = sorted(series["Instances"])
    if not instances:
        return SeriesInfo(facts_from_orthanc({}, {}, instance_count=0, orthanc_id=series_id), {}, 0)
    first = instances[0]
    tags = client.get_json(f"/instances/{first}/simplified-tags")
    metadata = client.get_json(f"/instances/{first}/metadata?expand")
    facts = facts_from_orthanc(tags, metadata, instance_count=len(instances), orthanc_id=series_id)
    return SeriesInfo(facts, tags, len(instances))


def decide(holder: RulesHolder, info: SeriesInfo) -> Decision:
    holder.poll()  # pick up an edited rules file; a broken one is refused and the old rules stay
    return evaluate(holder.rules, info.facts)


def forward(client: OrthancRestClient, series_id: str, kind: str, target: str) -> dict[str, Any]:
    """Send the series to an Orthanc modality or peer as an asynchronous job and wait for it."""
    route = "modalities" if kind == "modality" else "peers"
    answer = client.post_json(f"/{route}/{target}/store", {"Resources": [series_id], "Asynchronous": True})
    job_id = str(answer["ID"])
    deadline = time.monotonic() + FORWARD_TIMEOUT
    while time.monotonic() < deadline:
        job = client.get_json(f"/jobs/{job_id}")
        if job["State"] == "Success":
            return {"kind": kind, "target": target, "orthanc_job": job_id, "state": "Success"}
        if job["State"] == "Failure":
            raise ForwardError(f"forward of series {series_id} to {kind} {target} failed in Orthanc job {job_id}:"
                               f" {job.get('ErrorDescription') or job.get('ErrorCode')}")
        time.sleep(0.5)
    raise ForwardError(f"forward of series {series_id} to {kind} {target} did not finish in {FORWARD_TIMEOUT:.0f} s")

