"""Live reload: a change is active within 5 s; a broken file is refused and the old rules stay."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orthanc_plugin.rules import RulesError, RulesHolder, SeriesFacts, evaluate, load_default_rules

GOOD = "version: 1\nrules:\n  - {name: %s, match: {}, actions: [{convert: }]}\n"
BROKEN = "version: 1\nrules:\n  - {name: b, match: {Modalty: MR}, actions: [{convert: }]}\n"


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD % "first", encoding="utf-8")
    return path


@pytest.fixture
def holder(rules_file: Path) -> Iterator[RulesHolder]:
    holder = RulesHolder(rules_file, interval=0.2)
    holder.start()
    try:
        yield holder
    finally:
        holder.stop()


def _names(holder: RulesHolder) -> list[str]:
    return [rule.name for rule in holder.rules.rules]


def test_change_is_picked_up_within_5_seconds(holder: RulesHolder, rules_file: Path) -> None:
    first = holder.status()
    assert first.rules == ("first",) and first.last_error is None and first.path == str(rules_file)
    rules_file.write_text(GOOD % "second", encoding="utf-8")
    assert _wait(lambda: _names(holder) == ["second"]) < 5
    status = holder.status()
    assert status.digest != first.digest and status.loaded_at >= first.loaded_at
    assert evaluate(holder.rules, SeriesFacts("1")).matched == ("second",)


def test_broken_file_is_refused_previous_rules_stay(holder: RulesHolder, rules_file: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="orthanc_plugin.rules.reload")
    digest = holder.status().digest
    rules_file.write_text(BROKEN, encoding="utf-8")
    _wait(lambda: holder.status().last_error is not None)
    status = holder.status()
    assert status.digest == digest and status.rules == ("first",)
    assert status.last_error is not None
    assert status.last_error.startswith(f"{rules_file}:3:23: unknown DICOM keyword 'Modalty'")
    assert [(d.line, d.column) for d in status.diagnostics] == [(3, 23)]
    record = status.to_dict()
    assert record["last_error"] == status.last_error and record["loaded_at"].endswith("Z")
    assert record["diagnostics"][0]["message"] == "unknown DICOM keyword 'Modalty'"
    assert evaluate(holder.rules, SeriesFacts("1")).matched == ("first",)
    assert sum("rule file refused, previous rules stay active" in r.getMessage() for r in caplog.records) == 1

    rules_file.write_text(GOOD % "fixed", encoding="utf-8")
    _wait(lambda: _names(holder) == ["fixed"])
    assert holder.status().last_error is None


def test_vanished_file_keeps_rules(holder: RulesHolder, rules_file: Path) -> None:
    rules_file.unlink()
    _wait(lambda: holder.status().last_error is not None)
    assert "the rule file is missing" in (holder.status().last_error or "")
    assert _names(holder) == ["first"]


def test_hostile_replacement_is_refused(holder: RulesHolder, rules_file: Path) -> None:
    rules_file.write_text("version: 1\nrules: &r []\n", encoding="utf-8")
    _wait(lambda: holder.status().last_error is not None)
    assert "anchor &r is not allowed" in (holder.status().last_error or "")
    assert _names(holder) == ["first"]


def test_poll_reports_changes_and_ignores_identical_rewrites(rules_file: Path) -> None:
    holder = RulesHolder(rules_file)
    assert holder.poll() is False
    rules_file.write_text(GOOD % "first", encoding="utf-8")  # same bytes, new mtime
    assert holder.poll() is False
    rules_file.write_text(GOOD % "other", encoding="utf-8")
    assert holder.poll() is True
    assert _names(holder) == ["other"]


def test_invalid_file_at_start_raises(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    with pytest.raises(RulesError, match=r"rules.yaml:3:23: unknown DICOM keyword 'Modalty'"):
        RulesHolder(path)
    with pytest.raises(RulesError, match="cannot read the rule file"):
        RulesHolder(tmp_path / "missing.yaml")


def test_no_path_means_the_default_rules() -> None:
    holder = RulesHolder(None)
    holder.start()
    assert holder.poll() is False
    assert holder.rules == load_default_rules()
    assert holder.status().path is None and holder.status().rules[0] == "non-image-objects"
    holder.stop()


def test_default_interval_meets_the_5_second_promise(rules_file: Path) -> None:
    holder = RulesHolder(rules_file)  # the interval the plugin uses
    holder.start()
    try:
        time.sleep(0.1)
        rules_file.write_text(GOOD % "promised", encoding="utf-8")
        assert _wait(lambda: _names(holder) == ["promised"], timeout=5.0) < 5.0
    finally:
        holder.stop()
