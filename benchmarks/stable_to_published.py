"""Time from STABLE_SERIES to published BIDS files, per series, in a real Orthanc.

Starts the embedded Orthanc + plugin on free loopback ports, sends the chosen XA30 series over
C-STORE, and reads each job's ``created_at`` (the STABLE_SERIES callback) and ``finished_at``
(files published). For scale it also times dcm2niix alone on the same series folder, side by
side in the same run. Prints a table and, with ``--json``, a JSON document.

    .venv/bin/python benchmarks/stable_to_published.py [--series 5_anat-T1w_acq-tfl 10_DWI_dir80_PA]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import dcm2niix
import pydicom
import requests

from orthanc_plugin.dicom_send import send_files
from orthanc_plugin.embedded import ORTHANC_AET, EmbeddedOrthanc, free_port

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "dcm_qa_xa30" / "In"


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _dcm2niix_alone(series: Path) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run([dcm2niix.bin, "-b", "y", "-z", "y", "-f", "x", "-o", out, str(series)],
                       check=True, capture_output=True)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", nargs="+", default=["5_anat-T1w_acq-tfl", "10_DWI_dir80_PA"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dirs = [CORPUS / name for name in args.series]
    uids = {str(pydicom.dcmread(next(d.iterdir()), stop_before_pixels=True).SeriesInstanceUID): d.name
            for d in dirs}
    rows = []
    with tempfile.TemporaryDirectory() as work:
        server = EmbeddedOrthanc(Path(work), http_port=free_port(), dicom_port=free_port(),
                                 workers=args.workers, stable_age=2)
        with server:
            for directory in dirs:  # one at a time, so each series has the workers to itself
                send_files(sorted(directory.iterdir()), "127.0.0.1", server.dicom_port, called_aet=ORTHANC_AET)
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    jobs = requests.get(f"{server.url}/bidsbridge/jobs", timeout=10).json()
                    done = [j for j in jobs if j["state"] in ("done", "skipped", "failed")
                            and uids.get((j["result"] or {}).get("series_uid", "")) == directory.name]
                    if done:
                        job = done[0]
                        rows.append({
                            "series": directory.name,
                            "files": len(list(directory.iterdir())),
                            "state": job["state"],
                            "stable_to_published_s": round(_epoch(job["finished_at"]) - _epoch(job["created_at"]), 3),
                            "dcm2niix_alone_s": round(_dcm2niix_alone(directory), 3),
                        })
                        break
                    time.sleep(0.05)
    for row in rows:
        row["overhead_ratio"] = round(row["stable_to_published_s"] / row["dcm2niix_alone_s"], 2)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        header = ("series", "files", "state", "STABLE->published s", "dcm2niix alone s", "ratio")
        print(f"{header[0]:28} {header[1]:>5} {header[2]:8} {header[3]:>20} {header[4]:>17} {header[5]:>6}")
        for row in rows:
            print(f"{row['series']:28} {row['files']:>5} {row['state']:8} {row['stable_to_published_s']:>20.3f}"
                  f" {row['dcm2niix_alone_s']:>17.3f} {row['overhead_ratio']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
