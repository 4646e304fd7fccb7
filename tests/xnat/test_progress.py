"""Progress of a delivery to the XNAT emulator: the callback's files and bytes, and ``xnat push``'s lines."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from tests.xnat.conftest import PASSWORDS, PROJECT
from tests.xnat.test_push import SESSION, SESSION_LABEL, SUBJECT, expected_files
from tests.xnat_emulator import XnatEmulator
from xnat_container import UploadProgress, push_dataset, push_session
from xnat_container.cli import main
from xnat_container.destinations import Destination


def test_progress_counts_what_was_uploaded(xa30_bids: Path, emulator: XnatEmulator, destination: Destination):
    events: list[UploadProgress] = []
    (report,) = push_dataset(destination, PROJECT, xa30_bids, progress=events.append)

    stored = emulator.inventory().files
    assert len(events) == len(stored) == report.files_uploaded == report.files_verified
    assert [e.files_done for e in events] == list(range(1, len(events) + 1))
    assert {e.files_total for e in events} == {len(events)}
    assert all(e.uploaded for e in events)
    # Bytes: each event adds its file's size; the totals are what XNAT now stores.
    assert [e.bytes_done for e in events] == [sum(e.size for e in events[: i + 1]) for i in range(len(events))]
    assert {e.bytes_total for e in events} == {events[-1].bytes_done}
    assert events[-1].bytes_done == report.bytes_uploaded == sum(f.size for f in stored)
    # Each event names the file it was about, where XNAT stores it.
    handled = {(e.scan, e.resource, e.path, e.size) for e in events}
    assert handled == {(f.scan, f.resource, f.path, f.size) for f in stored}
    assert {e.session_label for e in events} == {SESSION_LABEL}

    again: list[UploadProgress] = []
    (second,) = push_dataset(destination, PROJECT, xa30_bids, progress=again.append)
    assert second.files_uploaded == second.bytes_uploaded == 0
    assert len(again) == second.files_skipped_identical == len(events)
    assert not any(e.uploaded for e in again)
    assert (again[-1].files_done, again[-1].bytes_done) == (events[-1].files_done, events[-1].bytes_done)


def test_a_failing_callback_does_not_stop_the_delivery(
    xa30_bids: Path, emulator: XnatEmulator, destination: Destination, caplog: pytest.LogCaptureFixture
):
    def broken(event: UploadProgress) -> None:
        raise RuntimeError("display gone")

    with caplog.at_level(logging.ERROR, logger="xnat_container.push"):
        report = push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION, progress=broken)
    assert report.files_uploaded == report.files_verified == len(expected_files(xa30_bids))
    assert caplog.text.count("progress callback failed") == report.files_uploaded
    assert "display gone" in caplog.text


LINE = re.compile(
    r"^\[(\d+)/(\d+) files, ([\d.]+[kMG]?B)/([\d.]+[kMG]?B)\] (uploaded|already there) (\S+)( scan \S+)? "
    r"(NIFTI|BIDS)/(\S+) \(\d+:\d\d elapsed(, about \d+:\d\d left)?\)$"
)


def test_push_plain_lines(
    xa30_bids: Path, emulator: XnatEmulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("XNAT_USER", "uploader")
    monkeypatch.setenv("XNAT_PASS", PASSWORDS["uploader"])
    argv = ["xnat", "push", str(xa30_bids), "--server", emulator.url, "--project", PROJECT]
    assert main(argv) == 0
    captured = capsys.readouterr()
    stored = emulator.inventory().files
    lines = captured.err.splitlines()
    assert "\x1b" not in captured.err and "\r" not in captured.err
    assert len(lines) == len(stored) >= 35
    matches = [LINE.match(line) for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches, strict=True) if not m][:3]
    total = len(stored)
    assert [(int(m[1]), int(m[2])) for m in matches if m] == [(n, total) for n in range(1, total + 1)]
    last = matches[-1]
    assert last is not None and last[3] == last[4]  # every byte handled
    assert {m[5] for m in matches if m} == {"uploaded"} and {m[6] for m in matches if m} == {SESSION_LABEL}
    assert f"{total} files uploaded" in captured.out

    assert main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "0 files uploaded" in captured.out
