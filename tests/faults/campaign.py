"""A fault campaign: a multi-series workload through a real Orthanc with the plugin and the XNAT
emulator while, at random moments, busy workers are killed (SIGKILL), Orthanc is killed during
C-STORE and during conversion and started again, XNAT becomes unreachable or errs, and the
dataset's filesystem (a small tmpfs) fills up. Afterwards it counts what was lost, duplicated or
orphaned against an offline conversion of the same input, and what was left running.

Used by ``tests/faults/test_campaign.py`` (a reduced campaign in CI) and
``benchmarks/fault_campaign.py`` (the full one).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import requests
from pydicom.uid import generate_uid

from converters import convert_tree
from orthanc_plugin.embedded import ORTHANC_AET, EmbeddedOrthanc, free_port
from tests.xnat_emulator import FaultPlan, XnatEmulator

XNAT_USER, XNAT_PASSWORD, XNAT_PROJECT = "pusher", "c4mpaign-Xnat-Pw-51e0", "CAMPAIGN"
RULES = f"""\
version: 1
rules:
  - name: images
    match: {{Modality: MR}}
    actions:
      - convert: {{}}
      - push_xnat: {{server: emu, project: {XNAT_PROJECT}, subject: "{{PatientID|alnum}}",
                   session: "{{PatientID|alnum}}_{{StudyDate}}"}}
