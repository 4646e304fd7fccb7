"""The benchmark suite of issue 12: ``make bench`` prints one table and writes ``results.json``.

Each figure is a median over ``--repeats`` (>= 5) repeats with min and max; each comparison is a
ratio ours/theirs measured side by side in the same run, ours and theirs alternating in order
from one repeat to the next (the ratio column is the median of the per-repeat ratios).

=====  ========================================================================================
B1     STABLE_SERIES -> published (job ``finished_at - created_at``) vs bare pinned dcm2niix
       (the product's flags) on the same files, per series; every repeat a copy of the series
       under fresh Study/Series/SOP Instance UIDs (and a patient of its own).
B2     C-STORE ingest throughput (dcmsend, files/s) of dcm_qa_nih into Orthanc with the plugin
       loaded and converting vs a plain Orthanc (same configuration, no plugin loaded).
B3     the neuro peer comparison: ``run_b3`` of ``benchmarks/neuro_peer.py`` (written
       separately); "not run: <reason>" when that file or function is missing or raises.
B4     a backlog of >= 200 series (copies of dcm_qa_xa30) stored first with ``Enabled: false``,
       then all queued at once (``POST /bidsbridge/series/{id}/convert``) after a restart with
       the default workers: series/minute vs bare dcm2niix with the same parallelism.
B5     peak RSS of converting a series as the worker does (``convert_series`` in a fresh child
       process, the worker's modules imported) vs the size of its NIfTI output.
B6     ``bidsbridge derive adc`` (ADC Parametric Map + mask SEG + SR) of an XA30 DWI: wall time
       and peak RSS.
B7     last instance received -> files published for a series one enhanced instance makes
       complete (XA30 T1w) vs the benchmark servers' StableAge + bare dcm2niix.
B8     offline ``bidsbridge convert`` of dcm_qa_xa30/In vs bare dcm2niix on the folder.
B9     ``bidsbridge --help`` start-up wall time, with ``python -c pass`` as the floor.
=====  ========================================================================================

    python benchmarks/bench.py [--json benchmarks/results.json] [--only B1,B4] [--repeats N] [--smoke]

``--smoke`` (development only) runs 1 repeat and smaller workloads, and says so in the output.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, whatever is installed

import requests
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial

from converters.conversion import dcm2niix_binary, dcm2niix_version
from orthanc_plugin.config import default_python
from orthanc_plugin.embedded import ORTHANC_AET, EmbeddedOrthanc, free_port

REPO = Path(__file__).resolve().parents[1]
Json: TypeAlias = dict[str, "Json"] | list["Json"] | str | int | float | bool | None

log = logging.getLogger("bench")

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus"
#: The flags :func:`converters.conversion.run_dcm2niix` passes (``-f`` names the output).
DCM2NIIX_FLAGS = ("-g", "i", "-b", "y", "-ba", "y", "-z", "i", "-f", "series")
CALLING_AET = "BIDSBRIDGE"
TERMINAL = ("done", "skipped", "failed")
MIN_REPEATS = 5
B1_STABLE_AGE = 1
MB = 1 << 20

#: B1 series: (label, suite, folder glob under In/).
B1_SERIES = (
    ("XA30 T1w (enhanced, 1 file)", "dcm_qa_xa30", "5_*"),
    ("XA30 BOLD", "dcm_qa_xa30", "7_*"),
    ("XA30 DWI", "dcm_qa_xa30", "10_*"),
    ("NIH GE classic (largest dcm_qa_nih series)", "dcm_qa_nih", None),
)


# -- numbers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """The raw repeat values of one quantity."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def show(self) -> str:
        if not self.values:
            return "-"
        if len(self.values) == 1:
            return _num(self.values[0])
        return f"{_num(self.median)} [{_num(self.low)}-{_num(self.high)}]"


def _num(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def stats(values: Sequence[float]) -> Stats:
    return Stats(tuple(float(v) for v in values))


def ratios(ours: Sequence[float], theirs: Sequence[float]) -> Stats:
    return stats([o / t for o, t in zip(ours, theirs, strict=True) if t > 0])


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    id: str
    what: str
    unit: str
    ours: Stats | None
    theirs: Stats | None
    ratio: Stats | None
    target: str
    met: bool | None
    note: str = ""


@dataclass
class Figure:
    """What every figure function returns; the B-specific subclasses add their raw details."""

    id: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    not_run: str | None = None
    #: os.getloadavg() before and after: the machine may be shared.
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


# -- context --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPython:
    """The interpreter the plugin's workers run (``BidsBridge.Python``), None: the product's default."""

    path: Path | None
    how: str


@dataclass(frozen=True)
class Context:
    corpus: Path
    repeats: int
    smoke: bool
    stable_age: int
    tmp: Path
    worker_python: WorkerPython
    #: Seconds B3 (``run_b3``, written separately) may take before it is stopped and reported not run.
    b3_budget: float
    #: Environment of the bench's own subprocesses (this checkout first on PYTHONPATH).
    env: dict[str, str]

    def scratch(self, name: str) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.tmp))
        return folder

    def order(self, repeat: int) -> tuple[str, str]:
        """Which side goes first in ``repeat`` (they alternate)."""
        return ("ours", "theirs") if repeat % 2 == 0 else ("theirs", "ours")


def _probe_worker_python(tmp: Path) -> WorkerPython:
    """The product's default interpreter when it imports this checkout; else a shim venv around
    this interpreter that puts this checkout first (the supervisor drops PYTHONPATH)."""
    default = default_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    probe = subprocess.run(
        [str(default), "-c", "import converters, dcm2niix, orthanc_plugin; print(orthanc_plugin.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp, check=False,
    )
    if probe.returncode == 0 and Path(probe.stdout.strip()).resolve().is_relative_to(REPO):
        return WorkerPython(None, f"the product's default ({default})")
    shim = tmp / "worker-venv"
    (shim / "bin").mkdir(parents=True)
    (shim / "lib").symlink_to(Path(sys.prefix) / "lib")  # the entry script adds <venv>/lib/.../site-packages
    script = shim / "bin" / "python"
    script.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))}\nexport PYTHONPATH\n"
                      f'exec {shlex.quote(sys.executable)} "$@"\n')
    script.chmod(0o755)
    why = "cannot import this checkout" if probe.returncode == 0 else "cannot import the package"
    return WorkerPython(script, f"shim {script} -> {sys.executable} with PYTHONPATH={REPO} "
                                f"(the product's default {default} {why})")


# -- DICOM copies, dcm2niix, subprocesses ---------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """The identifiers of a DICOM file (read up to the Series Instance UID only: fast)."""

    study: str
    series: str
    sop: str
    patient_id: str


