"""The README's sending example, run exactly as written, stores every corpus set completely.

The command is read from README.md itself (the one inline code span that starts with a DICOM
sender and names ``DICOM_DIR``), so README and test cannot drift. One Orthanc with the embedded
configuration of ``bidsbridge serve`` (plugin loaded, ``Enabled: false``: storing is all that is
tested here) runs for the whole module on free loopback ports; the README's port ``4242`` is
replaced by that port and ``DICOM_DIR`` by a set's ``In`` folder. Orthanc is emptied between sets.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.errors import InvalidDicomError

from orthanc_plugin.dicom_send import send_files
from orthanc_plugin.embedded import ACCEPTED_CALLING_AETS, ORTHANC_AET, EmbeddedOrthanc, free_port

pytestmark = pytest.mark.orthanc

README = Path(__file__).resolve().parents[2] / "README.md"
PLACEHOLDER = "DICOM_DIR"
SENDERS = ("storescu", "dcmsend")
#: What ``bidsbridge serve`` listens on by default, as the README's example addresses it.
SERVE_HOST, SERVE_DICOM_PORT = "127.0.0.1", "4242"
CORPUS_SETS = (
    "dcm_qa_12bit",
    "dcm_qa_deident",
    "dcm_qa_enh",
    "dcm_qa_fmap",
    "dcm_qa_frag",
    "dcm_qa_mosaic",
    "dcm_qa_nih",
    "dcm_qa_polar",
    "dcm_qa_ts",
    "dcm_qa_xa30",
    "dcm_qa_xa30i_bold",
)
UID_KEYWORDS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
#: DCMTK's warning for an input file it skips under ``--no-halt`` (dcmsend: "bad DICOM file: P: why,
#: ignoring file"; storescu -R: "missing SOP class (or instance) in file: P, ignoring file").
IGNORED_FILE = re.compile(r"file: (?P<path>.+?)(?:: .*)?, ignoring file$")

Uids = tuple[str, str, str]


@dataclass(frozen=True)
class SendCommand:
    """A shell command line split into its environment assignments and its argument vector."""

    env: dict[str, str]
    argv: list[str]

    def option_value(self, option: str) -> str | None:
        return self.argv[self.argv.index(option) + 1] if option in self.argv else None

    def peer_port(self) -> str | None:
        """The port argument, which follows the peer ``127.0.0.1``."""
        return self.option_value(SERVE_HOST)

    def for_folder(self, folder: Path, dicom_port: int) -> list[str]:
        """The argv with ``DICOM_DIR`` -> ``folder`` and the README's DICOM port -> ``dicom_port``."""
        port_at = self.argv.index(SERVE_HOST) + 1
        argv = [str(folder) if arg == PLACEHOLDER else arg for arg in self.argv]
        argv[port_at] = str(dicom_port)
        return argv


@dataclass(frozen=True)
class CorpusFolder:
    """What pydicom finds in one folder: the distinct instances, and the files that are not DICOM."""

    instances: frozenset[Uids]
    non_dicom: frozenset[Path]


def parse_command(line: str) -> SendCommand:
    words = shlex.split(line)
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return SendCommand(env, words)


def readme_send_commands() -> list[SendCommand]:
    """Every single-line code span of README.md that runs a DICOM sender on ``DICOM_DIR``."""
    spans = re.findall(r"`([^`\n]+)`", README.read_text(encoding="utf-8"))
    commands = [parse_command(span) for span in spans if PLACEHOLDER in span]
    return [c for c in commands if c.argv and Path(c.argv[0]).name in SENDERS]


def readme_send_command() -> SendCommand:
    commands = readme_send_commands()
    assert len(commands) == 1, f"expected exactly one sending example in {README}, found {commands}"
    return commands[0]


