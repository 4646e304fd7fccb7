"""Catch-up: the series Orthanc received while nobody converted them.

Orthanc tells plugins that a series is *stable* (``StableSeries``) only while the process that
received its instances keeps running: the list of series still receiving lives in memory. So a
series is missed when

* it became stable while the plugin was not loaded (or the plugin was down), or
* Orthanc stopped (crash, OOM kill, restart) while the series was still receiving: the next
  Orthanc never reports it stable at all.

At start the plugin reads Orthanc's change log (``/changes``) from its saved cursor up to the
log's end at that moment (later changes belong to the live callbacks) and hands it to
:func:`missed_series`. Every series named by a ``NewSeries`` or ``StableSeries`` change of that
window is looked at: it is missed when it still exists and no job was created for it after its
last instance arrived (``LastUpdate``). One that was stable is queued at once; one that was still
receiving waits ``StableAge`` first (a modality that resends after the crash gets that long, and
Orthanc's own stable event then joins the same queued job).

Not covered: instances added, before a crash, to a series created before the window (its
``NewInstance`` changes name instances only; looking each one up would cost one request per
instance of the whole window).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Change", "Missed", "missed_series", "orthanc_time"]

#: The change types that name a series.
_SERIES_CHANGES = ("NewSeries", "StableSeries")


def orthanc_time(text: str) -> float | None:
    """Orthanc's dates (change ``Date``, ``LastUpdate``) look like ``20240131T235959`` (UTC)."""
    try:
        return float(calendar.timegm(time.strptime(text[:15], "%Y%m%dT%H%M%S")))
    except ValueError:
        return None


@dataclass(frozen=True)
class Change:
    """One entry of Orthanc's change log that names a series."""

    seq: int
    kind: str
    series: str
    when: float | None

    @classmethod
    def from_orthanc(cls, entry: Mapping[str, Any]) -> Change | None:
        """The entry as a :class:`Change`, or None when it does not name a series."""
        if entry.get("ChangeType") not in _SERIES_CHANGES or entry.get("ResourceType") != "Series":
            return None
        when = orthanc_time(str(entry.get("Date", "")))
        return cls(int(entry["Seq"]), str(entry["ChangeType"]), str(entry["ID"]), when)


@dataclass(frozen=True)
class Missed:
    """A series to queue: ``delay`` seconds from now, for the reason ``why``."""

    series: str
    delay: float
    why: str


def missed_series(changes: Iterable[Change], *, last_update: Callable[[str], float | None],
                  newest_job: Callable[[str], float | None], stable_age: float) -> list[Missed]:
    """The series of ``changes`` that no job covers (see the module docstring), in log order.

    ``last_update(series)``: when its last instance arrived, None when the series is gone.
    ``newest_job(series)``: when its newest job was created, None when it never had one.
    """
    stable_at: dict[str, float | None] = {}
    order: list[str] = []
    for change in changes:
        if change.series not in stable_at:
            order.append(change.series)
            stable_at[change.series] = None
        if change.kind == "StableSeries":
            stable_at[change.series] = change.when
    missed: list[Missed] = []
    for series in order:
        updated = last_update(series)
        if updated is None:
            continue
        newest = newest_job(series)
        if newest is not None and newest >= updated - 1:
            continue  # a job was created after its last instance arrived
        stable = stable_at[series]
        if stable is not None and stable >= updated - 1:
            missed.append(Missed(series, 0.0, "became stable while the plugin was not running"))
        else:
            missed.append(Missed(series, stable_age, "was still receiving when Orthanc stopped"))
    return missed