def read_head(path: Path) -> Head | None:
    """None when ``path`` is not a DICOM file."""
    try:
        with path.open("rb") as handle:
            ds = read_partial(handle, stop_when=lambda tag, vr, length: tag > 0x0020000E)
        return Head(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                    str(ds.get("PatientID", "")))
    except (InvalidDicomError, OSError, EOFError, AttributeError, KeyError):
        return None


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files under ``folder`` (README files and the like are passed over)."""
    return [path for path in sorted(p for p in folder.rglob("*") if p.is_file()) if read_head(path) is not None]


def same_length_uid(uid: str) -> str:
    """A fresh UID as long as ``uid`` (so every element length in the file stays as it is)."""
    if len(uid) < 12:
        raise ValueError(f"UID {uid!r} is too short to remap in place")
    digits = "".join(random.choice("0123456789") for _ in range(len(uid) - 6))
    return f"2.25.{random.choice('123456789')}{digits}"


def _patient_id_elements(old: bytes, new: bytes) -> list[tuple[bytes, bytes]]:
    """(old, new) encodings of a PatientID (0010,0020) element holding ``old`` / ``new`` (same
    length, padded to even): explicit VR little endian, then implicit VR little endian."""
    pads = [b""] if len(old) % 2 == 0 else [b" ", b"\0"]
    pairs = []
    for pad in pads:
        size = len(old) + len(pad)
        for head in (b"\x10\x00\x20\x00LO" + struct.pack("<H", size), b"\x10\x00\x20\x00" + struct.pack("<I", size)):
            pairs.append((head + old + pad, head + new + pad))
    return pairs


def remap_copy(files: Sequence[Path], source_root: Path, target: Path, patient: str) -> list[Path]:
    """A copy of ``files`` under fresh Study/Series/SOP Instance UIDs and a PatientID made from
    ``patient``, everything else byte for byte: each old UID (wherever it occurs, so references
    between the copied files stay true) becomes a new UID of the same length, and the PatientID
    element a same-length value, so that no element length changes."""
    heads = [read_head(path) for path in files]
    mapping: dict[bytes, bytes] = {}
    for path, head in zip(files, heads, strict=True):
        if head is None:
            raise ValueError(f"{path} is not a DICOM file")
        for uid in (head.study, head.series, head.sop):
            mapping.setdefault(uid.encode(), same_length_uid(uid).encode())
    uids = re.compile(rb"(?<![0-9.])[0-9][0-9.]{10,63}(?![0-9.])")  # any UID-like run, looked up below
    made: list[Path] = []
    for path, head in zip(files, heads, strict=True):
        raw = uids.sub(lambda found: mapping.get(found.group(0), found.group(0)), path.read_bytes())
        old = head.patient_id.encode() if head is not None else b""
        if old:
            new = patient.encode().ljust(len(old), b"0")[-len(old):]
            pairs = [(o, n) for o, n in _patient_id_elements(old, new) if o in raw]
            if not pairs:
                raise ValueError(f"{path}: its PatientID element is not encoded as expected")
            raw = raw.replace(*pairs[0])
        out = target / path.relative_to(source_root)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(raw)
        made.append(out)
    return made


def remap_copies(jobs: Sequence[tuple[Sequence[Path], Path, Path, str]]) -> list[list[Path]]:
    """:func:`remap_copy` of every ``(files, source_root, target, patient)``, one process per core
    (before anything is measured)."""
    with ProcessPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(remap_copy, *job) for job in jobs]
        return [future.result() for future in futures]


def series_uid_of(path: Path) -> str:
    head = read_head(path)
    if head is None:
        raise ValueError(f"{path} is not a DICOM file")
    return head.series


def bare_dcm2niix(input_dir: Path, output_dir: Path) -> float:
    """Wall time of the pinned dcm2niix with the product's flags (output into a new folder)."""
    output_dir.mkdir(parents=True)
    started = time.perf_counter()
    proc = subprocess.run([str(dcm2niix_binary()), *DCM2NIIX_FLAGS, "-o", str(output_dir), str(input_dir)],
                          capture_output=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 2, 8, 10):
        log.warning("dcm2niix exited %d on %s", proc.returncode, input_dir)
    return seconds


@dataclass(frozen=True)
class ChildRun:
    """A child process: wall time, exit code, and its own peak RSS (KiB) when asked for."""

    seconds: float
    code: int
    peak_kb: int | None = None


#: GNU time: its ``%M`` is the peak RSS of the command it runs, clean because time itself is tiny.
#: (``ru_maxrss`` of a child reaped by a big process is not: Linux keeps the RSS of the memory the
#: child had before its exec — after Python's vfork, the parent's — so every child of an 80 MB
#: Python "peaks" at >= 80 MB. Checked: /bin/true spawned by a 300 MB Python reports 313 MB.)
GNU_TIME = Path("/usr/bin/time")


def _read_peaks(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split() if line.isdigit()]
    except OSError:
        return []


def run_child(command: Sequence[str], env: dict[str, str], cwd: Path | None = None, *,
              peak: bool = False) -> ChildRun:
    """Run ``command`` (output discarded; stderr logged when it fails); with ``peak``, under GNU
    time for its peak RSS."""
    argv = list(command)
    peaks = Path(tempfile.mkstemp(prefix="peak-", suffix=".txt")[1]) if peak else None
    if peaks is not None:
        argv = [str(GNU_TIME), "-f", "%M", "-o", str(peaks), *argv]
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        log.warning("%s exited %d: %s", " ".join(command[:4]), proc.returncode,
                    proc.stderr.decode(errors="replace").strip()[-400:])
    found = None
    if peaks is not None:
        found = max(_read_peaks(peaks), default=None)
        peaks.unlink()
    return ChildRun(seconds, proc.returncode, found)


