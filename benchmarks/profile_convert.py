"""Profile one ``convert`` job as a worker runs it, with pyinstrument, against a real Orthanc.

An Orthanc with the plugin loaded but disabled (``Enabled: false``: no workers, no jobs of its
own) holds the series; this process plays the worker: it claims a job from a real queue and
runs :func:`orthanc_plugin.handlers.handle_convert` with the real REST client, warm (the first
run of each series pays the imports and is not profiled). Prints, per series, the wall time of
each warm run and pyinstrument's call tree of the last one. The findings are written up in
``benchmarks/README.md``.

    python benchmarks/profile_convert.py [--repeats 3] [--series dcm_qa_xa30/In/5_*] ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, whatever is installed

import requests
from pyinstrument import Profiler

from orthanc_plugin.embedded import EmbeddedOrthanc, free_port
from orthanc_plugin.handlers import JobContext, handle_convert
from orthanc_plugin.jobs import ConvertJob
from orthanc_plugin.rest_client import OrthancRestClient
from orthanc_plugin.routing_stage import RulesSnapshot
from orthanc_plugin.sqlite_queue import SqliteJobQueue
from orthanc_plugin.worker_settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
SERIES = ("dcm_qa_xa30/In/5_*", "dcm_qa_xa30/In/7_*", "dcm_qa_xa30/In/10_*", "dcm_qa_nih/In/20180918GE/mr_0004")


def _upload(url: str, folder: Path) -> str:
    series = ""
    with requests.Session() as session:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            answer = session.post(f"{url}/instances", data=path.read_bytes(), timeout=60)
            if answer.status_code == 400:  # not DICOM (a note beside the files)
                continue
            answer.raise_for_status()
            series = str(answer.json()["ParentSeries"])
    return series


def profile(folder: Path, url: str, work: Path, repeats: int) -> None:
    series = _upload(url, folder)
    state = work / "state"
    client = OrthancRestClient(url)
    queue = SqliteJobQueue(state)
    settings = WorkerSettings(state_dir=str(state), bids_root=str(work / "bids"), orthanc_url=url, max_attempts=3)
    rules = RulesSnapshot(state, None, None)
    profiler = Profiler(interval=0.0005)
    walls: list[float] = []
    for repeat in range(repeats + 1):
        queue.enqueue(series, "manual", ConvertJob())
        job = queue.claim(os.getpid())
        assert job is not None
        last = repeat == repeats
        with ExitStack() as stack, tempfile.TemporaryDirectory(dir=state) as scratch:
            if last:
                profiler.start()
            started = time.perf_counter()
            outcome = handle_convert(JobContext(job, queue, client, settings, rules, Path(scratch), stack))
            if repeat:
                walls.append(time.perf_counter() - started)
            if last:
                profiler.stop()
            queue.finish(job.id, outcome)  # type: ignore[arg-type]
    print(f"\n=== {folder.relative_to(CORPUS)}: warm runs {', '.join(f'{w:.3f}' for w in walls)} s")
    print(profiler.output_text(unicode=False, color=False, show_all=False))
    queue.close()
    client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", action="append", help="glob under the corpus (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bidsbridge-profile-") as tmp:
        work = Path(tmp)
        server = EmbeddedOrthanc(work / "orthanc", http_port=free_port(), dicom_port=free_port(),
                                 plugin_enabled=False)
        with server:
            for pattern in args.series or SERIES:
                (folder,) = sorted(CORPUS.glob(pattern))[:1]
                profile(folder, server.url, work / folder.name, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
