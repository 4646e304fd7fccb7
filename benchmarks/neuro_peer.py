"""B3: ``GET /bidsbridge/series/{id}/nifti`` vs orthanc-neuro's ``GET /series/{id}/nifti``, per corpus series.

One embedded Orthanc (1.10.1) loads both plugins, so both answer from the same storage: ours
(the Python plugin) and Debian's ``orthanc-neuro`` (a C++ plugin; its routes do not clash with
``/bidsbridge/``). Every series of ``<corpus>/*/In`` is sent once over C-STORE (DCMTK's
``dcmsend``); once our jobs have finished, each Orthanc series is fetched ``repeats`` times from each side,
alternating (ours, neuro, ours, neuro, ...), over keep-alive sessions, the body streamed fully.
Each figure is the median, min and max of the wall time of the whole HTTP GET.

What is compared (say it with the numbers):

* **ours** — ``GET /bidsbridge/series/{id}/nifti`` serves the output of the conversion the plugin
  already ran when the series arrived (dcm2niix, on STABLE_SERIES): a zip (stored, not
  recompressed) of the series' ``.nii.gz`` files and JSON sidecars. It does not convert on request.
* **neuro** — ``GET /series/{id}/nifti`` converts on every request, in C++, without dcm2niix: it
  parses each instance's header (and the Siemens CSA header), decodes every frame and writes one
  NIfTI-1 file (uncompressed ``.nii``; ``?compress`` gzips it, ``--neuro-compress``).
* **ours on demand** (with ``on_demand_repeats`` > 0) — the nearest thing we have to neuro's
  convert-per-request: ``POST /bidsbridge/series/{id}/convert``, wait for the job, then ``GET``
  the zip; timed from the POST to the last byte. Measured after the main table, one series at a time.

    .venv/bin/python benchmarks/neuro_peer.py [--repeats 5] [--on-demand-repeats 1] [--json b3.json]

Exit status 0 when ours is faster on every series neuro converts and converts all those, else 1.
Needs ``apt-get install -y orthanc-neuro`` (:data:`NEURO_INSTALL`; plugin: :data:`NEURO_PLUGIN_CANDIDATES`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom
import requests
from pydicom.errors import InvalidDicomError

from orthanc_plugin.config import default_python
from orthanc_plugin.embedded import ORTHANC_AET, EmbeddedOrthanc, OrthancSetupError, find_python_plugin, free_port

__all__ = ["NEURO_INSTALL", "NEURO_PLUGIN_CANDIDATES", "find_neuro_plugin", "main", "run_b3"]

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
#: How the peer is installed (Debian 12: orthanc-neuro 1.0-1+b5, for Orthanc 1.10.1).
NEURO_INSTALL = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc-neuro"
NEURO_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancNeuro.so",  # Debian's symlink to the one below
    "/usr/lib/orthanc/libOrthancNeuro.so.1.0",
    "/usr/local/share/orthanc/plugins/libOrthancNeuro.so",
)
TERMINAL = ("done", "skipped", "failed")
CHUNK = 1 << 20


def find_neuro_plugin() -> Path:
    for candidate in NEURO_PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return Path(candidate)
    raise OrthancSetupError(f"orthanc-neuro is not installed: {NEURO_INSTALL}")


DicomFile = tuple[Path, str, str]  # path, SOP Class UID, Transfer Syntax UID


def _scan(corpus: Path) -> tuple[dict[str, list[DicomFile]], dict[str, dict[str, Any]]]:
    """DICOM files per corpus folder, and per SeriesInstanceUID: folders, file count, description."""
    files: dict[str, list[DicomFile]] = {}
    series: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in corpus.iterdir() if (p / "In").is_dir()):
        found: list[DicomFile] = []
        for path in sorted(p for p in (folder / "In").rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True,
                                     specific_tags=["SOPClassUID", "SeriesInstanceUID", "SeriesDescription",
                                                    "SeriesNumber"])
            except (InvalidDicomError, OSError, EOFError):
                continue  # READMEs, reference .nii/.json left beside the DICOM
            uid = str(ds.get("SeriesInstanceUID", ""))
            syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "")
            if not uid or not syntax or "SOPClassUID" not in ds:
                continue
            found.append((path, str(ds.SOPClassUID), syntax))
            entry = series.setdefault(uid, {"folders": [], "files": 0,
                                            "description": str(ds.get("SeriesDescription", "")),
                                            "number": str(ds.get("SeriesNumber", ""))})
            entry["files"] += 1
            if folder.name not in entry["folders"]:
                entry["folders"].append(folder.name)
        files[folder.name] = found
    return files, series


def _send(files: list[DicomFile], port: int) -> tuple[int, list[tuple[str, str]]]:
    """C-STORE ``files`` to the embedded Orthanc: (sent, [(file, why not)]).

    With DCMTK's ``dcmsend`` (``make install`` installs dcmtk): several times faster than
    pynetdicom here, which would take most of B3's time budget.
    """
    done = subprocess.run(["dcmsend", "-v", "-nh", "-aet", "BIDSBRIDGE", "-aec", ORTHANC_AET, "127.0.0.1", str(port),
                           *(str(path) for path, _, _ in files)],
                          capture_output=True, text=True, env=dict(os.environ, TCP_NODELAY="1"), check=False)
    found = re.search(r"with status SUCCESS\s*:\s*(\d+)", done.stdout + done.stderr)
    sent = int(found.group(1)) if found else 0
    if sent == len(files):
        return sent, []
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("E:", "W:"))]
    return sent, [(f"{len(files) - sent} of {len(files)} files", "; ".join(errors[:5]) or f"exit {done.returncode}")]


def _get(session: requests.Session, url: str, params: dict[str, str], timeout: float) -> dict[str, Any]:
    """One GET, body streamed to the end: wall seconds, status, bytes, content type, error text."""
    started = time.perf_counter()
    try:
        with session.get(url, params=params, stream=True, timeout=timeout) as response:
            size = 0
            head = b""
            for chunk in response.iter_content(CHUNK):
                if len(head) < 400:
                    head += chunk[:400]
                size += len(chunk)
            seconds = time.perf_counter() - started
            error = "" if response.status_code == 200 else head[:400].decode("utf-8", "replace")
            return {"seconds": seconds, "status": response.status_code, "bytes": size,
                    "content_type": response.headers.get("Content-Type", ""), "error": error}
    except requests.RequestException as exc:
        return {"seconds": time.perf_counter() - started, "status": None, "bytes": 0, "content_type": "",
                "error": f"{exc.__class__.__name__}: {exc}"}


def _ok(answer: dict[str, Any]) -> bool:
    return bool(answer["status"] == 200 and answer["bytes"] > 0)


def _figures(prefix: str, seconds: list[float]) -> dict[str, float]:
    return {f"{prefix}_median_s": round(statistics.median(seconds), 4), f"{prefix}_min_s": round(min(seconds), 4),
            f"{prefix}_max_s": round(max(seconds), 4)}


def _why(answer: dict[str, Any]) -> str:
    if answer["status"] is None:
        return str(answer["error"])
    if answer["bytes"] == 0 and answer["status"] == 200:
        return "HTTP 200 with an empty body"
    text = answer["error"]
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            text = "; ".join(str(parsed[k]) for k in ("Message", "Details", "OrthancError", "error") if k in parsed)
    except ValueError:
        pass
    return f"HTTP {answer['status']}: {text.strip()[:300]}"


def _job_reason(job: dict[str, Any]) -> str:
    result = job.get("result") or {}
    for value in (job.get("error"), result.get("reason"), result.get("note")):
        if value:
            return str(value)[:300]
    for series in result.get("series") or []:
        if isinstance(series, dict) and series.get("reason"):
            return str(series["reason"])[:300]
    return json.dumps(result)[:300]


def _latest_jobs(http: requests.Session, url: str) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for job in http.get(f"{url}/bidsbridge/jobs", params={"limit": "10000"}, timeout=30).json():  # newest first
        latest.setdefault(str(job["series"]), job)
    return latest


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _on_demand(http: requests.Session, url: str, series_id: str, timeout: float) -> dict[str, Any]:
    """POST convert, wait for the job, GET the zip: seconds from the POST to the last byte."""
    started = time.perf_counter()
    posted = http.post(f"{url}/bidsbridge/series/{series_id}/convert", timeout=30)
    if posted.status_code != 202:
        return {"seconds": None, "state": None, "error": f"HTTP {posted.status_code}: {posted.text[:200]}"}
    job_id = posted.json()["id"]
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = http.get(f"{url}/bidsbridge/jobs/{job_id}", timeout=30).json()
        if job["state"] in TERMINAL:
            break
        time.sleep(0.01)
    answer = _get(http, f"{url}/bidsbridge/series/{series_id}/nifti", {}, timeout)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "state": job.get("state"), "error": "" if _ok(answer) else _why(answer)}


def run_b3(corpus: Path, repeats: int = 5, *, max_series: int | None = None, on_demand_repeats: int = 0,
           neuro_compress: bool = False, workers: int = 2, timeout: float = 300.0, convert_timeout: float = 600.0,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark B3 on every series of ``corpus/*/In`` (the first ``max_series`` Orthanc series if given).

    Returns ``{"rows": [...], "neuro_cannot": [...], "ours_cannot": [...], "summary": {...}, ...}``:
    one row per series both sides converted (``ours_*``/``neuro_*`` median/min/max seconds,
    ``ratio`` = ours/neuro median, ``faster``), and the series each side could not convert, with why.
    """
    say = progress or (lambda _line: None)
    run_started = time.perf_counter()
    neuro_plugin = find_neuro_plugin()
    files, scanned = _scan(corpus)
    params = {"compress": ""} if neuro_compress else {}
    rows: list[dict[str, Any]] = []
    neuro_cannot: list[dict[str, Any]] = []
    ours_cannot: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="b3-") as work:
        server = EmbeddedOrthanc(Path(work), http_port=free_port(), dicom_port=free_port(), workers=workers,
                                 stable_age=2,
                                 orthanc={"Plugins": [str(find_python_plugin()), str(neuro_plugin)]})
        with server, requests.Session() as http, requests.Session() as ours_http, requests.Session() as neuro_http:
            url = server.url
            plugins = http.get(f"{url}/plugins", timeout=10).json()
            if "neuro" not in plugins:
                raise OrthancSetupError(f"Orthanc did not load {neuro_plugin}: plugins {plugins}")
            step = time.perf_counter()
            unsent: list[tuple[str, str]] = []
            for folder, dicom_files in files.items():
                sent, failed = _send(dicom_files, server.dicom_port)
                unsent.extend(failed)
                say(f"sent {folder}: {sent} files, {len(failed)} refused")
            timings["send_s"] = round(time.perf_counter() - step, 2)

            step = time.perf_counter()
            by_uid: dict[str, dict[str, Any]] = {}

            def settled() -> bool:
                by_uid.clear()
                for item in http.get(f"{url}/series", params={"expand": ""}, timeout=30).json():
                    by_uid[str(item["MainDicomTags"].get("SeriesInstanceUID", ""))] = item
                latest = _latest_jobs(http, url)
                return all(item["ID"] in latest and latest[item["ID"]]["state"] in TERMINAL
                           for item in by_uid.values())

            _wait(settled, convert_timeout, f"every series' conversion job to finish (see {server.state_dir}/logs)")
            latest = _latest_jobs(http, url)
            timings["conversions_s"] = round(time.perf_counter() - step, 2)
            say(f"{len(by_uid)} Orthanc series; our jobs finished in {timings['conversions_s']} s")

            order = sorted(by_uid.items(), key=lambda kv: (scanned.get(kv[0], {}).get("folders", [""])[0],
                                                           _number(kv[1]["MainDicomTags"].get("SeriesNumber"))))
            if max_series is not None:
                order = order[:max_series]
            step = time.perf_counter()
            convertible: list[dict[str, Any]] = []
            for uid, item in order:
                tags = item["MainDicomTags"]
                meta = scanned.get(uid, {})
                job = latest[item["ID"]]
                base = {"corpus": "+".join(meta.get("folders", [])), "series_number": tags.get("SeriesNumber", ""),
                        "series": tags.get("SeriesDescription", meta.get("description", "")),
                        "orthanc_id": item["ID"], "files": len(item["Instances"]), "job_state": job["state"]}
                ours_url = f"{url}/bidsbridge/series/{item['ID']}/nifti"
                neuro_url = f"{url}/series/{item['ID']}/nifti"
                ours_s: list[float] = []
                neuro_s: list[float] = []
                ours_first = neuro_first = None
                for _ in range(repeats):  # alternate: ours, neuro, ours, neuro, ...
                    ours = _get(ours_http, ours_url, {}, timeout)
                    neuro = _get(neuro_http, neuro_url, params, timeout)
                    ours_first, neuro_first = ours_first or ours, neuro_first or neuro
                    if not (_ok(ours) and _ok(neuro)):
                        break  # deterministic: no point repeating a refusal
                    ours_s.append(ours["seconds"])
                    neuro_s.append(neuro["seconds"])
                assert ours_first is not None and neuro_first is not None
                if server.process is not None and server.process.poll() is not None:
                    say(f"Orthanc died on series {item['ID']}; starting it again")
                    server.start()
                if not _ok(neuro_first):
                    neuro_cannot.append({**base, "status": neuro_first["status"], "why": _why(neuro_first),
                                         "seconds": round(neuro_first["seconds"], 4)})
                if not _ok(ours_first) or job["state"] != "done":
                    ours_cannot.append({**base, "status": ours_first["status"],
                                        "why": _job_reason(job) if job["state"] != "done" else _why(ours_first),
                                        "neuro_can": _ok(neuro_first)})
                if ours_s and neuro_s:
                    row = {**base, "repeats": len(ours_s), "ours_bytes": ours_first["bytes"],
                           "neuro_bytes": neuro_first["bytes"], **_figures("ours", ours_s),
                           **_figures("neuro", neuro_s)}
                    row["ratio"] = round(statistics.median(ours_s) / statistics.median(neuro_s), 3)
                    row["faster"] = statistics.median(ours_s) < statistics.median(neuro_s)
                    rows.append(row)
                    convertible.append(row)
                say(f"{base['corpus']:20} {base['series'][:30]:30} ours {_fmt(ours_s)}  neuro {_fmt(neuro_s)}")
            timings["measure_s"] = round(time.perf_counter() - step, 2)

            if on_demand_repeats > 0:
                step = time.perf_counter()
                for row in convertible:
                    tries = [_on_demand(http, url, row["orthanc_id"], timeout) for _ in range(on_demand_repeats)]
                    seconds = [t["seconds"] for t in tries if t["seconds"] is not None and not t["error"]]
                    row["on_demand_state"] = tries[-1]["state"]
                    if seconds:
                        row.update(_figures("ours_on_demand", seconds))
                        row["on_demand_ratio"] = round(statistics.median(seconds) / row["neuro_median_s"], 3)
                    else:
                        row["on_demand_error"] = tries[-1]["error"]
                    say(f"on demand {row['series'][:30]:30} {_fmt(seconds)}")
                timings["on_demand_s"] = round(time.perf_counter() - step, 2)
    timings["total_s"] = round(time.perf_counter() - run_started, 2)
    neuro_only = [c for c in ours_cannot if c["neuro_can"]]
    summary = {
        "series": len(order), "compared": len(rows), "faster": sum(r["faster"] for r in rows),
        "slower": [r["orthanc_id"] for r in rows if not r["faster"]],
        "neuro_cannot": len(neuro_cannot), "ours_cannot": len(ours_cannot),
        "ours_cannot_but_neuro_can": len(neuro_only),
        "target_met": bool(rows) and all(r["faster"] for r in rows) and not neuro_only,
        "median_ratio": round(statistics.median(r["ratio"] for r in rows), 3) if rows else None,
    }
    return {
        "benchmark": "B3", "repeats": repeats, "neuro_compress": neuro_compress,
        "ours_route": "GET /bidsbridge/series/{id}/nifti"
                      " (serves the conversion done on arrival: zip of .nii.gz + .json)",
        "neuro_route": "GET /series/{id}/nifti" + ("?compress" if neuro_compress else "")
                       + " (converts on every request, one NIfTI-1 file)",
        "on_demand_route": "POST /bidsbridge/series/{id}/convert, wait for the job, GET /bidsbridge/series/{id}/nifti"
                           if on_demand_repeats else None,
        "neuro_plugin": str(neuro_plugin), "neuro_install": NEURO_INSTALL,
        "worker_python": str(default_python()),
        "rows": rows, "neuro_cannot": neuro_cannot, "ours_cannot": ours_cannot,
        "unsent_files": unsent, "timings": timings, "summary": summary,
    }


