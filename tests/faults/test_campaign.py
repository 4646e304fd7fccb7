"""A reduced fault campaign through a real Orthanc, the plugin and the XNAT emulator (the full
one is ``benchmarks/fault_campaign.py``): nothing lost, duplicated or orphaned, no process left
behind, whatever is killed or fills up meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.campaign import Campaign, Plan

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

#: A third of the XA30 session (T1w, BOLD, GRE field map, both DWI and a derived map, ASL, the
#: Phoenix report), every fault kind once or twice.
REDUCED = Plan(
    copies=1,
    series=("5_", "7_", "8_", "9_", "10_", "11_", "17_", "25_", "99_"),
    worker_kills=4,
    orthanc_kills_during_store=1,
    orthanc_kills_during_conversion=1,
    xnat_outages=2,
    disk_full_episodes=1,
    timeout=420.0,
)


def test_a_reduced_campaign_loses_nothing(corpus: Path, tmp_path: Path) -> None:
    report = Campaign(REDUCED, corpus, tmp_path).run()
    print("\n" + "\n".join(report.lines()))
    assert len(report.orthanc_kills) == 2 and report.xnat_outages == 2
    assert report.worker_kills >= 2  # busy workers are caught (conversions are short)
    assert report.disk_full_episodes == 1, report.disk_full_note
    assert report.lost == [] and report.duplicated == [] and report.orphaned == []
    assert report.xnat_lost == [] and report.xnat_duplicated == []
    assert report.leftover_processes == [] and report.failed_jobs == []
