"""The full fault campaign (the reduced one runs in CI: ``tests/faults/test_campaign.py``).

Two copies of the XA30 session (42 series) through a real Orthanc with the plugin and the XNAT
emulator; at random moments: 20 kills (SIGKILL) of busy workers, at most two per job; Orthanc
killed during C-STORE once and during conversion twice, each time started again; 5 XNAT outages
(unreachable, or answering 5xx); one episode of the dataset's filesystem (a tmpfs) full. Then it
prints kills, outages, series, lost, duplicated, orphaned and leftover processes, and exits 1
if anything was lost, duplicated, orphaned or left running.

    .venv/bin/python benchmarks/fault_campaign.py [--copies 2] [--seed 7] [--json report.json] [--keep DIR]

Needs root for the tmpfs (else the disk-full episode is reported as not run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults.campaign import Campaign, Plan, report_json

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--worker-kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it (logs, dataset, queue)")
    args = parser.parse_args()
    plan = Plan(copies=args.copies, worker_kills=args.worker_kills, orthanc_kills_during_store=1,
                orthanc_kills_during_conversion=2, xnat_outages=5, disk_full_episodes=1, seed=args.seed,
                timeout=1800.0)
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        report = Campaign(plan, CORPUS, args.keep.resolve()).run()
    else:
        with tempfile.TemporaryDirectory(prefix="campaign-") as tmp:
            report = Campaign(plan, CORPUS, Path(tmp)).run()
    print("\n".join(report.lines()))
    if args.json:
        args.json.write_text(report_json(report))
    bad = (report.lost or report.duplicated or report.orphaned or report.xnat_lost or report.xnat_duplicated
           or report.leftover_processes or report.failed_jobs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
