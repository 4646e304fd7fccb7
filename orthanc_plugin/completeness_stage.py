"""Worker stage: is a series that is still receiving already complete? (early completion)

With ``BidsBridge.EarlyCompletion`` on (the default), the plugin queues a ``convert`` job with
trigger ``early`` when a series' first instance arrives (``NEW_SERIES``). Its handler looks
here first: the series is converted at once when Orthanc already calls it stable, or when its
instance count reaches the count one of its headers announces
(:func:`converters.completeness.expected_instances`); otherwise the job waits
(:data:`EARLY_POLL_SECONDS`, no attempt spent) and looks again. Orthanc's ``STABLE_SERIES`` for
a series whose early job is still waiting joins that job (the queue holds one queued job per
series and parameters), so a series whose headers prove nothing is converted at
``StableAge`` as before.

A ``STABLE_SERIES`` after an early conversion queues a ``stable`` job; it converts again only
when the instances changed since the last conversion (:func:`unchanged_since_last`): an instance that arrived after
the early conversion replaces its file set, never adds a second one.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from converters.completeness import Expectation, expected_instances

from .job_queue import JobQueue
from .jobs import Job
from .rest_client import OrthancApi

__all__ = ["EARLY_POLL_SECONDS", "Completeness", "instances_digest", "look", "unchanged_since_last"]

logger = logging.getLogger(__name__)

#: Seconds between two looks at a series that is still receiving.
EARLY_POLL_SECONDS = 0.5
#: Expectations remembered per worker (series id, instance read) -> announced count.
_CACHE_SIZE = 256
_expectations: OrderedDict[tuple[str, str], Expectation | None] = OrderedDict()


@dataclass(frozen=True)
class Completeness:
    """One look at a series: its instances now, and whether it can be converted."""

    instances: tuple[str, ...]
    stable: bool
    expectation: Expectation | None

    @property
    def complete(self) -> bool:
        """The headers prove the series complete (it holds the count they announce)."""
        return self.expectation is not None and len(self.instances) == self.expectation.instances

    @property
    def ready(self) -> bool:
        return self.stable or self.complete

    def describe(self) -> str:
        if self.stable:
            return "the series is stable"
        if self.expectation is None:
            return f"{len(self.instances)} instance(s) received; no header announces the count: waiting for StableAge"
        return (f"{len(self.instances)} of {self.expectation.instances} instance(s) received "
                f"({self.expectation.evidence})")


def instances_digest(instances: Iterable[str]) -> str:
    """A digest of a set of Orthanc instance ids (ids are hashes of the DICOM UIDs)."""
    return hashlib.sha256("\n".join(sorted(instances)).encode("ascii")).hexdigest()[:32]


def _expectation(client: OrthancApi, series_id: str, instance: str, folder: Path) -> Expectation | None:
    key = (series_id, instance)
    if key in _expectations:
        _expectations.move_to_end(key)
        return _expectations[key]
    import pydicom  # noqa: PLC0415 - workers only; the plugin inside Orthanc never imports this module

    path = folder / f"{instance}.dcm"  # streamed, kept: the conversion moves it in (handlers.JobContext)
    if not path.is_file():
        client.download_instance(instance, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel's "experimental DICOM readers" notice (mosaic CSA)
            header = pydicom.dcmread(path, stop_before_pixels=True)
            found = expected_instances(header)
    except Exception as exc:  # an unreadable header proves nothing; the conversion will say what is wrong
        logger.info("series %s: instance %s unreadable for early completion: %s", series_id, instance, exc)
        found = None
    _expectations[key] = found
    while len(_expectations) > _CACHE_SIZE:
        _expectations.popitem(last=False)
    return found


def look(client: OrthancApi, series_id: str, folder: Path) -> Completeness:
    """The series' state now (one ``/series`` call; the first instance's header once per worker,
    its file downloaded into ``folder``)."""
    series = client.get_json(f"/series/{series_id}")
    instances = tuple(sorted(series.get("Instances") or ()))
    stable = bool(series.get("IsStable", False))
    if stable or not instances:
        return Completeness(instances, stable, None)
    return Completeness(instances, False, _expectation(client, series_id, instances[0], folder))


def unchanged_since_last(queue: JobQueue, job: Job, instances: Iterable[str]) -> Job | None:
    """For a ``stable`` job: the series' last conversion (early, by hand, ...), when it was done
    from exactly ``instances``; else None (convert again). ``STABLE_SERIES`` then says nothing
    new (it follows an early conversion, or one by hand while the series was settling). Other
    triggers (by hand, catch-up) always convert."""
    if job.trigger != "stable":
        return None
    for previous in queue.list(series=job.series, limit=50):  # newest first
        if previous.id == job.id or previous.kind != "convert" or previous.state == "queued":
            continue
        if previous.state != "done":
            return None
        digest = (previous.result or {}).get("instances_digest")
        return previous if digest == instances_digest(instances) else None
    return None