def dcmsend(target: Path, port: int) -> float:
    """C-STORE every file under ``target`` with DCMTK's dcmsend (one association); wall seconds."""
    env = dict(os.environ, TCP_NODELAY="1")
    started = time.perf_counter()
    subprocess.run(["dcmsend", "-aet", CALLING_AET, "-aec", ORTHANC_AET, "127.0.0.1", str(port),
                    "+sd", "+r", str(target)], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def _epoch(stamp: str | None) -> float | None:
    return None if stamp is None else datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def nifti_sizes(root: Path) -> tuple[int, int]:
    """(bytes on disk, uncompressed bytes) of the ``.nii.gz`` files under ``root`` (sourcedata excluded)."""
    on_disk = raw = 0
    for path in root.rglob("*.nii.gz"):
        if "sourcedata" in path.relative_to(root).parts:
            continue
        on_disk += path.stat().st_size
        with path.open("rb") as handle:  # gzip's ISIZE trailer: the uncompressed size mod 2**32
            handle.seek(-4, os.SEEK_END)
            raw += int.from_bytes(handle.read(4), "little")
    return on_disk, raw


def count_nifti(root: Path) -> int:
    return sum(1 for p in root.rglob("*.nii.gz") if "sourcedata" not in p.relative_to(root).parts)


# -- the embedded Orthanc -------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    id: int
    series: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    worker_pid: int | None
    outputs: int

    @classmethod
    def from_rest(cls, raw: Any) -> JobRecord:
        created = _epoch(raw["created_at"])
        assert created is not None
        return cls(int(raw["id"]), str(raw["series"]), str(raw["state"]), created, _epoch(raw["started_at"]),
                   _epoch(raw["finished_at"]), raw.get("error"), raw.get("worker_pid"), len(raw.get("outputs") or ()))


class Server:
    """An :class:`EmbeddedOrthanc` (with the plugin, or plain) and the REST calls the bench makes."""

    def __init__(self, ctx: Context, workdir: Path, *, plugin: bool = True, enabled: bool = True,
                 stable_age: int | None = None, bidsbridge: dict[str, Any] | None = None) -> None:
        section: dict[str, Any] = dict(bidsbridge or {})
        if ctx.worker_python.path is not None:
            section["Python"] = str(ctx.worker_python.path)
        self.plugin = plugin
        self.orthanc = EmbeddedOrthanc(workdir, http_port=free_port(), dicom_port=free_port(),
                                       stable_age=ctx.stable_age if stable_age is None else stable_age,
                                       plugin_enabled=enabled, bidsbridge=section,
                                       orthanc={} if plugin else {"Plugins": []})
        self.session = requests.Session()
        self.state_dir = Path(section.get("StateDirectory") or self.orthanc.state_dir)

    @property
    def url(self) -> str:
        return self.orthanc.url

    @property
    def port(self) -> int:
        return self.orthanc.dicom_port

    def __enter__(self) -> Server:
        self.orthanc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()
        self.orthanc.stop()

    def get(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.url}{path}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def series_id(self, uid: str) -> str:
        found = self.session.post(f"{self.url}/tools/lookup", data=uid, timeout=30).json()
        ids = [str(item["ID"]) for item in found if item["Type"] == "Series"]
        if not ids:
            raise RuntimeError(f"Orthanc has no series {uid}")
        return ids[0]

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def convert(self, series_id: str) -> int:
        response = self.session.post(f"{self.url}/bidsbridge/series/{series_id}/convert", data=b"", timeout=30)
        response.raise_for_status()
        return int(response.json()["id"])

    def jobs(self, series: str | None = None) -> list[JobRecord]:
        params: dict[str, Any] = {"limit": 10000}
        if series is not None:
            params["series"] = series
        return [JobRecord.from_rest(raw) for raw in self.get("/bidsbridge/jobs", **params)]

    def wait_job(self, series: str, timeout: float = 600.0, after: int = 0) -> JobRecord:
        """The first job of ``series`` (id > ``after``) in a terminal state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [j for j in self.jobs(series) if j.id > after and j.state in TERMINAL]
            if done:
                return min(done, key=lambda j: j.id)
            time.sleep(0.1)
        raise TimeoutError(f"no finished job for series {series} within {timeout:.0f} s")

    def wait_idle(self, timeout: float = 900.0) -> None:
        """Until no job is queued, waiting or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(j.state in TERMINAL for j in self.jobs()):
                return
            time.sleep(0.2)
        raise TimeoutError(f"jobs still pending after {timeout:.0f} s")

    def wait_workers(self, timeout: float = 60.0) -> int:
        """Until every worker logged that it started; returns how many there are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.get("/bidsbridge/status")["workers"]
            logs = self.state_dir / "logs"
            started = sum(p.read_text(errors="replace").count("worker started")
                          for p in logs.glob("worker-*.log")) if logs.is_dir() else 0
            if pids and started >= len(pids):
                return len(pids)
            time.sleep(0.1)
        raise TimeoutError(f"the workers did not start within {timeout:.0f} s")


# -- B1 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesSource:
    label: str
    folder: Path
    files: tuple[Path, ...]

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


@dataclass(frozen=True)
class B1Series:
    label: str
    folder: str
    files: int
    ours_s: tuple[float, ...]
    theirs_s: tuple[float, ...]
    ours_first: tuple[bool, ...]
    states: tuple[str, ...]
    claim_wait_s: tuple[float, ...]


@dataclass
class B1Result(Figure):
    series: list[B1Series] = field(default_factory=list)


def largest_series(suite: Path) -> Path:
    folders: dict[Path, int] = {}
    for path in suite.rglob("*"):
        if path.is_file():
            folders[path.parent] = folders.get(path.parent, 0) + 1
    return max(sorted(folders), key=lambda folder: folders[folder])


def b1_sources(ctx: Context) -> list[SeriesSource]:
    sources: list[SeriesSource] = []
    for label, suite, pattern in B1_SERIES:
        root = ctx.corpus / suite / "In"
        folder = largest_series(root) if pattern is None else sorted(root.glob(pattern))[0]
        sources.append(SeriesSource(label, folder, tuple(dicom_files(folder))))
    return sources


def b1_stable_to_published(ctx: Context) -> B1Result:
    result = B1Result("B1")
    sources = b1_sources(ctx)
    work = ctx.scratch("b1")
    jobs = [(source.files, source.folder, work / "copies" / f"{source.folder.name}-{repeat}", f"B1R{repeat}")
            for source in sources for repeat in range(ctx.repeats)]
    copies = dict(zip([(job[2]) for job in jobs], remap_copies(jobs), strict=True))
    # From created_at (the STABLE_SERIES callback) on, StableAge plays no part: 1 s saves run time.
    # Early completion off: B1 measures the STABLE_SERIES path (B7 measures early completion).
    with Server(ctx, work / "server", stable_age=B1_STABLE_AGE, bidsbridge={"EarlyCompletion": False}) as server:
        server.wait_workers()
        per: list[B1Series] = []
        for source in sources:
            ours: list[float] = []
            theirs: list[float] = []
            firsts: list[bool] = []
            states: list[str] = []
            claim: list[float] = []
            for repeat in range(ctx.repeats):
                copy = work / "copies" / f"{source.folder.name}-{repeat}"
                files = copies[copy]
                firsts.append(ctx.order(repeat)[0] == "ours")
                for side in ctx.order(repeat):
                    if side == "ours":
                        dcmsend(copy, server.port)
                        job = server.wait_job(server.series_id(series_uid_of(files[0])))
                        assert job.finished_at is not None
                        ours.append(job.finished_at - job.created_at)
                        states.append(job.state)
                        claim.append((job.started_at or job.created_at) - job.created_at)
                        if job.state != "done":
                            result.notes.append(f"{source.label} repeat {repeat}: job {job.state}: {job.error}")
                    else:
                        theirs.append(bare_dcm2niix(copy, work / "bare" / f"{source.folder.name}-{repeat}"))
                log.info("B1 %s repeat %d: ours %.3f s, dcm2niix %.3f s", source.label, repeat, ours[-1], theirs[-1])
            per.append(B1Series(source.label, str(source.folder.relative_to(ctx.corpus)), len(source.files),
                                tuple(ours), tuple(theirs), tuple(firsts), tuple(states), tuple(claim)))
            result.rows.append(Row("B1", f"STABLE->published: {source.label}, {len(source.files)} files", "s",
                                   stats(ours), stats(theirs), ratios(ours, theirs), "<= 1.25",
                                   ratios(ours, theirs).median <= 1.25))
        result.series = per
    nih = next(s for s in per if s.label.startswith("NIH"))
    result.notes.append(f"the largest dcm_qa_nih series is {nih.folder} with {nih.files} files (no series of "
                        "~600 files exists there: the 4 GE series together hold ~600)")
    result.notes.append(f"B1's Orthanc runs with StableAge {B1_STABLE_AGE} s (ours starts at STABLE_SERIES, so "
                        "StableAge is not in the figure); each repeat's copy has a patient of its own, so no "
                        "repeat adds a session to an earlier repeat's subject")
    result.notes.append(f"ours includes the worker's queue poll before claiming (median "
                        f"{statistics.median([c for s in per for c in s.claim_wait_s]):.3f} s created->started)")
    return result


# -- B2 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class B2Round:
    server: str
    files: int
    seconds: float
    files_per_s: float
    #: Jobs of the plugin server running at some point while the round was being sent.
    jobs_overlapping: int
    #: Fraction of the send during which at least one worker was converting.
    busy_fraction: float


@dataclass
class B2Result(Figure):
    rounds: list[B2Round] = field(default_factory=list)


def _busy_fraction(jobs: Sequence[JobRecord], start: float, end: float) -> tuple[int, float]:
    spans = sorted((max(j.started_at, start), min(j.finished_at or end, end)) for j in jobs
                   if j.started_at is not None and j.started_at < end and (j.finished_at or end) > start)
    covered = 0.0
    cursor = start
    for low, high in spans:
        begin = max(low, cursor)
        if high > begin:
            covered += high - begin
            cursor = high
    return len(spans), covered / (end - start) if end > start else 0.0


def b2_ingest(ctx: Context) -> B2Result:
    result = B2Result("B2")
    source = ctx.corpus / "dcm_qa_nih" / "In"
    files = dicom_files(source)
    work = ctx.scratch("b2")
    rounds = ctx.repeats
    copies: list[tuple[Path, list[str]]] = []  # (folder, its series UIDs)
    folders = [work / "copies" / f"c{index}" for index in range(2 * rounds + 2)]  # + a warm-up round per server
    made = remap_copies([(files, source, folder, f"B2C{index}") for index, folder in enumerate(folders)])
    for folder, paths in zip(folders, made, strict=True):
        firsts = {path.parent: path for path in reversed(paths)}
        copies.append((folder, sorted({series_uid_of(path) for path in firsts.values()})))
    log.info("B2: %d copies of %d files ready", len(copies), len(files))
    with Server(ctx, work / "plugin") as plugin, Server(ctx, work / "plain", plugin=False) as plain:
        plugin.wait_workers()
        background: list[str] = []  # the plugin server's previous round: re-converted during the next send
        ours: list[float] = []
        theirs: list[float] = []
        next_copy = iter(copies)
        for repeat in range(-1, rounds):  # -1: warm-up
            for side in ctx.order(max(repeat, 0)):
                server = plugin if side == "ours" else plain
                copy, uids = next(next_copy)
                before = server.instance_count()
                if side == "ours":
                    for series in background:
                        plugin.convert(series)
                sent_at = time.time()
                seconds = dcmsend(copy, server.port)
                ended_at = time.time()
                stored = server.instance_count() - before
                if stored != len(files):
                    result.notes.append(f"{side} round {repeat}: Orthanc stored {stored} of {len(files)} files")
                overlapping, busy = 0, 0.0
                if side == "ours":
                    background = [plugin.series_id(uid) for uid in uids]
                    plugin.wait_idle()
                    overlapping, busy = _busy_fraction(plugin.jobs(), sent_at, ended_at)
                rate = len(files) / seconds
                log.info("B2 round %d %s: %.1f files/s (%.2f s; workers busy %.0f%% of it)", repeat,
                         "plugin" if side == "ours" else "plain", rate, seconds, 100 * busy)
                if repeat < 0:
                    continue
                (ours if side == "ours" else theirs).append(rate)
                result.rounds.append(B2Round("plugin" if side == "ours" else "plain", len(files), seconds, rate,
                                             overlapping, busy))
    ratio = ratios(ours, theirs)
    busy = statistics.median([r.busy_fraction for r in result.rounds if r.server == "plugin"])
    result.rows.append(Row("B2", f"C-STORE ingest of dcm_qa_nih ({len(files)} files), plugin converting vs plain",
                           "files/s", stats(ours), stats(theirs), ratio, ">= 0.95", ratio.median >= 0.95,
                           f"workers busy {100 * busy:.0f}% of the send (median)"))
    result.notes.append("plain Orthanc = the same generated configuration with \"Plugins\": [] (no Python plugin); "
                        "before each plugin round the previous plugin round's series are queued again, so the "
                        "workers convert while the files arrive; one warm-up round per server is not counted")
    return result


# -- B3 -------------------------------------------------------------------------------------------


@dataclass
class B3Result(Figure):
    payload: Json = None


def _to_json(value: Any) -> Json:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_json(dataclasses.asdict(value))
    return repr(value)


#: Runs ``run_b3`` of ``benchmarks/neuro_peer.py`` in a child process (so that a hang can be cut
#: off at the time budget): ``NEURO_PEER CORPUS REPEATS RESULT``; RESULT gets the returned JSON,
#: or ``{"__not_run__": why}``.
B3_DRIVER = r"""
import importlib.util, inspect, json, sys, traceback
from pathlib import Path
path, corpus, repeats, out = sys.argv[1:]

def done(value):
    with open(out, "w") as handle:
        json.dump(value, handle, default=str)

try:
    spec = importlib.util.spec_from_file_location("neuro_peer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["neuro_peer"] = module
    spec.loader.exec_module(module)
except Exception as exc:
    traceback.print_exc()
    done({"__not_run__": f"benchmarks/neuro_peer.py does not import: {exc.__class__.__name__}: {exc}"})
    sys.exit(0)
run_b3 = getattr(module, "run_b3", None)
if not callable(run_b3):
    done({"__not_run__": "benchmarks/neuro_peer.py defines no run_b3"})
    sys.exit(0)
options = {}
if "progress" in inspect.signature(run_b3).parameters:
    options["progress"] = lambda line: print(f"B3: {line}", file=sys.stderr, flush=True)
try:
    done(run_b3(Path(corpus), repeats=int(repeats), **options))
except Exception as exc:
    traceback.print_exc()
    done({"__not_run__": f"run_b3 raised {exc.__class__.__name__}: {exc}"})
"""


def _processes_mentioning(marker: str) -> list[int]:
    """Pids of the processes whose command line names ``marker`` (a folder of this run's)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _stop_b3(proc: subprocess.Popen[bytes], tmp: Path) -> None:
    """Interrupt the B3 child (its ``with`` blocks stop its Orthanc), then kill what is left of it
    and of the processes it started (they all name ``tmp``, its TMPDIR), each by pid."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = _processes_mentioning(str(tmp))
        for pid in left:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        if left:
            time.sleep(5)


def _numbers(rows: Sequence[dict[str, Json]], key: str) -> list[float]:
    values = [row.get(key) for row in rows]
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def b3_neuro_peer(ctx: Context) -> B3Result:
    result = B3Result("B3")
    path = REPO / "benchmarks" / "neuro_peer.py"
    if not path.is_file():
        result.not_run = "benchmarks/neuro_peer.py does not exist"
        return result
    tmp = ctx.scratch("b3")
    out = tmp / "b3.json"
    proc = subprocess.Popen([sys.executable, "-c", B3_DRIVER, str(path), str(ctx.corpus), str(ctx.repeats), str(out)],
                            env=dict(ctx.env, TMPDIR=str(tmp)), cwd=REPO, stdin=subprocess.DEVNULL)
    try:
        proc.wait(timeout=ctx.b3_budget)
    except subprocess.TimeoutExpired:
        _stop_b3(proc, tmp)
        result.not_run = f"run_b3 did not finish within its budget of {ctx.b3_budget:.0f} s (--b3-budget); stopped"
        return result
    try:
        payload: Json = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        result.not_run = f"run_b3 gave no result (exit {proc.returncode}: {exc})"
        return result
    if isinstance(payload, dict) and "__not_run__" in payload:
        result.not_run = str(payload["__not_run__"])
        return result
    result.payload = payload
    summary = payload.get("summary") if isinstance(payload, dict) else None
    rows = payload.get("rows") if isinstance(payload, dict) else None
    per_series = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    ratio_values = _numbers(per_series, "ratio")
    ours = _numbers(per_series, "ours_median_s")
    theirs = _numbers(per_series, "neuro_median_s")
    met = summary.get("target_met") if isinstance(summary, dict) else None
    what = "peer: GET /bidsbridge/series/{id}/nifti vs orthanc-neuro GET /series/{id}/nifti, per series"
    note = ""
    if isinstance(summary, dict):
        note = (f"{summary.get('compared')} of {summary.get('series')} series compared, ours faster on "
                f"{summary.get('faster')}; neuro cannot {summary.get('neuro_cannot')}, ours cannot "
                f"{summary.get('ours_cannot')} (neuro can {summary.get('ours_cannot_but_neuro_can')})")
    result.rows.append(Row("B3", what, "s (series medians)", stats(ours) if ours else None,
                           stats(theirs) if theirs else None, stats(ratio_values) if ratio_values else None,
                           "faster on every series neuro converts", met if isinstance(met, bool) else None, note))
    if isinstance(payload, dict):
        for key, value in payload.items():
            if "cannot" in key and isinstance(value, list):
                names = [f"{v.get('corpus')} {v.get('series')}" if isinstance(v, dict) else str(v) for v in value]
                result.notes.append(f"{key} ({len(value)}): {'; '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    result.notes.append("B3 is run_b3 of benchmarks/neuro_peer.py (written separately), run as it is in a child "
                        "process; per-series rows are in the JSON; its ours/theirs/ratio cells summarise the "
                        "series' medians (median [min-max] over series, not over repeats)")
    return result


# -- B4 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class B4Repeat:
    ours_s: float
    theirs_s: float
    ours_first: bool
    series: int
    workers: int
    states: tuple[tuple[str, int], ...]
    queued_in_s: float


@dataclass
class B4Result(Figure):
    copies: int = 0
    series: int = 0
    files: int = 0
    store_s: float = 0.0
    repeats: list[B4Repeat] = field(default_factory=list)


@dataclass(frozen=True)
class B4Run:
    seconds: float
    series: int
    workers: int
    states: tuple[tuple[str, int], ...]
    queued_in_s: float


def _b4_ours(ctx: Context, orthanc_dir: Path, ids: Sequence[str], repeat: int) -> B4Run:
    """Restart Orthanc on the stored series with the plugin enabled (fresh dataset and queue), queue
    every series at once, wait for the backlog to drain."""
    fresh = ctx.scratch(f"b4-run{repeat}")
    section = {"BidsRoot": str(fresh / "bids"), "StateDirectory": str(fresh / "state"), "CatchUp": "none"}
    with Server(ctx, orthanc_dir, bidsbridge=section) as server:
        workers = server.wait_workers()
        started = time.time()
        with ThreadPoolExecutor(4) as pool:
            job_ids = set(pool.map(server.convert, ids))
        queued = time.time() - started
        server.wait_idle()
        jobs = [j for j in server.jobs() if j.id in job_ids]
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    seconds = max(j.finished_at or 0.0 for j in jobs) - min(j.created_at for j in jobs)
    shutil.rmtree(fresh, ignore_errors=True)
    log.info("B4 repeat %d ours: %d series in %.1f s (%s; queued in %.2f s)", repeat, len(jobs), seconds, counts,
             queued)
    return B4Run(seconds, len(jobs), workers, tuple(sorted(counts.items())), queued)


def _b4_theirs(ctx: Context, series_dirs: Sequence[Path], repeat: int) -> float:
    """The same series through bare dcm2niix, two at a time."""
    out = ctx.scratch(f"b4-bare{repeat}")
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda pair: bare_dcm2niix(pair[1], out / str(pair[0])), enumerate(series_dirs)))
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    log.info("B4 repeat %d dcm2niix x2: %.1f s", repeat, seconds)
    return seconds


def b4_backlog(ctx: Context) -> B4Result:
    result = B4Result("B4")
    source = ctx.corpus / "dcm_qa_xa30" / "In"
    files = dicom_files(source)
    folders = sorted({f.parent for f in files})
    copies = 2 if ctx.smoke else -(-200 // len(folders))  # >= 200 series
    work = ctx.scratch("b4")
    series_dirs: list[Path] = []
    remap_copies([(files, source, work / "copies" / f"c{index}", f"B4C{index}") for index in range(copies)])
    for index in range(copies):
        series_dirs += [work / "copies" / f"c{index}" / folder.relative_to(source) for folder in folders]
    result.copies, result.series, result.files = copies, len(series_dirs), copies * len(files)
    log.info("B4: %d series (%d copies of %d), %d files", len(series_dirs), copies, len(folders), result.files)
    orthanc_dir = work / "server"
    with Server(ctx, orthanc_dir, enabled=False) as store:
        started = time.perf_counter()
        dcmsend(work / "copies", store.port)
        result.store_s = time.perf_counter() - started
        ids = [str(s) for s in store.get("/series")]
        if len(ids) != len(series_dirs):
            result.notes.append(f"Orthanc holds {len(ids)} series, {len(series_dirs)} were sent")
    log.info("B4: stored in %.1f s with BidsBridge.Enabled false", result.store_s)
    ours: list[float] = []
    theirs: list[float] = []
    for repeat in range(ctx.repeats):
        run: B4Run | None = None
        for side in ctx.order(repeat):
            if side == "ours":
                run = _b4_ours(ctx, orthanc_dir, ids, repeat)
                ours.append(run.seconds)
            else:
                theirs.append(_b4_theirs(ctx, series_dirs, repeat))
        assert run is not None
        result.repeats.append(B4Repeat(ours[-1], theirs[-1], ctx.order(repeat)[0] == "ours", run.series, run.workers,
                                       run.states, run.queued_in_s))
    per_minute_ours = [60 * len(series_dirs) / s for s in ours]
    per_minute_theirs = [60 * len(series_dirs) / s for s in theirs]
    ratio = ratios(per_minute_ours, per_minute_theirs)
    result.rows.append(Row("B4", f"backlog of {len(series_dirs)} series queued at once, {result.repeats[0].workers} "
                           "workers vs 2 dcm2niix at a time", "series/min", stats(per_minute_ours),
                           stats(per_minute_theirs), ratio, ">= 0.9", ratio.median >= 0.9,
                           f"one backlog: ours median {statistics.median(ours):.0f} s"))
    result.notes.append(f"stored first with BidsBridge.Enabled false ({result.store_s:.0f} s), then per repeat Orthanc "
                        "restarted with the plugin enabled on a fresh dataset and queue (CatchUp none) and every "
                        "series queued with POST /bidsbridge/series/{id}/convert; ours = last finished_at - first "
                        "created_at")
    return result


# -- B5 / B6: peak RSS ----------------------------------------------------------------------------

#: Runs in a fresh child: ``series DICOM_DIR BIDS_ROOT`` converts one series as the worker does
#: (``convert_series``, with the worker's modules imported); ``cli ARGS...`` runs ``bidsbridge
#: ARGS``. dcm2niix runs under the wrapper DCM2NIIX_WRAPPER (GNU time appending its peak RSS to
#: a file). Writes JSON to RESULT: the outcome, seconds in process, and its own peak RSS (VmHWM:
#: since its exec, unlike ru_maxrss, which starts from the parent's RSS).
DRIVER = r"""
import json, os, sys, time
started = time.perf_counter()
result_path, mode, *args = sys.argv[1:]
import dcm2niix
dcm2niix.bin = os.environ["DCM2NIIX_WRAPPER"]
if mode == "series":
    from pathlib import Path
    import orthanc_plugin.worker  # noqa: F401 - what a worker has loaded
    from converters import convert_series
    outcome = convert_series(Path(args[0]), Path(args[1])).state
else:
    from orthanc_plugin.cli import main
    outcome = str(main(args))
seconds = time.perf_counter() - started
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
with open(result_path, "w") as handle:
    json.dump({"outcome": outcome, "seconds": seconds, "self_kb": hwm}, handle)
"""


@dataclass(frozen=True)
class RssRun:
    seconds: float
    in_process_s: float
    outcome: str
    #: Peak RSS of the Python process (VmHWM) and of its largest dcm2niix run (GNU time).
    self_mb: float
    dcm2niix_mb: float
    dcm2niix_runs: int

    @property
    def tree_mb(self) -> float:
        """Upper bound of the Python process and its dcm2niix at once: the sum of their peaks."""
        return self.self_mb + self.dcm2niix_mb


def run_driver(ctx: Context, work: Path, *args: str) -> RssRun:
    result = work / f"rss-{time.monotonic_ns()}.json"
    peaks = work / f"dcm2niix-peaks-{time.monotonic_ns()}.txt"
    wrapper = work / f"dcm2niix-wrapper-{time.monotonic_ns()}"
    wrapper.write_text(f"#!/bin/sh\nexec {GNU_TIME} -f %M -a -o {shlex.quote(str(peaks))} "
                       f'{shlex.quote(str(dcm2niix_binary()))} "$@"\n')
    wrapper.chmod(0o755)
    child = run_child([sys.executable, "-c", DRIVER, str(result), *args], dict(ctx.env, DCM2NIIX_WRAPPER=str(wrapper)),
                      cwd=work)
    data = json.loads(result.read_text()) if result.is_file() else {}
    runs = _read_peaks(peaks)
    for path in (result, peaks, wrapper):
        path.unlink(missing_ok=True)
    if not data:
        return RssRun(child.seconds, 0.0, f"exit {child.code}", 0.0, 0.0, 0)
    return RssRun(child.seconds, float(data["seconds"]), str(data["outcome"]), data["self_kb"] / 1024,
                  max(runs, default=0) / 1024, len(runs))


@dataclass(frozen=True)
class B5Series:
    label: str
    folder: str
    files: int
    dicom_mb: float
    nifti_mb: float
    nifti_uncompressed_mb: float
    runs: tuple[RssRun, ...]
    dcm2niix_mb: tuple[float, ...]


@dataclass
class B5Result(Figure):
    series: list[B5Series] = field(default_factory=list)


def biggest_corpus_series(corpus: Path) -> Path:
    sizes: dict[Path, int] = {}
    for suite in sorted(corpus.iterdir()):
        if (suite / "In").is_dir():
            for path in (suite / "In").rglob("*"):
                if path.is_file():
                    sizes[path.parent] = sizes.get(path.parent, 0) + path.stat().st_size
    return max(sorted(sizes), key=lambda folder: sizes[folder])


def b5_rss(ctx: Context) -> B5Result:
    result = B5Result("B5")
    sources = b1_sources(ctx)
    biggest = biggest_corpus_series(ctx.corpus)
    if all(s.folder != biggest for s in sources):
        sources.append(SeriesSource(f"largest corpus series {biggest.relative_to(ctx.corpus)}", biggest,
                                    tuple(dicom_files(biggest))))
    work = ctx.scratch("b5")
    for source in sources:
        runs: list[RssRun] = []
        bare: list[float] = []
        nifti = (0, 0)
        for repeat in range(ctx.repeats):
            for side in ctx.order(repeat):
                out = work / f"{side}-{repeat}"
                if side == "ours":
                    run = run_driver(ctx, work, "series", str(source.folder), str(out))
                    runs.append(run)
                    nifti = nifti_sizes(out)
                else:
                    out.mkdir()
                    child = run_child([str(dcm2niix_binary()), *DCM2NIIX_FLAGS, "-o", str(out), str(source.folder)],
                                      ctx.env, peak=True)
                    bare.append((child.peak_kb or 0) / 1024)
                shutil.rmtree(out, ignore_errors=True)
            log.info("B5 %s repeat %d: ours %.0f MB (python %.0f + dcm2niix %.0f), bare dcm2niix %.0f MB",
                     source.label, repeat, runs[-1].tree_mb, runs[-1].self_mb, runs[-1].dcm2niix_mb, bare[-1])
        entry = B5Series(source.label, str(source.folder.relative_to(ctx.corpus)), len(source.files),
                         source.bytes / MB, nifti[0] / MB, nifti[1] / MB, tuple(runs), tuple(bare))
        result.series.append(entry)
        ours = [r.tree_mb for r in runs]
        limit = 2 * entry.nifti_mb + 200
        result.rows.append(Row("B5", f"peak RSS converting {source.label} ({entry.dicom_mb:.1f} MB DICOM -> "
                               f"{entry.nifti_mb:.1f} MB NIfTI)", "MB", stats(ours), stats(bare), ratios(ours, bare),
                               f"<= {limit:.0f} (2xNIfTI+200)", statistics.median(ours) <= limit,
                               f"states {sorted({r.outcome for r in runs})}"))
    result.notes.append("B5 ours = peak RSS of a fresh Python child running convert_series with the worker's modules "
                        "imported (its VmHWM) + the peak RSS of its dcm2niix (GNU time around dcm2niix): an upper "
                        "bound of both at once. Not os.wait4/RUSAGE_CHILDREN: Linux's ru_maxrss of a spawned child "
                        "starts from its parent's RSS (vfork), so it reports the parent, not dcm2niix. Not "
                        "covered: the worker's REST download (streamed, 1 MiB chunks) and memory a long-lived "
                        "worker keeps from earlier jobs. NIfTI size = the published .nii.gz bytes (uncompressed in "
                        "the JSON). Theirs = bare dcm2niix's own peak (GNU time)")
    return result


@dataclass
class B6Result(Figure):
    runs: list[RssRun] = field(default_factory=list)


def b6_derive(ctx: Context) -> B6Result:
    result = B6Result("B6")
    dwi = sorted((ctx.corpus / "dcm_qa_xa30" / "In").glob("10_*"))[0]
    work = ctx.scratch("b6")
    for repeat in range(ctx.repeats):
        out = work / f"out-{repeat}"
        run = run_driver(ctx, work, "cli", "derive", "adc", str(dwi), str(out))
        made = sorted(p.name for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
        result.runs.append(run)
        log.info("B6 repeat %d: %.2f s wall (%.2f s in process), %.0f MB, exit %s, %d files", repeat, run.seconds,
                 run.in_process_s, run.tree_mb, run.outcome, len(made))
        if repeat == 0:
            result.notes.append(f"derive adc wrote: {', '.join(made)}")
        shutil.rmtree(out, ignore_errors=True)
    wall = [r.seconds for r in result.runs]
    rss = [r.tree_mb for r in result.runs]
    codes = sorted({r.outcome for r in result.runs})
    result.rows.append(Row("B6", f"derive adc (PM + SEG + SR) of {dwi.name}: wall time", "s", stats(wall), None, None,
                           "< 2", statistics.median(wall) < 2 and codes == ["0"], f"exit {', '.join(codes)}"))
    in_process = statistics.median([r.in_process_s for r in result.runs])
    runs = sorted({r.dcm2niix_runs for r in result.runs})
    result.rows.append(Row("B6", "derive adc: peak RSS (python + its largest dcm2niix)", "MB", stats(rss), None, None,
                           "-", None, f"in-process time median {in_process:.2f} s; dcm2niix runs {runs}"))
    return result


# -- B7 -------------------------------------------------------------------------------------------


@dataclass
class B7Result(Figure):
    stable_age: int = 0
    ours_s: list[float] = field(default_factory=list)
    dcm2niix_s: list[float] = field(default_factory=list)


def b7_complete_series(ctx: Context) -> B7Result:
    result = B7Result("B7", stable_age=ctx.stable_age)
    folder = sorted((ctx.corpus / "dcm_qa_xa30" / "In").glob("5_*"))[0]
    files = dicom_files(folder)
    work = ctx.scratch("b7")
    with Server(ctx, work / "server") as server:
        server.wait_workers()
        for repeat in range(ctx.repeats):
            copy = work / "copies" / str(repeat)
            made = remap_copy(files, folder, copy, f"B7R{repeat}")
            for side in ctx.order(repeat):
                if side == "ours":
                    dcmsend(copy, server.port)
                    sent = time.time()
                    job = server.wait_job(server.series_id(series_uid_of(made[0])))
                    assert job.finished_at is not None
                    result.ours_s.append(job.finished_at - sent)
                else:
                    result.dcm2niix_s.append(bare_dcm2niix(copy, work / "bare" / str(repeat)))
            log.info("B7 repeat %d: ours %.2f s, StableAge + dcm2niix %.2f s", repeat, result.ours_s[-1],
                     ctx.stable_age + result.dcm2niix_s[-1])
    theirs = [ctx.stable_age + s for s in result.dcm2niix_s]
    ratio = ratios(result.ours_s, theirs)
    result.rows.append(Row("B7", f"last instance -> published, {folder.name} (1 enhanced file)", "s",
                           stats(result.ours_s), stats(theirs), ratio, "< 1 (no StableAge wait)", ratio.median < 1,
                           f"StableAge {ctx.stable_age} s"))
    result.notes.append(f"B7 theirs = the benchmark servers' StableAge ({ctx.stable_age} s, the bench's default) + "
                        "the measured bare dcm2niix time on the same copy (Orthanc's own stability check adds up "
                        "to ~1 s more in practice, not counted for theirs); ours = finished_at - the moment "
                        "dcmsend returned")
    return result


# -- B8 / B9 --------------------------------------------------------------------------------------


@dataclass
class B8Result(Figure):
    ours_s: list[float] = field(default_factory=list)
    theirs_s: list[float] = field(default_factory=list)
    ours_nifti: list[int] = field(default_factory=list)
    theirs_nifti: list[int] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)


def bidsbridge_command() -> list[str]:
    script = Path(sys.executable).with_name("bidsbridge")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "orthanc_plugin.cli"]


def b8_offline(ctx: Context) -> B8Result:
    result = B8Result("B8")
    source = ctx.corpus / "dcm_qa_xa30" / "In"
    work = ctx.scratch("b8")
    for repeat in range(ctx.repeats):
        for side in ctx.order(repeat):
            out = work / f"{side}-{repeat}"
            if side == "ours":
                child = run_child([*bidsbridge_command(), "convert", str(source), str(out)], ctx.env)
                result.ours_s.append(child.seconds)
                result.exit_codes.append(child.code)
                result.ours_nifti.append(count_nifti(out))
            else:
                result.theirs_s.append(bare_dcm2niix(source, out))
                result.theirs_nifti.append(count_nifti(out))
            shutil.rmtree(out, ignore_errors=True)
        log.info("B8 repeat %d: bidsbridge convert %.2f s (exit %d), dcm2niix %.2f s", repeat, result.ours_s[-1],
                 result.exit_codes[-1], result.theirs_s[-1])
    ratio = ratios(result.ours_s, result.theirs_s)
    result.rows.append(Row("B8", "offline bidsbridge convert dcm_qa_xa30/In vs dcm2niix on the folder", "s",
                           stats(result.ours_s), stats(result.theirs_s), ratio, "-", None,
                           f"NIfTI {result.ours_nifti[0]} vs {result.theirs_nifti[0]}; exit "
                           f"{sorted(set(result.exit_codes))}"))
    result.notes.append("B8 has no target in the spec; ours runs the console script (Python start-up included)")
    return result


@dataclass
class B9Result(Figure):
    help_s: list[float] = field(default_factory=list)
    floor_s: list[float] = field(default_factory=list)


def b9_startup(ctx: Context) -> B9Result:
    result = B9Result("B9")
    ours_cmd = [*bidsbridge_command(), "--help"]
    floor_cmd = [sys.executable, "-c", "pass"]
    for command in (ours_cmd, floor_cmd):  # warm the page cache: not counted
        run_child(command, ctx.env)
    for repeat in range(ctx.repeats):
        for side in ctx.order(repeat):
            if side == "ours":
                result.help_s.append(run_child(ours_cmd, ctx.env).seconds)
            else:
                result.floor_s.append(run_child(floor_cmd, ctx.env).seconds)
    ratio = ratios(result.help_s, result.floor_s)
    result.rows.append(Row("B9", f"{' '.join(Path(c).name for c in ours_cmd)} start-up vs python -c pass", "s",
                           stats(result.help_s), stats(result.floor_s), ratio, "< 0.3 s",
                           statistics.median(result.help_s) < 0.3))
    return result


# -- the run --------------------------------------------------------------------------------------

FIGURES: dict[str, Callable[[Context], Figure]] = {
    "B1": b1_stable_to_published,
    "B2": b2_ingest,
    "B3": b3_neuro_peer,
    "B4": b4_backlog,
    "B5": b5_rss,
    "B6": b6_derive,
    "B7": b7_complete_series,
    "B8": b8_offline,
    "B9": b9_startup,
}


@dataclass(frozen=True)
class Machine:
    nproc: int
    cpu_model: str
    memory_gb: float
    kernel: str
    python: str
    orthanc: str
    dcm2niix: str
    git_commit: str
    git_dirty: bool
    date: str
    worker_python: str


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(worker_python: WorkerPython) -> Machine:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    orthanc = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True, check=False).stdout
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return Machine(nproc=os.cpu_count() or 0, cpu_model=_cpu_model(), memory_gb=round(pages / (1 << 30), 1),
                   kernel=platform.release(), python=sys.version.split()[0],
                   orthanc=(orthanc.splitlines() or ["?"])[0], dcm2niix=dcm2niix_version(),
                   git_commit=git("rev-parse", "HEAD"), git_dirty=bool(git("status", "--porcelain")),
                   date=datetime.now(UTC).isoformat(timespec="seconds"), worker_python=worker_python.how)


def _cell(row: Row, which: str) -> str:
    value = getattr(row, which)
    return value.show() if isinstance(value, Stats) else "-"


def table(figures: Sequence[Figure], smoke: bool) -> str:
    header = ("id", "what", "unit", "ours median [min-max]", "theirs median [min-max]", "ratio", "target", "met")
    lines: list[tuple[str, ...]] = []
    for figure in figures:
        if figure.not_run is not None:
            lines.append((figure.id, f"not run: {figure.not_run}", "", "-", "-", "-", "", "-"))
            continue
        for row in figure.rows:
            met = "-" if row.met is None else ("yes" if row.met else "no")
            what = f"{row.what} ({row.note})" if row.note else row.what
            lines.append((row.id, what, row.unit, _cell(row, "ours"), _cell(row, "theirs"), _cell(row, "ratio"),
                          row.target, met))
    widths = [min(max(len(line[i]) for line in (header, *lines)), 70 if i == 1 else 40) for i in range(len(header))]
    out = []
    if smoke:
        out.append("SMOKE RUN (1 repeat, smaller workloads): not a benchmark result")
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        what = line[1]
        chunks = [what[i:i + widths[1]] for i in range(0, len(what), widths[1])] or [""]
        out.append("  ".join((chunks[0] if i == 1 else cell).ljust(w)
                             for i, (cell, w) in enumerate(zip(line, widths, strict=True))))
        for chunk in chunks[1:]:
            out.append("  ".join((chunk if i == 1 else "").ljust(w) for i, w in enumerate(widths)).rstrip())
    return "\n".join(out)


def _stats_json(value: Json) -> Json:
    """Stats become {values, median, min, max}; everything else as it is."""
    if isinstance(value, dict):
        converted = {k: _stats_json(v) for k, v in value.items()}
        values = converted.get("values")
        if set(converted) == {"values"} and isinstance(values, list):
            numbers = [float(v) for v in values if isinstance(v, int | float)]
            if numbers:
                converted.update(median=statistics.median(numbers), min=min(numbers), max=max(numbers))
        return converted
    if isinstance(value, list):
        return [_stats_json(v) for v in value]
    return value


def report_json(figures: Sequence[Figure], host: Machine, args: argparse.Namespace, seconds: float) -> str:
    document: Json = {
        "smoke": bool(args.smoke),
        "repeats": int(args.repeats),
        "stable_age_s": int(args.stable_age),
        "total_seconds": round(seconds, 1),
        "machine": _to_json(host),
        "dcm2niix_flags": list(DCM2NIIX_FLAGS),
        "figures": [_stats_json(_to_json(figure)) for figure in figures],
    }
    return json.dumps(document, indent=2) + "\n"


@contextmanager
def workspace(parent: Path | None) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="bidsbridge-bench-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write all results (with every repeat's values) here")
    parser.add_argument("--only", default="", help="comma-separated figures, e.g. B1,B4 (default: all)")
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"repeats per figure (>= {MIN_REPEATS})")
    parser.add_argument("--smoke", action="store_true", help="development run: 1 repeat, small workloads")
    parser.add_argument("--stable-age", type=int, default=3, help="StableAge of the benchmark's Orthanc (s)")
    parser.add_argument("--b3-budget", type=float, default=300.0,
                        help="seconds B3 (benchmarks/neuro_peer.py) may take before it is stopped (default 300)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--tmp", type=Path, default=None, help="parent folder of the scratch space")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 1
    elif args.repeats < MIN_REPEATS:
        parser.error(f"--repeats must be >= {MIN_REPEATS} (use --smoke for a quick development run)")
    chosen = [name.strip().upper() for name in args.only.split(",") if name.strip()] or list(FIGURES)
    unknown = [name for name in chosen if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    args.figures = chosen
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    started = time.perf_counter()
    with workspace(args.tmp) as tmp:
        worker_python = _probe_worker_python(tmp)
        log.info("workers run %s", worker_python.how)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        ctx = Context(args.corpus, args.repeats, args.smoke, args.stable_age, tmp, worker_python, args.b3_budget, env)
        host = machine(worker_python)
        figures: list[Figure] = []
        for name in args.figures:
            log.info("%s ... (load average %.2f)", name, os.getloadavg()[0])
            load = os.getloadavg()
            began = time.perf_counter()
            try:
                figure = FIGURES[name](ctx)
            except Exception as exc:
                log.exception("%s failed", name)
                figure = Figure(name, not_run=f"failed: {exc.__class__.__name__}: {exc}")
            figure.seconds = time.perf_counter() - began
            figure.load_before, figure.load_after = load, os.getloadavg()
            if args.smoke:
                figure.notes.append("smoke run: 1 repeat")
            figures.append(figure)
            log.info("%s done in %.0f s", name, figure.seconds)
    seconds = time.perf_counter() - started
    print(table(figures, args.smoke))
    for figure in figures:
        for note in figure.notes:
            print(f"  {figure.id}: {note}")
    print(f"total {seconds:.0f} s on {host.nproc} x {host.cpu_model}; dcm2niix {host.dcm2niix}; "
          f"commit {host.git_commit[:12]}{' (dirty)' if host.git_dirty else ''}")
    if args.json is not None:
        args.json.write_text(report_json(figures, host, args, seconds))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
