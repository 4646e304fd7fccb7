"""The offline ``convert`` subcommand: summary, report and exit code."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from converters.cli import main, register
from tests.converters.helpers import series_tree


def test_convert_prints_and_reports(xa30: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = series_tree(xa30, tmp_path, [5, 99])
    report = tmp_path / "out" / "report.json"
    code = main(
        ["convert", str(tree), str(tmp_path / "bids"), "--subject", "S1", "--session", "A", "--report", str(report)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "converted  #5 anat-T1w_acq-tfl\n" in printed
    assert "-> sub-S1/ses-A/anat/sub-S1_ses-A_acq-tfl_T1w.nii.gz" in printed
    assert "skipped    #99 PhoenixZIPReport [not-an-image]: Siemens Phoenix protocol report" in printed
    assert "not an image" in printed
    assert printed.endswith("1 converted, 1 skipped, 0 failed\n")
    results = json.loads(report.read_text())
    assert [(r["series_number"], r["state"]) for r in results] == [(5, "converted"), (99, "skipped")]
    assert results[0]["outputs"] == [
        "sub-S1/ses-A/anat/sub-S1_ses-A_acq-tfl_T1w.json",
        "sub-S1/ses-A/anat/sub-S1_ses-A_acq-tfl_T1w.nii.gz",
    ]
    assert results[1]["reason"] and results[1]["subject"] == "S1"


def test_convert_fails_when_a_series_fails(xa30: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = series_tree(xa30, tmp_path, [5])
    (tree / "5_anat-T1w_acq-tfl" / "IM_0002").write_bytes(b"\0" * 512)
    assert main(["convert", str(tree), str(tmp_path / "bids")]) == 1
    printed = capsys.readouterr().out
    assert "failed     #5 anat-T1w_acq-tfl:" in printed and "IM_0002" in printed


def test_convert_fails_on_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), str(tmp_path / "bids")]) == 1
    assert "no DICOM series found" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "bids")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_register_adds_the_subcommand_with_a_handler() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", "a", "b", "--report", "r.json"])
    assert (args.dicom_dir, args.bids_dir, args.report, args.subject, args.session) == (
        Path("a"),
        Path("b"),
        Path("r.json"),
        None,
        None,
    )
    assert callable(args.handler)


def test_convert_with_a_subject_map_and_without_demographics(xa30: Path, tmp_path: Path) -> None:
    tree = series_tree(xa30, tmp_path, [5])
    table = tmp_path / "map.tsv"
    table.write_text("12343@hucheng\tP001\n")
    bids = tmp_path / "bids"
    assert main(["convert", str(tree), str(bids), "--subject-map", str(table), "--no-demographics"]) == 0
    assert (bids / "sub-P001/ses-20220711/anat/sub-P001_ses-20220711_acq-tfl_T1w.nii.gz").is_file()
    assert (bids / "participants.tsv").read_text() == "participant_id\nsub-P001\n"
    key = tmp_path / "site.key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    hashed = tmp_path / "hashed"
    assert main(["convert", str(tree), str(hashed), "--pseudonym-key-file", str(key)]) == 0
    (subject,) = [p.name for p in hashed.glob("sub-*")]
    assert len(subject) == len("sub-") + 12 and "hucheng" not in subject
    table.write_text("someone-else\tP002\n")
    assert main(["convert", str(tree), str(tmp_path / "refused"), "--subject-map", str(table)]) == 1