"""


@dataclass(frozen=True)
class Plan:
    """How much of each fault, over how much work."""

    copies: int = 1
    #: Folder-name prefixes of the XA30 series to send (None: all 21).
    series: tuple[str, ...] | None = None
    worker_kills: int = 4
    orthanc_kills_during_store: int = 1
    orthanc_kills_during_conversion: int = 1
    xnat_outages: int = 2
    disk_full_episodes: int = 1
    workers: int = 2
    seed: int = 20261201
    timeout: float = 600.0


@dataclass
class Report:
    series: int = 0
    worker_kills: int = 0
    orthanc_kills: list[str] = field(default_factory=list)
    xnat_outages: int = 0
    disk_full_episodes: int = 0
    disk_full_note: str = ""
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    xnat_lost: list[str] = field(default_factory=list)
    xnat_duplicated: list[str] = field(default_factory=list)
    leftover_processes: list[str] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"series {self.series}, kills of busy workers {self.worker_kills}, Orthanc kills "
            f"{len(self.orthanc_kills)} ({', '.join(self.orthanc_kills)}), XNAT outages {self.xnat_outages}, "
            f"disk-full episodes {self.disk_full_episodes}{self.disk_full_note}, {self.seconds:.0f} s",
            f"lost {len(self.lost)}, duplicated {len(self.duplicated)}, orphaned {len(self.orphaned)}, "
            f"XNAT lost {len(self.xnat_lost)}, XNAT duplicated {len(self.xnat_duplicated)}, "
            f"leftover processes {len(self.leftover_processes)}, failed jobs {len(self.failed_jobs)}",
            *(f"  lost: {p}" for p in self.lost[:10]),
            *(f"  duplicated: {p}" for p in self.duplicated[:10]),
            *(f"  orphaned: {p}" for p in self.orphaned[:10]),
            *(f"  XNAT lost: {p}" for p in self.xnat_lost[:10]),
            *(f"  XNAT duplicated: {p}" for p in self.xnat_duplicated[:10]),
            *(f"  leftover: {p}" for p in self.leftover_processes[:10]),
            *(f"  failed: {p}" for p in self.failed_jobs[:10]),
        ]


# -- the workload -----------------------------------------------------------------------------


def make_workload(corpus: Path, target: Path, plan: Plan) -> list[Path]:
    """``plan.copies`` copies of the XA30 session, each a patient and study of its own (new UIDs);
    returns the series folders."""
    source = corpus / "dcm_qa_xa30" / "In"
    folders = sorted(p for p in source.iterdir() if p.is_dir())
    if plan.series is not None:
        folders = [f for f in folders if f.name.startswith(plan.series)]
    made: list[Path] = []
    for copy in range(plan.copies):
        study, frame = generate_uid(), generate_uid()
        for folder in folders:
            series = generate_uid()
            out = target / f"copy{copy}" / folder.name
            out.mkdir(parents=True)
            for path in sorted(folder.iterdir()):
                ds = pydicom.dcmread(path)
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                if "FrameOfReferenceUID" in ds:
                    ds.FrameOfReferenceUID = frame
                ds.PatientID, ds.PatientName = f"CAMPAIGN{copy}", f"Campaign^{copy}"
                ds.save_as(out / path.name)
            made.append(out)
    return made


# -- faults -----------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(folder: Path, megabytes: int) -> Iterator[bool]:
    """A tmpfs of ``megabytes`` mounted on ``folder`` (True), or nothing (False) where the machine
    does not allow mounting."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                             capture_output=True, check=False).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` up (a ballast file, written until ENOSPC)."""
    ballast = folder / ".campaign-ballast"
    chunk = b"\0" * (1 << 20)
    with ballast.open("wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass
    return ballast


class Campaign:
    """One run of a :class:`Plan` (see the module docstring)."""

    def __init__(self, plan: Plan, corpus: Path, workdir: Path, log: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.corpus = corpus
        self.workdir = workdir
        self.log = log
        self.random = random.Random(plan.seed)
        self.report = Report()
        self.server = EmbeddedOrthanc(workdir=workdir / "server", http_port=free_port(), dicom_port=free_port(),
                                      workers=plan.workers, stable_age=2)
        self.lock = threading.Lock()  # held while Orthanc is being killed and started again
        self.sending = threading.Event()
        self.sent = threading.Event()
        self.stop = threading.Event()
        self.killed_jobs: dict[int, int] = {}

    # -- plumbing -------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.server.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def jobs(self) -> list[dict[str, Any]]:
        try:
            return list(self.get("/bidsbridge/jobs", limit=100000))
        except requests.RequestException:
            return []

    def restart_orthanc(self, when: str) -> None:
        with self.lock:
            old = self.server.process.pid if self.server.process else None
            self.server.kill()
            self.report.orthanc_kills.append(when)
            self.log(f"campaign: Orthanc (pid {old}) killed {when}")
            deadline = time.monotonic() + 20  # its workers must go with it (parent-death signal)
            while self._workers() and time.monotonic() < deadline:
                time.sleep(0.2)
            self._leftovers("after an Orthanc kill")
            self.server.start()

    def _workers(self) -> list[int]:
        """The pids of this campaign's worker processes (of any Orthanc)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "orthanc_plugin.worker" in cmdline and str(self.server.state_dir) in cmdline:
                found.append(int(proc.name))
        return found

    def _leftovers(self, when: str) -> None:
        """Record the workers still running ``when``; each dumps its stacks to its log first
        (SIGUSR1), then is killed so that it cannot blur what follows."""
        pids = self._workers()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        time.sleep(1.0 if pids else 0.0)
        for pid in pids:
            self.report.leftover_processes.append(f"{when}: worker pid {pid} (stacks in {self.server.state_dir}/logs)")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- the actors -----------------------------------------------------------------------
    def send(self, folders: list[Path]) -> None:
        """A modality that sends every series, again (whole) until Orthanc holds all of it.

        DCMTK's dcmsend, a process of its own like a real modality's sender (a dropped association
        leaves no socket in this process). Its exit code does not cover every loss (an association
        cut after the last response), so, as a careful modality would with storage commitment, the
        sender asks Orthanc afterwards whether it holds every instance."""
        pending = list(folders)
        while pending and not self.stop.is_set():
            folder = pending[0]
            self.sending.set()
            try:
                files = sorted(p for p in folder.iterdir() if p.is_file())
                sent = subprocess.run(
                    ["dcmsend", "-aet", "BIDSBRIDGE", "-aec", ORTHANC_AET, "127.0.0.1", str(self.server.dicom_port),
                     *map(str, files)],
                    capture_output=True, timeout=300, check=False, env={**os.environ, "TCP_NODELAY": "1"},
                )
                why = "" if sent.returncode == 0 else f"dcmsend exit {sent.returncode}: " + " ".join(
                    (sent.stderr or sent.stdout).decode(errors="replace").strip().splitlines()[-1:])
                if not why and (held := self._held(files)) < len(files):
                    why = f"Orthanc holds {held} of its {len(files)} instances"
            except subprocess.TimeoutExpired:
                why = "dcmsend timed out"
            finally:
                self.sending.clear()
            if not why:
                pending.pop(0)
            else:
                self.log(f"campaign: {folder.name} to be sent again ({why})")
                time.sleep(1.0)
        self.sent.set()

    def _held(self, files: list[Path]) -> int:
        """How many of ``files`` (one series) Orthanc holds; 0 when it cannot say."""
        uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        series = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        try:
            response = requests.post(f"{self.server.url}/tools/find", timeout=10, json={
                "Level": "Instance", "Query": {"SeriesInstanceUID": series}, "Expand": True})
            response.raise_for_status()
        except requests.RequestException:
            return 0
        return len(uids & {str(i["MainDicomTags"].get("SOPInstanceUID")) for i in response.json()})

    def chaos(self) -> None:
        """The Orthanc, XNAT and disk faults, in a random order, each at a random moment while
        there is work (kills during C-STORE first: they need the sender still at work)."""
        faults = (["conversion"] * self.plan.orthanc_kills_during_conversion + ["xnat"] * self.plan.xnat_outages
                  + ["disk"] * self.plan.disk_full_episodes)
        self.random.shuffle(faults)
        for fault in ["store"] * self.plan.orthanc_kills_during_store + faults:
            if self.stop.is_set():
                return
            time.sleep(self.random.uniform(0.2, 1.5))
            getattr(self, f"_fault_{fault}")()

    def killer(self) -> None:
        """The kills of busy workers, alongside the other faults (one every few tenths of a second)."""
        rng = random.Random(self.plan.seed + 1)
        for _ in range(self.plan.worker_kills):
            if self.stop.is_set():
                return
            time.sleep(rng.uniform(0.1, 0.8))
            self._fault_worker()

    def _fault_worker(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.stop.is_set():
            with self.lock:  # not while Orthanc is being replaced
                jobs = self.jobs()
            for job in jobs:
                pid = job.get("worker_pid")
                if job["state"] == "running" and pid and self.killed_jobs.get(job["id"], 0) < 2:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                        self.killed_jobs[job["id"]] = self.killed_jobs.get(job["id"], 0) + 1
                        self.report.worker_kills += 1
                        return
            time.sleep(0.05)

    def _fault_store(self) -> None:
        deadline = time.monotonic() + 60
        while not self.sending.is_set() and not self.sent.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.sending.is_set():
            self.restart_orthanc("during C-STORE")

    def _fault_conversion(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(j["state"] == "running" for j in self.jobs()):
            time.sleep(0.05)
        self.restart_orthanc("during conversion")

    def _fault_xnat(self) -> None:
        self.report.xnat_outages += 1
        if self.report.xnat_outages % 2:
            self.xnat.make_unreachable(seconds=self.random.uniform(2, 4))
        else:
            self.xnat.faults = FaultPlan(error_rate=0.5)
            time.sleep(self.random.uniform(2, 4))
            self.xnat.clear_faults()

    def _fault_disk(self) -> None:
        if not self.mounted:
            self.report.disk_full_note = " (not run: no tmpfs could be mounted here)"
            return
        ballast = fill(self.server.bids_root)
        self.report.disk_full_episodes += 1
        time.sleep(self.random.uniform(3, 5))
        ballast.unlink()

    # -- the run --------------------------------------------------------------------------
    def run(self) -> Report:
        started = time.monotonic()
        folders = make_workload(self.corpus, self.workdir / "input", self.plan)
        reference = self.workdir / "reference"
        convert_tree(self.workdir / "input", reference)
        self.report.series = len(folders)
        size = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file()) // (1 << 20)
        secret = self.workdir / "xnat-password"
        secret.write_text(XNAT_PASSWORD)
        rules = self.workdir / "rules.yaml"
        rules.write_text(RULES)
        self.server.bidsbridge = {
            "Rules": str(rules), "MaxAttempts": 8, "RetryBaseSeconds": 0.5, "RetryMaxSeconds": 4, "JobTimeout": 300,
            "Destinations": {"emu": {"Url": "", "Username": XNAT_USER, "PasswordFile": str(secret), "Retries": 1,
                                     "BackoffSeconds": 0.05, "MaxBackoffSeconds": 0.2, "ReadTimeout": 5}},
        }
        with XnatEmulator(users={XNAT_USER: XNAT_PASSWORD}, admins=()) as xnat, \
                small_filesystem(self.server.workdir / "bids", 3 * size + 64) as mounted:
            self.xnat, self.mounted = xnat, mounted
            xnat.add_project(XNAT_PROJECT, owners=[XNAT_USER])
            self.server.bidsbridge["Destinations"]["emu"]["Url"] = xnat.url
            self.server.start()
            try:
                actors = [threading.Thread(target=self.send, args=(folders,), daemon=True),
                          threading.Thread(target=self.chaos, daemon=True),
                          threading.Thread(target=self.killer, daemon=True)]
                for actor in actors:
                    actor.start()
                self._settle(started)
                self.stop.set()
                for actor in actors:
                    actor.join(timeout=60)
                self._check(reference, xnat)
            finally:
                self.server.stop()
                self._leftovers("after the final stop")
        self.report.seconds = time.monotonic() - started
        return self.report

    def _settle(self, started: float) -> None:
        """Until the sender is done, every fault happened and every job is finished (stable for 10 s)."""
        quiet_since: float | None = None
        while time.monotonic() - started < self.plan.timeout:
            with self.lock:
                jobs = self.jobs()
            busy = not self.sent.is_set() or any(j["state"] in ("queued", "running") for j in jobs) or not jobs
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 10:
                return
            time.sleep(0.5)
        raise AssertionError(f"the campaign did not settle within {self.plan.timeout:.0f} s: {self.report.lines()}")

    def _check(self, reference: Path, xnat: XnatEmulator) -> None:
        root = self.server.bids_root
        expected = _files(reference)
        found = _files(root)
        self.report.lost = sorted(f"{p} ({'differs' if p in found else 'missing'})" for p, digest in expected.items()
                                  if found.get(p) != digest)
        for relative in (p for p, digest in expected.items() if p in found and found[p] != digest):
            kept = self.workdir / "differing" / relative  # for a look with --keep (the tmpfs goes)
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / relative, kept)
        self.report.duplicated = sorted(set(found) - set(expected))
        staging = root / ".bidsbridge" / "tmp"
        self.report.orphaned = sorted(str(p.relative_to(root)) for p in staging.rglob("*")) if staging.is_dir() else []
        self.report.orphaned += sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))
        jobs = self.jobs()
        self.report.failed_jobs = [f"job {j['id']} ({j['kind']} {j['series']}): {j['error']}" for j in jobs
                                   if j["state"] == "failed"]
        stored = [f for f in xnat.inventory().files if f.resource == "NIFTI"]
        names = [Path(f.path).name for f in stored]
        self.report.xnat_duplicated = sorted({n for n in names if names.count(n) > 1})
        local = {Path(p).name: digest for p, digest in found.items() if p.endswith((".nii.gz", ".json"))
                 and "/" in p and not p.startswith("derivatives")}
        in_xnat = {Path(f.path).name: f.md5 for f in stored}
        self.report.xnat_lost = sorted(name for name, md5 in _md5s(root, local).items() if in_xnat.get(name) != md5)


def _files(root: Path) -> dict[str, str]:
    """Relative path -> digest of the content (NIfTI: of the uncompressed bytes) of every data file
    of a dataset (bookkeeping left out)."""
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if not path.is_file() or relative.startswith(".bidsbridge/") or path.name.startswith(".campaign"):
            continue
        if relative.startswith("derivatives/bidsbridge-qc/"):  # QC pictures are best effort: a fault may
            continue  # cost some (drawn again at the next conversion); tests/converters/test_qc.py checks them

        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        files[relative] = hashlib.sha256(data).hexdigest()
    return files


def _md5s(root: Path, names: dict[str, str]) -> dict[str, str]:
    """File name -> MD5 of the file as stored (what XNAT lists), for the series' files."""
    by_name = {p.name: p for p in root.rglob("sub-*/**/*") if p.is_file()}
    return {name: hashlib.md5(by_name[name].read_bytes()).hexdigest() for name in names if name in by_name}


def report_json(report: Report) -> str:
    return json.dumps(report.__dict__, indent=2)


def cleanup(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
