"""The embedded default: a real Orthanc with the plugin, on loopback, in one work directory.

``DIR/orthanc`` holds Orthanc's storage and SQLite index, ``DIR/bids`` the BIDS dataset,
``DIR/state`` the job queue and worker logs, ``DIR/orthanc.json`` the generated configuration.
Used by ``bidsbridge serve``/``demo`` and by the test-suite, so all three run the same setup.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from converters.errors import BidsBridgeError

__all__ = [
    "ACCEPTED_CALLING_AETS",
    "EmbeddedOrthanc",
    "OrthancSetupError",
    "find_orthanc",
    "find_python_plugin",
    "free_port",
]

#: Calling AETs the embedded Orthanc accepts C-STORE from (from 127.0.0.1 only).
ACCEPTED_CALLING_AETS = ("BIDSBRIDGE", "STORESCU", "PYNETDICOM", "ANY-SCU", "FINDSCU", "ECHOSCU")
ORTHANC_AET = "BIDSBRIDGE_PACS"
ENTRY_SCRIPT = Path(__file__).resolve().parent / "orthanc_entry.py"


class OrthancSetupError(BidsBridgeError, RuntimeError):
    """Orthanc or its Python plugin is missing, or Orthanc did not start."""


def find_orthanc() -> Path:
    for candidate in (shutil.which("Orthanc"), "/usr/sbin/Orthanc", "/usr/bin/Orthanc"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise OrthancSetupError("the Orthanc binary is not installed: run 'make install' (apt: orthanc)")


def find_python_plugin() -> Path:
    for candidate in (
        "/usr/share/orthanc/plugins/libOrthancPython.so",
        "/usr/lib/orthanc/libOrthancPython.so",
        "/usr/local/share/orthanc/plugins/libOrthancPython.so",
    ):
        if Path(candidate).exists():
            return Path(candidate)
    raise OrthancSetupError("orthanc-python is not installed: run 'make install' (apt: orthanc-python)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedOrthanc:
    """One Orthanc process with the plugin. ``start()`` / ``stop()``; also a context manager."""

    workdir: Path
    http_port: int = 8042
    dicom_port: int = 4242
    stable_age: int = 3
    workers: int | None = None
    plugin_enabled: bool = True
    bidsbridge: dict[str, Any] = field(default_factory=dict)
    #: More calling AETs to accept C-STORE from (127.0.0.1 only).
    calling_aets: tuple[str, ...] = ()
    #: Extra top-level Orthanc settings (e.g. ``OrthancPeers``), merged last.
    orthanc: dict[str, Any] = field(default_factory=dict)
    #: (user, password) of one of ``RegisteredUsers`` when ``orthanc`` turns ``AuthenticationEnabled``
    #: on (it is off by default: loopback only); used by the start-up check and the test harness.
    http_auth: tuple[str, str] | None = None
    #: Orthanc's ``--verbose``: its info lines, and the plugin's, reach the log too.
    verbose: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def bids_root(self) -> Path:
        return self.workdir / "bids"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def write_config(self) -> Path:
        self.workdir = self.workdir.resolve()
        for sub in ("orthanc", "bids", "state"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        section: dict[str, Any] = {
            "Enabled": self.plugin_enabled,
            "BidsRoot": str(self.bids_root),
            "StateDirectory": str(self.state_dir),
            "CatchUp": "all",
        }
        if self.workers is not None:
            section["Workers"] = self.workers
        section.update(self.bidsbridge)
        config = {
            "Name": "bidsbridge",
            "StorageDirectory": str(self.workdir / "orthanc"),
            "IndexDirectory": str(self.workdir / "orthanc"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET,
            "RemoteAccessAllowed": False,  # HTTP: loopback only
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": False,  # DICOM: only the loopback modalities below
            "DicomCheckModalityHost": True,
            "DicomModalities": {aet.lower(): [aet, "127.0.0.1", 104]
                                for aet in (*ACCEPTED_CALLING_AETS, *self.calling_aets)},
            "StableAge": self.stable_age,
            "ConcurrentJobs": 2,
            "Plugins": [str(find_python_plugin())],
            "PythonScript": str(ENTRY_SCRIPT),
            "PythonVerbose": False,
            "BidsBridge": section,
        }
        config.update(self.orthanc)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, self.config_path)
        return self.config_path

    def start(self, *, timeout: float = 60.0, foreground_log: bool = False) -> None:
        """Start Orthanc (``TCP_NODELAY=1``: DCMTK 3.6.7 leaves Nagle on) and wait for its REST API."""
        self.write_config()
        env = dict(os.environ, TCP_NODELAY="1")
        log = None if foreground_log else self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(find_orthanc()), *(["--verbose"] if self.verbose else []), str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            env=env,
            start_new_session=True,
        )
        if log is not None:
            log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise OrthancSetupError(
                    f"Orthanc exited with code {self.process.returncode}; see {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if requests.get(f"{self.url}/system", auth=self.http_auth, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise OrthancSetupError(f"Orthanc did not answer on {self.url} within {timeout:.0f} s")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, *, timeout: float = 30.0) -> int | None:
        """Stop Orthanc cleanly (SIGTERM), killing it after ``timeout`` seconds."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """Kill Orthanc outright (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> EmbeddedOrthanc:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
