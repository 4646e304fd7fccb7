"""Atomic writes leave nothing behind: not on failure, and not (after a sweep) when killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from converters.bids import atomic
from converters.bids.tables import ensure_dataset


def test_a_failed_write_removes_its_temporary_and_keeps_the_old_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "scans.tsv"
    target.write_text("old\n")

    def full(self: Path, text: str, encoding: str) -> int:
        with self.open("w", encoding=encoding) as handle:
            handle.write(text[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        atomic.write_text_atomic(target, "new content\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scans.tsv"]


def test_temporaries_name_their_owner(tmp_path: Path) -> None:
    tag = atomic.owner_tag()
    host, pid, _random = tag.split("-")
    assert host == atomic.HOST and pid == str(os.getpid())
    assert not atomic.owner_is_gone(tag)


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    return int(child.stdout)


def test_the_sweep_removes_only_the_leftovers_of_dead_writers_and_stale_ones(tmp_path: Path) -> None:
    dead = tmp_path / "sub-1" / f".sub-1_T1w.json.{atomic.HOST}-{_dead_pid()}-abc.tmp"
    live = tmp_path / f".participants.tsv.{atomic.owner_tag()}.tmp"
    other_host = tmp_path / ".CHANGES.otherhost-1-abc.tmp"
    stale = tmp_path / ".README.md.0123abcd.tmp"  # an older version's name: no owner
    data = tmp_path / "sub-1" / "sub-1_T1w.json"
    for path in (dead, live, other_host, stale, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    old = time.time() - atomic.STALE_SECONDS - 60
    os.utime(stale, (old, old))
    removed = atomic.sweep_temporaries(tmp_path)
    assert sorted(removed) == sorted([dead, stale])
    assert live.exists() and other_host.exists() and data.exists()


def test_a_dataset_prepared_again_loses_a_killed_writers_temporary(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    ensure_dataset(root, "v1.0.20260724")
    leftover = root / f".dataset_description.json.{atomic.HOST}-{_dead_pid()}-f00d.tmp"
    leftover.write_text("{\"Na")
    ensure_dataset(root, "v1.0.20260724")
    assert not leftover.exists() and (root / "dataset_description.json").is_file()


def test_the_sweep_passes_over_folders_that_vanish_while_it_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other processes' working folders come and go during the walk (a concurrent conversion
    finishing): the sweep must pass over them, not fail the conversion that sweeps."""
    dead = tmp_path / f".CHANGES.{atomic.HOST}-{_dead_pid()}-beef.tmp"
    dead.write_text("x")
    vanishing = tmp_path / "sub-1" / "anat"
    vanishing.mkdir(parents=True)
    staged = tmp_path / ".bidsbridge" / "tmp" / "work" / f".a.json.{atomic.HOST}-{_dead_pid()}-cafe.tmp"
    staged.parent.mkdir(parents=True)
    staged.write_text("x")
    real_scandir = os.scandir

    def scandir(path: str = ".") -> Any:
        if Path(path) == vanishing:
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert atomic.sweep_temporaries(tmp_path) == [dead]
    assert staged.exists(), "staging folders are sweep_staging's, not this sweep's"