def _number(value: object) -> float:
    try:
        return float(str(value))
    except ValueError:
        return float("inf")


def _fmt(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.4f} s" if seconds else "   -    "


def print_report(report: dict[str, Any]) -> None:
    on_demand = report["on_demand_route"] is not None
    print(f"ours : {report['ours_route']}")
    print(f"neuro: {report['neuro_route']}")
    if on_demand:
        print(f"ours on demand: {report['on_demand_route']}")
    print(f"figures: median [min-max] seconds over {report['repeats']} alternating repeats; ratio = ours/neuro\n")
    header = (f"{'corpus':18} {'#':>4} {'series':30} {'files':>5} {'ours MB':>7} {'ours s':>24} {'neuro MB':>8}"
              f" {'neuro s':>24} {'ratio':>6} {'faster':6}")
    if on_demand:
        header += f" {'on-demand s':>11} {'od/neuro':>8}"
    print(header)
    for r in report["rows"]:
        line = (f"{r['corpus'][:18]:18} {r['series_number'][:4]:>4} {r['series'][:30]:30} {r['files']:>5}"
                f" {r['ours_bytes'] / 1e6:>7.2f} {_span(r, 'ours'):>24} {r['neuro_bytes'] / 1e6:>8.2f}"
                f" {_span(r, 'neuro'):>24} {r['ratio']:>6.3f} {'yes' if r['faster'] else 'NO':6}")
        if on_demand:
            od = r.get("ours_on_demand_median_s")
            line += f" {od:>11.3f} {r['on_demand_ratio']:>8.2f}" if od is not None else f" {'-':>11} {'-':>8}"
        print(line)
    for key, title in (("neuro_cannot", "neuro cannot convert"), ("ours_cannot", "ours cannot convert")):
        print(f"\n{title} ({len(report[key])}):")
        for c in report[key]:
            extra = "  [neuro can]" if c.get("neuro_can") else ""
            print(f"  {c['corpus'][:18]:18} {c['series_number'][:4]:>4} {c['series'][:30]:30} {c['files']:>5}"
                  f"  {c['why']}{extra}")
    s = report["summary"]
    print(f"\n{s['compared']} of {s['series']} series compared; ours faster on {s['faster']};"
          f" median ratio {s['median_ratio']}; target (faster on every one neuro converts) "
          f"{'MET' if s['target_met'] else 'NOT met'}")
    print("timings: " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()))


def _span(row: dict[str, Any], side: str) -> str:
    return f"{row[f'{side}_median_s']:.4f} [{row[f'{side}_min_s']:.4f}-{row[f'{side}_max_s']:.4f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-series", type=int, help="only the first N Orthanc series (default: every one)")
    parser.add_argument("--on-demand-repeats", type=int, default=0,
                        help="also time POST convert + wait + GET, N times per series (0: not measured)")
    parser.add_argument("--neuro-compress", action="store_true", help="ask neuro for .nii.gz (?compress)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    report = run_b3(args.corpus, args.repeats, max_series=args.max_series, on_demand_repeats=args.on_demand_repeats,
                    neuro_compress=args.neuro_compress, workers=args.workers,
                    progress=None if args.quiet else lambda line: print(line, file=sys.stderr, flush=True))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["summary"]["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
