"""The catch-up's decision: which series of Orthanc's change log no job covers."""

from __future__ import annotations

from orthanc_plugin.catch_up import Change, Missed, missed_series, orthanc_time


def _entry(seq: int, kind: str, resource: str, series: str, date: str) -> dict[str, object]:
    return {"Seq": seq, "ChangeType": kind, "ResourceType": resource, "ID": series, "Date": date}


def test_orthanc_dates_are_utc_and_garbage_is_none() -> None:
    assert orthanc_time("19700101T000100") == 60.0
    assert orthanc_time("20261201T220000.123") == orthanc_time("20261201T220000")
    assert orthanc_time("") is None and orthanc_time("yesterday") is None


def test_only_series_changes_are_read() -> None:
    assert Change.from_orthanc(_entry(1, "NewInstance", "Instance", "i", "19700101T000000")) is None
    assert Change.from_orthanc(_entry(2, "StableStudy", "Study", "s", "19700101T000000")) is None
    assert Change.from_orthanc(_entry(3, "StableSeries", "Series", "s", "19700101T000010")) == Change(
        3, "StableSeries", "s", 10.0)


def _decide(changes: list[Change], updated: dict[str, float], jobs: dict[str, float]) -> list[Missed]:
    return missed_series(changes, last_update=updated.get, newest_job=jobs.get, stable_age=30.0)


def test_a_series_that_was_still_receiving_waits_stable_age() -> None:
    changes = [Change(1, "NewSeries", "a", 100.0)]
    assert _decide(changes, {"a": 105.0}, {}) == [Missed("a", 30.0, "was still receiving when Orthanc stopped")]


def test_a_series_stable_while_the_plugin_was_away_is_queued_at_once() -> None:
    changes = [Change(1, "NewSeries", "a", 100.0), Change(5, "StableSeries", "a", 165.0)]
    assert _decide(changes, {"a": 105.0}, {}) == [Missed("a", 0.0, "became stable while the plugin was not running")]


def test_a_series_with_a_job_after_its_last_instance_is_covered() -> None:
    changes = [Change(1, "NewSeries", "a", 100.0), Change(5, "StableSeries", "a", 165.0)]
    assert _decide(changes, {"a": 105.0}, {"a": 165.0}) == []


def test_instances_after_the_last_job_make_it_missed_again() -> None:
    # converted once, then more instances, then Orthanc died before the series was stable again
    changes = [Change(1, "NewSeries", "a", 100.0), Change(5, "StableSeries", "a", 165.0)]
    assert _decide(changes, {"a": 300.0}, {"a": 165.0}) == [
        Missed("a", 30.0, "was still receiving when Orthanc stopped")]


def test_deleted_series_are_left_alone_and_order_is_kept() -> None:
    changes = [Change(1, "NewSeries", "gone", 1.0), Change(2, "NewSeries", "b", 2.0), Change(3, "NewSeries", "a", 3.0)]
    decided = _decide(changes, {"a": 3.0, "b": 2.0}, {})
    assert [m.series for m in decided] == ["b", "a"]