def read_folder(folder: Path) -> CorpusFolder:
    instances: set[Uids] = set()
    non_dicom: set[Path] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=UID_KEYWORDS)
        except InvalidDicomError:
            non_dicom.add(path)
            continue
        instances.add((str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
    return CorpusFolder(frozenset(instances), frozenset(non_dicom))


def rest(server: EmbeddedOrthanc, method: str, path: str) -> Any:
    response = requests.request(method, f"{server.url}{path}", timeout=60)
    response.raise_for_status()
    return response.json()


def orthanc_instances(server: EmbeddedOrthanc) -> set[Uids]:
    """(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) of every instance Orthanc holds."""
    studies = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in rest(server, "GET", "/studies?expand")}
    series = {
        s["ID"]: (studies[s["ParentStudy"]], s["MainDicomTags"]["SeriesInstanceUID"])
        for s in rest(server, "GET", "/series?expand")
    }
    return {
        (*series[i["ParentSeries"]], i["MainDicomTags"]["SOPInstanceUID"])
        for i in rest(server, "GET", "/instances?expand")
    }


def empty_orthanc(server: EmbeddedOrthanc) -> None:
    for patient in rest(server, "GET", "/patients"):
        rest(server, "DELETE", f"/patients/{patient}")
    assert rest(server, "GET", "/instances") == [], "Orthanc still holds instances after deleting every patient"


def ignored_files(stderr: str) -> set[Path]:
    return {Path(m["path"]) for m in map(IGNORED_FILE.search, stderr.splitlines()) if m}


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def command() -> SendCommand:
    return readme_send_command()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedOrthanc]:
    """The embedded Orthanc of ``bidsbridge serve``, plugin loaded but disabled, on free ports."""
    server = EmbeddedOrthanc(
        workdir=tmp_path_factory.mktemp("sending"),
        http_port=free_port(),
        dicom_port=free_port(),
        plugin_enabled=False,
    )
    server.start()
    yield server
    server.stop()


def test_readme_example_addresses_the_embedded_orthanc(command: SendCommand) -> None:
    """The example runs with TCP_NODELAY=1, calls BIDSBRIDGE_PACS on serve's default loopback port
    with a calling AET the embedded configuration accepts, and sends DICOM_DIR exactly once."""
    assert command.env == {"TCP_NODELAY": "1"}
    assert command.option_value("-aec") == ORTHANC_AET
    assert command.option_value("-aet") in ACCEPTED_CALLING_AETS
    assert command.peer_port() == SERVE_DICOM_PORT
    assert command.argv.count(PLACEHOLDER) == 1
    assert shutil.which(command.argv[0]), f"{command.argv[0]} is not installed (apt: dcmtk)"


@pytest.mark.parametrize("name", CORPUS_SETS)
def test_readme_example_stores_every_instance_of_the_set(
    name: str, corpus: Path, command: SendCommand, orthanc: EmbeddedOrthanc
) -> None:
    """The README's command exits 0, reports every non-DICOM file of the folder (and only those) as
    ignored, and Orthanc then holds exactly the folder's distinct (study, series, SOP instance) UIDs."""
    folder = corpus / name / "In"
    expected = read_folder(folder)
    assert expected.instances, f"no DICOM file found in {folder}"
    empty_orthanc(orthanc)

    result = subprocess.run(
        command.for_folder(folder, orthanc.dicom_port),
        env={**os.environ, **command.env},
        capture_output=True,
        text=True,
        errors="replace",
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, f"{shlex.join(result.args)} exited {result.returncode}:\n{tail(result.stderr)}"
    assert ignored_files(result.stderr) == expected.non_dicom, tail(result.stderr)
    stored = orthanc_instances(orthanc)
    assert not expected.instances - stored, f"not stored: {sorted(expected.instances - stored)[:5]}"
    assert stored == expected.instances, f"unexpected in Orthanc: {sorted(stored - expected.instances)[:5]}"


@pytest.mark.parametrize("name", ["dcm_qa_frag", "dcm_qa_ts"])
def test_send_files_stores_files_of_several_transfer_syntaxes(name: str, corpus: Path,
                                                               orthanc: EmbeddedOrthanc) -> None:
    """bidsbridge's own C-STORE client (the forwards', the demo's) proposes one context per SOP
    class and transfer syntax: JPEG, JPEG 2000 and RLE files go over one association with the rest."""
    folder = corpus / name / "In"
    expected = read_folder(folder)
    empty_orthanc(orthanc)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p not in expected.non_dicom]
    report = send_files(files, "127.0.0.1", orthanc.dicom_port, called_aet=ORTHANC_AET)
    assert report.failed == () and report.sent == len(files)
    assert orthanc_instances(orthanc) == expected.instances
