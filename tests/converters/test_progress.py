"""Progress of ``bidsbridge convert``: the library's callback, plain lines off a terminal, the bar on one."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from converters import ConvertProgress, convert_tree
from converters.cli_progress import ProgressDisplay
from converters.discover import discover
from converters.regroup import regroup
from tests.converters.helpers import series_dir

#: The checkout under test (the child interpreters must import the same one).
ROOT = Path(__file__).resolve().parents[2]

#: Small XA30 series: two field maps, a two-volume ASL, the Phoenix report (skipped).
SMALL = [8, 9, 27, 99]

LINE = re.compile(r"^\[(\d+)/(\d+)\] (converted|skipped|failed) (.+) \(\d+:\d\d elapsed(, about \d+:\d\d left)?\)$")


def _link(source: Path, tree: Path) -> None:
    (tree / source.name).mkdir(parents=True)
    for file in source.iterdir():
        (tree / source.name / file.name).symlink_to(file)


def _tree(xa30: Path, tmp_path: Path, numbers: list[int]) -> Path:
    tree = tmp_path / "in"
    for number in numbers:
        _link(series_dir(xa30, number), tree)
    return tree


def _bidsbridge(*argv: str) -> list[str]:
    return [sys.executable, "-m", "orthanc_plugin.cli", *argv]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_plain_lines_when_stderr_is_not_a_terminal(xa30: Path, tmp_path: Path) -> None:
    tree = _tree(xa30, tmp_path, SMALL)
    report = tmp_path / "report.json"
    done = subprocess.run(
        _bidsbridge("convert", str(tree), str(tmp_path / "bids"), "-j", "1", "--report", str(report)),
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    series = [r for r in json.loads(report.read_text()) if r["series_uid"]]
    assert len(series) == len(SMALL)
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == len(series), done.stderr
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [(int(m[1]), int(m[2])) for m in matches if m] == [(n, len(SMALL)) for n in range(1, len(SMALL) + 1)]
    assert lines[-1].startswith(f"[{len(SMALL)}/{len(SMALL)}] ") and "left" not in lines[-1]
    # One line per series, with its state and name as the summary has them.
    shown = {(m[3], m[4]) for m in matches if m}
    assert shown == {(r["state"], f"#{r['series_number']} {r['series_description']}") for r in series}
    assert ("skipped", "#99 PhoenixZIPReport") in shown
    # The summary still goes to stdout, without progress in it.
    assert done.stdout.endswith(f"{sum(r['state'] == 'converted' for r in series)} converted, "
                                f"{sum(r['state'] == 'skipped' for r in series)} skipped, 0 failed\n")
    assert "[1/" not in done.stdout


def test_quiet_shows_no_progress(xa30: Path, tmp_path: Path) -> None:
    tree = _tree(xa30, tmp_path, [99])
    done = subprocess.run(
        _bidsbridge("convert", str(tree), str(tmp_path / "bids"), "-j", "1", "--quiet"),
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "skipped    #99" in done.stdout


def _read_all(fd: int, timeout: float = 600.0) -> bytes:
    """Everything written to the terminal whose main side is ``fd``, until its writers are gone."""
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise AssertionError("the command wrote nothing to its terminal for 10 minutes")
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_bar_on_a_terminal(xa30: Path, tmp_path: Path) -> None:
    tree = _tree(xa30, tmp_path, [8, 99])
    main, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = {**_env(), "TERM": "xterm"}
    try:
        child = subprocess.Popen(
            _bidsbridge("convert", str(tree), str(tmp_path / "bids"), "-j", "1"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal, env=env, cwd=ROOT,
        )  # fmt: skip
        os.close(terminal)
        terminal = -1
        shown = _read_all(main).decode("utf-8", "replace")
        stdout, _ = child.communicate(timeout=600)
    finally:
        os.close(main)
        if terminal != -1:
            os.close(terminal)
    assert child.returncode == 0, shown
    assert re.search(r"\rconverting: ", shown), shown  # the bar redraws itself at the start of its line
    assert re.search(r"100%\|[^\r\n]*\| 2/2 \[", shown), shown
    assert "series/s" in shown or "s/series" in shown
    assert "[1/2]" not in shown and "[2/2] " not in shown  # no plain lines on a terminal
    assert b"skipped    #99" in stdout


def _bold_and_small(corpus: Path, tmp_path: Path) -> Path:
    """Two XA30 series, and a run exported as six one-volume series (one acquisition)."""
    tree = _tree(corpus / "dcm_qa_xa30", tmp_path, [8, 99])
    for source in sorted((corpus / "dcm_qa_xa30i_bold" / "In").iterdir()):
        _link(source, tree)
    return tree


def test_callback_with_two_jobs(corpus: Path, tmp_path: Path) -> None:
    tree = _bold_and_small(corpus, tmp_path)
    units = regroup(discover(tree).series)
    expected_order = [part.series_uid for unit in units for part in (unit.parts or (unit,))]
    assert len(units) == 3 and len(expected_order) == 8  # the six bold series are one acquisition

    events: list[ConvertProgress] = []
    results = convert_tree(tree, tmp_path / "bids", jobs=2, progress=events.append)

    assert [event.done for event in events] == list(range(1, 9))
    assert {event.total for event in events} == {8}
    assert [r.series_uid for r in results] == expected_order  # the discovery order, whatever finished first
    assert sorted(e.result.series_uid for e in events) == sorted(expected_order)
    by_uid = {r.series_uid: r for r in results}
    for event in events:
        assert event.result.state == by_uid[event.result.series_uid].state
    bold = [e.result for e in events if e.result.acquisition]
    assert len(bold) == 6 and all(r.state == "converted" and len(r.members) == 6 for r in bold)


def test_a_failing_callback_does_not_stop_the_conversion(
    xa30: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = _tree(xa30, tmp_path, [99])
    calls: list[ConvertProgress] = []

    def broken(event: ConvertProgress) -> None:
        calls.append(event)
        raise RuntimeError("display gone")

    with caplog.at_level(logging.ERROR, logger="converters.pipeline"):
        results = convert_tree(tree, tmp_path / "bids", progress=broken)
    assert [r.state for r in results] == ["skipped"] and len(calls) == 1
    assert "progress callback failed on 1/1" in caplog.text and "display gone" in caplog.text


def test_plain_display_lines() -> None:
    out = io.StringIO()
    with ProgressDisplay(out, description="converting", unit="series", terminal=False) as display:
        display.update(1, 3, line="[1/3] converted #5 T1w", note="ignored off a terminal")
        display.update(3, 3, line="[3/3] skipped #99 report")
    first, last = out.getvalue().splitlines()
    assert re.fullmatch(r"\[1/3\] converted #5 T1w \(\d+:\d\d elapsed, about \d+:\d\d left\)", first), first
    assert re.fullmatch(r"\[3/3\] skipped #99 report \(\d+:\d\d elapsed\)", last), last

    quiet = io.StringIO()
    with ProgressDisplay(quiet, description="converting", unit="series", enabled=False) as display:
        display.update(1, 1, line="[1/1] converted")
    assert quiet.getvalue() == ""



def test_bar_in_bytes() -> None:
    """The bar ``xnat push`` draws: bytes scaled (MB), the files count after it."""
    out = io.StringIO()
    with ProgressDisplay(out, description="uploading", unit="B", terminal=True) as display:
        display.update(400_000, 1_000_000, line="not shown on a terminal", note="1/2 files")
        display.update(1_000_000, 1_000_000, line="not shown on a terminal", note="2/2 files")
    shown = out.getvalue()
    assert "not shown" not in shown
    assert re.search(r"\ruploading: +40%\|[^\r]*\| 400k/1\.00M \[[^\r]*1/2 files\]", shown), shown
    assert re.search(r"\ruploading: 100%\|[^\r]*\| 1\.00M/1\.00M \[[^\r]*B/s, 2/2 files\]", shown), shown
